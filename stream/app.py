"""The Faust application: ``faust -A stream.app worker``.

Owns the wiring only — topics, the state table, the agent loop, web views and metrics. The
agent decodes nothing itself: it hands raw micro-batches to :class:`stream.processor.Processor`
and sends what comes back. Settings come from :func:`settings.load_settings`; the model is
loaded and checked at start-up, and a model that does not match stops the worker with the
reason (see :mod:`stream.model`). TensorFlow is never imported here.

Event time: a partition closes a window only when every clickstream partition has passed it
(the minimum over the sources, less the allowed lateness; :meth:`Processor.watermark`). A timer
(``watermark_interval_s``) announces the held sources' time to every partition through the
re-keying topic, behind the copies they re-keyed; a source with nothing to read for
``source_idle_timeout_s`` is announced idle and stops holding time back.

Two more timers: one polls the model directory (``model_poll_interval_s``) and switches to a new
model version that passes the checks between micro-batches (a rejected one is logged and
counted, the old model keeps serving; :class:`stream.model.ModelHolder`); one sets the
consumer-lag gauge of the source partitions this worker holds (``lag_interval_s``).

A message whose processing raises costs that message, not the stream: the processor isolates
it (dead letter ``processing_error``, see :mod:`stream.processor`). What still stops the agent
(a :class:`stream.processor.FatalError`, a failed delivery, anything outside the processor)
stops the process: ``/health`` and ``/ready`` answer 503 with the reason, the failed batch's
offsets are never committed, and the process exits with status 70 (:mod:`stream.liveness`).

What Faust and aiokafka do not offer as API (the fetch wait, the producer buffer's limit, the
current event, the store's persisted offsets, the aiokafka producer) is reached through
:mod:`stream.faust_runtime` only, which the worker checks before it builds anything.

Per micro-batch the agent sends the outputs, waits until Kafka has them, and only then writes
the table: state that exists implies its signals were delivered, so when a crash makes Kafka
deliver the uncommitted messages again, the processor may skip what the state already holds
(see "Redelivery" in :mod:`stream.processor`). Re-keyed copies carry their clickstream
coordinates in the ``clicksignals-origin`` header for the same reason.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import faust
import orjson
from faust.types import TP, EventT

from settings import load_settings
from settings.kafka import KafkaClientConfigError, faust_credentials
from settings.logs import faust_logging_config
from stream import faust_runtime, metrics
from stream.input_check import InputCheck
from stream.liveness import Liveness
from stream.model import ModelHolder, ModelLoadError, Scorer, load_model
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
    TopicPublisher,
    record_batch_publisher,
)

log = logging.getLogger(__name__)

settings = load_settings()
try:
    faust_runtime.require()  # an upgrade that moved a private part stops us here, named
except faust_runtime.RuntimeIncompatible as exc:
    print(f"clicksignals worker: refusing to start: {exc}", file=sys.stderr)
    raise SystemExit(2) from None
try:
    # The one place that builds every client's connection options (TLS, SASL): settings.kafka.
    _credentials = faust_credentials(settings)
except KafkaClientConfigError as exc:  # e.g. a missing CA file: the reason, not a traceback
    print(f"clicksignals worker: refusing to start: {exc}", file=sys.stderr)
    raise SystemExit(2) from None


app = faust.App(
    settings.app_id,
    broker=settings.broker_url,
    broker_credentials=_credentials,
    store=settings.store_url,
    datadir=str(settings.data_dir),
    topic_partitions=settings.partitions,
    topic_replication_factor=settings.replication_factor,
    # Topics come from `clicksignals topics create`; auto-creation would hide a partition
    # count that differs from the changelog's.
    topic_allow_declare=True,
    web_bind=settings.web_host,
    web_host=settings.web_host,
    web_port=settings.web_port,
    producer_linger_ms=5,
    # The agent appends a micro-batch's signals to one record batch per topic partition
    # (stream.publish); 16 kB (Faust's default) holds ~40 signals, so each batch would be cut
    # into several that aiokafka sends one after the other. Well under the broker's 1 MB.
    producer_max_batch_size=256 * 1024,
    stream_buffer_maxsize=4096,
    # Bigger fetches than Faust's 1 MiB per partition (~770 user states of ~1.3 kB): a fresh
    # worker replays the table's changelog ~2x faster (bench.state, 200k users: 41.8 s ->
    # 20.3 s in memory, 51.2 s -> 21.3 s into RocksDB) and the stream gets more per round
    # trip (bench.worker, 150k events: +15 % events/s). The record cap bounds one poll.
    consumer_max_fetch_size=16 * 1024 * 1024,
    broker_max_poll_records=10_000,
    table_standby_replicas=1,
    # Every topic and the table carry raw bytes: the processor does its own (de)coding.
    key_serializer="raw",
    value_serializer="raw",
    # CLICKSIGNALS_LOG_FORMAT=json: one JSON object per line, secrets masked (settings.logs).
    logging_config=faust_logging_config(settings),
)

# Faust's ProducerBuffer carries table changelog writes made through the table (here: only
# under test_context, see TableStore; on a real producer they go as record batches) and stops
# the stream whenever more than `max_messages` (100, no setting) are pending, then waits for
# them one at a time. A micro-batch writes one record per user it touched (hundreds), so the
# default stalled every batch (bench: ~16 % of wall time). Room for a few batches keeps it
# bounded without stalls.
faust_runtime.set_producer_buffer_limit(8 * settings.batch_size)

# Fetch wait. Faust creates the worker's aiokafka consumer with fetch_max_wait_ms=1500 (no
# setting); under live traffic the worker settled ~1.4 s behind at a third of its CPU
# (bench.worker latency at 3,100 events/s: send -> scored p50 1,265 ms; 58 ms at fetch wait
# 100 ms). An idle fetch answered every 50 ms costs the broker next to nothing.
faust_runtime.install_fetch_wait(settings.fetch_max_wait_ms)

_raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
clickstream = app.topic(settings.topic_clickstream, partitions=settings.partitions, **_raw)
routed = app.topic(settings.topic_routed, partitions=settings.partitions, **_raw)
demand_topic = app.topic(settings.topic_demand, **_raw)
churn_topic = app.topic(settings.topic_churn, **_raw)
dead_letter_topic = app.topic(settings.topic_dead_letter, **_raw)

user_state = app.Table(
    "user-state",
    default=None,
    key_type=str,
    value_type=bytes,
    partitions=settings.partitions,
)


liveness = Liveness("clicksignals worker")


@dataclass
class _StandInMessage:
    partition: int


@dataclass
class _StandIn:
    """What Faust's store reads of the current event, for a partition without one."""

    message: _StandInMessage


