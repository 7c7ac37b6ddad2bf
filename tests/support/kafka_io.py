"""Kafka I/O for the Kafka-tier tests: records as read back, producing in order, reading a
topic to its end, a group's committed offsets. Shared by the worker and subscriber harnesses
(end offsets and lag come from :mod:`ops.offsets`, as the demo reads them)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ops.offsets import OffsetReader, partition_ends, totals
from settings import Settings


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()

    def json(self) -> Any:
        return orjson.loads(self.value)


async def produce(
    settings: Settings, topic: str, records: Sequence[tuple[bytes | None, bytes]]
) -> list[tuple[int, int]]:
    """Send ``records`` in order; returns each record's (partition, offset)."""
    producer = AIOKafkaProducer(
        **settings.kafka.client_kwargs(),
        linger_ms=20,
        max_batch_size=256 * 1024,
        acks="all",
        enable_idempotence=True,
        max_request_size=2 * 1024 * 1024,
    )
    await producer.start()
    try:
        futures = []
        coordinates: list[tuple[int, int]] = []
        for key, value in records:
            futures.append(await producer.send(topic, value, key=key))
            if len(futures) >= 5000:
                coordinates += [(m.partition, m.offset) for m in await asyncio.gather(*futures)]
                futures.clear()
        coordinates += [(m.partition, m.offset) for m in await asyncio.gather(*futures)]
    finally:
        await producer.stop()
    return coordinates


async def end_offsets(settings: Settings, topics: Iterable[str]) -> dict[TopicPartition, int]:
    async with OffsetReader(settings) as offsets:
        return await offsets.ends(topics)


async def read_topic(settings: Settings, topic: str, timeout_s: float = 120.0) -> list[Record]:
    """Every record of ``topic`` up to its end offsets at the time of the call."""
    consumer = AIOKafkaConsumer(
        **settings.kafka.client_kwargs(),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    out: list[Record] = []
    try:
        ends = {tp: end for tp, end in (await partition_ends(consumer, [topic])).items() if end > 0}
        if not ends:
            return out
        consumer.assign(list(ends))
        await consumer.seek_to_beginning(*ends)
        deadline = time.monotonic() + timeout_s
        remaining = set(ends)
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: {len(out)} records after {timeout_s} s")
            batch = await consumer.getmany(*remaining, timeout_ms=1000, max_records=10_000)
            for tp, messages in batch.items():
                for m in messages:
                    if m.offset < ends[tp]:
                        headers = tuple(m.headers or ())
                        out.append(Record(tp.partition, m.offset, m.key, m.value, headers))
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return out


async def committed(settings: Settings, group: str, topics: Iterable[str]) -> dict[str, int]:
    """Sum of the group's committed offsets per topic (0 for nothing committed)."""
    wanted = list(topics)
    async with OffsetReader(settings) as offsets:
        done = totals(await offsets.committed(group, wanted))
    return {t: done.get(t, 0) for t in wanted}


async def lag(settings: Settings, group: str, topic: str) -> int:
    """Records of ``topic`` the group has not committed (:meth:`OffsetReader.lag`)."""
    async with OffsetReader(settings) as offsets:
        return await offsets.lag(group, topic)


__all__ = ["Record", "committed", "end_offsets", "lag", "produce", "read_topic"]
