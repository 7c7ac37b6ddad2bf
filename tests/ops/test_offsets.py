"""``ops.offsets`` on the real broker: a consumer group's lag is what it has not committed."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ops.offsets import OffsetReader, totals
from settings import Settings
from tests.conftest import run_sync, unique_name


async def _scenario(
    settings: Settings, topic: str, group: str
) -> tuple[int, int, int, dict[str, int]]:
    producer = AIOKafkaProducer(**settings.kafka.client_kwargs())
    await producer.start()
    try:
        for i in range(12):
            await producer.send_and_wait(topic, f"click-{i}".encode(), partition=i % 3)
    finally:
        await producer.stop()
    async with OffsetReader(settings) as offsets:
        before = await offsets.lag(group, topic)  # the group has never committed
        consumer = AIOKafkaConsumer(
            **settings.kafka.client_kwargs(), group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic, p) for p in range(3)])
            # Partition 0 done, partition 1 half done, partition 2 untouched.
            await consumer.commit({TopicPartition(topic, 0): 4, TopicPartition(topic, 1): 2})
        finally:
            await consumer.stop()
        after = await offsets.lag(group, topic)
        missing = await offsets.lag(group, unique_name("never-created"))
        ends = totals(await offsets.ends([topic]))
    return before, after, missing, ends


@pytest.mark.kafka
def test_a_groups_lag_is_the_records_it_has_not_committed_on_every_partition(
    kafka_settings: Settings, make_topic: Callable[..., str]
) -> None:
    topic = make_topic("lag", 3)
    before, after, missing, ends = run_sync(_scenario(kafka_settings, topic, unique_name("g")))
    assert ends == {topic: 12}
    assert before == 12  # nothing committed counts from the start
    assert after == 12 - 4 - 2
    assert missing == 0  # no such topic: nothing to consume
