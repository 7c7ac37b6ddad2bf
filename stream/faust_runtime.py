"""Every reach into Faust's and aiokafka's private parts, in one room, each checked at start-up.

The worker and the subscribers rely on a few things faust-streaming and aiokafka do not offer
as API. Each has a reason (a measured cost or a correctness need) and lives here:

* the consumer's fetch wait (``AIOKafkaConsumerThread._create_worker_consumer``, aiokafka's
  ``_fetch_max_wait_ms``): Faust fixes it at 1,500 ms, which held live traffic ~1.4 s behind;
* ``ProducerBuffer.max_messages`` (100, no setting): changelog writes made through a table
  stalled every micro-batch at that limit;
* ``faust.streams._current_event``: Faust's stores file a key under the partition of the
  current event, and a micro-batch spans partitions;
* a table's store (``Table.data``) and its ``set_persisted_offset``: the worker writes the
  changelog as record batches and records their offsets as Faust's own callback would;
* ``Producer._producer``, the started aiokafka producer the record-batch publisher sends on;
* ``Consumer._new_offset`` and its ``_acked`` lists (:func:`install_unique_acks`): an offset
  acknowledged twice (once as a gap Faust skipped, once as the record itself) made the commit
  advance by one offset per commit interval (a backlog's commits minutes behind);
* ``AIOKafkaConsumerThread.seek_to_committed`` (:func:`install_seek_from_start`): a partition
  with no committed offset is not sought at all after a rebalance, so records Faust fetched
  and dropped around it are lost (the failover test: 4,168 events of a taken-over partition).
* ``AIOKafkaConsumerThread.subscribe`` and aiokafka's ``AIOKafkaConsumer._client``
  (:func:`install_subscribe_after_metadata`): a table's changelog topic that Faust created
  just before subscribing was missing from the first assignment, and the subscriber's first
  table write crashed its agent (``PartitionsMismatch``, in one CI run);
* ``Consumer.getmany`` and ``Consumer.perform_seek`` (:func:`install_seek_fence`): records of
  a fetch that a seek overtook were still delivered, out of step with the read offsets the seek
  had set, and some records after them were never processed (the event-time backlog test: 80
  to 169 records of one partition after a restart).
* bulk consumption (:class:`BulkConsumer`, :class:`BulkSource`, :func:`bulk_app`): the
  worker's source topics are taken out of each fetch as lists, below Faust's per-message
  delivery (``Consumer._getmany``; ``_read_offset``, ``_add_gap``, ``_commit_every``,
  ``_n_acked``, ``_unacked_messages``, the ``ConsumerMessage`` constructor and
  ``App._new_transport``). Faust's stream iteration cost ~75 µs per record on this machine
  (``stream.take_events``: a ``wait_first`` and an ``Event`` per record); a fetch's list
  costs ~4 µs per record (issue 16; ``bench/results/profile.md``).
* bulk restore (:func:`restore_in_bulk`, ``BulkConsumer._restore``): the user-state
  changelog is applied to the store a fetched list at a time, doing the recovery loop's
  per-record bookkeeping on ``Recovery.active_offsets`` / ``standby_offsets``,
  ``active_tps`` / ``standby_tps`` and ``tp_to_table``, and waking the loop through
  ``TableManager.changelog_queue``. Faust's recovery took ~130 µs per record of a 3 kB state
  (1M users: 131 s; the bulk path 25.5 s).

:func:`require` checks that every one is there and says what is missing; the worker calls it
before it builds anything, so an upgrade that moves one stops the worker at start-up with a
message instead of running slower or wrong. :func:`install_fetch_wait` is idempotent: building
the app twice in one process (tests do) does not stack wrappers.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final

import aiokafka
import faust
from faust.streams import _current_event
from faust.tables.base import Collection
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Producer as AIOKafkaFaustProducer
from faust.transport.producer import ProducerBuffer
from faust.types import TP
from faust.types.tuples import ConsumerMessage

log = logging.getLogger(__name__)

_ORIGINAL: Final = "_clicksignals_original"
"""Attribute of the installed wrapper that holds Faust's own ``_create_worker_consumer``."""

_fetch_max_wait_ms: int | None = None
"""What the installed wrapper gives every new worker consumer (``None``: Faust's default)."""

_SEEK_ORIGINAL: Final = "_clicksignals_seek_original"
"""Attribute of the installed ``seek_to_committed`` wrapper that holds Faust's own."""


class RuntimeIncompatible(RuntimeError):
    """The installed Faust or aiokafka lacks something this project relies on."""


