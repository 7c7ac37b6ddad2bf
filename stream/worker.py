"""The worker, built from settings: :func:`create_worker` returns a :class:`Worker`.

Owns the wiring only — topics, the state table, the agent loop, web views and metrics. The
agent decodes nothing itself: it hands raw micro-batches to :class:`stream.processor.Processor`
and sends what comes back. Settings are passed in (``faust -A stream.app worker`` reads
them from the environment, see :mod:`stream.app`); the model is loaded and checked before the
app is built, and a model that does not match raises :class:`StartupError` with the reason
(see :mod:`serving.scorer`). Nothing happens at import: tests, the bench and the demo build as
many workers as they need, each with its own settings. TensorFlow is never imported here.

Event time: a partition closes a window only when every clickstream partition has passed it
(the minimum over the sources, less the allowed lateness; :meth:`Processor.watermark`). A timer
(``watermark_interval_s``) announces the held sources' time to every partition through the
re-keying topic, behind the copies they re-keyed; a source with nothing to read for
``source_idle_timeout_s`` is announced idle and stops holding time back.

Three more timers: one polls the model directory (``model_poll_interval_s``) and switches to a new
model version that passes the checks between micro-batches (a rejected one is logged and
counted, the old model keeps serving; :class:`stream.model.ModelHolder`); one sets the
consumer-lag gauge of the source partitions this worker holds (``lag_interval_s``); one gives
freed heap pages back to the operating system (``memory_trim_interval_s``, :mod:`stream.memory`).

A message whose processing raises costs that message, not the stream: the processor isolates
it (dead letter ``processing_error``, see :mod:`stream.processor`). What still stops the agent
(a :class:`stream.processor.FatalError`, a failed delivery, anything outside the processor)
stops the process: ``/health`` and ``/ready`` answer 503 with the reason, the failed batch's
offsets are never committed, and the process exits with status 70 (:mod:`stream.liveness`).

What Faust and aiokafka do not offer as API (the fetch wait, the producer buffer's limit, the
current event, the store's persisted offsets, the aiokafka producer) is reached through
:mod:`stream.faust_runtime` only, which the worker checks before it builds anything.

Per micro-batch the agent sends the outputs, waits until Kafka has them, and only then writes
the table (its changelog; the local store follows each changelog record batch as it is
delivered, see :meth:`TableStore.write_in_batches`): state that exists implies its signals
were delivered, so when a crash makes Kafka
deliver the uncommitted messages again, the processor may skip what the state already holds
(see "Redelivery" in :mod:`stream.processor`). Re-keyed copies carry their clickstream
coordinates in the ``clicksignals-origin`` header for the same reason.

The wait for Kafka's acknowledgements overlaps the next micro-batch's processing (the bulk
agent on a started producer; :meth:`Worker.handle_batch`): batch N's outputs are sent when N
is processed, the agent goes on with N+1, and N's changelog is sent once N's outputs are
acknowledged, before anything of N+1 is sent (:meth:`Worker.wait_delivered`). Every send keeps the
order it had when each batch waited for its own acknowledgements, and a batch's offsets are
still acknowledged to Faust only once its outputs are delivered and its changelog sent. The
wait was about a fifth of the worker's time on the loop (py-spy, medium bench, 2026-12-07).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import faust
import orjson
from faust.types import TP, Message

from features import feedback
from serving.demand import DemandModel, find_category_model, load_demand_model
from serving.scorer import ModelLoadError, Scorer, load_model
from settings import Settings
from settings.kafka import KafkaClientConfigError
from stream import faust_runtime, memory, metrics
from stream.categories import CategoryAggregator, forecast_records
from stream.faust_app import RAW, faust_app
from stream.input_check import InputCheck
from stream.liveness import Liveness, hold_back
from stream.model import ModelHolder, ShadowHolder, promote
from stream.processor import (
    ORIGIN_HEADER,
    BatchOutput,
    Processor,
    RawMessage,
    origin_from_headers,
    processor_from_settings,
    risk_thresholds,
)
from stream.publish import (
    OutRecord,
    Publisher,
    RecordBatchPublisher,
    SubmittedBatch,
    TopicPublisher,
    record_batch_publisher,
)

TimerBody = Callable[[], Awaitable[None]]
"""One tick of a worker timer."""
BatchCallback = Callable[[list[Any]], None]
"""What the bulk agent is told of a micro-batch's delivery (its source's ack or untrack)."""

log = logging.getLogger(__name__)

BULK_BUFFER_RECORDS = 2048
"""Records fetched and not yet taken by the agent (bulk consumption): four micro-batches of
512, half Faust's stream buffer (``stream_buffer_maxsize`` below). A list that does not fit
waits in the fetch loop as raw records; at 4,096 a burst took the worker's RSS to +240 MiB
in one CI run (the backpressure test's bound: 235)."""

AGENT_NAME = "stream.app.score_clickstream"
"""The agent's name as it was when the agent was defined in ``stream.app`` (Faust names
agents after their function): kept so that logs and metrics read as before."""


class StartupError(Exception):
    """The worker cannot start; the message says why, ``exit_code`` what the process returns
    (2: the environment or the installed Faust; 3: the model)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


STALL_S: Final = 2.0
"""A gap between two announcement ticks longer than this (beyond the interval) is a stall."""
CLOSE_TICK: Final = 0.8
"""Share of an announcement interval an announcement tick may spend on closes in progress."""


@dataclass
class _StandInMessage:
    partition: int


@dataclass
class _StandIn:
    """What Faust's store reads of the current event, for a partition without one."""

    message: Any
    """A :class:`_StandInMessage`, or a message of the batch."""


class TableStore:
    """Reads and writes the Faust table on behalf of a given source partition.

    Faust's RocksDB store files a key under the partition of the *current event*. A micro-
    batch spans partitions, so before touching a key we make an event of that key's partition
    current (the ContextVar Faust itself uses). Keys always belong to their event's partition
    (the processor re-keys strays), so store, changelog and source partition agree.
    """

    def __init__(self, table: Any, app: faust.App) -> None:
        self.table = table
        self.app = app
        self.events: dict[int, _StandIn] = {}
        """Partition -> an event of the micro-batch in hand (its message: Faust's table reads
        the partition, and under ``test_context`` the topic)."""
        self._stand_ins: dict[int, Any] = {}
        self.unstored: dict[str, bytes] = {}
        """Values sent to the changelog and not yet delivered, hence not yet in the local
        store (:meth:`write_in_batches`): reads see them. The processor mostly reads its own
        cache, but it lets go of users it no longer needs, and one of them may come back in
        the next micro-batch before the last one's changelog batch was delivered; read from
        the store, such a user's state would be a batch old (the killed-mid-replay test then
        missed window-close signals, with polls of 1,000 records)."""

    def _current_for(self, partition: int) -> Any:
        """An event of ``partition`` for Faust's store to read (a stand-in when none is)."""
        event: Any = self.events.get(partition)
        if event is None:
            # Nothing of the partition in the batch (a watermark announcement's closes, or
            # the timer's own task): the store reads only ``event.message.partition``.
            event = self._stand_ins.get(partition)
            if event is None:
                event = self._stand_ins[partition] = _StandIn(_StandInMessage(partition))
        return event

    def _focus(self, partition: int) -> None:
        faust_runtime.set_current_event(self._current_for(partition))

    def get(self, key: str, partition: int) -> bytes | None:
        unstored = self.unstored.get(key)
        if unstored is not None:
            return unstored
        self._focus(partition)
        value: bytes | None = self.table.get(key)
        return value

    def items(self) -> Iterator[tuple[str, bytes]]:
        return self._with_unstored(iter(self.table.items()))

    def scan(self) -> Iterator[tuple[str, bytes]]:
        """The processor's restore walks this across awaits, while standby replicas write the
        same store. The memory store is a dict, which no iterator survives changing: its items
        are copied first (a C-level copy, ~0.1 s for 1M users). A RocksDB iterator reads one
        snapshot of its database, so it is walked as it is (a copy would read every user in
        one go, the loop blocked for seconds)."""
        raw = getattr(self.table.data, "data", None)
        if isinstance(raw, dict):
            return self._with_unstored(iter(list(raw.items())))
        return self.items()

    def _with_unstored(self, pairs: Iterator[tuple[str, bytes]]) -> Iterator[tuple[str, bytes]]:
        unstored = dict(self.unstored)
        for key, value in pairs:
            newer = unstored.pop(key, None)
            if newer is not None:
                yield key, newer
            elif value is not None:
                yield key, value
        yield from unstored.items()

    def stage(self, writes: dict[int, dict[str, bytes]]) -> None:
        """Values whose changelog is not sent yet (their batch's outputs are being
        acknowledged while the next batch is processed): reads see them, as they see the
        values sent and not yet delivered (:attr:`unstored`)."""
        for entries in writes.values():
            self.unstored.update(entries)

    def write(self, writes: dict[int, dict[str, bytes]]) -> None:
        """Through Faust's table: store, then one changelog message per key (ProducerBuffer)."""
        for partition, entries in writes.items():
            self._focus(partition)
            for key, value in entries.items():
                self.table[key] = value

    async def write_in_batches(
        self, writes: dict[int, dict[str, bytes]], publisher: RecordBatchPublisher
    ) -> None:
        """The same effect as :meth:`write`, with the changelog as record batches, and the
        local store written only once the changelog has the values.

        ``Table.__setitem__`` is the store write plus ``send_changelog`` (a FutureMessage
        through the ProducerBuffer, one per key: ~11 % of the worker's busy time in py-spy).
        Here the changelog records go out as one record batch per partition (to the partition
        of the key's source, as Faust sends them), or several when a batch is full, and each
        record batch, once delivered, is written to the store and its last offset becomes the
        store's persisted offset (what Faust's own changelog callback records: a RocksDB store
        restarted warm resumes the changelog after it). Not awaited here, like Faust's
        changelog sends; Faust flushes the producer before it commits source offsets and when
        partitions are revoked, and the processor reads its own cache in between.

        Why only once delivered: the local store must never be ahead of the changelog. A
        partition's writes of one micro-batch can span several record batches (a window
        close rewrites every candidate, ~2.9 kB each, past the 256 kB batch). Stored at once,
        a SIGKILL could leave the store with the later batches' partition clock while the
        first record batch of an earlier micro-batch was delivered but not yet recorded as
        persisted; the warm restart replays it over the store and puts those users back
        behind a clock that has closed their windows (one user's scores then differ from an
        uninterrupted run's). Written on delivery, in delivery order, the store is always a
        prefix of the changelog, which is what Faust's restore assumes.
        """
        table = self.table
        store = faust_runtime.table_store(table)
        topic = table.changelog_topic.get_topic_name()
        # The changelog's bytes as Faust's send_changelog makes them (the table's key
        # serializer is Faust's default json: the key "u1" is b'"u1"'; values are raw).
        dumps_key, dumps_value = self.app.serializers.dumps_key, self.app.serializers.dumps_value
        key_type, key_ser = table.key_type, table.key_serializer
        value_type, value_ser = table.value_type, table.value_serializer
        records: list[OutRecord] = []
        pending: dict[int, list[tuple[str, bytes]]] = {}
        for partition, entries in writes.items():
            for key, value in entries.items():
                raw = dumps_value(value_type, value, serializer=value_ser)
                assert raw is not None  # a state value is never None, so neither are its bytes
                records.append(
                    OutRecord(
                        topic,
                        dumps_key(key_type, key, serializer=key_ser),
                        raw,
                        partition=partition,
                    )
                )
            pending[partition] = list(entries.items())
            self.unstored.update(entries)
        taken: dict[int, int] = {}
        for batch in await publisher.submit(records):
            # submit keeps each partition's records in order and cuts them into consecutive
            # record batches: this batch holds the next ``count`` entries of its partition.
            start = taken.get(batch.partition, 0)
            taken[batch.partition] = start + batch.count
            delivered = _Delivered(
                store,
                TP(batch.topic, batch.partition),
                pending[batch.partition][start : start + batch.count],
                self._current_for(batch.partition),
                self.unstored,
            )
            asyncio.ensure_future(batch.future).add_done_callback(delivered)


class _Delivered:
    """Done-callback of one changelog record batch: store its entries, then its offset."""

    def __init__(
        self,
        store: Any,
        tp: TP,
        entries: list[tuple[str, bytes]],
        event: Any,
        unstored: dict[str, bytes],
    ) -> None:
        self.store = store
        self.tp = tp
        self.entries = entries
        self.unstored = unstored
        # Faust's stores file a key under the current event's partition; by the time the
        # batch is delivered the agent has moved on, so the event (or the partition's stand-
        # in) is kept for the callback.
        self.event = event

    def __call__(self, delivered: asyncio.Future[Any]) -> None:
        if delivered.cancelled() or delivered.exception() is not None:
            # Not delivered: the producer reports it (and Faust's commit flush fails); the
            # store keeps the older values and offset, so a warm restart replays from there.
            return
        faust_runtime.set_current_event(self.event)  # in this callback's own context
        unstored = self.unstored
        for key, value in self.entries:
            self.store[key] = value
            if unstored.get(key) is value:  # not written again by a later micro-batch
                del unstored[key]
        offset = delivered.result().offset + len(self.entries) - 1
        faust_runtime.set_persisted_offset(self.store, self.tp, offset)


def build_app(settings: Settings) -> faust.App:
    """The Faust app (:func:`stream.faust_app.faust_app`) with the worker's tuning; raises
    :class:`StartupError` when the installed Faust lacks a part the worker relies on or the
    Kafka client options are wrong."""
    try:
        faust_runtime.require()  # an upgrade that moved a private part stops us here, named
    except faust_runtime.RuntimeIncompatible as exc:
        raise StartupError(str(exc), 2) from None
    try:
        app = faust_app(
            settings,
            app_id=settings.worker.app_id,
            web_port=settings.worker.web_port,
            datadir=settings.worker.data_dir,
            bulk=settings.worker.bulk_consumption,
            # The agent appends a micro-batch's signals to one record batch per topic
            # partition (stream.publish); 16 kB (Faust's default) holds ~40 signals, so each
            # batch would be cut into several that aiokafka sends one after the other. Well
            # under the broker's 1 MB.
            producer_max_batch_size=256 * 1024,
            stream_buffer_maxsize=4096,
            # Bigger fetches than Faust's 1 MiB per partition (~770 user states of ~1.3 kB): a
            # fresh worker replays the table's changelog ~2x faster and the stream gets more
            # per round trip (bench/results/profile.md). The record cap bounds one poll.
            # 4 MiB, not 16: aiokafka holds one fetch per partition, so under a burst 16 MiB
            # took RSS to +203..239 MiB against +124 MiB, for a restore ~10 % slower.
            consumer_max_fetch_size=4 * 1024 * 1024,
            broker_max_poll_records=10_000,
            table_standby_replicas=1,
        )
    except KafkaClientConfigError as exc:  # e.g. a missing CA file: the reason, not a traceback
        raise StartupError(str(exc), 2) from None
    # Faust's ProducerBuffer carries table changelog writes made through the table (here:
    # only under test_context, see TableStore; on a real producer they go as record batches)
    # and stops the stream whenever more than `max_messages` (100, no setting) are pending,
    # then waits for them one at a time. A micro-batch writes one record per user it touched
    # (hundreds), so the default stalled every batch (bench: ~16 % of wall time). Room for a
    # few batches keeps it bounded without stalls.
    faust_runtime.set_producer_buffer_limit(8 * settings.worker.batch_size)
    # Fetch wait. Faust creates the worker's aiokafka consumer with fetch_max_wait_ms=1500 (no
    # setting); under live traffic the worker settled ~1.4 s behind at a third of its CPU
    # (bench.worker latency at 3,100 events/s: send -> scored p50 1,265 ms; 58 ms at fetch
    # wait 100 ms). An idle fetch answered every 50 ms costs the broker next to nothing.
    faust_runtime.install_fetch_wait(settings.worker.fetch_max_wait_ms)
    return app


def caught_up(
    processed: int | None, fetched: int | None, position: int | None, log_end: int | None
) -> bool:
    """Whether a source partition has nothing left to read: every record up to ``log_end``
    (the broker's answer, asked now) was processed. ``processed``: the next offset after the
    last processed record (``None``: none since the assignment); ``fetched``: the last offset a
    bulk consumer fetched (``None``: none, or not a bulk consumer); ``position``: the consumer's
    fetch position, which counts only when nothing was fetched or processed (records fetched
    and not processed wait in the agent's buffer: a position past them says nothing of what is
    left to process, and in CI a restarted worker announced its backlog idle before reading
    it, 322 events late)."""
    if log_end is None:
        return False
    if processed is not None:
        return processed >= log_end
    if fetched is not None:
        return False
    return position is not None and position >= log_end


class Worker:
    """One worker: its app, topics and table, the model it serves and the processor that
    runs each micro-batch; the agent, timers and views are registered on ``app`` by
    :func:`create_worker`."""

    def __init__(
        self,
        settings: Settings,
        app: faust.App,
        scorer: Scorer,
        category_model: DemandModel | None = None,
    ) -> None:
        self.settings = settings
        self.category_model = category_model
        """The category demand model (``None``: category demand is off)."""
        self.app = app
        self.clickstream = app.topic(
            settings.topics.clickstream, partitions=settings.topics.partitions, **RAW
        )
        self.routed = app.topic(
            settings.topics.routed, partitions=settings.topics.partitions, **RAW
        )
        self.demand_topic = app.topic(settings.topics.demand, **RAW)
        self.churn_topic = app.topic(settings.topics.churn, **RAW)
        self.dead_letter_topic = app.topic(settings.topics.dead_letter, **RAW)
        self.outcomes_topic = app.topic(settings.topics.outcomes, **RAW)
        self.quality_topic = app.topic(settings.topics.quality, **RAW)
        self.quality_parts = app.topic(settings.topics.quality_parts, partitions=1, **RAW)
        self.quality_board = app.Table(
            "quality-board",
            default=None,
            key_type=str,
            value_type=bytes,
            partitions=1,
        )
        self.category_parts = app.topic(settings.topics.category_parts, partitions=1, **RAW)
        self.category_topic = app.topic(settings.topics.category_demand, **RAW)
        self.category_board = app.Table(
            "category-board",
            default=None,
            key_type=str,
            value_type=bytes,
            partitions=1,
        )
        self.latest_quality: dict[str, dict[str, Any]] = {}
        """Model version -> its latest ``model-quality`` record this worker published."""
        self.user_state = app.Table(
            "user-state",
            default=None,
            key_type=str,
            value_type=bytes,
            partitions=settings.topics.partitions,
        )
        if isinstance(app, faust_runtime.BulkApp):
            # A million users' changelog through Faust's recovery loop took 131 s.
            faust_runtime.restore_in_bulk(app, self.user_state)
        self.liveness = Liveness("clicksignals worker")
        self.store = TableStore(self.user_state, app)
        self.holder = ModelHolder(
            settings.worker.model_dir, settings.worker.ort_intra_op_threads, scorer=scorer
        )
        self._processor = processor_from_settings(
            scorer,
            self.store,
            settings,
            series_level=category_model.level if category_model is not None else None,
        )
        self.shadow_holder = ShadowHolder(
            settings.worker.model_dir, settings.worker.ort_intra_op_threads
        )
        self.input_check = InputCheck(scorer.manifest)
        self._topic_publisher = TopicPublisher(
            {
                t.get_topic_name(): t
                for t in (
                    self.routed,
                    self.demand_topic,
                    self.churn_topic,
                    self.dead_letter_topic,
                    self.outcomes_topic,
                    self.quality_parts,
                    self.category_parts,
                )
            }
        )
        self._batch_publisher: tuple[Any, RecordBatchPublisher] | None = None
        self.score_clickstream: Any = None
        """The agent (set by :func:`create_worker`)."""
        self.aggregate_quality: Any = None
        """The online evaluation's aggregator agent (set by :func:`create_worker`)."""
        self.aggregate_categories: Any = None
        """The category demand's aggregator agent (set by :func:`create_worker` when on)."""
        self.ticks: dict[str, TimerBody] = {}
        """One guarded tick of each timer, by name (set by :func:`create_worker`)."""
        self.turn = asyncio.Lock()
        """Batches and watermark announcements take turns: an announcement must never
        overtake the re-keyed copies of the batch that moved the source's time (see
        :meth:`announce_watermarks`)."""
        self.last_read: dict[int, float] = {}
        """Clickstream partition -> monotonic time of the last batch that held a record of it."""
        self.last_tick: float | None = None
        self.last_batch: float | None = None
        """Monotonic time of the last batch: closes yield to the events while they flow."""
        self.last_trim: float | None = None
        """Monotonic time of the last heap trim (:func:`stream.memory.trim_due`)."""
        self._delivery: asyncio.Future[None] | None = None
        """The last micro-batch's delivery, if it may still be in flight: its outputs'
        acknowledgements, then its changelog's send (:meth:`wait_delivered` waits for it)."""

    def processor(self) -> Processor:
        return self._processor

    async def handle_batch(
        self,
        messages: list[Message],
        delivered: BatchCallback | None = None,
        lost: BatchCallback | None = None,
    ) -> None:
        """One micro-batch of the agent's messages (Faust's consumer messages).

        With ``delivered`` (the bulk agent), on a started producer, the batch returns once its
        outputs are sent, not acknowledged: ``delivered(messages)`` is called when they are
        and the changelog is sent, ``lost(messages)`` if they never are (the process then
        fails, as for a batch that raised). Meanwhile the agent processes the next batch.
        Without it (Faust's ``test_context()``), or on Faust's own publisher, the batch
        returns once everything is delivered."""
        async with self.turn:
            await self._handle_batch(messages, delivered, lost)

    async def _handle_batch(
        self,
        messages: list[Message],
        delivered: BatchCallback | None = None,
        lost: BatchCallback | None = None,
    ) -> None:
        proc = self.processor()
        started = time.perf_counter()
        clickstream = self.settings.topics.clickstream
        now = time.monotonic()
        self.last_batch = now
        for m in messages:
            if m.topic == clickstream:
                self.last_read[m.partition] = now
        self.store.events = {m.partition: _StandIn(m) for m in messages}
        await self.restore_partitions({m.partition for m in messages})
        routed = self.settings.topics.routed
        batch = [
            RawMessage(
                m.key,
                m.value,
                m.topic,
                m.partition,
                m.offset,
                origin_from_headers(m.headers) if m.topic == routed else None,
            )
            for m in messages
        ]
        # Once the announcement timer runs, window closes are its work (go_on_closing), a
        # slice at a time beside the batches of live traffic. A full batch means a backlog:
        # it takes a slice too, so that closes keep pace with the events it brings (left to
        # the timer's share, they fell minutes behind a 1M-event backlog). Without the timer
        # (Faust's test_context) a batch takes them as the processor does by default.
        live = self.last_tick is not None and len(messages) < self.settings.worker.batch_size
        out = proc.process(batch, close_budget=0 if live else None)
        self.input_check.observe(m.value for m in batch)  # warns once per model version
        pub = self.publisher()
        if delivered is not None and isinstance(pub, RecordBatchPublisher):
            await self._emit_overlapped(out, pub, messages, delivered, lost or (lambda _: None))
        else:
            await self.emit(out)
            if delivered is not None:
                delivered(messages)
        metrics.observe_batch(len(messages), out, time.perf_counter() - started)
        metrics.note_processed(batch)

    async def _emit_overlapped(
        self,
        out: BatchOutput,
        pub: RecordBatchPublisher,
        messages: list[Message],
        delivered: BatchCallback,
        lost: BatchCallback,
    ) -> None:
        """Send a batch's outputs now, and leave their acknowledgements, then the changelog,
        to a delivery the next send waits for (:meth:`wait_delivered`)."""
        await self.wait_delivered()
        submitted = await pub.submit(self.output_records(out))
        self.store.stage(out.writes)
        delivery = asyncio.ensure_future(self._deliver(submitted, out.writes, pub))
        self._delivery = delivery
        delivery.add_done_callback(lambda done: self._on_delivery(done, messages, delivered, lost))
        # Let the producer's sender take the record batches to the broker now: the next
        # batch's processing holds the loop for tens of milliseconds.
        await asyncio.sleep(0)

    async def _deliver(
        self,
        submitted: list[SubmittedBatch],
        writes: dict[int, dict[str, bytes]],
        pub: RecordBatchPublisher,
    ) -> None:
        """Delivered first, stored second: the submitted outputs' acknowledgements, then the
        changelog (every send of record batches, overlapped or not, goes through here)."""
        await asyncio.gather(*(b.future for b in submitted))
        await self.store.write_in_batches(writes, pub)

    def _on_delivery(
        self,
        done: asyncio.Future[None],
        messages: list[Message],
        delivered: BatchCallback,
        lost: BatchCallback,
    ) -> None:
        if not done.cancelled() and done.exception() is None:
            delivered(messages)
            return
        hold_back(messages)
        lost(messages)
        if not done.cancelled():
            exc = done.exception()
            self.liveness.fail(
                f"agent {AGENT_NAME}: a batch's outputs were not delivered: "
                f"{type(exc).__name__}: {exc}"
            )

    async def wait_delivered(self) -> None:
        """Wait until the last micro-batch's outputs are acknowledged and its changelog is
        sent: whatever is sent next goes after them. Raises if that delivery failed."""
        delivery = self._delivery
        if delivery is None:
            return
        # Shielded: a caller cancelled (a stopping agent) must not cancel the delivery.
        await asyncio.shield(delivery)
        if self._delivery is delivery:
            self._delivery = None

    async def restore_partitions(self, partitions: set[int]) -> None:
        """Restore the clocks and close candidates of the held partitions (and ``partitions``)
        not cached yet, in one pass over the table, letting the event loop run between slices:
        after a restart every user is read, and a loop blocked for seconds answers no health
        check, no user view, no heartbeat."""
        steps = self.processor().restore_partitions(partitions | self.held_partitions())
        for _ in steps:
            await asyncio.sleep(0)

    async def emit(self, out: BatchOutput) -> None:
        """Send a batch's (or an announcement's) outputs, then store its state: delivered
        first, stored second (see the module doc). After the last batch's delivery."""
        await self.wait_delivered()
        pub = self.publisher()
        if isinstance(pub, RecordBatchPublisher):
            await self._deliver(await pub.submit(self.output_records(out)), out.writes, pub)
        else:
            await pub.publish(self.output_records(out))
            self.store.write(out.writes)

    async def idle_sources(self, held: set[int], now: float) -> list[int]:
        """The held clickstream partitions with nothing read for the idle timeout and nothing
        left to read: everything in the log when the broker is asked (now) was processed. A
        consumer that is slow, paused or not yet fetching, with a backlog, holds time back
        however long it has been quiet.

        The log end is asked of the broker (a ListOffsets request), not taken from the last
        fetch response: a consumer whose partitions are paused (Faust's recovery) or whose
        fetch is slow to come back saw no burst yet, and its cached high-water mark said
        "nothing to read" while the other worker was already closing windows on its share
        (CI: 980 and 2,585 re-keyed events late in the paused-worker Kafka test)."""
        timeout = self.settings.worker.source_idle_timeout_s
        quiet = [
            p
            for p in sorted(held)
            if (t := self.last_read.get(p)) is not None and now - t >= timeout
        ]
        if not quiet:
            return []
        topic = self.settings.topics.clickstream
        try:
            # Bounded: this runs in the turn, and a broker slow to answer must not stop batches.
            ends = await asyncio.wait_for(
                self.app.consumer.highwaters(*(TP(topic, p) for p in quiet)),
                timeout=max(self.settings.worker.watermark_interval_s, 1.0),
            )
            idle = []
            for p in quiet:
                tp = TP(topic, p)
                done = metrics.processed_position(topic, p)
                fetched = faust_runtime.fetched_offset(self.app, tp)
                position = (
                    await self.app.consumer.position(tp)
                    if done is None and fetched is None
                    else None
                )
                if caught_up(done, fetched, position, ends.get(tp)):
                    idle.append(p)
        except Exception as exc:  # revoked meanwhile, broker slow to answer: not idle
            log.debug("idleness of %s unknown: %r", quiet, exc)
            return []
        return idle

    async def announce_watermarks(self) -> None:
        """Tell every partition how far the source partitions this worker holds have read
        (and which are idle). The other partitions close windows on the minimum over all
        sources."""
        app = self.app
        now = time.monotonic()
        interval = self.settings.worker.watermark_interval_s
        if self.last_tick is not None and now - self.last_tick > STALL_S + interval:
            # The process did not run (stopped, starved): what it last knew of the log ends
            # is stale, and a source it then thought idle may have a backlog now. Idle timers
            # start again; the next fetches say what there is to read.
            log.warning(
                "announcements stalled for %.1f s: idle timers restart", now - self.last_tick
            )
            for p in self.last_read:
                self.last_read[p] = now
        self.last_tick = now
        if app.rebalancing or app.should_stop:
            # Stopping: the producer may be closed already (a timer tick after it closed
            # crashed the app with ProducerClosed in a bench run's shutdown).
            return
        held = self.held_partitions()
        if not held:
            return
        async with self.turn:
            if app.rebalancing:  # came while we waited: the table may be restoring
                return
            await self.restore_partitions(held)
            if app.rebalancing:
                return
            held_now = held & self.held_partitions()
            # Asked in the turn, just before the announcement that carries it: decided before
            # the wait for the turn, an idle word could go out seconds later (a long batch
            # held the turn meanwhile) over records that came in the while, and be believed
            # as fresh by the partitions they were re-keyed to.
            idle = await self.idle_sources(held_now, time.monotonic())
            if app.rebalancing:
                return
            started = time.perf_counter()
            out = self.processor().heartbeat(held_now, idle)
            await self.emit(out)
            took = time.perf_counter() - started  # a heartbeat may take a slice of a close
        metrics.observe_announcement(out, len(idle))
        await self.go_on_closing(took)

    async def go_on_closing(self, took: float = 0.0) -> None:
        """Take the window closes in progress a slice at a time (:data:`stream.processor.
        CLOSE_SLICE`), for most of an announcement interval, then leave the rest to the next
        tick (announcements must go on meanwhile).

        Batches take no slice (``close_budget=0``) unless they are full or their partition is
        behind by more than the window closing (a backlog: closes then keep pace with the
        events), and get at least ``1 - close_share`` of the time while a close is in
        progress and events flow: after each slice (``took``: the heartbeat's, which may have
        taken one) the loop waits ``(1 - close_share) / close_share`` times as long as it took
        (nine times at the default 0.1), with the turn free; with no batch in the last second
        it only yields. Taking a slice in every run instead starved the live events in the
        latency bench (batches of at most ``batch_size`` records, each behind a slice, fell
        behind a stream at 50 % of the worker's rate)."""
        app = self.app
        share = self.settings.worker.close_share
        deadline = time.monotonic() + CLOSE_TICK * self.settings.worker.watermark_interval_s
        try:
            first = True
            while True:
                flowing = self.last_batch is not None and time.monotonic() - self.last_batch < 1.0
                pause = took * (1 - share) / share if flowing else 0.0
                left = deadline - time.monotonic()
                # The pauses count against the pass's time too, so a pass ends at most one
                # slice after its deadline: uncapped, slices of 0.5 s on a starved machine,
                # each after a 1.5 s pause, made the next announcement late and tripped the
                # stall rule (idle timers restarted). The first slice of a pass is always
                # taken (its pause cut to the time left), or closes would stop while events
                # flow; a later one only if its whole pause fits.
                if not first and pause >= left:
                    return
                await asyncio.sleep(min(pause, max(left, 0.0)))
                first = False
                async with self.turn:
                    held = self.held_partitions()
                    if app.rebalancing or app.should_stop or not held:
                        return
                    proc = self.processor()
                    if not proc.closes_pending(held):
                        return
                    started = time.perf_counter()
                    await self.restore_partitions(held)
                    out = proc.go_on_closing(held)
                    await self.emit(out)
                    took = time.perf_counter() - started
                metrics.observe_close_slice(out)
        finally:
            # What a reader of /metrics waits on before it calls the outputs complete (the
            # bench: a close after a backlog goes on for seconds once the events stopped).
            held = self.held_partitions()
            metrics.set_closes_in_progress(
                sum(self.processor().closes_pending([p]) for p in held) if held else 0
            )

    def output_records(self, out: BatchOutput) -> list[OutRecord]:
        """A batch's outputs as records: re-keyed strays, demand, churn, dead letters."""
        s = self.settings
        records = [
            OutRecord(s.topics.routed, key, value, ((ORIGIN_HEADER, f"{p}:{o}".encode()),))
            for (key, value), (p, o) in zip(out.reroute, out.reroute_origins, strict=True)
        ]
        # After the copies: a watermark record announces only what went out before it.
        records += [OutRecord(s.topics.routed, key, value) for key, value in out.watermarks]
        records += [
            OutRecord(s.topics.demand, d.user_id.encode(), orjson.dumps(d.to_dict()))
            for d in out.demand
        ]
        records += [
            OutRecord(s.topics.churn, c.user_id.encode(), orjson.dumps(c.to_dict()))
            for c in out.churn
        ]
        records += [
            OutRecord(s.topics.dead_letter, None, orjson.dumps(d.to_dict()))
            for d in out.dead_letters
        ]
        records += [
            OutRecord(s.topics.outcomes, o.user_id.encode(), orjson.dumps(o.to_dict()))
            for o in out.outcomes
        ]
        # One partition: each partition's parts go out in close order (features.feedback).
        records += [
            OutRecord(
                s.topics.quality_parts,
                str(q.window_end_ms).encode(),
                orjson.dumps(q.to_dict(), option=orjson.OPT_SERIALIZE_NUMPY),
                partition=0,
            )
            for q in out.quality_parts
        ]
        records += [
            OutRecord(
                s.topics.category_parts,
                str(c.window_end_ms).encode(),
                orjson.dumps(c.to_dict()),
                partition=0,
            )
            for c in out.category_parts
        ]
        return records

    def publisher(self) -> Publisher:
        """Record batches on the app's started aiokafka producer; Faust's ``Topic.send`` when
        there is none (``test_context()``). Re-made if Faust replaced its producer."""
        producer = faust_runtime.aiokafka_producer(self.app)
        if producer is None:
            return self._topic_publisher
        if self._batch_publisher is None or self._batch_publisher[0] is not producer:
            self._batch_publisher = (producer, record_batch_publisher(producer))
        return self._batch_publisher[1]

    def swap_model(self, scorer: Scorer) -> None:
        """Serve ``scorer`` from the next micro-batch on (called on the event loop, so never
        in the middle of ``Processor.process``, which does not await)."""
        self._processor.scorer = scorer
        self._processor.thresholds = risk_thresholds(
            scorer, self.settings.worker.churn_high_threshold
        )
        self.input_check.reset(scorer.manifest)

    def note_drift(self, board: feedback.QualityBoard, parts: list[feedback.QualityPart]) -> None:
        """The input drift of the window end these parts' partitions just closed, against the
        serving model's reference: gauges now, and kept on the board until that window end's
        own quality goes out. Inputs binned by another model (a swap) are not compared."""
        inputs = feedback.merge_inputs(parts)
        scorer = self.processor().scorer
        reference = scorer.manifest.input_reference
        if inputs is None or reference is None or inputs.model_version != scorer.version:
            return
        drift = feedback.input_drift(inputs, reference, self.settings.worker.drift_psi_threshold)
        board.drift[inputs.window_end_ms] = drift
        metrics.observe_drift(drift)
        if drift["drifted"]:
            log.warning(
                "input drift at %s: %s (PSI over %g)",
                drift["window_end"],
                ", ".join(f"{f} {drift['psi'][f]:.3f}" for f in drift["drifted"]),
                drift["threshold"],
            )

    async def poll_shadow(self) -> None:
        """Pick up, change or drop the shadow model of ``model_dir/candidate/``."""
        shadow = await asyncio.to_thread(self.shadow_holder.poll, self.holder.scorer)
        if shadow.outcome in ("swapped", "failed"):
            self._processor.shadow = self.shadow_holder.scorer

    async def judge_shadow(
        self, board: feedback.QualityBoard, records: list[feedback.ModelQuality]
    ) -> list[feedback.ModelQuality]:
        """The shadow model's evidence at a published window end, on its record; with
        ``promote_after`` reached, its promotion (into ``model_dir``, swapped in at the next
        model poll)."""
        shadow = self._processor.shadow
        promote_after = self.settings.worker.promote_after
        evidence = feedback.judge(
            board,
            records,
            self._processor.scorer.version,
            shadow.version if shadow is not None else None,
            promote_after,
        )
        if evidence is None:
            return records
        log.info(
            "shadow %s %s serving %s at %s (%d in a row; promote after %d)",
            evidence["shadow"],
            "beat" if evidence["beat_serving"] else "did not beat",
            evidence["serving"],
            evidence["window_end_ms"],
            len(evidence["consecutive_window_ends"]),
            promote_after,
        )
        if evidence["promote"]:
            board.wins = {}
            try:
                version = await asyncio.to_thread(promote, self.settings.worker.model_dir)
            except (OSError, ValueError, KeyError) as exc:
                # The candidate changed or went meanwhile: no promotion, the stream goes on.
                log.error("promotion of shadow %s failed: %r", evidence["shadow"], exc)
                return records
            # It is no shadow any more: judged again at the next window end, it would be
            # promoted twice. The hot swap puts it in service at the next model poll.
            self.shadow_holder.release()
            self._processor.shadow = None
            evidence["promoted"] = version
            log.warning(
                "promoted shadow %s to serve in %s after beating %s on window ends %s",
                version,
                self.settings.worker.model_dir,
                evidence["serving"],
                evidence["consecutive_window_ends"],
            )
        return [
            dataclasses.replace(r, promotion=evidence)
            if r.model_version == evidence["shadow"]
            else r
            for r in records
        ]

    def held_partitions(self) -> set[int]:
        """The clickstream partitions this worker holds; none before its consumer started."""
        try:
            assigned = self.app.consumer.assignment()
        except Exception:  # ConsumerNotStarted (and friends) before the first rebalance
            return set()
        return {tp.partition for tp in assigned if tp.topic == self.settings.topics.clickstream}

    def source_partitions(self, tps: Any) -> set[int]:
        return {tp.partition for tp in tps if tp.topic == self.settings.topics.clickstream}


def create_worker(settings: Settings) -> Worker:
    """Check the installed Faust and the model, build the app and register the agent, the
    timers and the views; raises :class:`StartupError` (before the app joins anything)."""
    if not 0.0 < settings.worker.close_share <= 1.0:
        raise StartupError(
            f"CLICKSIGNALS_CLOSE_SHARE={settings.worker.close_share}: the share of the worker's "
            "time window closes may take while events flow must be above 0 and at most 1",
            2,
        )
    app = build_app(settings)
    try:
        scorer = load_model(settings.worker.model_dir, settings.worker.ort_intra_op_threads)
    except ModelLoadError as exc:
        raise StartupError(str(exc), 3) from None
    worker = Worker(settings, app, scorer, category_model(settings, scorer))
    # A shadow model already in place is scored from the first batch on.
    worker.shadow_holder.poll(scorer)
    worker.processor().shadow = worker.shadow_holder.scorer
    metrics.observe_model_reload("unchanged", worker.holder.version)
    _register_rebalance(worker)
    _register_agent(worker)
    _register_quality(worker)
    agents = [worker.score_clickstream, worker.aggregate_quality]
    if worker.category_model is not None:
        _register_categories(worker)
        agents.append(worker.aggregate_categories)
    worker.liveness.watch(worker.app, agents)
    _register_timers(worker)
    _register_views(worker)
    return worker


def category_model(settings: Settings, scorer: Scorer) -> DemandModel | None:
    """The category demand model of ``model_dir/demand/``, checked against the user model's
    window grid; ``None`` when category demand is off or there is none. Raises
    :class:`StartupError` for a model that is there and cannot be served."""
    if not settings.worker.category_demand:
        return None
    directory = find_category_model(settings.worker.model_dir)
    if directory is None:
        log.info(
            "no category demand model in %s/demand: category demand is off",
            settings.worker.model_dir,
        )
        return None
    try:
        model = load_demand_model(directory, settings.worker.ort_intra_op_threads)
    except ModelLoadError as exc:
        raise StartupError(f"category demand model: {exc}", 3) from None
    grid, users = model.spec, scorer.manifest.spec
    if grid.length_ms != users.length_ms or (grid.origin_ms - users.origin_ms) % grid.length_ms:
        raise StartupError(
            f"category demand model {directory}: windows of {grid.length_ms} ms from "
            f"{grid.origin_ms} are not the user model's ({users.length_ms} ms from "
            f"{users.origin_ms}): the worker sums categories in the user windows. Train both "
            f"with one train-and-export, or set CLICKSIGNALS_CATEGORY_DEMAND=false",
            3,
        )
    return model


def _register_rebalance(worker: Worker) -> None:
    app = worker.app

    # Faust's signal type wants (sender, *args, signal=...); it calls (app, partitions, signal=).
    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(app: faust.App, revoked: Any, **kwargs: Any) -> None:
        # The last batch's changelog is sent before its partitions' caches go (a failed
        # delivery has failed the process already).
        with contextlib.suppress(Exception):
            await worker.wait_delivered()
        parts = worker.source_partitions(revoked)
        worker.processor().forget_partitions(parts)
        for p in parts:
            worker.last_read.pop(p, None)
        metrics.forget_processed({(tp.topic, tp.partition) for tp in revoked})
        faust_runtime.forget_fetched(app, revoked)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(app: faust.App, assigned: Any, **kwargs: Any) -> None:
        # A partition's cached clock and close candidates are only valid while it is held
        # without a break. Revocation drops them, but a partition this worker held once, lost
        # and gets back (a failover) must never find a cache from before another worker moved
        # its state on, whatever the order of rebalance callbacks and in-flight batches: it
        # is rebuilt from the restored table at its first event.
        with contextlib.suppress(Exception):
            await worker.wait_delivered()
        parts = worker.source_partitions(assigned)
        worker.processor().forget_partitions(parts)
        # A partition's idle timer starts at its assignment: the records fetched for it may
        # sit in the stream buffer, unprocessed, until then.
        now = time.monotonic()
        for p in parts:
            worker.last_read[p] = now


def _register_agent(worker: Worker) -> None:
    app, s = worker.app, worker.settings
    channel = app.topic(s.topics.clickstream, s.topics.routed, **RAW)

    bulk = (
        faust_runtime.BulkSource(
            app, channel, maxsize=BULK_BUFFER_RECORDS, most=s.worker.batch_size
        )
        if isinstance(app, faust_runtime.BulkApp)
        else None
    )

    async def score_clickstream(stream: Any) -> None:
        """Decode nothing, decide nothing: batch raw messages through the processor and send."""
        run_batch, handle = worker.liveness.run_batch, worker.handle_batch
        if bulk is not None and isinstance(stream.channel, faust.TopicT):
            # The topics' records as fetched (a test_context() channel is not a topic: it
            # takes Faust's path below). A batch is acknowledged once its outputs are
            # delivered, which may be after the next batch began (Worker.handle_batch).
            def overlapped(messages: list[Message]) -> Awaitable[None]:
                return handle(messages, bulk.ack, bulk.untrack)

            async for messages in bulk.batches(stream):
                await run_batch("score_clickstream", messages, overlapped)
            return
        async for events in stream.take_events(
            s.worker.batch_size, within=s.worker.batch_timeout_s
        ):
            await run_batch("score_clickstream", [e.message for e in events], handle)

    worker.score_clickstream = app.agent(channel, name=AGENT_NAME)(score_clickstream)


def _register_quality(worker: Worker) -> None:
    """The online evaluation's aggregator: quality parts in, ``model-quality`` out.

    Thin like the scoring agent: :mod:`features.feedback` decides; the agent stores each part
    under its own key of the changelog-backed board table (so no value outgrows a message),
    and once a window end is complete merges its parts, publishes and drops them."""
    app = worker.app
    board_table = worker.quality_board

    async def aggregate_quality(stream: Any) -> None:
        async for event in stream.events():
            try:
                part = feedback.QualityPart.from_dict(orjson.loads(event.value))
                raw = board_table.get(feedback.BOARD_KEY)
                board = (
                    feedback.QualityBoard.from_dict(orjson.loads(raw))
                    if raw
                    # The board knows the partition count from settings, never from a part:
                    # a part claiming another count (10**9) is refused, not waited for.
                    else feedback.QualityBoard(partitions=worker.settings.topics.partitions)
                )
                new, done = feedback.receive(board, part)
            except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
                # One bad part costs itself: the cohort it belonged to never completes.
                log.error("quality part at offset %s refused: %r", event.message.offset, exc)
                continue
            if new:
                board_table[feedback.part_key(part.window_end_ms, part.partition, part.index)] = (
                    event.value
                )
            for window_end in done:
                keys = board.keys(window_end)
                parts = [feedback.QualityPart.from_dict(orjson.loads(board_table[k])) for k in keys]
                worker.note_drift(board, parts)
                drift = board.drift.get(window_end)
                records = feedback.publish(parts, int(time.time() * 1000), drift)
                for record in await worker.judge_shadow(board, records):
                    body = record.to_dict()
                    await worker.quality_topic.send(
                        key=record.model_version.encode(), value=orjson.dumps(body)
                    )
                    worker.latest_quality[record.model_version] = body
                    metrics.observe_quality(record)
                    log.info(
                        "model quality %s at %s: %d users, orders MAE %.4f, churn AUC %.4f",
                        record.model_version,
                        body["window_end"],
                        record.figures["n"],
                        record.figures["orders"]["mae"],
                        record.figures["churn"]["roc_auc"],
                    )
                for k in keys:
                    del board_table[k]
                feedback.forget(board, window_end)
            board_table[feedback.BOARD_KEY] = orjson.dumps(board.to_dict())

    worker.aggregate_quality = app.agent(worker.quality_parts, name="stream.app.aggregate_quality")(
        aggregate_quality
    )


def _register_categories(worker: Worker) -> None:
    """The category demand's aggregator: category parts in, ``category-demand`` out.

    Thin like the others: :class:`stream.categories.CategoryAggregator` decides and keeps its
    state in the changelog-backed ``category-board`` table."""
    app = worker.app
    assert worker.category_model is not None
    aggregator = CategoryAggregator(
        worker.category_model, worker.category_board, worker.settings.topics.partitions
    )

    async def aggregate_categories(stream: Any) -> None:
        async for event in stream.events():
            try:
                merged = aggregator.receive(event.value, int(time.time() * 1000))
            except ValueError as exc:
                log.error("category part at offset %s refused: %r", event.message.offset, exc)
                continue
            for m in merged:
                for key, value in forecast_records(m):
                    await worker.category_topic.send(key=key, value=value)
                metrics.observe_category_forecasts(len(m.forecasts), m.overflow)
                log.info(
                    "category demand at %s: %d series summed, %d forecast",
                    m.window_end_ms,
                    m.series,
                    len(m.forecasts),
                )

    worker.aggregate_categories = app.agent(
        worker.category_parts, name="stream.app.aggregate_categories"
    )(aggregate_categories)


def _register_timers(worker: Worker) -> None:
    """The worker's timers, each tick guarded by :meth:`Liveness.guard_timer`: the
    announcements (and the closes they carry) and the model poll (the swap changes what is
    served) are essential; the memory trim and the lag metric are not."""
    app, s = worker.app, worker.settings

    def every(interval_s: float, *, essential: bool) -> Callable[[TimerBody], TimerBody]:
        def register(body: TimerBody) -> TimerBody:
            tick = worker.liveness.guard_timer(
                body.__name__, body, essential=essential, on_error=metrics.observe_timer_error
            )
            app.timer(interval=interval_s, name=f"stream.app.{body.__name__}")(tick)
            worker.ticks[body.__name__] = tick
            return body

        return register

    @every(s.worker.watermark_interval_s, essential=True)
    async def announce_watermarks() -> None:
        await worker.announce_watermarks()

    if s.worker.model_poll_interval_s > 0:

        @every(s.worker.model_poll_interval_s, essential=True)
        async def poll_model() -> None:
            # Hashing and ONNX Runtime session creation off the loop; the swap itself on it.
            reload = await asyncio.to_thread(worker.holder.poll)
            metrics.observe_model_reload(reload.outcome, reload.serving)
            if reload.outcome == "swapped":
                worker.swap_model(worker.holder.scorer)
            await worker.poll_shadow()

    if s.worker.memory_trim_interval_s > 0:

        @every(s.worker.memory_trim_interval_s, essential=False)
        async def trim_memory() -> None:
            now = time.monotonic()
            if memory.trim_due(
                now, worker.last_batch, worker.last_trim, s.worker.memory_trim_interval_s
            ):
                await asyncio.to_thread(memory.trim)
                worker.last_trim = now  # after: a trim that failed is tried at the next tick

    if s.worker.lag_interval_s > 0:

        @every(s.worker.lag_interval_s, essential=False)
        async def update_consumer_lag() -> None:
            if app.rebalancing:
                return  # assignments are in flux; the next tick reports the new ones
            sources = {s.topics.clickstream, s.topics.routed}
            held = [tp for tp in app.assignor.assigned_actives() if tp.topic in sources]
            highwaters: dict[tuple[str, int], int | None] = {}
            positions: dict[tuple[str, int], int | None] = {}
            for tp in held:
                try:
                    highwaters[(tp.topic, tp.partition)] = app.consumer.highwater(tp)
                    # Processed, not fetched: the fetch position runs ahead by the stream
                    # buffer. Before this worker finished a batch of the partition, the fetch
                    # position is the best it knows.
                    done = metrics.processed_position(tp.topic, tp.partition)
                    positions[(tp.topic, tp.partition)] = (
                        done if done is not None else await app.consumer.position(tp)
                    )
                except Exception as exc:  # revoked between the listing and the call
                    log.debug("no lag for %s: %r", tp, exc)
            metrics.set_consumer_lag(metrics.consumer_lag(highwaters, positions))


def _register_views(worker: Worker) -> None:
    app = worker.app

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        body, status = worker.liveness.health(
            {
                "model_version": worker.processor().scorer.version,
                "model_input": worker.input_check.status(),
            }
        )
        return web.json(body, status=status)

    @app.page("/ready")
    async def ready(web: Any, request: Any) -> Any:
        body, status = worker.liveness.ready(bool(app.rebalancing))
        return web.json(body, status=status)

    @app.page("/model")
    async def model_view(web: Any, request: Any) -> Any:
        manifest = worker.processor().scorer.manifest.to_dict()
        return web.json({**manifest, "input": worker.input_check.status()})

    @app.page("/users/{user_id}")
    async def user_view(web: Any, request: Any, user_id: str) -> Any:
        if len(user_id) > 256:
            return web.json({"error": "user id too long"}, status=400)
        view = worker.processor().user_view(user_id)
        if view is None:
            return web.json({"error": "unknown user (or held by another worker)"}, status=404)
        return web.json(view)

    @app.page("/clocks")
    async def clocks_view(web: Any, request: Any) -> Any:
        clocks = worker.processor().clocks_view(worker.held_partitions())
        return web.json({str(k): v for k, v in clocks.items()})

    @app.page("/quality")
    async def quality_view(web: Any, request: Any) -> Any:
        # The worker that holds the quality topic's one partition publishes; others have none.
        shadow = worker.processor().shadow
        return web.json(
            {
                "serving": worker.processor().scorer.version,
                "shadow": shadow.version if shadow is not None else None,
                "promote_after": worker.settings.worker.promote_after,
                "latest": worker.latest_quality,
            }
        )

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        body, content_type = metrics.render()
        return web.bytes(body, content_type=content_type)


__all__ = ["AGENT_NAME", "StartupError", "TableStore", "Worker", "build_app", "create_worker"]
