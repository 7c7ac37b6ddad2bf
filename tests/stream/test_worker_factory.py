"""The worker is built by a factory (stream.worker.create_worker): importing it does nothing,
two workers with different settings live side by side in one process, a worker that cannot
start raises a StartupError that names the reason and the exit code, and its timers' ticks
are guarded (an essential timer's error fails the worker, another's is logged)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

import stream.memory
from settings import load_settings
from stream import metrics
from stream.worker import StartupError, create_worker

REPO = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO / "onnx_models" / "default"


def _settings(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        "CLICKSIGNALS_STORE_URL": "memory://",
        "CLICKSIGNALS_MODEL_DIR": str(MODEL_DIR),
        "CLICKSIGNALS_DATA_DIR": str(tmp_path / "worker"),
        "CLICKSIGNALS_BROKER_URL": "kafka://127.0.0.1:1",
    }
    env.update({f"CLICKSIGNALS_{k}": v for k, v in extra.items()})
    return env


def test_importing_the_factory_reads_no_settings_and_loads_no_model(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "CLICKSIGNALS_MODEL_DIR": str(tmp_path / "none")}
    proc = subprocess.run(
        [sys.executable, "-c", "import stream.worker, sys; print(sorted(stream.worker.__all__))"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr


def test_two_workers_with_their_own_settings_share_nothing(tmp_path: Path) -> None:
    one = create_worker(load_settings(_settings(tmp_path, APP_ID="shop-a", PARTITIONS="1")))
    two = create_worker(
        load_settings(_settings(tmp_path, APP_ID="shop-b", PARTITIONS="3", TOPIC_DEMAND="demand-b"))
    )
    assert one.app is not two.app
    assert (one.app.conf.id, two.app.conf.id) == ("shop-a", "shop-b")
    assert one.user_state is not two.user_state
    assert two.demand_topic.get_topic_name() == "demand-b"
    assert one.demand_topic.get_topic_name() != "demand-b"
    assert one.processor() is not two.processor()
    assert one.score_clickstream is not two.score_clickstream


def test_a_missing_model_is_a_startup_error_with_exit_code_3(tmp_path: Path) -> None:
    settings = load_settings(_settings(tmp_path, MODEL_DIR=str(tmp_path / "no-model")))
    with pytest.raises(StartupError) as caught:
        create_worker(settings)
    assert caught.value.exit_code == 3
    assert "no-model" in str(caught.value)


@pytest.mark.parametrize("share", ["0", "-0.1", "1.5"])
def test_a_close_share_that_would_stop_closes_or_starve_events_is_refused(
    tmp_path: Path, share: str
) -> None:
    # 0 would never close a window while events flow, and above 1 the pause after a slice
    # turns negative: an operator's typo is named at start-up, not found in a week's signals.
    settings = load_settings(_settings(tmp_path, CLOSE_SHARE=share))
    with pytest.raises(StartupError, match="CLICKSIGNALS_CLOSE_SHARE") as caught:
        create_worker(settings)
    assert caught.value.exit_code == 2


def test_the_entry_point_exits_with_the_reason(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", **_settings(tmp_path, MODEL_DIR=str(tmp_path / "no-model"))}
    proc = subprocess.run(
        [sys.executable, "-c", "import stream.app"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3
    assert "clicksignals worker: refusing to start:" in proc.stderr
    assert "no-model" in proc.stderr


@pytest.mark.parametrize(
    ("timer", "method"),
    [("announce_watermarks", "announce_watermarks"), ("poll_model", "poll_shadow")],
)
def test_an_essential_timer_that_raises_fails_the_worker_instead_of_crashing_faust(
    timer: str, method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the announcements (the closes they carry) or in the model swap: the tick's
    exception would crash the app in a graceful stop that says nothing on /health; the worker
    answers 503 with the timer's name and, armed, exits 70 as a crashed agent does."""
    worker = create_worker(load_settings(_settings(tmp_path)))

    async def broken() -> None:
        raise RuntimeError("forced failure")

    monkeypatch.setattr(worker, method, broken)
    before = metrics.TIMER_ERRORS.labels(timer=timer)._value.get()
    asyncio.run(worker.ticks[timer]())  # the exception does not reach Faust
    assert worker.liveness.reason == f"timer {timer} crashed: RuntimeError: forced failure"
    body, status = worker.liveness.health({})
    assert status == 503 and body["reason"] == worker.liveness.reason
    assert metrics.TIMER_ERRORS.labels(timer=timer)._value.get() == before + 1


def test_the_trim_timer_leaves_a_worker_under_steady_traffic_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trim holds the event loop's allocations: the tick trims at start-up, then not while
    batches keep coming (stream.memory.trim_due), and again once the worker is quiet."""
    worker = create_worker(load_settings(_settings(tmp_path)))
    calls: list[float] = []
    monkeypatch.setattr(stream.memory, "trim", lambda: calls.append(1.0))
    asyncio.run(worker.ticks["trim_memory"]())
    assert len(calls) == 1
    worker.last_batch = time.monotonic()  # a batch just now, after that trim
    asyncio.run(worker.ticks["trim_memory"]())
    assert len(calls) == 1
    worker.last_batch = time.monotonic() - 10.0  # none since, beyond the 5 s interval
    asyncio.run(worker.ticks["trim_memory"]())
    assert len(calls) == 2


def test_the_lag_and_trim_timers_log_an_error_and_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The lag metric and the memory trim are not the stream's work: one failed tick is logged
    and counted, the worker stays healthy, and the next tick runs."""
    worker = create_worker(load_settings(_settings(tmp_path)))
    calls: list[int] = []

    def trim() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("malloc_trim unavailable")

    monkeypatch.setattr(stream.memory, "trim", trim)
    before = metrics.TIMER_ERRORS.labels(timer="trim_memory")._value.get()
    with caplog.at_level(logging.ERROR, logger="stream.liveness"):
        asyncio.run(worker.ticks["trim_memory"]())
        asyncio.run(worker.ticks["trim_memory"]())
    assert calls == [1, 1]
    assert worker.liveness.ok
    assert "timer trim_memory failed; it runs again at its next tick" in caplog.text
    assert metrics.TIMER_ERRORS.labels(timer="trim_memory")._value.get() == before + 1
    assert set(worker.ticks) == {
        "announce_watermarks",
        "poll_model",
        "trim_memory",
        "update_consumer_lag",
    }