def problems() -> list[str]:
    """What this module relies on and does not find, one line each (empty: all there)."""
    found: list[str] = []
    if not callable(getattr(AIOKafkaConsumerThread, "_create_worker_consumer", None)):
        found.append("faust AIOKafkaConsumerThread._create_worker_consumer (the fetch wait)")
    if "_fetch_max_wait_ms" not in _init_assignments(aiokafka.AIOKafkaConsumer):
        found.append("aiokafka AIOKafkaConsumer._fetch_max_wait_ms (the fetch wait)")
    if not isinstance(getattr(ProducerBuffer, "max_messages", None), int):
        found.append("faust ProducerBuffer.max_messages (the changelog buffer's limit)")
    if not callable(getattr(_current_event, "set", None)):
        found.append("faust.streams._current_event (the partition a store files keys under)")
    from faust.stores.base import Store

    if not callable(getattr(Store, "set_persisted_offset", None)):
        found.append("faust Store.set_persisted_offset (changelog offsets of batch writes)")
    if not callable(getattr(Consumer, "_new_offset", None)) or "self._acked = " not in (
        _init_assignments(Consumer)
    ):
        found.append("faust Consumer._new_offset and _acked (the offsets a commit may reach)")
    if not callable(getattr(AIOKafkaConsumerThread, "seek_to_committed", None)):
        found.append("faust AIOKafkaConsumerThread.seek_to_committed (seeks after a rebalance)")
    if not callable(getattr(Consumer, "getmany", None)) or not callable(
        getattr(Consumer, "perform_seek", None)
    ):
        found.append("faust Consumer.getmany and perform_seek (records a seek overtook)")
    if not callable(getattr(AIOKafkaConsumerThread, "subscribe", None)) or (
        "self._client = " not in _init_assignments(aiokafka.AIOKafkaConsumer)
    ):
        found.append("faust AIOKafkaConsumerThread.subscribe and aiokafka's consumer _client")
    if not callable(getattr(aiokafka.AIOKafkaConsumer, "seek_to_beginning", None)):
        found.append("aiokafka AIOKafkaConsumer.seek_to_beginning (seeks after a rebalance)")
    if "_producer" not in AIOKafkaFaustProducer.__annotations__:
        found.append("faust aiokafka Producer._producer (the record-batch publisher's producer)")
    found += _bulk_problems()
    return found


def _bulk_problems() -> list[str]:
    """What bulk consumption relies on and does not find."""
    import inspect

    found: list[str] = []
    consumer = faust_aiokafka.Consumer
    if not callable(getattr(consumer, "_getmany", None)):
        found.append("faust Consumer._getmany (bulk consumption: the fetch's record map)")
    init = _init_assignments(Consumer)
    for name in ("_read_offset", "_unacked_messages", "_commit_every"):
        if f"self.{name} = " not in init:
            found.append(f"faust Consumer.{name} (bulk consumption)")
    if not isinstance(getattr(Consumer, "_n_acked", None), int):
        found.append("faust Consumer._n_acked (bulk consumption)")
    if not callable(getattr(Consumer, "_add_gap", None)):
        found.append("faust Consumer._add_gap (bulk consumption: offset gaps)")
    try:
        params = list(inspect.signature(ConsumerMessage.__init__).parameters)
    except (TypeError, ValueError):
        params = []
    if params[1:13] != list(_CONSUMER_MESSAGE_FIELDS) or "generation_id" not in params:
        found.append("faust ConsumerMessage(...) fields (bulk consumption)")
    if not callable(getattr(faust.App, "_new_transport", None)):
        found.append("faust App._new_transport (bulk consumption: the worker's consumer)")
    recovery = _init_assignments(Recovery)
    for name in ("active_tps", "standby_tps", "active_offsets", "standby_offsets", "tp_to_table"):
        if f"self.{name} = " not in recovery:
            found.append(f"faust Recovery.{name} (bulk restore)")
    if "_on_changelog_event" not in _init_assignments(Collection):
        found.append("faust Collection._on_changelog_event (bulk restore)")
    return found


_CONSUMER_MESSAGE_FIELDS: Final = (
    "topic",
    "partition",
    "offset",
    "timestamp",
    "timestamp_type",
    "headers",
    "key",
    "value",
    "checksum",
    "serialized_key_size",
    "serialized_value_size",
    "tp",
)


def require() -> None:
    """Raise :class:`RuntimeIncompatible` naming everything :func:`problems` finds."""
    missing = problems()
    if missing:
        raise RuntimeIncompatible(
            "the installed faust-streaming/aiokafka lack what this worker relies on: "
            + "; ".join(missing)
            + " (see stream/faust_runtime.py; install the versions pinned in pyproject.toml)"
        )


def _init_assignments(cls: type) -> str:
    """The source of ``cls.__init__`` (where aiokafka sets its private attributes), or ''."""
    import inspect

    try:
        return inspect.getsource(cls.__init__)  # type: ignore[misc]  # the class's own, on purpose
    except (OSError, TypeError):
        return ""