class TableStore:
    """Reads and writes the Faust table on behalf of a given source partition.

    Faust's RocksDB store files a key under the partition of the *current event*. A micro-
    batch spans partitions, so before touching a key we make an event of that key's partition
    current (the ContextVar Faust itself uses). Keys always belong to their event's partition
    (the processor re-keys strays), so store, changelog and source partition agree.
    """

    def __init__(self) -> None:
        self.events: dict[int, EventT] = {}
        self._stand_ins: dict[int, Any] = {}

    def _focus(self, partition: int) -> None:
        event = self.events.get(partition)
        if event is None:
            # Nothing of the partition in the batch (a watermark announcement's closes, or
            # the timer's own task): the store reads only ``event.message.partition``.
            event = self._stand_ins.get(partition)
            if event is None:
                event = self._stand_ins[partition] = _StandIn(_StandInMessage(partition))
        faust_runtime.set_current_event(event)

    def get(self, key: str, partition: int) -> bytes | None:
        self._focus(partition)
        value: bytes | None = user_state.get(key)
        return value

    def items(self) -> Iterator[tuple[str, bytes]]:
        for key, value in user_state.items():
            if value is not None:
                yield key, value

    def write(self, writes: dict[int, dict[str, bytes]]) -> None:
        """Through Faust's table: store, then one changelog message per key (ProducerBuffer)."""
        for partition, entries in writes.items():
            self._focus(partition)
            for key, value in entries.items():
                user_state[key] = value

    async def write_in_batches(
        self, writes: dict[int, dict[str, bytes]], publisher: RecordBatchPublisher
    ) -> None:
        """The same effect as :meth:`write`, with the changelog as record batches.

        ``Table.__setitem__`` is the store write plus ``send_changelog`` (a FutureMessage
        through the ProducerBuffer, one per key: ~11 % of the worker's busy time in py-spy).
        Here the store is written directly and the changelog records go out as one record
        batch per partition, to the partition of the key's source (as Faust sends them).
        When a batch is delivered its last offset becomes the store's persisted offset, which
        is what Faust's own changelog callback records: a RocksDB store restarted warm
        resumes the changelog after it. Not awaited here, like Faust's changelog sends; Faust
        flushes the producer before it commits source offsets.
        """
        store = faust_runtime.table_store(user_state)
        topic = user_state.changelog_topic.get_topic_name()
        # The changelog's bytes as Faust's send_changelog makes them (the table's key
        # serializer is Faust's default json: the key "u1" is b'"u1"'; values are raw).
        dumps_key, dumps_value = app.serializers.dumps_key, app.serializers.dumps_value
        key_type, key_ser = user_state.key_type, user_state.key_serializer
        value_type, value_ser = user_state.value_type, user_state.value_serializer
        records: list[OutRecord] = []
        for partition, entries in writes.items():
            self._focus(partition)
            for key, value in entries.items():
                store[key] = value
                records.append(
                    OutRecord(
                        topic,
                        dumps_key(key_type, key, serializer=key_ser),
                        dumps_value(value_type, value, serializer=value_ser),
                        partition=partition,
                    )
                )
        for batch in await publisher.submit(records):
            tp = TP(batch.topic, batch.partition)
            asyncio.ensure_future(batch.future).add_done_callback(
                functools.partial(_persist_offset, store, tp, batch.count)
            )


