"""The Faust agent without a broker: ``score_clickstream`` under Faust's ``test_context``.

One level above ``test_processor.py``: raw messages go in through ``agent.put()`` (Faust's own
unit-testing wrapper, in-memory channel, ``memory://`` table store) and we look at what the
agent *sends* -- the topics' ``send`` is replaced by a recorder -- and at what it writes to the
``user-state`` table and its changelog.

Each test builds its own worker with :func:`stream.worker.create_worker` after setting
``CLICKSIGNALS_*`` (see :func:`load_app`).

Notes on ``test_context`` that shape these tests:

* ``put(wait=True)`` returns once Faust has *seen* the value, not after the agent handled it:
  the agent batches with ``take_events`` and handles a batch only when it is full or the batch
  timeout passes. :meth:`Worker.settle` therefore waits until ``metrics.observe_batch`` (the
  agent's last step per batch) has accounted for every message put.
* ``put()`` names the message's topic after the agent's topic only when that has a single
  name; ours subscribes to two (clickstream + routed), so Faust says ``"<internal>"``.
  :meth:`Worker.put` points the wrapper's ``original_channel`` at the topic the message
  should come from, so dead letters and routing see real topic names.
* ``put(partition=p)`` sets the message's partition and offsets count up per put (across
  partitions): enough to deliver a message on the "wrong" partition.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from stream.publish import partition_of
from stream.worker import Worker as StreamWorker
from tests.support.agent import (
    WEEK,
    click,
    iso,
    ms,
    user_of_partition,
)

# --- the app module, imported under test settings --------------------------------------------


# --- the agent under test_context, with its outputs recorded ---------------------------------


# --- tests -------------------------------------------------------------------------------------


def test_a_stray_message_is_resent_keyed_by_user_and_folded_where_it_belongs(
    load_app: Callable[..., StreamWorker], run_worker: Any
) -> None:
    # Two messages per batch, flushed as soon as both are in: each batch mixes partitions.
    app = load_app(PARTITIONS="2", BATCH_SIZE="2", BATCH_TIMEOUT_S="5")
    home, away = user_of_partition(0, 2), user_of_partition(1, 2)
    stray = click(away, "2011-03-01T10:00:00Z")

    async def scenario() -> None:
        async with run_worker(app) as worker:
            # The producer did not key `away`'s event: it landed on partition 0.
            await worker.put(stray, key=None, partition=0)
            await worker.put(click(home, "2011-03-01T11:00:00Z"), key=home.encode(), partition=0)
            await worker.settle()
            assert worker.sent(app.settings.topics.routed) == [(away.encode(), stray)]
            assert away not in app.user_state
            assert [s["user_id"] for s in worker.decoded(app.settings.topics.demand)] == [home]

            # The routed copy comes back on the user's partition and is folded there. The
            # batch's last event is of partition 0, so only the TableStore's per-partition
            # current event files `away`'s state under partition 1.
            await worker.put(stray, key=away.encode(), partition=1, topic=app.routed)
            await worker.put(click(home, "2011-03-02T11:00:00Z"), key=home.encode(), partition=0)
            await worker.settle()
            assert len(worker.sent(app.settings.topics.routed)) == 1
            assert {s["user_id"] for s in worker.decoded(app.settings.topics.demand)} == {
                home,
                away,
            }
            assert app.processor().user_view(away) is not None
            assert away in app.user_state and home in app.user_state
            assert worker.changelog, "no table writes"
            for partition, key in worker.changelog:
                assert partition == partition_of(key.encode(), 2), (partition, key)
            assert {key for _, key in worker.changelog} >= {home, away}

    asyncio.run(scenario())


def test_a_stray_on_the_routed_topic_stops_the_agent(
    load_app: Callable[..., StreamWorker], run_worker: Any
) -> None:
    """The routed topic with another partition count than settings: refuse, don't corrupt."""
    app = load_app(PARTITIONS="2")
    away = user_of_partition(1, 2)

    async def scenario() -> None:
        async with run_worker(app) as worker:
            await worker.put(click(away, "2011-03-01T10:00:00Z"), key=b"x", topic=app.routed)
            with pytest.raises(RuntimeError, match="partition counts do not match"):
                await worker.settle()
            assert not worker.sent(app.settings.topics.routed)
            assert away not in app.user_state

    asyncio.run(scenario())