def install_fetch_wait(fetch_max_wait_ms: int) -> None:
    """Give every worker consumer Faust creates from now on ``fetch_max_wait_ms``.

    aiokafka keeps one fetch request in flight per broker and leaves out of it the partitions
    whose records are still buffered; when that request holds only partitions with nothing new,
    the broker holds it the full wait, and data arriving on the others waits too.
    """
    global _fetch_max_wait_ms
    _fetch_max_wait_ms = fetch_max_wait_ms
    current = AIOKafkaConsumerThread._create_worker_consumer
    if getattr(current, _ORIGINAL, None) is not None:
        return  # installed before: the wrapper reads the new value
    original: Callable[..., Any] = current

    def create_worker_consumer(self: AIOKafkaConsumerThread, transport: Any) -> Any:
        consumer = original(self, transport)
        if _fetch_max_wait_ms is not None:
            # Read by aiokafka when it builds its Fetcher in start(), which comes after this.
            consumer._fetch_max_wait_ms = _fetch_max_wait_ms
        return consumer

    setattr(create_worker_consumer, _ORIGINAL, original)
    AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer  # type: ignore[method-assign]


class UniqueOffsets(list[int]):
    """A partition's acknowledged offsets whose ``sort`` also drops repeats.

    Faust's ``Consumer._new_offset`` appends the offsets of a gap it skipped to the
    acknowledged ones, sorts them, and commits up to the end of the first run of consecutive
    numbers. When the gap's records are delivered and acknowledged too (a fetch that raced a
    seek), each offset is there twice, every run is one or two long, and the commit advances by
    one offset per commit interval: measured in the event-time backlog test, three clickstream
    partitions committed 9,205, 9,206, 9,207, ... every 2.8 s for three minutes while the
    worker had long processed them. Unique offsets give Faust's own computation its meaning.
    """

    def sort(self, *, key: Any = None, reverse: bool = False) -> None:
        self[:] = sorted(set(self), key=key, reverse=reverse)


_UNIQUE_ORIGINAL: Final = "_clicksignals_unique_original"


def install_unique_acks() -> None:
    """Make each partition's acknowledged offsets a :class:`UniqueOffsets` before Faust
    computes the offset to commit from them. Idempotent."""
    current = Consumer._new_offset
    if getattr(current, _UNIQUE_ORIGINAL, None) is not None:
        return
    original: Callable[..., Any] = current

    def new_offset(self: Consumer, tp: Any) -> int | None:
        acked = self._acked[tp]
        if type(acked) is not UniqueOffsets:
            # The same list object from now on: ``ack`` appends to what the mapping holds.
            self._acked[tp] = UniqueOffsets(acked)
        result: int | None = original(self, tp)
        return result

    setattr(new_offset, _UNIQUE_ORIGINAL, original)
    Consumer._new_offset = new_offset  # type: ignore[method-assign]


def install_seek_from_start() -> None:
    """After a rebalance, seek a stream partition with no committed offset to its start.

    Faust drops fetched records of a partition it has just paused or whose generation ended
    (``Consumer.getmany``), counting on the seek to the committed offsets that follows every
    rebalance (``perform_seek``) to fetch them again. aiokafka's ``seek_to_committed`` seeks
    only partitions whose committed offset is above 0: for one that no worker has committed
    yet (a worker killed before its first commit) the position stays where the dropped fetch
    left it, and everything before it is never processed. Measured in the failover test:
    after the takeover a partition resumed at offset 5,328, and its 4,168 events before it
    were neither processed nor dead-lettered while the group's lag went to 0. Seeking such a
    partition to its first offset is what the consumer's ``auto_offset_reset="earliest"``
    means; what the state already holds is skipped as redelivered (:mod:`stream.processor`).
    Changelog and other partitions that no stream acknowledges keep Faust's handling.
    Idempotent, like :func:`install_fetch_wait`.
    """
    current = AIOKafkaConsumerThread.seek_to_committed
    if getattr(current, _SEEK_ORIGINAL, None) is not None:
        return
    original: Callable[..., Any] = current

    async def seek_to_committed(self: AIOKafkaConsumerThread) -> Any:
        committed = await original(self)
        app = self.consumer.app
        unset = [
            tp
            for tp, offset in committed.items()
            if not offset  # None or 0: aiokafka's seek_to_committed left it alone
            and _is_stream_partition(app, tp)
        ]
        if unset:
            log.info(
                "no committed offset for %s: reading from the start",
                ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(unset)),
            )
            await self.call_thread(self._ensure_consumer().seek_to_beginning, *unset)
        return committed

    setattr(seek_to_committed, _SEEK_ORIGINAL, original)
    AIOKafkaConsumerThread.seek_to_committed = seek_to_committed  # type: ignore[method-assign]


_SUBSCRIBE_ORIGINAL: Final = "_clicksignals_subscribe_original"

METADATA_WAIT_S: Final = 10.0
"""How long a subscription waits for its topics to be in the consumer's metadata."""


async def await_topics(consumer: Any, topics: set[str], timeout_s: float) -> set[str]:
    """Refresh ``consumer``'s metadata until every topic of ``topics`` has partitions in it,
    for at most ``timeout_s``; returns the topics still missing (run on the consumer's loop)."""
    client = consumer._client
    missing = {t for t in topics if client.cluster.partitions_for_topic(t) is None}
    if not missing:
        return missing
    for topic in sorted(missing):
        # The metadata request names the client's topics once it has any: add these to it.
        await client.add_topic(topic)
    deadline = time.monotonic() + timeout_s
    while True:
        missing = {t for t in missing if client.cluster.partitions_for_topic(t) is None}
        if not missing or time.monotonic() >= deadline:
            return missing
        await asyncio.sleep(0.1)
        await client.force_metadata_update()


