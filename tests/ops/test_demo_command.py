"""``ops.demo``'s plumbing without a broker: what it starts, how it stops, what it writes."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from ops import demo
from ops.demo_view import FILES, Tally
from ops.kafka_local import topic_specs
from settings import Settings


def test_children_are_the_worker_and_both_subscribers_on_their_own_ports(tmp_path: Path) -> None:
    settings = Settings.from_flat(web_port=7001, bidder_web_port=7002, alerter_web_port=7003)
    kids = demo.children(settings, tmp_path)
    assert [k.name for k in kids] == ["worker", "bidder", "alerter"]
    apps = [k.argv[k.argv.index("-A") + 1] for k in kids]
    assert apps == ["stream.app", "subscribers.bidding_app", "subscribers.alerting_app"]
    for app in apps:
        assert importlib.util.find_spec(app) is not None, app
    for kid in kids:
        assert kid.argv[:3] == [sys.executable, "-m", "faust"]
        assert kid.argv[kid.argv.index("-A") + 2] == "worker"
    assert [k.url for k in kids] == [
        "http://127.0.0.1:7001",
        "http://127.0.0.1:7002",
        "http://127.0.0.1:7003",
    ]
    assert len({k.log_path for k in kids}) == 3


def test_the_demo_reads_every_output_topic_the_topics_command_creates() -> None:
    settings = Settings()
    kinds = demo.output_topics(settings)
    assert sorted(kinds.values()) == sorted(FILES)
    assert set(kinds) <= set(topic_specs(settings))
    # Not read: the inputs, the internal quality and category parts, and the per-user
    # prediction outcomes (the demo shows their aggregate, model-quality), and the planner's
    # topics (the demo runs no planner).
    unread = {
        settings.topics.clickstream,
        settings.topics.routed,
        settings.topics.quality_parts,
        settings.topics.outcomes,
        settings.topics.category_parts,
        settings.topics.stock_levels,
        settings.topics.reorder_suggestions,
    }
    assert set(kinds) == set(topic_specs(settings)) - unread


def test_sigterm_becomes_an_interrupt_only_inside_the_block() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(demo.Terminated), demo.sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert signal.getsignal(signal.SIGTERM) is before
    assert issubclass(demo.Terminated, KeyboardInterrupt)  # one shutdown path for both


def test_signals_are_noted_not_obeyed_during_shutdown(caplog: pytest.LogCaptureFixture) -> None:
    with demo.signals_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
    assert "already shutting down" in caplog.text


def test_reports_are_written_next_to_the_jsonl_files(tmp_path: Path) -> None:
    outputs = demo.Outputs(tmp_path)
    tally = Tally()
    value = b'{"reason": "invalid_json"}'
    outputs.write("dlq", value)
    tally.add("dlq", value)
    outputs.close()
    state = demo.RunState(events=5, sent=5, replay_seconds=0.5)
    summary = demo.write_reports(
        tally, state, outputs.paths, tmp_path, wall_seconds=3.0, interrupted=False, title="t"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*FILES.values(), "summary.json", "dashboard.html"]
    )
    assert (tmp_path / "dlq.jsonl").read_bytes() == value + b"\n"
    assert orjson.loads((tmp_path / "summary.json").read_bytes()) == summary
    assert summary["outputs"]["dashboard"] == str(tmp_path / "dashboard.html")
    assert summary["signals"]["dlq"] == 1
    assert "<svg" in (tmp_path / "dashboard.html").read_text()
    assert summary["truth"] is None  # replayed file: no truth, no panel


def test_generated_traffic_brings_its_truth_into_the_reports(tmp_path: Path) -> None:
    import argparse

    from ops.demo_truth import Truth

    args = argparse.Namespace(
        events=None, format="auto", users=50, days=14, seed=3, shop=demo.DEMO_SHOP
    )
    records, truth = demo.load_traffic(args)
    assert records and isinstance(truth, Truth) and len(truth.churn_ms) == 50
    users = sorted({key.decode() for key, _ in records})
    tally = Tally()
    for i, user in enumerate(users):
        p = 0.9 if truth.churned(user) else 0.1 + i / 1000
        tally.add("churn", orjson.dumps({"user_id": user, "churn_probability": p}))
    outputs = demo.Outputs(tmp_path)
    outputs.close()
    state = demo.RunState(events=len(records), sent=len(records), replay_seconds=1.0, truth=truth)
    summary = demo.write_reports(
        tally, state, outputs.paths, tmp_path, wall_seconds=3.0, interrupted=False, title="t"
    )
    assert (tmp_path / "truth.jsonl").exists() and summary["outputs"]["truth"]
    assert summary["truth"]["roc_auc"] == 1.0
    assert summary["truth"]["users_scored"] == len(users)
    assert "Predictions vs the generator's truth" in (tmp_path / "dashboard.html").read_text()
    assert demo.live_auc(tally, truth) == 1.0


def test_the_demo_serves_the_generated_model_for_generated_traffic() -> None:
    default = Settings()
    assert demo.demo_model_dir(default, None, generated=True) == demo.GENERATED_MODEL_DIR
    assert demo.demo_model_dir(default, None, generated=False) == default.worker.model_dir
    chosen = default.with_overrides(model_dir=Path("elsewhere"))
    assert demo.demo_model_dir(chosen, None, generated=True) == Path("elsewhere")
    assert demo.demo_model_dir(default, Path("x"), generated=True) == Path("x")


def test_demo_script_runs_the_demo_command() -> None:
    from tests.conftest import REPO_ROOT

    script = (REPO_ROOT / "scripts" / "demo.sh").read_text()
    assert "clicksignals demo" in script
    result = subprocess.run(
        [sys.executable, "-m", "ops.cli", "demo", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
    )
    for option in ("--events", "--rate", "--settle", "--workdir", "--quiet"):
        assert option in result.stdout


class _Lags:
    """Stands in for ``ops.offsets.OffsetReader``: the lags a broker would report."""

    def __init__(self, lags: dict[str, int]) -> None:
        self.value = lags

    async def lags(self, groups: object) -> dict[str, int]:
        return dict(self.value)


def test_the_run_waits_for_a_quiet_alerter_until_the_drain_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The alerter emits few alerts: every output topic can be idle while it still has
    # thousands of churn signals to read (the CI failure of stop 23).
    groups = demo.consumer_groups(Settings())
    assert set(groups) == {"worker", "bidder", "alerter"}
    state = demo.RunState(started=100.0, replay_seconds=10.0)  # the replay ended at 110
    behind = _Lags({"worker": 0, "bidder": 0, "alerter": 3956})

    def drained(reader: _Lags, now: float) -> bool:
        return asyncio.run(demo.drained(reader, groups, state, 120.0, now))  # type: ignore[arg-type]

    assert not drained(behind, now=120.0)
    assert state.consumer_lag == {"worker": 0, "bidder": 0, "alerter": 3956}
    assert not caplog.records
    assert drained(behind, now=231.0)  # 121 s after the replay: ends, and says why
    assert "alerter 3,956" in caplog.text
    caught_up = _Lags(dict.fromkeys(groups, 0))
    assert drained(caught_up, now=120.0)
    assert state.consumer_lag == {"worker": 0, "bidder": 0, "alerter": 0}