def test_each_invalid_message_is_one_dead_letter_with_reason_and_source(
    load_app: Callable[..., StreamWorker], run_worker: Any
) -> None:
    app = load_app(MAX_EVENT_BYTES="1024")
    good = {"event_time": "2011-03-01T10:00:00Z", "event_type": "view", "user_id": "u1"}
    invalid = [
        (b"\xff\xfe", "not_utf8"),
        (b"{not json", "not_json"),
        (b"[1,2]", "not_object"),
        (orjson.dumps({**good, "user_id": None}), "missing_field"),
        (orjson.dumps({**good, "user_id": ["u1"]}), "wrong_type"),
        (orjson.dumps({**good, "event_type": "teleport"}), "unknown_event_type"),
        (orjson.dumps({**good, "price": -1}), "bad_value"),
        (orjson.dumps({**good, "event_time": "1970-01-02T00:00:00Z"}), "time_too_old"),
        (orjson.dumps({**good, "event_time": "2999-01-01T00:00:00Z"}), "time_in_future"),
        (orjson.dumps({**good, "pad": "x" * 2000}), "too_large"),
    ]
    dlq = app.settings.topics.dead_letter

    async def scenario() -> None:
        async with run_worker(app) as worker:
            offsets = [await worker.put(raw, key=b"u1") for raw, _ in invalid]
            await worker.put(orjson.dumps(good), key=b"u1")
            await worker.settle()
            letters = worker.decoded(dlq)
            assert [d["reason"] for d in letters] == [reason for _, reason in invalid]
            assert [d["offset"] for d in letters] == offsets == list(range(len(invalid)))
            assert {d["source_topic"] for d in letters} == {app.settings.topics.clickstream}
            assert {d["partition"] for d in letters} == {0}
            assert all(d["detail"] for d in letters)
            assert [base64.b64decode(d["raw_b64"]) for d in letters] == [raw for raw, _ in invalid]
            assert [d["raw_size"] for d in letters] == [len(raw) for raw, _ in invalid]
            assert {key for key, _ in worker.sent(dlq)} == {None}
            assert "u1" in app.user_state  # the valid message of the same batch was folded

            # Two weeks on, the window of 2011-03-01 has closed: an event for it is late.
            await worker.put(click("u1", "2011-03-20T10:00:00Z"), key=b"u1")
            late = await worker.put(click("u1", "2011-03-01T11:00:00Z"), key=b"u1")
            await worker.settle()
            letters = worker.decoded(dlq)
            assert len(letters) == len(invalid) + 1
            assert (letters[-1]["reason"], letters[-1]["offset"]) == ("late", late)

    asyncio.run(scenario())


def test_the_watermark_closes_windows_on_the_demand_and_churn_topics(
    load_app: Callable[..., StreamWorker], run_worker: Any
) -> None:
    app = load_app(ALLOWED_LATENESS_S="3600")
    demand, churn = app.settings.topics.demand, app.settings.topics.churn
    # Windows are weeks ending Monday 00:00 UTC (the model's grid).
    days = ["2011-03-01T10:00", "2011-03-09T10:00", "2011-03-16T10:00", "2011-03-23T10:00"]

    async def scenario() -> None:
        async with run_worker(app) as worker:
            for day in days:
                await worker.put(click("u1", day + ":00Z", "purchase", price=3.0), key=b"u1")
            # 30 minutes into the next week: the week to 03-28 closes, within the hour of
            # allowed lateness the one to 04-04 does not.
            await worker.put(click("u1", "2011-04-04T00:30:00Z"), key=b"u1")
            await worker.settle()
            ends = ["2011-03-07T00:00", "2011-03-14T00:00", "2011-03-21T00:00", "2011-03-28T00:00"]
            assert [iso(t) for t in worker.closes(demand, "u1")] == ends
            assert [iso(t) for t in worker.closes(churn, "u1")] == ends

            # An hour after the boundary the watermark passes it: the (quiet) week closes.
            await worker.put(click("u1", "2011-04-04T01:00:00Z"), key=b"u1")
            await worker.settle()
            ends.append("2011-04-04T00:00")
            assert [iso(t) for t in worker.closes(demand, "u1")] == ends
            assert [iso(t) for t in worker.closes(churn, "u1")] == ends

            churn_signals = [s for s in worker.decoded(churn) if s["trigger"] == "window_close"]
            assert {key for key, _ in worker.sent(demand)} == {b"u1"}
            assert {key for key, _ in worker.sent(churn)} == {b"u1"}
            assert all(0.0 <= s["churn_probability"] <= 1.0 for s in churn_signals)
            version = app.processor().scorer.version
            assert {s["model_version"] for s in worker.decoded(demand)} == {version}
            assert not worker.sent(app.settings.topics.dead_letter)

    asyncio.run(scenario())