def install_subscribe_after_metadata(timeout_s: float = METADATA_WAIT_S) -> None:
    """Subscribe only once the consumer's metadata has the subscribed topics.

    Faust creates a table's changelog topic when the table starts and subscribes to it right
    after. The consumer's metadata may not have the new topic yet (measured: 95 ms after its
    creation it was "not found in cluster metadata"), the group's first assignment then leaves
    it out, and Faust's first write to the table raises ``PartitionsMismatch`` ("changelog ...
    has 0 partitions"), which stopped the alerter of the demo in one CI run (a later
    rebalance would have assigned it). Waiting here, at most ``timeout_s``, for the topics to
    have partitions makes the first assignment whole; a topic still missing then is logged and
    left to Faust as before. Idempotent.
    """
    current = AIOKafkaConsumerThread.subscribe
    if getattr(current, _SUBSCRIBE_ORIGINAL, None) is not None:
        return
    original: Callable[..., Any] = current

    async def subscribe(self: AIOKafkaConsumerThread, topics: Any) -> None:
        wanted = set(topics)
        missing = await self.call_thread(await_topics, self._ensure_consumer(), wanted, timeout_s)
        if missing:
            log.warning(
                "subscribing to %s, not in the broker's metadata after %.0f s",
                ", ".join(sorted(missing)),
                timeout_s,
            )
        await original(self, wanted)

    setattr(subscribe, _SUBSCRIBE_ORIGINAL, original)
    AIOKafkaConsumerThread.subscribe = subscribe  # type: ignore[method-assign]


_FENCE_ORIGINAL: Final = "_clicksignals_fence_original"
_SEEKS: Final = "_clicksignals_seeks"
"""Consumer attribute: seeks begun plus seeks ended (odd while one runs)."""


def _is_stream_partition(app: Any, tp: Any) -> bool:
    """A partition a stream reads and acknowledges (not a changelog, which Faust positions
    itself and never seeks to a committed offset)."""
    return tp.topic not in app.tables.changelog_topics and bool(
        app.topics.acks_enabled_for(tp.topic)
    )


async def _seek_again(consumer: Any, dropped: dict[Any, int]) -> None:
    """Seek to the committed offsets again after records were dropped (``dropped``: counts
    per partition of a fetch a seek overtook; empty: a bulk buffer was cleared)."""
    if dropped:
        counts = ", ".join(f"{n} of {t.topic}[{t.partition}]" for t, n in dropped.items())
        log.info("a seek overtook a fetch: its records (%s) are fetched again", counts)
    try:
        await consumer.perform_seek()
    except Exception as exc:  # as Faust's own getmany treats a failed seek
        log.warning("seek after dropped records failed (the next rebalance seeks): %r", exc)


def install_seek_fence() -> None:
    """Deliver no stream record of a fetch that a seek or a rebalance overtook.

    Faust's fetcher (``Consumer._drain_messages``) takes a fetch's records from
    ``Consumer.getmany`` one at a time, and a seek to the committed offsets
    (``perform_seek``: after every rebalance, when recovery resumes the streams) can land
    between two of them. Faust checks only the consumer generation, and reads it *after*
    the fetch returned, so the rest of the fetch is still delivered: its offsets are above
    the read offset the seek just set, Faust records the difference as a gap it "skipped"
    (counted as acknowledged when it commits), and what the seek fetches again is dropped as
    already read. Measured in the event-time backlog test, whose restarted worker resumes its
    stream partitions while it still reads the changelog: records of the fetch that raced the
    seek reached the agent up to the seek, the next 80 to 169 records of that partition never
    did, and one customer's window close came out with a different score.

    A fetch is therefore stamped with the seek count and the generation before it starts;
    its records of stream partitions are dropped if a seek began or ended, or the
    generation changed, before they are delivered, and the partitions are sought to their
    committed offsets again once the fetch is used up, so that its records are fetched again,
    in order, with read offsets that match them. (Dropping alone is not enough: aiokafka
    keeps a fetch that was in flight at the offset the seek went to, so its position is past
    the records dropped; measured, 1,000 records of one partition never came again.) Records
    already delivered are kept; the processor skips what its state holds. Changelog records
    are delivered as Faust delivers them. Idempotent.
    """
    current_getmany = Consumer.getmany
    if getattr(current_getmany, _FENCE_ORIGINAL, None) is not None:
        return
    original_getmany: Callable[..., Any] = current_getmany
    original_seek: Callable[..., Any] = Consumer.perform_seek

    async def perform_seek(self: Consumer) -> None:
        setattr(self, _SEEKS, getattr(self, _SEEKS, 0) + 1)
        try:
            await original_seek(self)
        finally:
            setattr(self, _SEEKS, getattr(self, _SEEKS, 0) + 1)

    async def getmany(self: Consumer, timeout: float) -> AsyncIterator[tuple[Any, Any]]:
        seeks = getattr(self, _SEEKS, 0)
        app = self.app
        generation = app.consumer_generation_id
        dropped: dict[Any, int] = {}
        async for tp, message in original_getmany(self, timeout):
            overtaken = (
                seeks % 2 == 1
                or getattr(self, _SEEKS, 0) != seeks
                or app.consumer_generation_id != generation
            )
            if overtaken and _is_stream_partition(app, tp):
                dropped[tp] = dropped.get(tp, 0) + 1
                continue
            yield tp, message
        if dropped:
            await _seek_again(self, dropped)

    setattr(getmany, _FENCE_ORIGINAL, original_getmany)
    Consumer.getmany = getmany  # type: ignore[method-assign]
    Consumer.perform_seek = perform_seek  # type: ignore[method-assign]


