"""The worker's agent under Faust's ``test_context()``: a worker built by
:func:`stream.worker.create_worker` under chosen settings (:func:`load_app`), the agent run with
its sends recorded (:class:`Worker`), and raw clicks. The fixtures are made available to
``tests/stream`` by its conftest."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest.mock import AsyncMock

import orjson
import pytest

from features.windows import DAY_MS
from settings import env_names, load_settings
from stream import metrics
from stream.publish import partition_of
from stream.worker import Worker as StreamWorker
from stream.worker import create_worker

REPO = Path(__file__).resolve().parents[2]


MODEL_DIR = REPO / "onnx_models" / "default"


WEEK = 7 * DAY_MS


SETTLE_TIMEOUT_S = 10.0


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def iso(ms_: int) -> str:
    return datetime.fromtimestamp(ms_ / 1000, UTC).strftime("%Y-%m-%dT%H:%M")


def click(user: str, when: str | int, kind: str = "view", **extra: Any) -> bytes:
    return orjson.dumps({"event_time": when, "event_type": kind, "user_id": user, **extra})


def user_of_partition(p: int, partitions: int, prefix: str = "user") -> str:
    return next(
        f"{prefix}-{i}"
        for i in range(10_000)
        if partition_of(f"{prefix}-{i}".encode(), partitions) == p
    )


@pytest.fixture
def load_app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., StreamWorker]:
    """``load_app(PARTITIONS="2", ...)`` → a worker built from the factory under those settings.

    Keyword names are settings fields without the ``CLICKSIGNALS_`` prefix; every other
    ``CLICKSIGNALS_*`` variable of the developer's environment is removed, so the settings are
    the defaults plus these.
    """

    def load(**overrides: str) -> StreamWorker:
        env = {
            "STORE_URL": "memory://",
            "MODEL_DIR": str(MODEL_DIR),
            "DATA_DIR": str(tmp_path / "worker"),
            "BROKER_URL": "kafka://127.0.0.1:1",  # nothing listens: no test may need a broker
            "PARTITIONS": "1",
            "BATCH_TIMEOUT_S": "0.01",
            # Activity signals only for a user's first event, so closes are easy to read.
            "FRESH_SIGNAL_MIN_INTERVAL_S": str(10**9),
        }
        env.update(overrides)
        for name in env_names().values():
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(f"CLICKSIGNALS_{name}", value)
        return create_worker(load_settings())

    return load


class Worker:
    """``score_clickstream.test_context()`` of one worker, recording what it sends."""

    def __init__(self, app: StreamWorker, agent: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.app = app
        self.agent = agent
        self.handled = 0
        self.changelog: list[tuple[int, str]] = []
        self.sends: dict[str, AsyncMock] = {}
        for topic in (
            app.routed,
            app.demand_topic,
            app.churn_topic,
            app.dead_letter_topic,
            app.outcomes_topic,
            app.quality_parts,
            app.quality_topic,
            app.category_parts,
            app.category_topic,
        ):
            self.sends[topic.get_topic_name()] = AsyncMock()
            monkeypatch.setattr(topic, "send", self.sends[topic.get_topic_name()])

        observe = metrics.observe_batch

        def count(n_events: int, out: Any, seconds: float) -> None:
            observe(n_events, out, seconds)
            self.handled += n_events

        monkeypatch.setattr(metrics, "observe_batch", count)

        table = app.user_state
        send_changelog = table.send_changelog

        def record(partition: int | None, key: Any, value: Any, *args: Any, **kw: Any) -> Any:
            assert partition is not None
            self.changelog.append((partition, key))
            return send_changelog(partition, key, value, *args, **kw)

        monkeypatch.setattr(table, "send_changelog", record)

    async def put(
        self, value: bytes, *, key: bytes | None = None, partition: int = 0, topic: Any = None
    ) -> int:
        """Deliver one raw message as if read from ``topic[partition]``; returns its offset."""
        self.agent.original_channel = topic if topic is not None else self.app.clickstream
        event = await self.agent.put(value, key=key, partition=partition)
        offset: int = event.message.offset
        return offset

    async def settle(self) -> None:
        """Wait until the agent has handled (and sent the output of) every message put."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_TIMEOUT_S
        while self.handled < self.agent.sent_offset:
            if self.agent.crash_reason is not None:
                raise self.agent.crash_reason
            if loop.time() > deadline:
                raise AssertionError(
                    f"agent handled {self.handled} of {self.agent.sent_offset} messages"
                )
            await asyncio.sleep(0.002)

    def sent(self, topic_name: str) -> list[tuple[bytes | None, bytes]]:
        return [(c.kwargs["key"], c.kwargs["value"]) for c in self.sends[topic_name].call_args_list]

    def decoded(self, topic_name: str) -> list[dict[str, Any]]:
        return [orjson.loads(value) for _, value in self.sent(topic_name)]

    def closes(self, topic_name: str, user: str) -> list[int]:
        """Window ends of ``user``'s window-close signals on ``topic_name``, in send order."""
        return [
            s["window_end_ms"]
            for s in self.decoded(topic_name)
            if s["user_id"] == user and s["trigger"] == "window_close"
        ]


@pytest.fixture
def run_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[StreamWorker], contextlib.AbstractAsyncContextManager[Worker]]:
    @contextlib.asynccontextmanager
    async def run(app: StreamWorker) -> AsyncIterator[Worker]:
        async with app.score_clickstream.test_context() as agent:
            yield Worker(app, agent, monkeypatch)

    return run
