"""When a worker calls a source partition idle (stream.worker): nothing read for the idle
timeout and every record in the log processed, with the log end asked of the broker.

Populations: a worker whose partitions Faust has paused for recovery while a backfill lands
(its last fetch response, and so its cached high-water mark, predates the backfill); a bulk
worker with a backlog fetched into its buffer and not processed; an empty partition; a broker
too slow to answer. Only the first of these was wrong before: the cached high-water mark let a
worker announce a source idle over records it had not fetched yet."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from settings import load_settings
from stream import metrics
from stream.processor import RawMessage
from stream.worker import Worker, caught_up, create_worker

REPO = Path(__file__).resolve().parents[2]


def test_a_source_processed_to_the_log_end_is_caught_up() -> None:
    assert caught_up(processed=500, fetched=499, position=500, log_end=500)


def test_a_source_processed_short_of_the_log_end_is_not() -> None:
    assert not caught_up(processed=480, fetched=499, position=500, log_end=500)


def test_a_backlog_fetched_into_the_buffer_and_not_processed_is_not_caught_up() -> None:
    """The consumer's position is past the buffered records: it says nothing of them."""
    assert not caught_up(processed=None, fetched=499, position=500, log_end=500)


def test_an_empty_partition_is_caught_up_by_its_position() -> None:
    assert caught_up(processed=None, fetched=None, position=0, log_end=0)


def test_an_unknown_log_end_is_never_caught_up() -> None:
    assert not caught_up(processed=500, fetched=None, position=500, log_end=None)


class _Consumer:
    """A consumer whose last fetch response (``highwater``) predates what the broker holds
    now (``highwaters``): Faust paused its partitions for recovery while a backfill landed."""

    def __init__(self, log_end: int, answer_after_s: float = 0.0) -> None:
        self.log_end = log_end
        self.answer_after_s = answer_after_s
        self.asked: list[Any] = []

    def highwater(self, tp: Any) -> int:
        return 0  # stale: no fetch response since the backfill

    async def highwaters(self, *tps: Any) -> dict[Any, int]:
        self.asked.append(tps)
        await asyncio.sleep(self.answer_after_s)
        return {tp: self.log_end for tp in tps}

    async def position(self, tp: Any) -> int:
        return 0

    def assignment(self) -> set[Any]:
        return set()


@pytest.fixture
def worker(tmp_path: Path) -> Worker:
    env = {
        "CLICKSIGNALS_STORE_URL": "memory://",
        "CLICKSIGNALS_MODEL_DIR": str(REPO / "onnx_models" / "default"),
        "CLICKSIGNALS_DATA_DIR": str(tmp_path / "worker"),
        "CLICKSIGNALS_BROKER_URL": "kafka://127.0.0.1:1",
        "CLICKSIGNALS_APP_ID": "idle-sources",
        "CLICKSIGNALS_PARTITIONS": "2",
    }
    return create_worker(load_settings(env))


def quiet(worker: Worker, *partitions: int) -> float:
    now = time.monotonic()
    for p in partitions:
        worker.last_read[p] = now - worker.settings.worker.source_idle_timeout_s - 1.0
    return now


def test_a_paused_consumer_with_a_backfill_in_its_log_is_not_idle(worker: Worker) -> None:
    worker.app.consumer = _Consumer(log_end=5_000)  # type: ignore[assignment]
    now = quiet(worker, 0, 1)
    assert asyncio.run(worker.idle_sources({0, 1}, now)) == []


def test_a_quiet_consumer_of_an_empty_log_is_idle(worker: Worker) -> None:
    consumer = _Consumer(log_end=0)
    worker.app.consumer = consumer  # type: ignore[assignment]
    now = quiet(worker, 0, 1)
    assert asyncio.run(worker.idle_sources({0, 1}, now)) == [0, 1]
    assert len(consumer.asked) == 1  # one ListOffsets request for every quiet source


def test_a_source_that_read_lately_is_not_idle_and_costs_no_request(worker: Worker) -> None:
    consumer = _Consumer(log_end=0)
    worker.app.consumer = consumer  # type: ignore[assignment]
    now = quiet(worker, 0)
    worker.last_read[1] = now
    assert asyncio.run(worker.idle_sources({0, 1}, now)) == [0]
    worker.last_read[0] = now
    assert asyncio.run(worker.idle_sources({0, 1}, now)) == []
    assert len(consumer.asked) == 1


def test_a_source_processed_to_the_log_end_is_idle_and_one_behind_it_is_not(
    worker: Worker,
) -> None:
    topic = worker.settings.topics.clickstream
    worker.app.consumer = _Consumer(log_end=700)  # type: ignore[assignment]
    now = quiet(worker, 0, 1)
    metrics.note_processed(
        [RawMessage(None, b"", topic, 0, 699), RawMessage(None, b"", topic, 1, 698)]
    )
    try:
        assert asyncio.run(worker.idle_sources({0, 1}, now)) == [0]
    finally:
        metrics.forget_processed({(topic, 0), (topic, 1)})


def test_a_broker_too_slow_to_answer_leaves_every_source_holding_time_back(
    worker: Worker,
) -> None:
    """The question is asked in the worker's turn: it is bounded (the wait is given up long
    before the broker's minute-late answer; no speed is asserted), and no answer is no idle."""
    worker.app.consumer = _Consumer(log_end=0, answer_after_s=60.0)  # type: ignore[assignment]
    now = quiet(worker, 0, 1)
    started = time.monotonic()
    assert asyncio.run(worker.idle_sources({0, 1}, now)) == []
    assert time.monotonic() - started < 30.0