# --- bulk consumption ----------------------------------------------------------------------


class BulkBuffer:
    """Fetched lists of one bulk agent's records, between the fetch loop and the agent.

    Bounded in records: :meth:`put` waits while a list does not fit, and with it the fetch
    loop (the back-pressure a full channel queue gives Faust's own path); a list larger than
    the bound is admitted alone into an empty buffer, so the bound is ``max(maxsize, one
    partition's fetch)``. Registered with the app's flow control like Faust's channel queues:
    a rebalance, a stop or a resume clears it (:meth:`clear`), and its records, never tracked
    nor acknowledged, are fetched again from the committed offsets.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._lists: deque[list[Any]] = deque()
        self._size = 0
        self._epoch = 0
        """Moved on by :meth:`clear`: a put waiting across a clear drops its list."""
        self._room: asyncio.Event | None = None
        self._ready: asyncio.Event | None = None
        self.dropped = 0

    def _events(self) -> tuple[asyncio.Event, asyncio.Event]:
        # Created on first use, on the loop that runs the app (not at construction).
        if self._room is None or self._ready is None:
            self._room, self._ready = asyncio.Event(), asyncio.Event()
            self._room.set()
        return self._room, self._ready

    def qsize(self) -> int:
        return self._size

    @property
    def epoch(self) -> int:
        """How many times the buffer was cleared: a list fetched before a clear is stale."""
        return self._epoch

    def clear(self) -> None:
        """Drop what is buffered (Faust's ``FlowControlEvent.clear`` calls this)."""
        room, ready = self._events()
        self.dropped += self._size
        self._lists.clear()
        self._size = 0
        self._epoch += 1
        ready.clear()
        room.set()

    async def room_for(self, count: int, epoch: int) -> bool:
        """Wait until ``count`` records fit; ``False`` when a clear came since ``epoch``."""
        room, _ = self._events()
        while self._size and self._size + count > self.maxsize and self._epoch == epoch:
            room.clear()
            await room.wait()
        return self._epoch == epoch

    def append(self, records: list[Any]) -> None:
        """Add ``records`` (call right after :meth:`room_for`, with no wait in between)."""
        _, ready = self._events()
        self._lists.append(records)
        self._size += len(records)
        ready.set()

    async def put(self, records: list[Any], valid: Callable[[], bool], epoch: int) -> bool:
        """Append ``records`` fetched at ``epoch``, waiting for room; ``False`` (nothing
        appended) when a clear came since or ``valid()`` no longer holds once there is room."""
        if not await self.room_for(len(records), epoch) or not valid():
            self.dropped += len(records)
            return False
        self.append(records)
        return True

    async def get(self, most: int) -> list[Any]:
        """Wait for records; at most ``most`` of them, whole lists where they fit."""
        room, ready = self._events()
        while not self._lists:
            ready.clear()
            await ready.wait()
        lists = self._lists
        out = lists.popleft()
        if len(out) > most:
            lists.appendleft(out[most:])
            out = out[:most]
        else:
            while lists and len(out) + len(lists[0]) <= most:
                out = out + lists.popleft()
        self._size -= len(out)
        if not lists:
            ready.clear()
        if self._size < self.maxsize:
            room.set()
        return out


class BulkConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer that hands the records of bulk topics to their
    :class:`BulkBuffer` a fetched list at a time; every other topic (changelogs, the other
    agents' topics) goes down Faust's own per-message path unchanged.

    Per list it does what Faust does per message (``Consumer._drain_messages`` and the
    conductor's handler): wait for flow control and the producer buffer, drop records below
    the partition's read offset, record offset gaps of acknowledged topics, count one
    reference (the one agent), move the read offset on, and run ``broker_commit_every``. It
    applies :func:`install_seek_fence`'s rule to whole lists: a list whose fetch a seek or a
    rebalance overtook is dropped, and the partitions sought to their committed offsets
    again once the fetch is used up.
    """

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> Any:
        buffers: dict[str, BulkBuffer] = getattr(self.app, _BULK_BUFFERS, {})
        seen: dict[int, int] = self.__dict__.setdefault(_BULK_EPOCHS, {})
        if any(b.epoch != seen.get(id(b), 0) for b in buffers.values()):
            # A buffer was cleared (a rebalance; Faust's flow control clears its queues on
            # every resume, also right after recovery's seek to the committed offsets): its
            # lists, and any fetch in flight then, are dropped, and the read offsets had
            # moved past them. Seek before fetching on, or they would never come again.
            seen.update({id(b): b.epoch for b in buffers.values()})
            await _seek_again(self, {})
        seeks = getattr(self, _SEEKS, 0)
        generation = self.app.consumer_generation_id
        epochs = {id(b): b.epoch for b in buffers.values()}
        records = await super()._getmany(active_partitions, timeout)
        restored: dict[str, Any] = getattr(self.app, _BULK_RESTORED, {})
        if records and restored:
            # Faust's own rule for what it delivers: the generation once the fetch returned
            # (a fetch that a rebalance overtook returns nothing of a partition recovery has
            # sought since: aiokafka drops a fetch whose position moved).
            records = await self._restore(records, restored, self.app.consumer_generation_id)
        if not records or not buffers:
            return records
        last_fetched: dict[Any, int] = self.__dict__.setdefault(_BULK_FETCHED, {})
        last_fetched.update(
            {tp: r[-1].offset for tp, r in records.items() if tp.topic in buffers and r}
        )
        rest: dict[Any, Any] = {}
        dropped: dict[Any, int] = {}
        for tp, fetched in records.items():
            buffer = buffers.get(tp.topic)
            if buffer is None:
                rest[tp] = fetched
            elif not await self._divert(tp, fetched, buffer, seeks, generation, epochs[id(buffer)]):
                dropped[tp] = len(fetched)
        if dropped:
            await _seek_again(self, dropped)
        return rest

    async def _restore(
        self, records: Mapping[Any, list[Any]], restored: dict[str, Any], generation: int
    ) -> dict[Any, list[Any]]:
        """Apply the fetched changelog records of bulk-restored tables to their stores, a
        list at a time; return the rest of the record map for Faust's path.

        Faust's path costs ~130 µs a record on a 3 kB state (a task per record in
        ``_drain_messages``, the conductor's decode and queue, the recovery loop's per-event
        bookkeeping): 131 s for 1M users. Per list this does what those do per record: flow
        control, the read offset (records below it dropped), the recovery's offset (records
        at or below it already applied), the table's ``apply_changelog_batch`` on events the
        changelog channel decoded, and the recovery's offset moved on. A list fetched before
        a rebalance (or while flow control was suspended for one) is dropped, as Faust's
        path drops it (it clears the queue on resume, and recovery seeks again); as Faust's
        ``Consumer.getmany``, "before" means before the fetch *returned*: a fetch that began
        before a rebalance and returned after recovery's seek holds records recovery needs
        (dropping them lost them for good in the failover test). The
        recovery loop's own checks (recovery done, standbys ready) run on one wake-up event
        per fetch: the last event applied, again, which the loop reads and skips.
        """
        app = self.app
        tables: Any = app.tables  # the TableManager (its type declares neither attribute)
        recovery = tables.recovery
        rest: dict[Any, list[Any]] = {}
        woken: Any = None
        for tp, fetched in records.items():
            channel = restored.get(tp.topic)
            if channel is None or not fetched:
                rest[tp] = fetched
                continue
            if tp in recovery.active_tps:
                offsets = recovery.active_offsets
            elif tp in recovery.standby_tps:
                offsets = recovery.standby_offsets
            else:  # neither: Faust's path logs it
                rest[tp] = fetched
                continue
            await app.flow_control.acquire()
            if app.consumer_generation_id != generation or not self.flow_active:
                continue
            read = self._read_offset[tp]
            seen = offsets.get(tp)
            floor = max(read if read is not None else -1, seen + 1 if seen is not None else -1)
            if fetched[0].offset < floor:
                fetched = [r for r in fetched if r.offset >= floor]
                if not fetched:
                    continue
            events = []
            for message in _messages(fetched, tp, generation):
                try:
                    events.append(await channel.decode(message, propagate=True))
                except Exception as exc:
                    # As Faust's recovery loop does with a decode error: logged, the record
                    # lost, the restore goes on. Raised, it would stop the consumer at every
                    # start while the record stays in the changelog.
                    log.error("%s offset %d not restored: %r", tp, message.offset, exc)
            if events:
                recovery.tp_to_table[tp].apply_changelog_batch(events)
                woken = events[-1]
            offsets[tp] = self._read_offset[tp] = fetched[-1].offset
        if woken is not None and (
            woken.message.tp in recovery.active_tps or woken.message.tp in recovery.standby_tps
        ):
            # The last event applied, again: its offset is the recovery's already, so the loop
            # applies nothing and runs its checks. A real event, not a stand-in: were the loop
            # ever to apply it (its partition moved while it waited in the queue, a path where
            # Faust applies with the previous event's table), it writes what is already there.
            await tables.changelog_queue.put(woken)
        return rest

    def _overtaken(self, seeks: int, generation: int) -> bool:
        return (
            seeks % 2 == 1
            or getattr(self, _SEEKS, 0) != seeks
            or self.app.consumer_generation_id != generation
            or not self.flow_active
        )

    async def _divert(
        self,
        tp: TP,
        fetched: list[Any],
        buffer: BulkBuffer,
        seeks: int,
        generation: int,
        epoch: int,
    ) -> bool:
        """Hand one partition's fetched records to ``buffer``; ``False`` if a seek, a
        rebalance or a clear of the buffer overtook the fetch (nothing handed over)."""
        app = self.app
        await app.flow_control.acquire()
        await app.producer.buffer.wait_until_ebb()
        if self._overtaken(seeks, generation):
            return False
        read = self._read_offset[tp]
        if read is not None and fetched[0].offset < read:
            fetched = [r for r in fetched if r.offset >= read]
            if not fetched:
                return True
        if app.topics.acks_enabled_for(tp.topic):
            previous = read
            for record in fetched:
                # As _drain_messages: a jump past the read offset is a gap Faust counts as
                # acknowledged (transaction markers, compacted offsets).
                if previous and record.offset - previous > 1:
                    await self._add_gap(tp, previous + 1, record.offset)
                previous = record.offset
        # Room first, the messages after: a lagging agent then holds the fetched records
        # only, as Faust's own path does, not a second object per record as well.
        if not await buffer.room_for(len(fetched), epoch) or self._overtaken(seeks, generation):
            buffer.dropped += len(fetched)
            return False
        messages = _messages(fetched, tp, generation)
        for message in messages:
            message.refcount = 1  # the conductor's incref: one agent reads the topic
        app.monitor.track_tp_end_offset(tp, self.highwater(tp))
        buffer.append(messages)  # no wait since room_for: nothing came in between
        self._read_offset[tp] = messages[-1].offset
        if self._commit_every is not None and self._n_acked >= self._commit_every:
            self._n_acked = 0
            await self.commit()
        return True


def _messages(fetched: list[Any], tp: TP, generation: int) -> list[ConsumerMessage]:
    """Faust's consumer messages of fetched aiokafka records (as ``Consumer._to_message``)."""
    return [
        ConsumerMessage(
            r.topic,
            r.partition,
            r.offset,
            r.timestamp / 1000.0 if r.timestamp is not None else None,  # type: ignore[arg-type]
            r.timestamp_type,
            r.headers,
            r.key,
            r.value,
            r.checksum,
            r.serialized_key_size,
            r.serialized_value_size,
            tp,
            generation_id=generation,
        )
        for r in fetched
    ]


_BULK_RESTORED: Final = "_clicksignals_bulk_restored"
"""App attribute: changelog topic name -> its channel, for tables restored in bulk."""

_BULK_EPOCHS: Final = "_clicksignals_bulk_epochs"
"""Consumer attribute: id of each bulk buffer -> its epoch when the consumer last sought."""

_BULK_FETCHED: Final = "_clicksignals_bulk_fetched"
"""Consumer attribute: bulk topic partition -> the last offset fetched for it."""

_BULK_BUFFERS: Final = "_clicksignals_bulk_buffers"
"""App attribute: bulk topic name -> its :class:`BulkBuffer`."""


def restore_in_bulk(app: faust.App, table: Any) -> None:
    """Have a :class:`BulkApp`'s consumer apply ``table``'s changelog records to its store a
    fetched list at a time (``BulkConsumer._restore``), in recovery and for standby replicas,
    instead of one Faust event per record. Refused for a table with an ``on_changelog_event``
    callback: the bulk path calls none."""
    if getattr(table, "_on_changelog_event", None) is not None:
        raise ValueError(f"table {table.name!r} has an on_changelog_event callback")
    topic = table.changelog_topic
    app.__dict__.setdefault(_BULK_RESTORED, {})[topic.get_topic_name()] = topic


class BulkSource:
    """What a bulk agent reads: its topics' records in fetched lists.

    The agent stays a Faust agent on its topic (so the subscription, the consumer group,
    co-partitioned tables, recovery and rebalances are Faust's), and iterates
    :meth:`batches` instead of its stream. Each list's records are tracked as Faust's stream
    tracks the event it hands out (``wait_empty`` at a rebalance waits for them); :meth:`ack`
    is called once the batch's outputs are delivered (by the worker, when their
    acknowledgements come, which may be while the agent processes the next batch), and only
    then may their offsets be committed. A batch that raised, or whose outputs were not
    delivered, is not acknowledged (it is held back) and is no longer tracked: the process
    fails and exits (:mod:`stream.liveness`) and a rebalance must not wait for it.
    """

    def __init__(self, app: faust.App, topic: Any, *, maxsize: int, most: int) -> None:
        self.app = app
        self.most = most
        self.buffer = BulkBuffer(maxsize)
        app.flow_control.manage_queue(self.buffer)  # type: ignore[arg-type]  # duck-typed queue
        # The flow control holds its queues weakly: the app holds the buffer.
        buffers = app.__dict__.setdefault(_BULK_BUFFERS, {})
        buffers.update(dict.fromkeys(topic.topics, self.buffer))

    async def batches(self, stream: Any) -> AsyncIterator[list[ConsumerMessage]]:
        """The agent's batches. ``stream`` is its Faust stream: iterating its channel once
        is what subscribes the topic (``Topic.__aiter__``), as a stream agent does."""
        aiter(stream.channel)
        app = self.app
        consumer: Any = app.consumer
        track = consumer._unacked_messages.add
        flow = app.flow_control
        while True:
            batch = await self.buffer.get(self.most)
            if not flow.is_active():
                continue  # suspended for a rebalance: fetched again after its seek
            generation = app.consumer_generation_id
            if batch[0].generation_id != generation or batch[-1].generation_id != generation:
                batch = [m for m in batch if m.generation_id == generation]
                if not batch:
                    continue
            for message in batch:
                message.tracked = True
                track(message)
            try:
                yield batch
            except BaseException:
                self.untrack(batch)
                raise

    def ack(self, batch: list[ConsumerMessage]) -> None:
        """The batch's outputs are delivered: its offsets may be committed."""
        consumer = self.app.consumer
        for message in batch:
            message.ack(consumer)

    def untrack(self, batch: list[ConsumerMessage]) -> None:
        """Stop ``wait_empty`` waiting for a batch that will never be acknowledged."""
        consumer: Any = self.app.consumer
        unacked = consumer._unacked_messages
        for message in batch:
            unacked.discard(message)


def fetched_offset(app: Any, tp: TP) -> int | None:
    """The last offset a bulk consumer fetched for ``tp`` since its assignment (``None``:
    nothing, or not a bulk consumer). Fetched is not processed: a bulk agent's records wait
    in its buffer, so the consumer's position says nothing of what is left to process."""
    fetched: dict[Any, int] = getattr(app.consumer, "__dict__", {}).get(_BULK_FETCHED, {})
    return fetched.get(tp)


def forget_fetched(app: Any, tps: Any) -> None:
    """Partitions revoked: what was fetched for them no longer counts."""
    fetched: dict[Any, int] = getattr(app.consumer, "__dict__", {}).get(_BULK_FETCHED, {})
    for tp in tps:
        fetched.pop(tp, None)


class _BulkTransport(faust_aiokafka.Transport):
    Consumer = BulkConsumer


class BulkApp(faust.App):
    """A ``faust.App`` whose consumer is :class:`BulkConsumer` (it passes every record on
    as Faust does until a :class:`BulkSource` claims a topic)."""

    def _new_transport(self) -> Any:
        base = super()._new_transport()
        if type(base) is not faust_aiokafka.Transport:
            return base  # memory:// and other transports: Faust's own
        return _BulkTransport(self.conf.broker_consumer, self)


def set_producer_buffer_limit(max_messages: int) -> None:
    """Let Faust's producer buffer hold ``max_messages`` before it stops the stream to flush."""
    ProducerBuffer.max_messages = max_messages


def set_current_event(event: Any) -> None:
    """Make ``event`` Faust's current event (its stores read ``event.message.partition``)."""
    _current_event.set(weakref.ref(event))


def table_store(table: Any) -> Any:
    """The store behind a Faust table (written directly by the batch changelog path)."""
    return table.data


def set_persisted_offset(store: Any, tp: Any, offset: int) -> None:
    """Record a delivered changelog offset in ``store``, as Faust's own changelog callback does
    (a RocksDB store restarted warm resumes the changelog after it)."""
    store.set_persisted_offset(tp, offset)


def aiokafka_producer(app: Any) -> aiokafka.AIOKafkaProducer | None:
    """The started aiokafka producer of ``app``; ``None`` when the app runs without one
    (``test_context()``'s producer, or before start-up).

    Raises :class:`RuntimeIncompatible` when the app has Faust's aiokafka producer but it no
    longer carries its aiokafka producer where we read it: a silent fallback to per-record
    sends would cost about a third of the throughput."""
    producer = app.producer
    if not isinstance(producer, AIOKafkaFaustProducer):
        return None
    if not hasattr(producer, "_producer"):
        raise RuntimeIncompatible("faust's aiokafka Producer has no _producer attribute")
    inner = producer._producer
    return inner if isinstance(inner, aiokafka.AIOKafkaProducer) else None


__all__ = [
    "BulkApp",
    "BulkBuffer",
    "BulkConsumer",
    "BulkSource",
    "RuntimeIncompatible",
    "UniqueOffsets",
    "aiokafka_producer",
    "await_topics",
    "fetched_offset",
    "forget_fetched",
    "install_fetch_wait",
    "install_seek_fence",
    "install_seek_from_start",
    "install_subscribe_after_metadata",
    "install_unique_acks",
    "problems",
    "require",
    "set_current_event",
    "set_persisted_offset",
    "set_producer_buffer_limit",
    "table_store",
]
