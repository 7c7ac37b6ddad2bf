"""Publishing one micro-batch's output records to Kafka, and waiting until Kafka has them.

Owns how records leave the worker. The agent hands over a list of :class:`OutRecord` per
micro-batch and awaits :meth:`Publisher.publish`, which returns once every record is
acknowledged (the worker stores state only after that; see :mod:`stream.app`).

Two implementations of one contract:

* :class:`RecordBatchPublisher` -- the production path. It groups the records by topic and
  partition and appends them to aiokafka record batches (``create_batch`` / ``send_batch``),
  one delivery future per batch instead of one per record. Faust's ``Topic.send`` costs a
  channel hop, a ``FutureMessage``, callbacks and an accumulator future *per record*: about a
  third of the worker's busy time when every event yields ~1.6 signals (bench/profile.md).
  Keyed records go to the partition Kafka's default partitioner gives the key (murmur2, as
  Java and aiokafka do), so downstream tables stay co-partitioned; unkeyed ones (dead
  letters) are spread round-robin. :func:`partition_of` is that partitioner; the processor
  routes users by it too, so the re-keying and the outputs agree with Kafka.
* :class:`TopicPublisher` -- Faust's own per-record ``Topic.send``. Used when the app's
  producer is not a started aiokafka producer (Faust's ``test_context()``, which records
  sends on the topics).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka.partitioner import murmur2

Headers = Sequence[tuple[str, bytes]]


@functools.lru_cache(maxsize=1 << 20)
def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java and aiokafka alike) gives ``key``.

    Cached: murmur2 in pure Python costs more per event than the lookup, and the same users
    recur batch after batch (the processor per event, the publisher per signal).
    """
    return int((murmur2(key) & 0x7FFFFFFF) % partitions)


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One record to produce: topic name, key, value, headers, and where it goes: ``partition``
    if given (a table's changelog: the source partition), else the key's default partition,
    else (no key) any partition."""

    topic: str
    key: bytes | None
    value: bytes
    headers: Headers = ()
    partition: int | None = None


@dataclass(frozen=True, slots=True)
class SubmittedBatch:
    """One record batch handed to the producer: ``count`` records from ``future``'s base offset
    on (the future resolves to aiokafka's ``RecordMetadata`` of the batch)."""

    topic: str
    partition: int
    count: int
    future: Awaitable[Any]


class Publisher(Protocol):
    async def publish(self, records: Sequence[OutRecord]) -> None:
        """Produce ``records`` and return once Kafka acknowledged every one of them."""
        ...


class TopicPublisher:
    """Per-record ``Topic.send`` through Faust (the test and fallback path)."""

    def __init__(self, topics: Mapping[str, Any]) -> None:
        self.topics = dict(topics)

    async def publish(self, records: Sequence[OutRecord]) -> None:
        pending: list[Any] = []
        for record in records:
            topic = self.topics[record.topic]
            kwargs: dict[str, Any] = {"key": record.key, "value": record.value}
            if record.headers:
                kwargs["headers"] = list(record.headers)
            if record.partition is not None:
                kwargs["partition"] = record.partition
            pending.append(await topic.send(**kwargs))
        await asyncio.gather(*(f for f in pending if inspect.isawaitable(f)))


class BatchProducer(Protocol):
    """What :class:`RecordBatchPublisher` needs of ``aiokafka.AIOKafkaProducer``."""

    def create_batch(self) -> Any: ...

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Awaitable[Any]: ...

    async def partitions_for(self, topic: str) -> set[int]: ...


class RecordBatchPublisher:
    """Groups records by (topic, partition) into record batches, one future per batch."""

    def __init__(self, producer: BatchProducer, partitioner: Callable[[bytes, int], int]) -> None:
        self.producer = producer
        self.partitioner = partitioner
        self._partitions: dict[str, int] = {}
        self._round_robin: dict[str, itertools.cycle[int]] = {}

    async def _partition_count(self, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            found = await self.producer.partitions_for(topic)
            if not found:
                raise RuntimeError(f"topic {topic!r} has no partitions in the broker's metadata")
            count = self._partitions[topic] = len(found)
            self._round_robin[topic] = itertools.cycle(range(count))
        return count

    def _partition(self, topic: str, count: int, key: bytes | None) -> int:
        if key is None:
            return next(self._round_robin[topic])
        return self.partitioner(key, count)

    async def submit(self, records: Sequence[OutRecord]) -> list[SubmittedBatch]:
        """Hand ``records`` to the producer as record batches; returns them, not yet delivered.

        Order is kept within each (topic, partition), as Kafka keeps it.
        """
        counts = {
            topic: await self._partition_count(topic)
            for topic in {r.topic for r in records if r.partition is None}
        }
        grouped: dict[tuple[str, int], list[OutRecord]] = {}
        for record in records:
            p = record.partition
            if p is None:
                p = self._partition(record.topic, counts[record.topic], record.key)
            grouped.setdefault((record.topic, p), []).append(record)
        submitted: list[SubmittedBatch] = []
        for (topic, partition), group in grouped.items():
            batch, n = self.producer.create_batch(), 0
            for record in group:
                if _append(batch, record):
                    n += 1
                    continue
                # Full: submit it and carry on in a fresh one (the first append always fits).
                future = await self.producer.send_batch(batch, topic, partition=partition)
                submitted.append(SubmittedBatch(topic, partition, n, future))
                batch, n = self.producer.create_batch(), 0
                if not _append(batch, record):
                    raise RuntimeError(f"a record for {topic} does not fit an empty record batch")
                n += 1
            future = await self.producer.send_batch(batch, topic, partition=partition)
            submitted.append(SubmittedBatch(topic, partition, n, future))
        return submitted

    async def publish(self, records: Sequence[OutRecord]) -> None:
        await asyncio.gather(*(b.future for b in await self.submit(records)))


def _append(batch: Any, record: OutRecord) -> bool:
    metadata = batch.append(
        key=record.key, value=record.value, timestamp=None, headers=list(record.headers)
    )
    return metadata is not None


class AIOKafkaBatchProducer:
    """Adapts a started ``aiokafka.AIOKafkaProducer`` to :class:`BatchProducer`."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer

    def create_batch(self) -> Any:
        return self._producer.create_batch()

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Awaitable[Any]:
        future: Awaitable[Any] = await self._producer.send_batch(batch, topic, partition=partition)
        return future

    async def partitions_for(self, topic: str) -> set[int]:
        found: set[int] = await self._producer.partitions_for(topic)
        return found


def record_batch_publisher(producer: Any) -> RecordBatchPublisher:
    """The production publisher on a started aiokafka producer."""
    return RecordBatchPublisher(AIOKafkaBatchProducer(producer), partition_of)
