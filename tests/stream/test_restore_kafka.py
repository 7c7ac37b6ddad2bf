"""Restoring the user-state table from its changelog: the bulk path gives Faust's own.

With bulk consumption on, the worker applies the user-state changelog a fetched list at a
time (``stream.faust_runtime.BulkConsumer._restore``) instead of Faust's recovery loop, one
event per record. Here one changelog, written as a worker writes it, with what a compacted
log still holds before compaction (a user written several times, users deleted by a
tombstone), is restored by a worker on Faust's path and by one on the bulk path, each into an
empty memory store; both must show every user as the last record left them, and no deleted
user.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from ops import kafka_local
from serving.scorer import load_model
from settings import Settings
from stream.processor import DictStore, clock_key, is_internal_key
from stream.publish import partition_of
from tests.stream.test_worker_kafka import WorkerFactory
from tests.support.processor import PARTITIONS, make_processor, messages, run, synthetic
from tests.support.worker_harness import MODEL_DIR, report, run_sync, worker_settings


def _states() -> dict[str, bytes]:
    """Real user states and partition clocks: a processor's table after 60 users' 30 weeks."""
    store = DictStore()
    run(make_processor(load_model(MODEL_DIR), store), store, messages(synthetic(seed=7)), 64)
    return store.data


async def _write(settings: Settings, records: list[tuple[str, bytes | None]]) -> None:
    """As the worker's table writes them: a JSON str key, the raw value (None: a tombstone),
    on the partition of the user (a clock on its own partition)."""
    topic = f"{settings.worker.app_id}-user-state-changelog"
    await kafka_local.ensure_topics(settings, {topic: settings.topics.partitions})
    producer = AIOKafkaProducer(**settings.kafka.client_kwargs(), acks="all")
    await producer.start()
    try:
        for key, value in records:
            part = _partition(key)
            await producer.send_and_wait(topic, value, key=orjson.dumps(key), partition=part)
    finally:
        await producer.stop()


CLOCKS = {clock_key(p, PARTITIONS): p for p in range(PARTITIONS)}


def _partition(key: str) -> int:
    return CLOCKS[key] if is_internal_key(key) else partition_of(key.encode(), PARTITIONS)


def _views(worker: Any, users: list[str]) -> dict[str, Any]:
    out = {}
    for user in users:
        status, body = worker.get_json(f"/users/{user}")
        out[user] = body if status == 200 else status
    return out


@pytest.mark.kafka
def test_a_changelog_restored_in_bulk_gives_the_store_faust_s_own_restore_gives(
    isolated_kafka_settings: Settings, worker_factory: WorkerFactory, tmp_path: Path
) -> None:
    assert isolated_kafka_settings.topics.partitions == PARTITIONS
    states = _states()
    users = sorted(k for k in states if not is_internal_key(k))
    assert len(users) == 60
    clocks = {k: v for k, v in states.items() if is_internal_key(k)}
    assert set(clocks) == set(CLOCKS)
    stale = states[users[-1]]
    records: list[tuple[str, bytes | None]] = []
    # Older values first (the same key written again later), users later deleted, then the
    # table as it stands.
    records += [(user, stale) for user in users[:20]]
    records += [(f"gone-{i}", stale) for i in range(10)]
    records += [(f"gone-{i}", None) for i in range(10)]
    records += [(user, states[user]) for user in users]
    records += list(clocks.items())
    run_sync(_write(isolated_kafka_settings, records))

    gone = [f"gone-{i}" for i in range(10)]
    views: dict[bool, dict[str, Any]] = {}
    clocks_seen: dict[bool, Any] = {}
    for bulk in (False, True):
        settings = worker_settings(
            isolated_kafka_settings, tmp_path / f"bulk-{bulk}", bulk_consumption=bulk
        )
        worker = worker_factory(settings, f"restore-bulk-{bulk}").start()
        seconds = worker.wait_ready()
        views[bulk] = _views(worker, users + gone)
        clocks_seen[bulk] = worker.get_json("/clocks")[1]
        worker.stop()
        report(f"restore, bulk {bulk}: {len(records)} changelog records, ready in {seconds:.1f} s")

    expected_store = DictStore()
    expected_store.data = dict(states)
    expected = make_processor(load_model(MODEL_DIR), expected_store)
    want = {user: expected.user_view(user) for user in users}
    assert {u: views[False][u] for u in users} == want  # Faust's own restore: the table
    assert views[True] == views[False]
    assert all(views[True][g] == 404 for g in gone)
    # The clocks as restored: what the changelog holds. A view's watermark and sources are
    # live state, filled by the worker's first announcement (every watermark_interval_s)
    # after start, so whether a view shows them depends on when it was read (one CI run read
    # the bulk worker's after its first tick, Faust's before).
    restored = ("max_event_ms", "closed_through", "closing")

    def as_restored(view: dict[Any, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {str(p): {k: c[k] for k in restored} for p, c in view.items()}

    want_clocks = as_restored(expected.clocks_view(range(PARTITIONS)))
    assert len(want_clocks) == PARTITIONS
    assert as_restored(clocks_seen[False]) == want_clocks
    assert as_restored(clocks_seen[True]) == want_clocks