def test_a_quiet_buyer_is_scored_past_the_lookback_and_a_quiet_viewer_stops_at_it(
    load_app: Callable[..., StreamWorker], run_worker: Any
) -> None:
    """The close population (features.windows.close_population) through the real agent and
    settings: with CLICKSIGNALS_DORMANT_CHURN_FLOOR=1.0 no churn reaches the floor, so the
    customer who bought once is scored at every close; the user who only viewed is scored
    until the lookback passes and never after."""
    app = load_app(DORMANT_CHURN_FLOOR="1.0")
    assert app.processor().dormant_churn_floor == 1.0
    demand, churn = app.settings.topics.demand, app.settings.topics.churn
    start = ms("2011-01-03T00:00:00Z")  # a Monday: a window boundary
    # Enough weeks for the lookback to pass, whatever the shipped model's is.
    weeks = app.processor().spec.lookback + 8

    async def scenario() -> None:
        async with run_worker(app) as worker:
            # "quiet" buys once, "viewer" views once; "busy" (same partition: there is one)
            # keeps event time moving.
            await worker.put(click("quiet", start + 3_600_000, "purchase", price=9.0), key=b"quiet")
            await worker.put(click("viewer", start + 3_700_000), key=b"viewer")
            for w in range(weeks):
                await worker.put(click("busy", start + w * WEEK + 7_200_000), key=b"busy")
            await worker.settle()

            lookback = app.processor().spec.lookback
            # Every close busy's event time reached: the week it bought, then each silent week.
            every = [start + (k + 1) * WEEK for k in range(weeks - 1)]
            assert worker.closes(demand, "quiet") == every
            assert worker.closes(churn, "quiet") == every
            assert len(every) > lookback + 2  # well past the lookback
            # The week it viewed, then lookback - 1 silent weeks; nothing after.
            assert worker.closes(demand, "viewer") == every[:lookback]
            assert worker.closes(churn, "viewer") == every[:lookback]

            risk = [
                s["churn_probability"]
                for s in worker.decoded(churn)
                if s["user_id"] == "quiet" and s["trigger"] == "window_close"
            ]
            assert risk[-1] > risk[0]  # going quiet is what churn risk must catch
            assert "viewer" in app.user_state  # out of the lookback, still in the table

    asyncio.run(scenario())


# --- the changelog as record batches (the path on a real producer) ---------------------------


def test_changelog_records_written_in_batches_decode_as_fausts_own_and_fill_the_store(
    load_app: Callable[..., StreamWorker],
) -> None:
    """``TableStore.write_in_batches`` must put on the changelog exactly what Faust's
    recovery reads back (its key serializer is json: a raw key would fail every restore) and
    set the store's persisted offset to each delivered batch's last record."""
    from stream.publish import SubmittedBatch

    app = load_app(PARTITIONS="2")
    topic = app.user_state.changelog_topic
    submitted: list[Any] = []
    persisted: dict[Any, int] = {}

    class Recorder:
        async def submit(self, records: list[Any]) -> list[SubmittedBatch]:
            submitted.extend(records)
            batches = []
            for p in sorted({r.partition for r in records}):
                done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                done.set_result(type("Metadata", (), {"offset": 100 * p})())
                n = sum(1 for r in records if r.partition == p)
                batches.append(SubmittedBatch(topic.get_topic_name(), p, n, done))
            return batches

    async def scenario() -> None:
        store = app.user_state.data
        store.set_persisted_offset = lambda tp, offset: persisted.__setitem__(tp, offset)
        writes = {0: {"u0": b"\x00state-0", "v0": b"x"}, 1: {"\x00clock/1": b"{}"}}
        await app.store.write_in_batches(writes, Recorder())
        await asyncio.sleep(0)  # the delivery callbacks
        for entries in writes.values():
            for key, value in entries.items():
                assert app.user_state.data[key] == value

    asyncio.run(scenario())
    decoded = [
        (
            r.partition,
            app.app.serializers.loads_key(topic.key_type, r.key, serializer=topic.key_serializer),
            app.app.serializers.loads_value(
                topic.value_type, r.value, serializer=topic.value_serializer
            ),
        )
        for r in submitted
    ]
    assert decoded == [(0, "u0", b"\x00state-0"), (0, "v0", b"x"), (1, "\x00clock/1", b"{}")]
    assert {r.topic for r in submitted} == {topic.get_topic_name()}
    assert {tp.partition: offset for tp, offset in persisted.items()} == {0: 1, 1: 100}