def _persist_offset(store: Any, tp: TP, count: int, delivered: asyncio.Future[Any]) -> None:
    if delivered.cancelled() or delivered.exception() is not None:
        # Not delivered: the producer reports it (and Faust's commit flush fails); the store
        # keeps the older persisted offset, so a warm restart replays from there.
        return
    faust_runtime.set_persisted_offset(store, tp, delivered.result().offset + count - 1)


def load_scorer() -> Scorer:
    """Load and check the model; a model that does not match ends the process with the reason.

    Runs when ``faust -A stream.app worker`` imports this module, so the worker refuses to
    start before it joins the consumer group.
    """
    try:
        return load_model(settings.model_dir, settings.ort_intra_op_threads)
    except ModelLoadError as exc:
        log.critical("refusing to start: %s", exc)
        print(f"clicksignals worker: refusing to start: {exc}", file=sys.stderr)
        raise SystemExit(3) from None


def build_processor(scorer: Scorer) -> Processor:
    return processor_from_settings(scorer, _store, settings)


_store = TableStore()
_holder = ModelHolder(settings.model_dir, settings.ort_intra_op_threads, scorer=load_scorer())
_processor = build_processor(_holder.scorer)
_input_check = InputCheck(_holder.scorer.manifest)
metrics.observe_model_reload("unchanged", _holder.version)


def processor() -> Processor:
    return _processor


@app.on_partitions_revoked.connect
async def on_revoked(app: faust.App, revoked: Any, **kwargs: Any) -> None:
    parts = {tp.partition for tp in revoked if tp.topic == settings.topic_clickstream}
    _processor.forget_partitions(parts)
    for p in parts:
        _last_read.pop(p, None)
    metrics.forget_processed({(tp.topic, tp.partition) for tp in revoked})


@app.on_partitions_assigned.connect
async def on_assigned(app: faust.App, assigned: Any, **kwargs: Any) -> None:
    # A partition's cached clock and close candidates are only valid while it is held
    # without a break. Revocation drops them, but a partition this worker held once, lost
    # and gets back (a failover) must never find a cache from before another worker moved
    # its state on, whatever the order of rebalance callbacks and in-flight batches: it is
    # rebuilt from the restored table at its first event.
    parts = {tp.partition for tp in assigned if tp.topic == settings.topic_clickstream}
    _processor.forget_partitions(parts)
    # A partition's idle timer starts at its assignment: the records fetched for it may sit
    # in the stream buffer, unprocessed, until then.
    now = time.monotonic()
    for p in parts:
        _last_read[p] = now


