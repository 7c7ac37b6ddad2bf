"""``stream.publish`` without a broker: grouping into aiokafka record batches, partitions, order.

The batches are aiokafka's own ``BatchBuilder`` (no broker needed to fill one), read back with
its record parser, so the test sees the bytes Kafka would get. The Kafka tier runs the same
publisher inside the worker against a real broker (``test_worker_kafka.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import pytest
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch

from stream.publish import OutRecord, RecordBatchPublisher, TopicPublisher, partition_of


class FakeProducer:
    """Real record batches, delivery futures resolved at once; remembers what was submitted."""

    def __init__(self, partitions: dict[str, int], batch_bytes: int = 16_384) -> None:
        self.partitions = partitions
        self.batch_bytes = batch_bytes
        self.submitted: list[tuple[str, int, list[tuple[bytes | None, bytes, Any]]]] = []
        self.metadata_calls = 0

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(self.batch_bytes, 0, is_transactional=False)

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Awaitable[Any]:
        records = [
            (r.key, r.value, list(r.headers)) for r in DefaultRecordBatch(bytes(batch._build()))
        ]
        self.submitted.append((topic, partition, records))
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def partitions_for(self, topic: str) -> set[int]:
        self.metadata_calls += 1
        return set(range(self.partitions.get(topic, 0)))


def publish(producer: FakeProducer, records: list[OutRecord], times: int = 1) -> None:
    publisher = RecordBatchPublisher(producer, partition_of)

    async def run() -> None:
        for _ in range(times):
            await publisher.publish(records)

    asyncio.run(run())


def test_keyed_records_land_on_the_default_partitioners_partition_in_order() -> None:
    producer = FakeProducer({"demand": 4, "churn": 6})
    records = [
        OutRecord(topic, f"user-{i % 37}".encode(), f"{topic}-{i}".encode())
        for i in range(500)
        for topic in ("demand", "churn")
    ]
    publish(producer, records)

    seen: dict[str, list[bytes]] = {"demand": [], "churn": []}
    for topic, partition, batch in producer.submitted:
        for key, value, _ in batch:
            assert key is not None
            assert partition == partition_of(key, producer.partitions[topic])
            seen[topic].append(value)
    for topic in seen:
        sent = [r.value for r in records if r.topic == topic]
        assert sorted(seen[topic]) == sorted(sent)
        # Kafka orders within a partition; so must we (one user's signals stay in order).
        for p in range(producer.partitions[topic]):
            on_p = [v for t, q, b in producer.submitted if t == topic and q == p for _, v, _ in b]
            assert on_p == [
                r.value
                for r in records
                if r.topic == topic and partition_of(r.key or b"", producer.partitions[topic]) == p
            ]


def test_a_full_batch_is_submitted_and_the_rest_goes_into_a_new_one() -> None:
    producer = FakeProducer({"demand": 1}, batch_bytes=1_000)
    records = [OutRecord("demand", b"u", b"x" * 300) for _ in range(10)]
    publish(producer, records)
    assert len(producer.submitted) > 1
    assert sum(len(batch) for _, _, batch in producer.submitted) == 10


def test_a_record_larger_than_a_batch_still_goes_alone() -> None:
    producer = FakeProducer({"dlq": 1}, batch_bytes=100)
    publish(producer, [OutRecord("dlq", None, b"y" * 5_000), OutRecord("dlq", None, b"z")])
    assert [len(batch) for _, _, batch in producer.submitted] == [1, 1]


def test_unkeyed_records_are_spread_and_headers_kept() -> None:
    producer = FakeProducer({"dlq": 3, "routed": 2})
    records = [OutRecord("dlq", None, str(i).encode()) for i in range(9)]
    records.append(OutRecord("routed", b"u1", b"e", (("clicksignals-origin", b"2:17"),)))
    publish(producer, records)
    per_partition = {p: len(b) for t, p, b in producer.submitted if t == "dlq"}
    assert per_partition == {0: 3, 1: 3, 2: 3}
    (routed,) = [b for t, _, b in producer.submitted if t == "routed"]
    assert routed == [(b"u1", b"e", [("clicksignals-origin", b"2:17")])]


def test_partition_counts_are_asked_once_per_topic() -> None:
    producer = FakeProducer({"demand": 4})
    publish(producer, [OutRecord("demand", b"u", b"v")], times=5)
    assert producer.metadata_calls == 1


def test_a_topic_missing_from_the_metadata_is_an_error_that_names_it() -> None:
    producer = FakeProducer({})
    with pytest.raises(RuntimeError, match="'nowhere' has no partitions"):
        publish(producer, [OutRecord("nowhere", b"u", b"v")])


def test_the_topic_publisher_sends_each_record_through_faust_and_waits() -> None:
    sent: list[dict[str, Any]] = []

    class Topic:
        async def send(self, **kwargs: Any) -> Awaitable[None]:
            sent.append(kwargs)
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done

    publisher = TopicPublisher({"a": Topic(), "b": Topic()})
    records = [OutRecord("a", b"k", b"1"), OutRecord("b", None, b"2", (("h", b"x"),))]
    asyncio.run(publisher.publish(records))
    assert sent == [
        {"key": b"k", "value": b"1"},
        {"key": None, "value": b"2", "headers": [("h", b"x")]},
    ]