def test_writes_of_a_partition_without_an_event_in_hand_go_to_that_partition(
    load_app: Callable[..., StreamWorker],
) -> None:
    """A watermark announcement closes windows from the timer's task, where no event of the
    partition is current: Faust's store files a key under the current event's partition, so
    the table store stands one in for it (a RocksDB store would otherwise write another
    partition's database, or refuse)."""
    from faust.streams import _current_event

    app = load_app(PARTITIONS="3")
    app.store.events = {}
    for p in (2, 0, 1):
        app.store._focus(p)
        current = _current_event.get()
        assert current is not None and current().message.partition == p


def test_the_local_store_follows_the_changelog_record_batch_by_record_batch(
    load_app: Callable[..., StreamWorker],
) -> None:
    """A window close rewrites a partition's users and its clock in one micro-batch, past
    one record batch. A SIGKILL between the record batches must not leave a store that is
    ahead of the changelog (its clock would pass users a warm restart's replay puts back):
    each record batch reaches the store, with its persisted offset, only when delivered, and
    one that fails never does."""
    from stream.publish import SubmittedBatch

    app = load_app(PARTITIONS="2")
    topic = app.user_state.changelog_topic.get_topic_name()
    persisted: dict[Any, int] = {}

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        first, second, other = loop.create_future(), loop.create_future(), loop.create_future()

        class SplitPublisher:
            """Partition 0's three records cut into record batches of two and one."""

            async def submit(self, records: list[Any]) -> list[SubmittedBatch]:
                return [
                    SubmittedBatch(topic, 0, 2, first),
                    SubmittedBatch(topic, 0, 1, second),
                    SubmittedBatch(topic, 1, 1, other),
                ]

        store = app.user_state.data
        store.set_persisted_offset = lambda tp, offset: persisted.__setitem__(tp, offset)
        writes = {
            0: {"u0": b"state-0", "w0": b"state-1", "\x00clock/0": b"clock"},
            1: {"u1": b"state-2"},
        }
        await app.store.write_in_batches(writes, SplitPublisher())  # type: ignore[arg-type]
        await asyncio.sleep(0)
        assert not any(key in store for entries in writes.values() for key in entries)

        first.set_result(type("Metadata", (), {"offset": 40})())
        other.set_exception(RuntimeError("broker gone"))
        await asyncio.sleep(0)
        assert store["u0"] == b"state-0" and store["w0"] == b"state-1"
        assert "\x00clock/0" not in store, "the clock got ahead of its record batch"
        assert "u1" not in store, "a record batch that failed reached the store"
        assert {tp.partition: offset for tp, offset in persisted.items()} == {0: 41}

        second.set_result(type("Metadata", (), {"offset": 42})())
        await asyncio.sleep(0)
        assert store["\x00clock/0"] == b"clock"
        assert {tp.partition: offset for tp, offset in persisted.items()} == {0: 42}

    asyncio.run(scenario())