@app.agent(app.topic(settings.topic_clickstream, settings.topic_routed, **_raw))
async def score_clickstream(stream: Any) -> None:
    """Decode nothing, decide nothing: batch raw messages through the processor and send."""
    async for events in stream.take_events(settings.batch_size, within=settings.batch_timeout_s):
        await liveness.run_batch("score_clickstream", events, handle_batch)


_turn = asyncio.Lock()
"""Batches and watermark announcements take turns: an announcement must never overtake the
re-keyed copies of the batch that moved the source's time (see :func:`announce_watermarks`)."""
_last_read: dict[int, float] = {}
"""Clickstream partition -> monotonic time of the last batch that held a record of it."""


async def handle_batch(events: list[EventT[Any]]) -> None:
    async with _turn:
        await _handle_batch(events)


async def _handle_batch(events: list[EventT[Any]]) -> None:
    proc = processor()
    started = time.perf_counter()
    for e in events:
        if e.message.topic == settings.topic_clickstream:
            _last_read[e.message.partition] = time.monotonic()
    _store.events = {e.message.partition: e for e in events}
    batch = [
        RawMessage(
            e.message.key,
            e.message.value,
            e.message.topic,
            e.message.partition,
            e.message.offset,
            origin_from_headers(e.message.headers)
            if e.message.topic == settings.topic_routed
            else None,
        )
        for e in events
    ]
    out = proc.process(batch)
    _input_check.observe(m.value for m in batch)  # warns once per model version (its doc)
    await emit(out)
    metrics.observe_batch(len(events), out, time.perf_counter() - started)
    metrics.note_processed(batch)


async def emit(out: BatchOutput) -> None:
    """Send a batch's (or an announcement's) outputs, then store its state: delivered first,
    stored second (see the module doc)."""
    pub = publisher()
    await pub.publish(output_records(out))
    if isinstance(pub, RecordBatchPublisher):
        await _store.write_in_batches(out.writes, pub)
    else:
        _store.write(out.writes)


def output_records(out: BatchOutput) -> list[OutRecord]:
    """A batch's outputs as records: re-keyed strays, demand, churn, dead letters."""
    records = [
        OutRecord(settings.topic_routed, key, value, ((ORIGIN_HEADER, f"{p}:{o}".encode()),))
        for (key, value), (p, o) in zip(out.reroute, out.reroute_origins, strict=True)
    ]
    # After the copies: a watermark record announces only what went out before it.
    records += [OutRecord(settings.topic_routed, key, value) for key, value in out.watermarks]
    demand, churn = settings.topic_demand, settings.topic_churn
    records += [
        OutRecord(demand, s.user_id.encode(), orjson.dumps(s.to_dict())) for s in out.demand
    ]
    records += [OutRecord(churn, s.user_id.encode(), orjson.dumps(s.to_dict())) for s in out.churn]
    dead = settings.topic_dead_letter
    records += [OutRecord(dead, None, orjson.dumps(d.to_dict())) for d in out.dead_letters]
    return records


_topic_publisher = TopicPublisher(
    {t.get_topic_name(): t for t in (routed, demand_topic, churn_topic, dead_letter_topic)}
)
_batch_publisher: tuple[Any, RecordBatchPublisher] | None = None


def publisher() -> Publisher:
    """Record batches on the app's started aiokafka producer; Faust's ``Topic.send`` when
    there is none (``test_context()``). Re-made if Faust replaced its producer."""
    global _batch_publisher
    producer = faust_runtime.aiokafka_producer(app)
    if producer is None:
        return _topic_publisher
    if _batch_publisher is None or _batch_publisher[0] is not producer:
        _batch_publisher = (producer, record_batch_publisher(producer))
    return _batch_publisher[1]


def swap_model(scorer: Scorer) -> None:
    """Serve ``scorer`` from the next micro-batch on (called on the event loop, so never in
    the middle of ``Processor.process``, which does not await)."""
    _processor.scorer = scorer
    _processor.thresholds = risk_thresholds(scorer, settings.churn_high_threshold)
    _input_check.reset(scorer.manifest)


if settings.model_poll_interval_s > 0:

    @app.timer(interval=settings.model_poll_interval_s)
    async def poll_model() -> None:
        # Hashing and ONNX Runtime session creation off the loop; the swap itself on it.
        reload = await asyncio.to_thread(_holder.poll)
        metrics.observe_model_reload(reload.outcome, reload.serving)
        if reload.outcome == "swapped":
            swap_model(_holder.scorer)


