"""Where consumer groups stand: topic end offsets, a group's committed offsets, its lag.

Owns the broker reads that answer "has every process consumed everything?": the demo asks it
before it calls a run done (a subscriber that emits little, like the alerter, can be far
behind while every output topic is idle), and the Kafka test tiers ask it before they compare
counts. One :class:`OffsetReader` holds one consumer (end offsets) and one admin client
(committed offsets) for as many questions as the caller has.

Lag is the sum over the topic's partitions of ``end - committed`` (a partition the group never
committed counts from 0), so it is exact once the group commits and the topic is quiet; Faust
commits every ``broker_commit_interval`` (2.8 s by default), so a caught-up group reads 0 a
few seconds after its last record.
"""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import Iterable, Mapping
from typing import Final, Self

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from settings import Settings

COORDINATOR_WAIT_S: Final = 30.0
"""How long a committed-offsets read retries while the group's coordinator is not there yet:
a new broker creates ``__consumer_offsets`` on the first group request, which takes seconds."""


async def partition_ends(
    consumer: AIOKafkaConsumer, topics: Iterable[str]
) -> dict[TopicPartition, int]:
    """Every partition of ``topics`` -> its end offset, read with a started ``consumer`` (a
    topic not there has none)."""
    parts: list[TopicPartition] = []
    for topic in topics:
        known = consumer.partitions_for_topic(topic)
        if known is None:
            # Metadata is fetched for subscribed topics only; ask for this one.
            await consumer._client.force_metadata_update()
            known = consumer.partitions_for_topic(topic) or set()
        parts += [TopicPartition(topic, p) for p in sorted(known)]
    if not parts:
        return {}
    ends: dict[TopicPartition, int] = await consumer.end_offsets(parts)
    return ends


class OffsetReader:
    """End and committed offsets from one broker connection pair (``async with``)."""

    def __init__(self, settings: Settings) -> None:
        kwargs = settings.kafka.client_kwargs()
        self._consumer = AIOKafkaConsumer(**kwargs, enable_auto_commit=False, group_id=None)
        self._admin = AIOKafkaAdminClient(**kwargs)

    async def __aenter__(self) -> Self:
        await self._consumer.start()
        try:
            await self._admin.start()
        except BaseException:
            await self._consumer.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        try:
            await self._admin.close()
        finally:
            await self._consumer.stop()

    async def ends(self, topics: Iterable[str]) -> dict[TopicPartition, int]:
        """Every partition of ``topics`` -> its end offset (a topic not there has none)."""
        return await partition_ends(self._consumer, topics)

    async def committed(self, group: str, topics: Iterable[str]) -> dict[TopicPartition, int]:
        """The group's committed offset per partition of ``topics`` it has committed on."""
        wanted = set(topics)
        deadline = time.monotonic() + COORDINATOR_WAIT_S
        while True:
            try:
                offsets = await self._admin.list_consumer_group_offsets(group)
                break
            except KafkaError as exc:
                # Coordinator not available / loading: retriable, and usual on a new broker.
                if not exc.retriable or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        return {tp: max(meta.offset, 0) for tp, meta in offsets.items() if tp.topic in wanted}

    async def lag(self, group: str, topic: str) -> int:
        """Records of ``topic`` the group has not committed yet (see the module doc)."""
        ends = await self.ends([topic])
        done = await self.committed(group, [topic])
        return sum(max(end - done.get(tp, 0), 0) for tp, end in ends.items())

    async def lags(self, groups: Mapping[str, tuple[str, str]]) -> dict[str, int]:
        """``name -> (group, topic)`` to ``name -> lag``."""
        return {name: await self.lag(group, topic) for name, (group, topic) in groups.items()}


def totals(offsets: Mapping[TopicPartition, int]) -> dict[str, int]:
    """Per-partition offsets summed per topic."""
    out: dict[str, int] = {}
    for tp, offset in offsets.items():
        out[tp.topic] = out.get(tp.topic, 0) + offset
    return out


__all__ = ["OffsetReader", "partition_ends", "totals"]