def test_a_write_not_yet_delivered_is_read_back_before_the_store_has_it(
    load_app: Callable[..., StreamWorker],
) -> None:
    """The processor lets go of users it no longer needs and reads them back from the store
    when an event of theirs comes; the next micro-batch starts as soon as the last one is
    sent, so that read can come before the last batch's changelog is delivered. It must get
    the last written state, not the one before it (nor an older one once a later micro-batch
    wrote the key again), and the store gets each value only on delivery."""
    from stream.publish import SubmittedBatch

    app = load_app(PARTITIONS="2")
    topic = app.user_state.changelog_topic.get_topic_name()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = []

        class OnePerPartition:
            async def submit(self, records: list[Any]) -> list[SubmittedBatch]:
                future = loop.create_future()
                futures.append(future)
                return [SubmittedBatch(topic, 0, len(records), future)]

        store = app.user_state.data
        store.set_persisted_offset = lambda tp, offset: None
        await app.store.write_in_batches({0: {"u0": b"v1"}}, OnePerPartition())  # type: ignore[arg-type]
        assert "u0" not in store and app.store.get("u0", 0) == b"v1"
        assert dict(app.store.items())["u0"] == b"v1"
        await app.store.write_in_batches({0: {"u0": b"v2"}}, OnePerPartition())  # type: ignore[arg-type]
        futures[0].set_result(type("Metadata", (), {"offset": 7})())
        await asyncio.sleep(0)
        assert store["u0"] == b"v1"  # delivered: stored, but a later write is still in flight
        assert app.store.get("u0", 0) == b"v2"
        futures[1].set_result(type("Metadata", (), {"offset": 8})())
        await asyncio.sleep(0)
        assert store["u0"] == b"v2" and app.store.get("u0", 0) == b"v2"
        assert app.store.unstored == {}

    asyncio.run(scenario())


def test_a_restore_scan_of_the_memory_table_survives_the_table_changing_under_it(
    load_app: Callable[..., Any],
) -> None:
    """The restore walks the table a slice at a time while standby replicas write the same
    store: the scan is of the table as it was when it began (plus the writes still in flight,
    which are newer), and a key added meanwhile breaks nothing."""
    app = load_app(PARTITIONS="2")
    store = app.user_state.data
    for i in range(5):
        store[f"u{i}"] = f"v{i}".encode()
    app.store.unstored["u1"] = b"newer"
    app.store.unstored["u9"] = b"in flight"
    scan = app.store.scan()
    assert next(scan) == ("u0", b"v0")
    store["standby-write"] = b"x"  # a dict iterator would raise here
    del store["u4"]
    assert dict(scan) == {"u1": b"newer", "u2": b"v2", "u3": b"v3", "u4": b"v4", "u9": b"in flight"}


def test_a_close_left_to_the_announcement_timer_is_finished_and_counted_by_it(
    load_app: Callable[..., StreamWorker], run_worker: Any
) -> None:
    """Three buyers of one partition, closes of one user a slice: the batch that passes the
    window end takes one slice, the timer's ``go_on_closing`` the other two. Every close goes
    out, /metrics counts the timer's signals too, and its gauge of closes in progress is 0
    once they are done (what the bench waits on before it counts the outputs)."""
    from stream import metrics

    app = load_app(ALLOWED_LATENESS_S="0", CLOSE_SLICE="1")
    demand = app.settings.topics.demand
    users = [user_of_partition(0, 2, prefix=f"buyer{i}") for i in range(3)]

    def signals() -> float:
        return sum(
            s.value
            for family in metrics.REGISTRY.collect()
            for s in family.samples
            if s.name == "clicksignals_signals_total" and s.labels.get("topic") == "demand"
        )

    async def scenario() -> None:
        async with run_worker(app) as worker:
            for u in users:
                event = click(u, "2011-03-01T10:00:00Z", "purchase", price=3.0)
                await worker.put(event, key=u.encode())
            await worker.settle()
            await worker.put(click(users[0], "2011-03-08T10:00:00Z"), key=users[0].encode())
            await worker.settle()

            def closed() -> list[str]:
                return [u for u in users for _ in worker.closes(demand, u)]

            assert len(closed()) == 1, "the batch took one slice of the close"
            assert app.processor().closes_pending()
            before = signals()
            # test_context has no consumer, so no assignment: the worker is told what it holds.
            app.held_partitions = lambda: {0}  # type: ignore[method-assign]
            await app.go_on_closing()
            assert not app.processor().closes_pending()
            assert sorted(closed()) == sorted(users)
            assert signals() - before == 2
            assert metrics.CLOSES_IN_PROGRESS._value.get() == 0

    asyncio.run(scenario())


