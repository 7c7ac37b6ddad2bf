"""Dormant-customer benchmark: what scoring dormant customers at window closes costs.

``python -m bench.dormant [--users N] [--dormant-share S]`` runs the processor alone (no
broker, a :class:`~stream.processor.DictStore`, the shipped scorer) on a table of ``N`` users
(default 1,000,000), most of them dormant customers, and reports, per dormant churn floor, the
window-close signals per close and the time of a close batch:

* floor 0.0 — the rule before dormant customers were scored (only users in the lookback);
* the default floor (:data:`features.windows.DORMANT_CHURN_FLOOR`);
* floor 1.0 — every customer scored at every close, however long dormant (the unbounded cost).

The table: ``templates`` distinct user histories, cloned under ``N`` ids (a state holds no
user id, so a clone is what that user would be). ``dormant_share`` of them are customers whose
last order lies 27 weeks to five years before the current close, with 1 to 12 order days
(geometric: most bought once); the rest had an event within the lookback. Each template's
stored last scores are what the worker would hold after running the rule close after close
to now: :func:`training.offline.score_closes` (the offline twin of the worker's rule) over
its whole history. Measured: three successive closes (one event per partition advancing
event time by a week); the first also rebuilds the close candidates from the table (as after
a restart) and decodes every candidate's record, the next ones run on cached records.
Figures, not assertions (README "How the worker treats windows" quotes them).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from features.state import add_event, close_through
from features.validation import ValidationPolicy, validate
from features.windows import DAY_MS, DORMANT_CHURN_FLOOR, WindowSpec
from serving.scorer import Scorer, load_model
from stream.codec import PartitionClock, UserRecord, encode_clock, encode_user
from stream.loopback import exchange_watermarks
from stream.processor import DictStore, Processor, RawMessage, clock_key
from stream.publish import partition_of
from training.dataset import build_tensor, to_event_arrays
from training.offline import score_closes

log = logging.getLogger(__name__)

MODEL_DIR = Path("onnx_models/default")
PARTITIONS = 4
WEEK = 7 * DAY_MS
NOW_MS = 1_900_000_000_000


@dataclass(frozen=True)
class Close:
    floor: float
    signals: int
    seconds: float
    candidates: int


def _template_events(
    spec: WindowSpec, templates: int, dormant_share: float, seed: int
) -> tuple[pd.DataFrame, int]:
    """Event histories of ``templates`` users and the window the table is closed through."""
    rng = np.random.default_rng(seed)
    now = spec.index(int(pd.Timestamp("2016-01-04", tz="UTC").value // 1_000_000))
    rows: list[tuple[int, str, str]] = []
    for t in range(templates):
        user = f"t{t}"
        if rng.random() < dormant_share:
            last = now - int(rng.integers(spec.lookback + 1, 5 * 52 + 1))
            n = min(int(rng.geometric(0.45)), 12)
        else:
            last = now - int(rng.integers(0, spec.lookback))
            n = int(rng.integers(0, 8))  # 0: a viewer who never bought
        weeks = np.sort(last - rng.integers(0, 60, max(n - 1, 0)))
        for w in [*weeks.tolist(), last] if n else [last]:
            kind = "purchase" if n else "view"
            rows.append((spec.start_ms(int(w)) + int(rng.integers(0, WEEK)), user, kind))
    rows.sort()
    frame = pd.DataFrame(
        {
            "event_time_ms": [r[0] for r in rows],
            "event_type": [r[2] for r in rows],
            "user_id": [r[1] for r in rows],
            "product_id": None,
            "category": None,
            "brand": None,
            "price": np.round(rng.lognormal(2.5, 0.8, len(rows)), 2),
            "quantity": 1,
            "session_id": None,
            "order_id": None,
        }
    )
    return frame, now


def _template_records(scorer: Scorer, frame: pd.DataFrame, now: int, floor: float) -> list[bytes]:
    """Each template's encoded record as the worker would store it closed through ``now``."""
    spec = scorer.manifest.spec
    arrays, user_ids = to_event_arrays(frame)
    first = spec.index(int(arrays.time_ms.min()))
    closes = score_closes(
        scorer, build_tensor(arrays, spec, now), user_ids, range(first, now + 1), floor
    )
    latest = closes.sort_values("window_end_ms").groupby("user_id").tail(1).set_index("user_id")
    policy = ValidationPolicy()
    states: dict[str, UserRecord] = {}
    for row in frame.itertuples(index=False):
        raw = orjson.dumps(
            {
                "event_time": int(row.event_time_ms),
                "event_type": row.event_type,
                "user_id": row.user_id,
                "price": float(row.price),
            }
        )
        event = validate(raw, now_ms=NOW_MS, policy=policy)
        assert not isinstance(event, str) and hasattr(event, "user_id"), event
        record = states.get(row.user_id)
        state = add_event(record.state if record else None, event, spec)  # type: ignore[arg-type]
        if record is None:
            states[row.user_id] = UserRecord(state)
    out = []
    for user in user_ids:
        record = states[str(user)]
        close_through(record.state, now, spec)
        if str(user) in latest.index:
            r = latest.loc[str(user)]
            record.last_scores = {
                "window_end_ms": int(r.window_end_ms),
                "trigger": "window_close",
                "expected_orders": float(r.expected_orders),
                "expected_spend": float(r.expected_spend),
                "churn_probability": float(r.churn_probability),
                "model_version": scorer.version,
            }
        out.append(encode_user(record))
    return out