async def _is_idle(p: int, now: float) -> bool:
    """Nothing read from clickstream partition ``p`` for the idle timeout, and nothing left to
    read: its consumer is at the log end. A consumer that is slow or paused with a backlog
    holds time back, however long it has been quiet."""
    last = _last_read.get(p)
    if last is None or now - last < settings.source_idle_timeout_s:
        return False
    tp = TP(settings.topic_clickstream, p)
    try:
        high = app.consumer.highwater(tp)
        done = metrics.processed_position(tp.topic, p)
        position = done if done is not None else await app.consumer.position(tp)
    except Exception as exc:  # revoked meanwhile, or nothing fetched yet: not idle
        log.debug("idleness of %s unknown: %r", tp, exc)
        return False
    return high is not None and position is not None and position >= high


STALL_S = 2.0
"""A gap between two announcement ticks longer than this (beyond the interval) is a stall."""
_last_tick: float | None = None


@app.timer(interval=settings.watermark_interval_s)
async def announce_watermarks() -> None:
    """Tell every partition how far the source partitions this worker holds have read (and
    which are idle). The other partitions close windows on the minimum over all sources."""
    global _last_tick
    now = time.monotonic()
    if _last_tick is not None and now - _last_tick > STALL_S + settings.watermark_interval_s:
        # The process did not run (stopped, starved): what it last knew of the log ends is
        # stale, and a source it then thought idle may have a backlog now. Idle timers
        # start again; the next fetches say what there is to read.
        log.warning("announcements stalled for %.1f s: idle timers restart", now - _last_tick)
        for p in _last_read:
            _last_read[p] = now
    _last_tick = now
    if app.rebalancing:
        return
    held = _held_partitions()
    if not held:
        return
    idle = [p for p in held if await _is_idle(p, now)]
    async with _turn:
        if app.rebalancing:  # came while we waited: the table may be restoring
            return
        held_now = _held_partitions()
        out = processor().heartbeat(held & held_now, [p for p in idle if p in held_now])
        await emit(out)
    metrics.observe_announcement(out, len(idle))


if settings.lag_interval_s > 0:

    @app.timer(interval=settings.lag_interval_s)
    async def update_consumer_lag() -> None:
        if app.rebalancing:
            return  # assignments are in flux; the next tick reports the new ones
        sources = {settings.topic_clickstream, settings.topic_routed}
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


liveness.watch(app, [score_clickstream])


@app.page("/health")
async def health(web: Any, request: Any) -> Any:
    body, status = liveness.health(
        {"model_version": _processor.scorer.version, "model_input": _input_check.status()}
    )
    return web.json(body, status=status)


@app.page("/ready")
async def ready(web: Any, request: Any) -> Any:
    body, status = liveness.ready(bool(app.rebalancing))
    return web.json(body, status=status)


@app.page("/model")
async def model_view(web: Any, request: Any) -> Any:
    return web.json({**processor().scorer.manifest.to_dict(), "input": _input_check.status()})


@app.page("/users/{user_id}")
async def user_view(web: Any, request: Any, user_id: str) -> Any:
    if len(user_id) > 256:
        return web.json({"error": "user id too long"}, status=400)
    view = processor().user_view(user_id)
    if view is None:
        return web.json({"error": "unknown user (or held by another worker)"}, status=404)
    return web.json(view)


def _held_partitions() -> set[int]:
    """The clickstream partitions this worker holds; none before its consumer has started."""
    try:
        assigned = app.consumer.assignment()
    except Exception:  # faust raises ConsumerNotStarted (and friends) before the first rebalance
        return set()
    return {tp.partition for tp in assigned if tp.topic == settings.topic_clickstream}


@app.page("/clocks")
async def clocks_view(web: Any, request: Any) -> Any:
    clocks = processor().clocks_view(_held_partitions())
    return web.json({str(k): v for k, v in clocks.items()})


@app.page("/metrics")
async def metrics_view(web: Any, request: Any) -> Any:
    body, content_type = metrics.render()
    return web.bytes(body, content_type=content_type)
