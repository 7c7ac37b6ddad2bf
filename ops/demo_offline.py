"""The demo without Kafka: its traffic through the worker's and the subscribers' pure code.

``clicksignals demo`` replays traffic through a broker, the worker and both subscribers. This
module runs the same records through the same logic in one process, to measure what the demo
will show without starting anything: :class:`stream.processor.Processor` (the worker's window
state, watermarks, close population and activity signals, over a
:class:`~stream.processor.DictStore`, partitioned as the producer partitions by key, with the
re-keying topic's watermark records looped back by :func:`stream.loopback.run_in_process`), then
each demand signal through :func:`subscribers.bidding.apply_demand` and each churn signal
through :func:`subscribers.alerting.apply_churn`, and everything into the demo's
:class:`ops.demo_view.Tally`, with the settings the demo gives its processes. What differs
from a live run is only how records are batched (the worker's batches depend on fetch timing),
which moves which activity signals are emitted within ``fresh_signal_min_interval_s``, not
the window-close ones.

``python -m ops.demo_offline [--users N --days D --seed S --shop NAME --model-dir DIR]``
prints the figures the README quotes (*The demo's model*): churn ROC-AUC against the
generator's truth, the score spread, the share alerted and of true churners among them, and
the bid multipliers on each side of neutral. ``tests/ops/test_demo_quality.py`` asserts them.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ops.demo import DEMO_SHOP, GENERATED_MODEL_DIR, demo_bid_baselines, load_traffic
from ops.demo_truth import Truth, evaluate
from ops.demo_view import Tally
from serving.scorer import load_model
from settings import Settings
from stream.loopback import run_in_process
from stream.processor import BatchOutput, DictStore, RawMessage, processor_from_settings
from stream.publish import partition_of
from subscribers.alerting import AlertConfig, AlertState, apply_churn
from subscribers.bidding import BidConfig, BidState, apply_demand

BATCH: int = 2_000
"""Records per processor batch (the worker's are of the order of its fetch size)."""


@dataclass(frozen=True)
class OfflineRun:
    tally: Tally
    truth: Truth | None
    events: int
    seconds: float

    def figures(self) -> dict[str, Any]:
        """The truth evaluation plus the bid multipliers' sides (``summary.json``'s numbers)."""
        scores = {u: p for u, (_, p) in self.tally.churn.items()}
        out: dict[str, Any] = {"events": self.events, "users_scored": len(scores)}
        if self.truth is not None:
            out["truth"] = evaluate(scores, self.tally.alerted, self.truth)
        out["alerted_users"] = len(self.tally.alerted)
        out["alerted_share"] = round(len(self.tally.alerted) / len(scores), 4) if scores else None
        out["top_churn_risks"] = self.tally.top_churn(10)
        dist = self.tally.bid_distribution()
        n = sum(dist.values())
        out["bid_distribution"] = dist
        out["bids_below_neutral"] = round((dist["floor"] + dist["below"]) / n, 4) if n else None
        out["bids_above_neutral"] = round((dist["above"] + dist["cap"]) / n, 4) if n else None
        return out


def run_offline(
    records: Sequence[tuple[bytes, bytes]],
    settings: Settings,
    truth: Truth | None = None,
    *,
    batch: int = BATCH,
) -> OfflineRun:
    """``records`` (key, value), in replay order, through worker and subscribers (module doc)."""
    started = time.perf_counter()
    scorer = load_model(settings.worker.model_dir, settings.worker.ort_intra_op_threads)
    # Emission times: a clock that only moves forward batch by batch (as the worker's does),
    # so "the later-emitted signal at the same window end" is well defined.
    clock_ms = int(time.time() * 1000)
    proc = processor_from_settings(scorer, DictStore(), settings, clock=lambda: clock_ms)
    store = proc.store
    assert isinstance(store, DictStore)
    bid_config = BidConfig.from_settings(settings.subscribers)
    alert_config = AlertConfig.from_settings(settings.subscribers)
    bids: dict[str, BidState] = {}
    alerts: dict[str, AlertState] = {}
    tally = Tally()
    messages = []
    offsets = [0] * settings.topics.partitions
    for key, value in records:
        p = partition_of(key, settings.topics.partitions)
        messages.append(RawMessage(key, value, settings.topics.clickstream, p, offsets[p]))
        offsets[p] += 1

    def subscribe(out: BatchOutput) -> None:
        nonlocal clock_ms
        clock_ms += 1
        store.apply(out.writes)
        for demand in out.demand:
            tally.add("demand", orjson.dumps(demand.to_dict()))
            decision = apply_demand(bids.get(demand.user_id), demand, bid_config, clock_ms)
            if decision.state is not None:
                bids[demand.user_id] = decision.state
            if decision.adjustment is not None:
                tally.add("bids", orjson.dumps(decision.adjustment.to_dict()))
        for churn in out.churn:
            tally.add("churn", orjson.dumps(churn.to_dict()))
            verdict = apply_churn(alerts.get(churn.user_id), churn, alert_config, clock_ms)
            if verdict.state is not None:
                alerts[churn.user_id] = verdict.state
            if verdict.alert is not None:
                tally.add("alerts", orjson.dumps(verdict.alert.to_dict()))
        for dead in out.dead_letters:
            tally.add("dlq", orjson.dumps(dead.to_dict()))

    run_in_process(proc, messages, batch, subscribe)
    return OfflineRun(tally, truth, len(records), time.perf_counter() - started)


def demo_settings(model_dir: Path = GENERATED_MODEL_DIR, base: Settings | None = None) -> Settings:
    """The settings the demo gives its worker and subscribers for ``model_dir``."""
    settings = base or Settings()
    return settings.with_overrides(
        model_dir=model_dir, bid_model_baselines=demo_bid_baselines(settings, model_dir)
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ops.demo_offline", description=__doc__)
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--days", type=int, default=56)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--shop", default=DEMO_SHOP)
    p.add_argument("--model-dir", type=Path, default=GENERATED_MODEL_DIR)
    args = p.parse_args(argv)
    traffic = argparse.Namespace(events=None, format="auto", **vars(args))
    records, truth = load_traffic(traffic)
    run = run_offline(records, demo_settings(args.model_dir), truth)
    figures = run.figures()
    print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
    t = figures.get("truth") or {}
    print(
        f"{run.events:,} events in {run.seconds:.1f}s; {figures['users_scored']:,} users scored, "
        f"churn ROC-AUC vs truth {t.get('roc_auc')}, alerted {figures['alerted_users']:,} "
        f"({figures['alerted_share']:.0%}; {t.get('alerted_precision')} of them churn), "
        f"bids below/above neutral {figures['bids_below_neutral']:.0%}"
        f"/{figures['bids_above_neutral']:.0%}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