def _tickers() -> list[str]:
    """One user per partition whose events move that partition's event time."""
    return [
        next(
            f"tick{i}" for i in range(10_000) if partition_of(f"tick{i}".encode(), PARTITIONS) == p
        )
        for p in range(PARTITIONS)
    ]


def measure(
    scorer: Scorer, users: int, templates: int, dormant_share: float, floor: float, closes: int = 3
) -> list[Close]:
    spec = scorer.manifest.spec
    frame, now = _template_events(spec, templates, dormant_share, seed=0)
    encoded = _template_records(scorer, frame, now, floor)
    store = DictStore()
    for i in range(users):
        store.data[f"u{i}"] = encoded[i % templates]
    for p in range(PARTITIONS):
        clock = PartitionClock(max_event_ms=spec.end_ms(now) - 1, closed_through=now)
        store.data[clock_key(p, PARTITIONS)] = encode_clock(clock)
    proc = Processor(
        scorer,
        store,
        partitions=PARTITIONS,
        policy=ValidationPolicy(),
        allowed_lateness_ms=0,
        fresh_interval_ms=10**15,
        routed_topics=frozenset({"routed"}),
        clock=lambda: NOW_MS,
        dormant_churn_floor=floor,
    )
    results = []
    offsets = [0] * PARTITIONS
    for k in range(1, closes + 1):
        batch = []
        for p, user in enumerate(_tickers()):
            at = spec.end_ms(now + k) + 3_600_000  # into window now+k+1: closes now+k
            value = orjson.dumps({"event_time": at, "event_type": "view", "user_id": user})
            batch.append(RawMessage(user.encode(), value, "clickstream", p, offsets[p]))
            offsets[p] += 1
        started = time.perf_counter()
        out = proc.process(batch)
        # The partitions close once each has read the others' announcements (aligned event
        # time): the worker's next heartbeat, here at once.
        store.apply(out.writes)
        out.merge(exchange_watermarks(proc))
        seconds = time.perf_counter() - started
        store.apply(out.writes)
        signals = sum(
            1 for s in out.churn if s.trigger == "window_close" and not s.user_id.startswith("tick")
        )
        candidates = sum(len(a) for a in proc._active.values())  # the close candidates
        results.append(Close(floor, signals, seconds, candidates))
        log.info("floor %.2f close %d: %d signals in %.1f s", floor, k, signals, seconds)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--templates", type=int, default=2_000)
    parser.add_argument("--dormant-share", type=float, default=0.9)
    parser.add_argument("--floors", default=f"0.0,{DORMANT_CHURN_FLOOR},1.0")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    scorer = load_model(MODEL_DIR)
    print(
        f"{args.users:,} users ({args.dormant_share:.0%} dormant customers, "
        f"{args.templates:,} distinct histories), {PARTITIONS} partitions, lookback "
        f"{scorer.manifest.spec.lookback}"
    )
    print("| floor | signals per close | first close (rebuild + decode) s | next closes s |")
    print("|---|---|---|---|")
    for floor in (float(f) for f in args.floors.split(",")):
        r = measure(scorer, args.users, args.templates, args.dormant_share, floor)
        nxt = ", ".join(f"{c.seconds:.1f}" for c in r[1:])
        signals = ", ".join(str(c.signals) for c in r)
        print(f"| {floor:.2f} | {signals} | {r[0].seconds:.1f} | {nxt} |", flush=True)


if __name__ == "__main__":
    main()