# --- a batch's acknowledgements overlap the next batch (the bulk agent's path) ---------------


class _HeldProducer:
    """aiokafka's record batches; each delivery future resolves when the test says so."""

    def __init__(self, partitions: int) -> None:
        from aiokafka.producer.message_accumulator import BatchBuilder

        self.partitions = partitions
        self.builder = BatchBuilder
        self.sent: list[tuple[str, int, int]] = []
        """(topic, partition, records) in the order the batches were handed over."""
        self.futures: list[asyncio.Future[Any]] = []

    def create_batch(self) -> Any:
        return self.builder(1 << 20, 0, is_transactional=False)

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Any:
        self.sent.append((topic, partition, batch.record_count()))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partitions))

    def deliver(self, exc: Exception | None = None) -> None:
        for future in self.futures:
            if not future.done():
                if exc is None:
                    future.set_result(type("Metadata", (), {"offset": 0})())
                else:
                    future.set_exception(exc)


def test_a_batch_is_acknowledged_once_delivered_while_the_next_one_goes_on(
    load_app: Callable[..., StreamWorker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker sends batch N's outputs and returns; the agent processes N+1 meanwhile.
    N's offsets may be committed only once its outputs are acknowledged and its changelog is
    sent; its state is read back at once (staged); anything sent next waits for N's
    delivery, so the order on the wire is the order of a worker that waited each time; and a
    delivery that fails holds N back and fails the process."""
    from types import SimpleNamespace

    from stream.processor import BatchOutput
    from stream.publish import RecordBatchPublisher

    app = load_app(PARTITIONS="2")
    producer = _HeldProducer(partitions=2)
    pub = RecordBatchPublisher(producer, partition_of)
    monkeypatch.setattr(app, "publisher", lambda: pub)  # as on a started aiokafka producer
    routed = app.settings.topics.routed
    changelog = app.user_state.changelog_topic.get_topic_name()
    acked: list[str] = []
    lost: list[str] = []

    def batch(name: str) -> list[Any]:
        return [SimpleNamespace(name=name, acked=False)]

    async def scenario() -> None:
        app.user_state.data.set_persisted_offset = lambda tp, offset: None
        first = BatchOutput(watermarks=[(b"wm", b"1")], writes={0: {"u0": b"state-1"}})
        await app._emit_overlapped(
            first,
            pub,
            batch("N"),
            lambda m: acked.append(m[0].name),
            lambda m: lost.append(m[0].name),
        )
        assert [t for t, _, _ in producer.sent] == [routed], "N's outputs go out at once"
        assert acked == [], "acknowledged before Kafka has N's outputs"
        assert app.store.get("u0", 0) == b"state-1", "the next batch must read N's state"

        # The timer's announcement comes while N is in flight: it waits for N's delivery.
        later = asyncio.ensure_future(app.emit(BatchOutput(watermarks=[(b"wm", b"2")])))
        for _ in range(5):
            await asyncio.sleep(0)
        assert [t for t, _, _ in producer.sent] == [routed]

        producer.deliver()
        for _ in range(5):
            await asyncio.sleep(0)
        assert acked == ["N"] and lost == []
        while not later.done():
            producer.deliver()
            await asyncio.sleep(0)
        await later
        assert [t for t, _, _ in producer.sent] == [routed, changelog, routed], (
            "N's changelog goes before anything sent after N"
        )

        third = BatchOutput(watermarks=[(b"wm", b"3")], writes={0: {"u0": b"state-3"}})
        messages = batch("N+2")
        await app._emit_overlapped(
            third, pub, messages, lambda m: acked.append(m[0].name), lambda m: lost.append("x")
        )
        producer.deliver(RuntimeError("broker gone"))
        for _ in range(5):
            await asyncio.sleep(0)
        assert acked == ["N"] and lost == ["x"]
        assert messages[0].acked, "a batch whose delivery failed is held back"
        assert app.liveness.reason is not None and "broker gone" in app.liveness.reason
        with pytest.raises(RuntimeError, match="broker gone"):
            await app.wait_delivered()

    asyncio.run(scenario())
