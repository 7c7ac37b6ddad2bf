"""The worker's logic, without Faust: raw messages in, signals, dead letters and state out.

Owns :class:`Processor`, which takes a micro-batch of raw Kafka messages and returns what to
send and what to store. Per message: validate (invalid → dead letter with reason), route
(a message on the wrong partition for its user is re-keyed, never folded into state there),
drop late events (their window already closed for the partition → dead letter ``late``),
fold the event into the user's window state, maybe request an activity ("fresh") score, and
move the source partition's time on; when the partition's watermark passes a window end, its
users are closed and scored by :func:`features.windows.close_population`: every user active
within the lookback (silent users included) and every dormant customer (an order, no event in
the lookback) whose latest window-close churn is below ``dormant_churn_floor``.

Dormant customers: a customer who leaves the lookback stays a close candidate while under the
floor; a close whose score reaches the floor is their last (that signal stands) until an event
makes them active again, which bounds the cost of a base of long-dormant customers (see
``bench.dormant``). A never-ordered user leaves the candidates with the lookback. The rule
reads the previous close's score, so when one batch closes several windows, a dormant user's
later closes are scored speculatively in the batch's one inference call and kept only if the
score before them, known by then, is under the floor (:meth:`Processor._score`).

All scoring requests of a batch go to ONNX Runtime in one call; each user's state is encoded
once per batch. The Faust agent in :mod:`stream.app` only moves bytes between Kafka, the
table and this class, so everything here is unit-tested with a plain dict as the store.

Event time: a partition's watermark is the minimum over every clickstream partition, since
any of them can send it a user's events through re-keying (:meth:`Processor.watermark`). Its
own source counts by what this processor read of it (bounded by the wall clock); every other
source by its latest watermark record read on the partition's re-keying topic partition, which
comes after the copies that source re-keyed to it. :meth:`Processor.heartbeat` makes those
records for the sources a worker holds (its runtime calls it on a timer, and says which are
idle); :mod:`stream.loopback` plays the topic in one process.

Open windows and fresh signals: an activity signal scores the sequence the user would have
if their open window closed at that moment (:func:`features.state.peek_sequence`), assembled
exactly as at the real close. It is an early estimate of the window-close signal for the same
window end and converges to it; the model was trained on closed windows only.

Redelivery: Kafka delivers at least once, so after a crash the messages since the last
committed offset come again, while the table already holds their effect. Each user's state
records, per clickstream partition, the highest offset folded into it (a routed copy carries
its clickstream coordinates as ``origin``), and a message at or below that mark is not folded
again (its user's state is stored again, so the changelog catches up with the local store).
A window a user's state has already closed is not closed or scored again. Together with the
worker storing state only once the batch's outputs were delivered, a restart re-emits some
signals (same ``signal_id``, same scores) but neither loses nor double-counts events.

Every shape Kafka can deliver is handled: a null value (a tombstone) is dead-lettered as
``null_value``; keys and headers are never trusted (the user comes from the validated value,
the re-keying origin only from a well-formed header on the re-keying topic).

Internal keys: the table also holds one clock per partition, under keys in the reserved
namespace :data:`INTERNAL_PREFIX` (U+0000). :func:`features.validation.validate` refuses user
ids with control characters, so no user id can name an internal key. State written before
that rule is read as it is (the key names did not change); a clock key that does not hold a
clock stops the worker with :class:`StateError` instead of being read as something else.

Poison-message isolation (after Kafka Streams' processing-exception handler, KIP-1033): when
processing a micro-batch raises, the batch's effects on the in-memory state are rolled back
and its halves are processed again, recursively, against the state as it was before them;
the single messages that still raise are dead-lettered as ``processing_error`` (exception
type and message in ``detail``) and everything else is emitted as usual. The processor is
pure and writes nothing before :meth:`Processor.process` returns, so a rolled-back run leaves
no trace, and the merged outputs are what processing the batch without those messages gives.
:class:`FatalError` is not isolated: it means the worker itself is wrong (partition counts,
unreadable state), and so does a long run of consecutive processing errors (a systemic fault
such as a broken model must stop the worker, not dead-letter the stream).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import orjson

from features.demand import SeriesLevel
from features.drift import bin_counts
from features.events import ClickEvent
from features.feedback import (
    CohortProgress,
    InputCounts,
    PredictionOutcome,
    QualityPart,
    cohort_tallies,
    merge_progress,
    parts_of,
)
from features.outcomes import Pending, on_time, remember, settle
from features.series_book import (
    BOOK_SHARDS,
    MAX_SERIES_PER_WINDOW,
    CategoryPart,
    SeriesBook,
    category_parts,
    close,
    decode_shards,
    encode_shard,
    fold,
)
from features.signals import ChurnSignal, DeadLetter, DemandSignal, RiskThresholds
from features.state import (
    Closing,
    add_event,
    begin_close,
    days_since_last_order,
    finish_closes,
    preview,
)
from features.validation import Invalid, ValidationPolicy, validate
from features.windows import (
    DAY_MS,
    DORMANT_CHURN_FLOOR,
    I_ACTIVE,
    N_FEATURES,
    WindowSpec,
    is_scored_at_close,
)
from serving.scorer import Scorer
from stream.codec import (
    PartitionClock,
    UserRecord,
    decode_clock,
    decode_user,
    encode_clock,
    encode_user,
    peek_user,
)
from stream.publish import partition_of

if TYPE_CHECKING:
    from settings import Settings

log = logging.getLogger(__name__)

INTERNAL_PREFIX = "\x00"
"""Every internal table key starts with it; validated user ids never contain it."""
META_PREFIX = INTERNAL_PREFIX + "clock/"
WATERMARK_PREFIX = INTERNAL_PREFIX + "wm/"
SERIES_PREFIX = INTERNAL_PREFIX + "series/"
COHORT_PREFIX = INTERNAL_PREFIX + "cohort/"
"""Key prefix of the quality tallies of a close in progress, one record per slice."""
"""Key prefix of a partition's category sums (:class:`features.series_book.SeriesBook`)."""
"""Key prefix of watermark records on the re-keying topic (see "Event time" in the module doc)."""
ORIGIN_HEADER = "clicksignals-origin"
MAX_CLOSE_REQUESTS_PER_RUN = 4_096
"""Scoring requests after which a batch (or heartbeat) closes no further window.

A window close scores every candidate of the partition and holds their sequences until the
batch's inference; a watermark that jumps several windows at once (the slowest source
catching up in a backlog) would hold several partitions' worth (the backpressure test: RSS
+579 MiB unbounded, +332 MiB at 16,384 requests, +197-202 MiB at 4,096 with ONNX Runtime
called on 1,024 rows at a time; 4,096 is two closes of every user of that test's shop, so a
jump of one window still closes at once). The remaining windows close in the next batches
and heartbeats; events that come meanwhile for a window the watermark passed are folded (they
are late only once its close has begun)."""
CLOSE_SLICE = 256
"""Close candidates a run takes of a window close in progress (~0.1 ms of work each: ~25 ms).

A window close scores and stores every candidate of the partition: with 25,000 users a
partition it was one run of 2-3 s, and every event behind it waited that long (the latency
bench's p99 at 50 % of the worker's rate, ``bench/results/profile.md``). A close is therefore
done in slices, interleaved with the batches of live events (the worker takes them on its
announcement timer, a bounded share of its time: :meth:`stream.worker.Worker.go_on_closing`).
The window counts as closing from its first slice (its events are late from then on, as if it
had closed at once) and as closed after its last; each user is closed exactly once, by the
slice that reaches them. The partition's clock stores the close in progress and what it has
settled so far, so a restart goes on where it stopped."""
LAST_CLOSE_CHURN = "last_close_churn_probability"
"""Key, in a user's ``last_scores`` after an activity score, of the latest window-close churn
(the dormant-customer rule reads it)."""
IDLE_TTL_MS = 5_000
"""How long another source's idle announcement holds without being repeated (its worker
repeats it every ``watermark_interval_s``): a worker that stops announcing (paused, dead, cut
off) must not leave its sources idle, which would let the others close windows its backlog
still holds. Its last watermark then holds time back until a worker announces it again."""
WAKE_GRACE_MS = 2_000
"""After one of a partition's sources wakes (its first record read after it was idle, or its
announcement turned from idle to active), the other sources' idle announcements count for the
partition only if made at least this long after the wake (two announcement intervals: the
worker's own setting is ``2 * watermark_interval_s``). A burst produced after a quiet spell
reaches every source at once, and an idle announcement made before it says nothing about it:
read as current, it let a partition close windows on the first source to read its share
while another worker had not yet fetched its own, and that worker's re-keyed copies came late
(3,692 events in one CI run of the paused-worker Kafka test, whose workers start idle)."""
RESTORE_SLICE = 20_000
"""Stored records a restore reads between two yields to the event loop (~0.2 s of work at the
100,000 records/s measured on 1M users; a yield itself costs microseconds)."""
MAX_ERROR_STREAK = 256
"""Consecutive messages whose processing raised, with no message processed in between, after
which the processor gives up (:class:`SystemicFailure`): that is no longer a poison message."""

Headers = tuple[tuple[str, bytes | None], ...]


class FatalError(RuntimeError):
    """The worker itself is wrong (configuration, state): never blamed on a message."""


class StateError(FatalError):
    """Stored state the processor cannot read as what its key says it is."""


class SystemicFailure(FatalError):
    """Too many consecutive messages failed: a fault of the worker, not of the messages."""


def _closed_upto(clock: PartitionClock) -> int | None:
    """The last window whose events are late on the partition: the one being closed, if a
    close is in progress (a window counts as closed from its close's first slice)."""
    return clock.closing if clock.closing is not None else clock.closed_through


def is_internal_key(key: str) -> bool:
    """True for the table's internal keys (partition clocks); never for a validated user id."""
    return key.startswith(INTERNAL_PREFIX)


def origin_from_headers(headers: Any) -> tuple[int, int] | None:
    """The ``partition:offset`` a routed copy came from (``clicksignals-origin``), if well formed.

    Headers are outside input like the rest of a message: any shape (a list of pairs, a dict,
    names and values of any type, ``None`` values) gives an origin or ``None``, never an error.
    """
    try:
        items = headers.items() if isinstance(headers, dict) else headers or ()
        for item in items:
            name, value = item
            if name == ORIGIN_HEADER and isinstance(value, bytes | bytearray | memoryview):
                text = bytes(value).decode("ascii", "replace")
                partition, _, offset = text.partition(":")
                if partition.isdigit() and offset.isdigit():  # int() may still refuse: caught
                    return int(partition), int(offset)
    except (TypeError, ValueError):
        return None
    return None


def clock_key(partition: int, partitions: int) -> str:
    """A table key for a partition's clock that hashes to that same partition.

    The table is partitioned like the source topic, so a partition's clock travels with it on
    a rebalance and is restored from the same changelog partition as its users.
    """
    return _key_on(META_PREFIX, partition, partitions)


def book_keys(partition: int, partitions: int) -> list[str]:
    """The table keys of a partition's category sums, one per shard, each hashing to that
    partition (they travel with its users, like its clock)."""
    return [_key_on(f"{SERIES_PREFIX}{s}/", partition, partitions) for s in range(BOOK_SHARDS)]


def cohort_key(partition: int, partitions: int, index: int) -> str:
    """The table key of the ``index``-th slice tallies of a close in progress on ``partition``
    (hashing to it). Indices start again at 0 with every close: the clock says how many of
    them belong to the close in progress, so the records need no deleting."""
    return _key_on(f"{COHORT_PREFIX}{index}/", partition, partitions)


def watermark_key(partition: int, partitions: int) -> bytes:
    """The key of watermark records for ``partition``: the producer's partitioner sends them
    there, like the re-keyed events they follow."""
    return _key_on(WATERMARK_PREFIX, partition, partitions).encode()


def _key_on(prefix: str, partition: int, partitions: int) -> str:
    i = 0
    while True:
        key = f"{prefix}{partition}/{i}"
        if partition_of(key.encode(), partitions) == partition:
            return key
        i += 1


@dataclass(frozen=True, slots=True)
class SourceMark:
    """What a partition knows of another source partition's event time: the latest
    announcement read on the re-keying topic."""

    event_ms: int | None
    """The source's watermark (``None``: it has read no event yet)."""
    idle: bool
    """The source has had nothing to read for the idle timeout: it does not hold time back."""
    sent_ms: int | None = None
    """When the announcing worker made it (its wall clock, on the wire; ``None`` in records
    of versions before it). An idle announcement holds only while it is fresh, that is
    while its worker keeps repeating it. Its age counts from when it was made, not from when
    it was read: after a restart the re-keying topic is read again from its committed offset,
    and the idle announcements there are the previous run's, made before the backlog that
    follows them (read as fresh, they let a partition close windows whose re-keyed events
    were still behind them: 1,141 late events in the backlog-restart test)."""


def encode_watermark(source: int, mark: SourceMark) -> bytes:
    return orjson.dumps(
        {
            "watermark": {
                "source": source,
                "event_ms": mark.event_ms,
                "idle": mark.idle,
                "sent_ms": mark.sent_ms,
            }
        }
    )


def decode_watermark(value: bytes | None) -> tuple[int, SourceMark]:
    """A watermark record's (source, mark); ``ValueError`` for anything else."""
    if value is None:
        raise ValueError("a watermark record without a value")
    body = orjson.loads(value)
    w = body.get("watermark") if isinstance(body, dict) else None
    if not isinstance(w, dict):
        raise ValueError(f"not a watermark record: {value[:80]!r}")
    source, event_ms, idle = w.get("source"), w.get("event_ms"), w.get("idle")
    sent_ms = w.get("sent_ms")
    if (
        not isinstance(source, int)
        or isinstance(source, bool)
        or not _optional_int(event_ms)
        or not isinstance(idle, bool)
        or not _optional_int(sent_ms)
    ):
        raise ValueError(f"malformed watermark record: {value[:120]!r}")
    return source, SourceMark(event_ms, idle, sent_ms)


def _optional_int(value: object) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


class StateStore(Protocol):
    """Where encoded state lives between batches (a Faust table in the worker, a dict in tests).

    Reads name the partition the key belongs to, because Faust's RocksDB store keeps one
    database per partition and must be told which to read.
    """

    def get(self, key: str, partition: int) -> bytes | None: ...

    def items(self) -> Iterator[tuple[str, bytes]]: ...

    def scan(self) -> Iterator[tuple[str, bytes]]:
        """Every stored (key, value) of one consistent view, lazily: walked across awaits
        while the store changes (a dict iterator would not survive that)."""
        ...


class DictStore:
    """A :class:`StateStore` over a plain dict, for tests and benchmarks."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str, partition: int) -> bytes | None:
        return self.data.get(key)

    def items(self) -> Iterator[tuple[str, bytes]]:
        return iter(list(self.data.items()))

    def scan(self) -> Iterator[tuple[str, bytes]]:
        return self.items()  # a copy already

    def apply(self, writes: dict[int, dict[str, bytes]]) -> None:
        for part in writes.values():
            self.data.update(part)


@dataclass(frozen=True, slots=True)
class RawMessage:
    key: bytes | None
    """Never read: the user comes from the validated value (keys may be null or not UTF-8)."""
    value: bytes | None
    """``None`` for a record with a null value (a tombstone): dead-lettered as ``null_value``."""
    topic: str
    partition: int
    offset: int
    origin: tuple[int, int] | None = None
    """For a routed copy: (partition, offset) of the original on the clickstream topic."""


@dataclass
class BatchOutput:
    demand: list[DemandSignal] = field(default_factory=list)
    churn: list[ChurnSignal] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    reroute: list[tuple[bytes, bytes]] = field(default_factory=list)
    """(user key, raw value) to re-send keyed by user."""
    reroute_origins: list[tuple[int, int]] = field(default_factory=list)
    """Per ``reroute`` entry: its clickstream (partition, offset), sent along as the origin."""
    watermarks: list[tuple[bytes, bytes]] = field(default_factory=list)
    """(key, value) watermark records for the re-keying topic, sent after ``reroute``."""
    announcements: int = 0
    """Watermark records read in the batch (not events: counted apart)."""
    duplicates: int = 0
    """Messages skipped because the state already holds them (redelivery after a crash)."""
    writes: dict[int, dict[str, bytes]] = field(default_factory=dict)
    """Partition → table key → encoded state: one write per key per batch."""
    scored: int = 0
    inference_seconds: float = 0.0
    """Scoring time: the inputs' features (normalisation, the BG/NBD summary), ONNX Runtime
    and the served forecast, the shadow model's included."""
    ort_seconds: float = 0.0
    """ONNX Runtime's own share of ``inference_seconds`` (``session.run``)."""
    invalid_by_reason: dict[str, int] = field(default_factory=dict)
    processing_errors: dict[str, int] = field(default_factory=dict)
    """Exception type name -> messages dead-lettered as ``processing_error`` for it."""
    isolation_runs: int = 0
    """Extra runs over parts of the batch to find the messages that raise (0: none raised)."""
    outcomes: list[PredictionOutcome] = field(default_factory=list)
    """Window-close predictions whose horizon passed at a close of this batch."""
    quality_parts: list[QualityPart] = field(default_factory=list)
    """Per window close of a partition: its tallies of the cohort one horizon earlier."""
    category_parts: list[CategoryPart] = field(default_factory=list)
    """Per window close of a partition: its category sums of that window (issue 17)."""

    def merge(self, later: BatchOutput) -> None:
        """Append the outputs of a run that came after this one (isolation's halves)."""
        self.demand += later.demand
        self.churn += later.churn
        self.dead_letters += later.dead_letters
        self.reroute += later.reroute
        self.reroute_origins += later.reroute_origins
        self.watermarks += later.watermarks
        self.announcements += later.announcements
        self.duplicates += later.duplicates
        for p, entries in later.writes.items():
            # Each write is a key's whole encoded state: the later run's is the current one.
            self.writes.setdefault(p, {}).update(entries)
        self.scored += later.scored
        self.inference_seconds += later.inference_seconds
        self.ort_seconds += later.ort_seconds
        for reason, n in later.invalid_by_reason.items():
            self.invalid_by_reason[reason] = self.invalid_by_reason.get(reason, 0) + n
        for name, n in later.processing_errors.items():
            self.processing_errors[name] = self.processing_errors.get(name, 0) + n
        self.isolation_runs += later.isolation_runs
        self.outcomes += later.outcomes
        self.quality_parts += later.quality_parts
        self.category_parts += later.category_parts


@dataclass(slots=True)
class _Request:
    user_id: str
    end_ms: int
    """The window end scored; for an activity signal, the event time the open window is cut at."""
    trigger: str
    sequence: np.ndarray
    partition: int = -1
    dormant: bool = False
    """A dormant customer's close: kept only if their latest close score is under the floor
    when this request's turn comes in :meth:`Processor._score` (it may be in the same batch)."""
    result: tuple[float, float, float, str] | None = None
    """Set by :meth:`Processor._score` when a window-close signal went out: (orders, spend,
    churn, model version), the prediction the user's outcome ring keeps."""
    shadow_result: tuple[float, float, float, str] | None = None
    """The shadow model's prediction for the same sequence (never emitted)."""


@dataclass(slots=True)
class _Settle:
    """One user's window close in a run: their closed totals then, and its scoring request."""

    user_id: str
    partition: int
    window: int
    order_days_total: float
    spend_total: float
    request: _Request | None


def risk_thresholds(scorer: Scorer, high: float | None) -> RiskThresholds:
    """The model's risk cuts, or ``high`` (``CLICKSIGNALS_CHURN_HIGH_THRESHOLD``) when set."""
    m = scorer.manifest.thresholds
    if high is None:
        return m
    return RiskThresholds(medium=min(m.medium, high), high=high)


def processor_from_settings(
    scorer: Scorer,
    store: StateStore,
    settings: Settings,
    clock: Callable[[], int] | None = None,
    series_level: SeriesLevel | None = None,
) -> Processor:
    """The processor the worker runs for ``settings`` (also the demo's offline twin's);
    ``series_level``: sum category demand at that level (``None``: off)."""
    return Processor(
        scorer,
        store,
        partitions=settings.topics.partitions,
        policy=ValidationPolicy.from_settings(settings.worker),
        allowed_lateness_ms=int(settings.worker.allowed_lateness_s * 1000),
        fresh_interval_ms=int(settings.worker.fresh_signal_min_interval_s * 1000),
        routed_topics=frozenset({settings.topics.routed}),
        thresholds=risk_thresholds(scorer, settings.worker.churn_high_threshold),
        clock=clock,
        dormant_churn_floor=settings.worker.dormant_churn_floor,
        idle_ttl_ms=int(max(5 * settings.worker.watermark_interval_s, 1.0) * 1000),
        wake_grace_ms=int(2 * settings.worker.watermark_interval_s * 1000),
        evaluate=settings.worker.online_evaluation,
        series_level=series_level,
        close_slice=settings.worker.close_slice,
    )


class Processor:
    """Window state, watermarks and scoring for the partitions this worker holds."""

    def __init__(
        self,
        scorer: Scorer,
        store: StateStore,
        *,
        partitions: int,
        policy: ValidationPolicy,
        allowed_lateness_ms: int,
        fresh_interval_ms: int,
        routed_topics: frozenset[str] = frozenset(),
        thresholds: RiskThresholds | None = None,
        clock: Callable[[], int] | None = None,
        dormant_churn_floor: float = DORMANT_CHURN_FLOOR,
        idle_ttl_ms: int = IDLE_TTL_MS,
        wake_grace_ms: int = WAKE_GRACE_MS,
        evaluate: bool = True,
        series_level: SeriesLevel | None = None,
        close_slice: int = CLOSE_SLICE,
    ) -> None:
        if close_slice < 1:
            raise ValueError(f"close_slice must be at least 1, not {close_slice}")
        self.scorer = scorer
        self.spec: WindowSpec = scorer.manifest.spec
        self.store = store
        self.partitions = partitions
        self.policy = policy
        self.lateness_ms = allowed_lateness_ms
        self.fresh_interval_ms = fresh_interval_ms
        self.routed_topics = routed_topics
        m = scorer.manifest.thresholds
        self.thresholds = thresholds or RiskThresholds(medium=m.medium, high=m.high)
        self.now_ms = clock or (lambda: int(time.time() * 1000))
        self.dormant_churn_floor = dormant_churn_floor
        self.idle_ttl_ms = idle_ttl_ms
        self.wake_grace_ms = wake_grace_ms
        self.evaluate = evaluate
        """The online evaluation (outcome rings, quality parts, input drift, shadow scores)."""
        self.shadow: Scorer | None = None
        """A candidate model scored next to the serving one on the same window-close
        sequences, for the online evaluation only (its predictions are never emitted). Set by
        the runtime; it must keep the served window grid (:class:`stream.model.ShadowHolder`)."""
        self._users: dict[str, UserRecord] = {}
        self._clocks: dict[int, PartitionClock] = {}
        self._active: dict[int, dict[str, int]] = {}
        """Per partition: user → last window with an event (the close candidates: users in the
        lookback and dormant customers under the churn floor)."""
        self._epochs: dict[int, int] = {}
        """Partition -> how many times it was forgotten: a restore that yielded meanwhile
        installs none of what it read of it."""
        self._closing: set[str] = set()
        """Users with a window-close request in the run in progress (its score not known yet)."""
        self._previews: list[Closing] = []
        """Activity requests' sequences still to assemble (in _score, all in one call)."""
        self._settles: list[_Settle] = []
        """The run's user closes, in order: their outcome rings are settled once scored."""
        self.close_slice = close_slice
        self._close_budget = 0
        """Close candidates the run in progress may still take (:data:`CLOSE_SLICE`)."""
        self._batch_budget = close_slice
        """Close candidates a batch (:meth:`process`) may take."""
        self._closes: list[tuple[int, int, bool]] = []
        """The run's slices of window closes, (partition, window, whether it completed the
        close): a completed close sends the quality parts of one cohort."""
        self._inputs: dict[tuple[int, int], list[np.ndarray]] = {}
        """(partition, window) -> the closed vectors of the users active in the lookback
        scored there: the live input distribution (features.drift)."""
        self._clock_keys = {p: clock_key(p, partitions) for p in range(partitions)}
        self._watermark_keys = [watermark_key(p, partitions) for p in range(partitions)]
        self._watermark_prefix = WATERMARK_PREFIX.encode()
        self._marks: dict[int, dict[int, SourceMark]] = {}
        """Partition -> source partition -> the source's latest watermark read on the
        partition's re-keying topic partition (in memory: announcements repeat)."""
        self._idle: set[int] = set()
        """Source partitions this worker holds that its runtime declared idle."""
        self._wake: dict[int, int] = {}
        """Partition -> wall time (ms) one of its sources last woke (see :data:`WAKE_GRACE_MS`).
        Not undone with a run that raises: a wake only delays closes."""
        self._read: set[int] = set()
        """Held source partitions this processor has read a record of since it took them.
        The first one is a wake: a worker that takes partitions (a start, a rebalance) reads
        the re-keying topic from its committed offset, where the latest words of the other
        sources may be idle announcements made before the burst its own source now brings
        (the group's previous generation announced every source idle on empty topics), and
        its own source was never idle here, so no other wake would hold them back (CI: 6,180
        re-keyed events late in the paused-worker Kafka test). Not undone with a run that
        raises, like the wakes."""
        self.max_error_streak = MAX_ERROR_STREAK
        self._error_streak = 0
        # Undo information of the run in progress (see _checkpoint / _rollback): what the
        # in-memory caches held before it, so a run that raises can be taken back.
        self._touched: set[str] = set()
        """Users whose cached record this run read or changed (dropped on rollback: the store,
        or the overlay, still has their state from before the run)."""
        self._clock_backup: dict[int, PartitionClock | None] = {}
        """Partition -> its clock before the run (a copy), or None if the run loaded it."""
        self._active_undo: list[tuple[int, str, int | None]] = []
        """(partition, user, previous last window or None if absent), in the order changed."""
        self._marks_backup: dict[tuple[int, int], SourceMark | None] = {}
        """(partition, source) -> its mark before the run, for the marks the run changed."""
        self._overlay: dict[str, bytes] = {}
        """During isolation: writes of the parts already done, read before the store."""
        self.series_level = series_level
        """The category demand's series (:func:`features.demand.series_key`); ``None``: off."""
        self._books: dict[int, SeriesBook] = {}
        self._book_keys = (
            {p: book_keys(p, partitions) for p in range(partitions)} if series_level else {}
        )
        self._book_backup: dict[int, SeriesBook | None] = {}
        """Partition -> its book, journaling the run's changes, or None if the run loaded it."""
        self._dirty_shards: dict[int, set[int]] = {}
        """Partition -> the book shards the run changed (stored by ``_finish``)."""
        self._category_parts: list[CategoryPart] = []

    # --- partition lifecycle -------------------------------------------------------------

    def forget_partitions(self, partitions: set[int]) -> None:
        """Drop cached state of partitions this worker no longer holds (or gets back: the
        table is the truth then). Every cached user of them goes, not only the close
        candidates: a user read for a redelivered duplicate, or dropped from the candidates in
        a batch that also wrote them, is cached too, and must not outlive the partition."""
        if not partitions:
            return
        for p in partitions:
            self._epochs[p] = self._epochs.get(p, 0) + 1
            self._clocks.pop(p, None)
            self._active.pop(p, None)
            self._marks.pop(p, None)
            self._wake.pop(p, None)
            self._books.pop(p, None)
        self._idle -= partitions
        self._read -= partitions
        stale = [u for u in self._users if partition_of(u.encode(), self.partitions) in partitions]
        for user in stale:
            self._users.pop(user, None)

    def _ensure_partition(self, p: int) -> PartitionClock:
        clock = self._clocks.get(p)
        if clock is not None:
            if p not in self._clock_backup:
                self._clock_backup[p] = replace(clock)
            return clock
        # Not restored ahead (restore_partitions): here, in one go.
        for _ in self.restore_partitions({p}):
            pass
        self._clock_backup.setdefault(p, None)
        return self._clocks[p]

    def restore_partitions(
        self, partitions: Iterable[int], *, slice_records: int = RESTORE_SLICE
    ) -> Iterator[int]:
        """Load the clocks of ``partitions`` not cached yet and rebuild their close candidates
        from the store, in one pass over it for all of them; yields the number of records read
        after every ``slice_records``, so that an async caller can let its event loop run.

        After a restart or a rebalance every user of a partition is a record to read: with
        250k users a partition took 4-9 s, the loop blocked (``bench/results/profile.md``).
        The pass reads each record's header only (:func:`stream.codec.peek_user`) and walks one
        consistent view of the store (:meth:`StateStore.scan`), which may change between
        slices (standby replicas write the same store). A partition forgotten meanwhile
        (revoked, or assigned again) is not installed: what was read of it may be from before
        another worker moved it on.
        """
        todo = sorted({p for p in partitions if p not in self._clocks})
        if not todo:
            return
        epochs = {p: self._epochs.get(p, 0) for p in todo}
        clocks: dict[int, PartitionClock] = {}
        horizons: dict[int, int] = {}
        for p in todo:
            key = self._clock_keys[p]
            raw = self._get(key, p)
            clock = self._decode_clock(key, p, raw) if raw else PartitionClock()
            clocks[p] = clock
            if clock.closed_through is not None or clock.first_window is not None:
                # Before its first close (the other sources not heard from yet) every user
                # of the partition has open windows.
                closed = clock.closed_through
                closed = closed if closed is not None else clock.first_window - 1  # type: ignore[operator]
                horizons[p] = closed - self.spec.lookback + 1
        active: dict[int, dict[str, int]] = {p: {} for p in todo}
        if horizons:
            read = 0
            for key, stored in self.store.scan():
                read += 1
                if read % slice_records == 0:
                    yield read
                    if all(self._epochs.get(p, 0) != epochs[p] for p in horizons):
                        return  # every one forgotten meanwhile (a rebalance took them)
                # Internal keys are not users. Before user ids with control characters were
                # refused, a user could be stored under this namespace: such a record is
                # left alone (no event can reach it any more), never read as a clock.
                if is_internal_key(key):
                    continue
                p = partition_of(key.encode(), self.partitions)
                horizon = horizons.get(p)
                if horizon is None:
                    continue
                value = self._overlay.get(key, stored) if self._overlay else stored
                try:
                    peek = peek_user(value)
                except Exception as exc:
                    # One unreadable record must not stop the partition: the user is no close
                    # candidate; an event of theirs fails alone (processing_error).
                    log.error("partition %d: user %r has unreadable state: %r", p, key, exc)
                    continue
                last = self.spec.index(peek.last_event_ms)
                # Dormant customers under the floor too, from their stored last scores: the
                # restored worker closes the same users an uninterrupted one would.
                if (
                    last >= horizon
                    or peek.has_open
                    or self._dormant(peek.order_days_total, peek.last_scores)
                    or peek.has_pending
                ):
                    active[p][key] = last
        for p in todo:
            if self._epochs.get(p, 0) != epochs[p] or p in self._clocks:
                continue  # forgotten, or loaded by a batch, while this pass yielded
            self._clocks[p] = clocks[p]
            self._active[p] = active[p]
            log.info(
                "partition %d: clock closed through %s, %d close candidates restored from the "
                "table",
                p,
                clocks[p].closed_through,
                len(active[p]),
            )

    @staticmethod
    def _decode_clock(key: str, p: int, raw: bytes) -> PartitionClock:
        try:
            return decode_clock(raw)
        except Exception as exc:
            raise StateError(
                f"partition {p}: table key {key!r} does not hold a partition clock "
                f"({type(exc).__name__}: {exc}; value starts {raw[:40]!r}). Refusing to "
                f"process the partition: the state was written by an incompatible version; "
                f"rebuild it (a new app id replaying the history)"
            ) from exc

    @staticmethod
    def _close_churn(record: UserRecord) -> float | None:
        return Processor._scores_close_churn(record.last_scores)

    @staticmethod
    def _scores_close_churn(scores: dict[str, Any]) -> float | None:
        """Churn of the user's latest score if it was a window close's, else None.

        An activity score keeps the latest close's churn beside it (:data:`LAST_CLOSE_CHURN`):
        a dormant customer's event in a later window may be folded, and scored, before the
        partition closes the earlier one (closes wait for every source's watermark), and that
        close is decided on the close before it, as offline.
        """
        if scores.get("trigger") == "window_close":
            churn = scores.get("churn_probability")
        else:
            churn = scores.get(LAST_CLOSE_CHURN)
        return float(churn) if churn is not None else None

    def _dormant_candidate(self, record: UserRecord) -> bool:
        """A customer whose latest close score is under the floor (the part of
        :func:`features.windows.close_population` that does not need the sequence)."""
        return self._dormant(record.state.order_days_total, record.last_scores)

    def _dormant(self, order_days_total: float, last_scores: dict[str, Any]) -> bool:
        churn = self._scores_close_churn(last_scores)
        return order_days_total > 0 and churn is not None and churn < self.dormant_churn_floor

    def _get(self, key: str, partition: int) -> bytes | None:
        if self._overlay:
            value = self._overlay.get(key)
            if value is not None:
                return value
        return self.store.get(key, partition)

    def _record(self, user: str, partition: int) -> UserRecord | None:
        self._touched.add(user)
        record = self._users.get(user)
        if record is None:
            raw = self._get(user, partition)
            if raw:
                record = decode_user(raw)
                self._users[user] = record
        return record

    # --- checkpoints: taking back a run that raised ---------------------------------------

    def _checkpoint(self) -> None:
        self._touched.clear()
        self._clock_backup.clear()
        self._active_undo.clear()
        self._marks_backup.clear()
        for book in self._book_backup.values():
            if book is not None:
                book.commit()
        self._book_backup.clear()

    def _rollback(self) -> None:
        """Put the caches back as they were when the run started (see ``_checkpoint``)."""
        for user in self._touched:
            self._users.pop(user, None)
        for p, user, previous in reversed(self._active_undo):
            active = self._active.get(p)
            if active is None:
                continue
            if previous is None:
                active.pop(user, None)
            else:
                active[user] = previous
        for p, backup in self._clock_backup.items():
            if backup is None:  # loaded by the run: loaded again from the store next time
                self._clocks.pop(p, None)
                self._active.pop(p, None)
            else:
                self._clocks[p] = backup
        for (p, source), mark in self._marks_backup.items():
            marks = self._marks.setdefault(p, {})
            if mark is None:
                marks.pop(source, None)
            else:
                marks[source] = mark
        for p, book in self._book_backup.items():
            if book is None:
                self._books.pop(p, None)
            else:
                book.undo()
        self._checkpoint()

    # --- the batch ----------------------------------------------------------------------------

    def process(
        self, messages: list[RawMessage], *, close_budget: int | None = None
    ) -> BatchOutput:
        """One micro-batch: outputs and table writes. Raises only :class:`FatalError`.

        A message whose processing raises is dead-lettered as ``processing_error`` and the
        rest of the batch is processed as if it had not been there (module doc).
        ``close_budget``: close candidates the batch may take of window closes (default
        ``close_slice``); the worker passes 0 and takes the closes on its timer, so that a
        batch of live events never waits for one.
        """
        self._batch_budget = self.close_slice if close_budget is None else close_budget
        now = self.now_ms()
        self._checkpoint()
        try:
            out = self._run(messages, now)
        except FatalError:
            self._rollback()
            raise
        except Exception as exc:
            self._rollback()
            log.warning(
                "a batch of %d messages raised %s: %s; isolating the message(s) at fault",
                len(messages),
                type(exc).__name__,
                exc,
            )
            out = BatchOutput()
            try:
                self._isolate(messages, now, out, exc)
            except FatalError:
                # The parts already done changed the caches but nothing reached the store:
                # start again from the store, as after a restart.
                self._users.clear()
                self._clocks.clear()
                self._active.clear()
                self._marks.clear()
                self._books.clear()
                raise
            finally:
                self._overlay.clear()
            return out
        if messages:
            self._error_streak = 0
        return out

    def _isolate(
        self, messages: list[RawMessage], now: int, out: BatchOutput, exc: Exception
    ) -> None:
        """``messages`` raised ``exc`` against the current (rolled-back) state: bisect.

        Halves run in order, each against the state the previous parts left, so the merged
        outputs are those of the batch without the messages that raise.
        """
        if len(messages) == 1:
            self._poisoned(out, messages[0], now, exc)
            return
        middle = len(messages) // 2
        for part in (messages[:middle], messages[middle:]):
            out.isolation_runs += 1
            self._checkpoint()
            try:
                done = self._run(part, now)
            except FatalError:
                self._rollback()
                raise
            except Exception as part_exc:
                self._rollback()
                self._isolate(part, now, out, part_exc)
                continue
            self._error_streak = 0
            out.merge(done)
            for entries in done.writes.values():
                self._overlay.update(entries)

    def _poisoned(self, out: BatchOutput, msg: RawMessage, now: int, exc: Exception) -> None:
        self._error_streak += 1
        name = type(exc).__name__
        log.error(
            "processing %s[%d]@%d raised %s: dead-lettered as processing_error",
            msg.topic,
            msg.partition,
            msg.offset,
            name,
            exc_info=exc,
        )
        if self._error_streak > self.max_error_streak:
            raise SystemicFailure(
                f"{self._error_streak} consecutive messages raised while processing "
                f"(the last: {name}: {exc}): a fault of the worker, not of its input"
            ) from exc
        out.processing_errors[name] = out.processing_errors.get(name, 0) + 1
        detail = f"{name}: {exc}"
        self._dead(out, Invalid("processing_error", None, detail[:1000]), msg, now)

    def _run(self, messages: list[RawMessage], now: int) -> BatchOutput:
        out = BatchOutput()
        requests: list[_Request] = []
        self._close_budget = self._batch_budget
        self._closing.clear()
        self._previews.clear()
        self._settles.clear()
        self._closes.clear()
        self._inputs.clear()
        self._dirty_shards.clear()
        self._category_parts.clear()
        dirty_users: dict[str, int] = {}
        dirty_parts: set[int] = set()
        for msg in messages:
            routed = msg.topic in self.routed_topics
            if (
                routed
                and msg.key is not None
                and msg.key.startswith(self._watermark_prefix)
                and self._read_watermark(msg, now, requests, dirty_users, dirty_parts)
            ):
                out.announcements += 1
                continue
            if msg.value is None:
                null = Invalid("null_value", None, "the record has a null value (a tombstone)")
                self._dead(out, null, msg, now)
                continue
            result = validate(msg.value, now_ms=now, policy=self.policy)
            if isinstance(result, Invalid):
                self._dead(out, result, msg, now)
                continue
            event = result
            key = event.user_id.encode()
            p = partition_of(key, self.partitions)
            if not routed and (msg.partition in self._idle or msg.partition not in self._read):
                # It has something to read: not idle. Its first record since this processor
                # took it is a wake too: the others' idle words read so far may be the
                # previous owner's, made before the data came (see _read).
                self._idle.discard(msg.partition)
                self._read.add(msg.partition)
                self._wake[msg.partition] = now
            if p != msg.partition:
                if routed:
                    # A routed message on the wrong partition means the topic's partition
                    # count differs from settings: refuse loudly rather than corrupt state.
                    raise FatalError(
                        f"{msg.topic}[{msg.partition}] holds user {event.user_id!r} of "
                        f"partition {p}: partition counts do not match settings"
                    )
                out.reroute.append((key, msg.value))
                out.reroute_origins.append((msg.partition, msg.offset))
                # Read on this partition: its source time moves on, and the copy goes out
                # before any watermark record that announces it.
                self._advance(msg.partition, event.event_time_ms, now, requests, dirty_users)
                dirty_parts.add(msg.partition)
                continue
            clock = self._ensure_partition(p)
            origin = msg.origin if routed else (msg.partition, msg.offset)
            record = self._record(event.user_id, p)
            if (
                origin is not None
                and record is not None
                and record.seen.get(origin[0], -1) >= origin[1]
            ):
                out.duplicates += 1
                # Store the state again: the local store may hold it while its changelog
                # record was lost in the crash; written now, a restore from the changelog
                # (another worker, a fresh data dir) gets what these offsets produced.
                dirty_users[event.user_id] = p
                dirty_parts.add(p)
                # The category sums are stored apart from the users: a shard stored without
                # this user's batch still lacks the event (its marks say so).
                window = self.spec.index(event.event_time_ms)
                closed = _closed_upto(clock)
                if closed is None or window > closed:
                    self._fold_series(p, event, window, origin)
                if not routed:
                    self._advance(p, event.event_time_ms, now, requests, dirty_users)
                continue
            window = self.spec.index(event.event_time_ms)
            closed = _closed_upto(clock)
            if record is not None and record.state.closed_through is not None:
                # Normally behind the clock; ahead only if a crash lost the clock's last write.
                closed = max(closed if closed is not None else -1, record.state.closed_through)
            if closed is not None and window <= closed:
                late = Invalid(
                    "late",
                    "event_time",
                    f"event window ends {self.spec.end_ms(window)} but the partition closed "
                    f"windows through {self.spec.end_ms(closed)}",
                )
                self._dead(out, late, msg, now)
                continue
            if clock.closed_through is None:
                first = clock.first_window
                clock.first_window = window if first is None else min(first, window)
            self._fold(event, window, p, requests, origin)
            self._fold_series(p, event, window, origin)
            dirty_users[event.user_id] = p
            dirty_parts.add(p)
            if not routed:
                self._advance(p, event.event_time_ms, now, requests, dirty_users)
        self._go_on_closing(requests, dirty_users, now)
        self._finish(out, requests, dirty_users, dirty_parts, now)
        return out

    def _go_on_closing(self, requests: list[_Request], dirty: dict[str, int], now: int) -> None:
        """Spend what is left of the run's close budget on the closes in progress (a close
        goes on whether or not the run moved its partition's time). A partition whose
        watermark has passed another window beyond the one closing is behind (a backlog):
        it gets a slice even when the batch has no budget, so that closes keep pace with the
        events rather than fall further behind them."""
        for p in sorted(p for p, clock in self._clocks.items() if clock.closing is not None):
            if len(requests) >= MAX_CLOSE_REQUESTS_PER_RUN:
                return
            clock = self._ensure_partition(p)
            if self._close_budget <= 0:
                if not self._behind(p, clock, now):
                    continue
                self._close_budget = self.close_slice
            self._close_to_watermark(p, clock, requests, dirty, now)

    def _behind(self, p: int, clock: PartitionClock, now: int) -> bool:
        """Whether ``p``'s watermark has passed a window beyond the close in progress."""
        wm = self.watermark(p, now)
        if wm is None or clock.closing is None:
            return False
        return self.spec.index(wm - self.lateness_ms) - 1 > clock.closing

    def closes_pending(self, held: Iterable[int] | None = None) -> bool:
        """Whether a window close is in progress (on ``held`` partitions, if given): the
        runtime runs :meth:`go_on_closing` until it is done, between its batches."""
        partitions = self._clocks.keys() if held is None else set(held) & self._clocks.keys()
        return any(self._clocks[p].closing is not None for p in partitions)

    def _finish(
        self,
        out: BatchOutput,
        requests: list[_Request],
        dirty_users: dict[str, int],
        dirty_parts: set[int],
        now: int,
    ) -> None:
        self._score(requests, out, now)
        self._settle(out, now)
        for user, p in dirty_users.items():
            record = self._users.get(user)
            if record is not None:
                out.writes.setdefault(p, {})[user] = encode_user(record)
        for p in dirty_parts | {p for p, _, _ in self._closes}:
            out.writes.setdefault(p, {})[self._clock_keys[p]] = encode_clock(self._clocks[p])
        for p, shards in self._dirty_shards.items():
            book = self._books[p]
            writes = out.writes.setdefault(p, {})
            for shard in shards:
                writes[self._book_keys[p][shard]] = orjson.dumps(encode_shard(book, shard))
        out.category_parts += self._category_parts

    def _dead(self, out: BatchOutput, invalid: Invalid, msg: RawMessage, now: int) -> None:
        # ``invalid.reason`` is one of features.validation.DEAD_LETTER_REASONS.
        out.invalid_by_reason[invalid.reason] = out.invalid_by_reason.get(invalid.reason, 0) + 1
        out.dead_letters.append(
            DeadLetter.from_invalid(
                invalid,
                msg.value,
                source_topic=msg.topic,
                partition=msg.partition,
                offset=msg.offset,
                received_at_ms=now,
            )
        )

    def _fold(
        self,
        event: ClickEvent,
        window: int,
        p: int,
        requests: list[_Request],
        origin: tuple[int, int] | None,
    ) -> None:
        user = event.user_id
        record = self._record(user, p)
        state = add_event(record.state if record else None, event, self.spec)
        if record is None:
            record = self._users[user] = UserRecord(state)
        if origin is not None:
            record.seen[origin[0]] = max(origin[1], record.seen.get(origin[0], -1))
        active = self._active.setdefault(p, {})
        previous = active.get(user)
        self._active_undo.append((p, user, previous))
        active[user] = window if previous is None else max(window, previous)
        t = event.event_time_ms
        if record.last_fresh_ms is None or t - record.last_fresh_ms >= self.fresh_interval_ms:
            record.last_fresh_ms = t
            upto = max(state.open)
            # Assembled with the batch's other previews in _score (features.state.Closing).
            peek = preview(state, upto, self.spec)
            self._previews.append(peek)
            requests.append(_Request(user, t, "activity", peek.ring))

    # --- event time ------------------------------------------------------------------------

    def _advance(
        self,
        p: int,
        event_ms: int,
        now: int,
        requests: list[_Request],
        dirty: dict[str, int],
    ) -> None:
        """An event was read on clickstream partition ``p``: move its source time on.

        Event time never runs ahead of the wall clock: an event dated in the future (within
        the accepted skew) is folded into its window, but moves the source's time only to
        ``now``. Otherwise one such event would close the current window for every user of the
        partition and make the rest of its events late. In a backfill every event time is in
        the past, so this bound never acts there."""
        clock = self._ensure_partition(p)
        event_ms = min(event_ms, now)
        if clock.max_event_ms is not None and event_ms <= clock.max_event_ms:
            return
        clock.max_event_ms = event_ms
        if (
            clock.closed_through is not None
            and self.spec.index(event_ms - self.lateness_ms) - 1 <= clock.closed_through
        ):
            # The partition's own source is live (it was just read), so its watermark is at
            # most this event's time: nothing new can close. Most events stop here, before
            # the watermark's walk over every source.
            return
        self._close_to_watermark(p, clock, requests, dirty, now)

    def watermark(self, p: int, now: int | None = None) -> int | None:
        """Partition ``p``'s event time: the minimum over every source partition that can
        still send it events (``None``: some source has not been heard from yet).

        Its own source counts by what this worker read of it; every other source by the
        latest watermark record read on ``p``'s re-keying partition, which comes after the
        copies that source re-keyed to ``p`` before it. Idle sources do not hold time back;
        when every source is idle, everything sent has been read, and the latest time wins.
        Another source's idle announcement counts only while it is fresh (made less than
        ``idle_ttl_ms`` ago: its worker keeps repeating it), and not if it was made before a
        source of ``p`` woke, or within ``wake_grace_ms`` after (:data:`WAKE_GRACE_MS`).
        """
        now = self.now_ms() if now is None else now
        clock = self._clocks.get(p)
        if clock is None:
            return None
        marks = self._marks.get(p, {})
        wake = self._wake.get(p)
        active: int | None = None
        latest: int | None = None
        for source in range(self.partitions):
            if source == p:
                mark = SourceMark(clock.max_event_ms, p in self._idle)
            else:
                found = marks.get(source)
                if found is None:
                    return None
                mark = found
                # Fresh within the TTL either way: one record dated in the future (a forged
                # one, a clock far ahead) must not keep a source idle for as long as it says.
                fresh = mark.sent_ms is not None and abs(now - mark.sent_ms) <= self.idle_ttl_ms
                if mark.idle and not fresh:
                    mark = SourceMark(mark.event_ms, False)  # not fresh: holds back
                elif (
                    mark.idle
                    and wake is not None
                    and mark.sent_ms is not None
                    and mark.sent_ms < wake + self.wake_grace_ms
                ):
                    mark = SourceMark(mark.event_ms, False)  # made before the wake: holds back
            if mark.event_ms is not None:
                latest = mark.event_ms if latest is None else max(latest, mark.event_ms)
            if mark.idle:
                continue
            if mark.event_ms is None:
                return None  # a live source that has read nothing yet
            active = mark.event_ms if active is None else min(active, mark.event_ms)
        return active if active is not None else latest

    def _close_to_watermark(
        self,
        p: int,
        clock: PartitionClock,
        requests: list[_Request],
        dirty: dict[str, int],
        now: int,
    ) -> None:
        """Close every window of ``p`` its watermark (less the allowed lateness) has passed,
        as far as the run's close budget goes; a close in progress goes on first (its window
        was passed when it began, whatever the watermark is now)."""
        if clock.closing is not None and not self._close_slice(p, clock, requests, dirty):
            return
        wm = self.watermark(p, now)
        if wm is None:
            return
        target = self.spec.index(wm - self.lateness_ms) - 1
        if clock.closed_through is None:
            if clock.first_window is None:
                # No event was folded here: no user to close, and anything older than the
                # watermark that still comes is late.
                clock.closed_through = target
                return
            clock.closed_through = min(target, clock.first_window - 1)
        for window in range(clock.closed_through + 1, target + 1):
            if len(requests) >= MAX_CLOSE_REQUESTS_PER_RUN or self._close_budget <= 0:
                break  # the rest in the next batch or heartbeat (see the constants)
            self._begin_window_close(p, clock, window)
            if not self._close_slice(p, clock, requests, dirty):
                return

    def _read_watermark(
        self,
        msg: RawMessage,
        now: int,
        requests: list[_Request],
        dirty_users: dict[str, int],
        dirty_parts: set[int],
    ) -> bool:
        """Read a watermark record; ``False`` if the message is not one (a key is never
        trusted: the message is then processed like any other)."""
        p = msg.partition
        try:
            source, mark = decode_watermark(msg.value)
        except ValueError:
            return False
        if msg.key is None or partition_of(msg.key, self.partitions) != p:
            raise FatalError(
                f"{msg.topic}[{p}] holds a watermark record for another partition: "
                f"partition counts do not match settings"
            )
        if not 0 <= source < self.partitions or source == p:
            raise ValueError(f"a watermark record of source {source} on partition {p}")
        marks = self._marks.setdefault(p, {})
        old = marks.get(source)
        if old is not None and old.idle and not mark.idle:
            self._wake[p] = now  # the source woke: the others' idle word predates its data
        # Announcements only move time forward (a restarted source re-reads its backlog).
        if (
            old is not None
            and old.event_ms is not None
            and (mark.event_ms is None or mark.event_ms < old.event_ms)
        ):
            mark = SourceMark(old.event_ms, mark.idle, mark.sent_ms)
        self._marks_backup.setdefault((p, source), old)
        marks[source] = mark
        clock = self._ensure_partition(p)
        before = clock.closed_through
        self._close_to_watermark(p, clock, requests, dirty_users, now)
        if clock.closed_through != before:
            dirty_parts.add(p)
        return True

    def heartbeat(self, held: Iterable[int], idle: Iterable[int] = ()) -> BatchOutput:
        """Announce the watermarks of the source partitions this worker holds.

        Called by the runtime on a timer, in turn with the batches (never between a batch and
        the sending of its re-keyed copies). ``idle``: held sources with nothing to read for
        the idle timeout; they stop holding time back here and wherever the announcement is
        read. Returns watermark records for every other partition, and the window closes (and
        their signals and writes) that idleness allowed on this worker's own partitions.
        """
        return self._timer_run(held, idle, announce=True)

    def go_on_closing(self, held: Iterable[int]) -> BatchOutput:
        """One more slice of the window closes in progress on ``held`` partitions: what the
        runtime runs between its batches while :meth:`closes_pending` (a heartbeat without
        its announcements)."""
        return self._timer_run(held, self._idle, announce=False)

    def _timer_run(
        self, held: Iterable[int], idle: Iterable[int], *, announce: bool
    ) -> BatchOutput:
        now = self.now_ms()
        held = sorted(set(held))
        self._checkpoint()
        self._close_budget = self.close_slice
        self._closing.clear()
        self._previews.clear()
        self._settles.clear()
        self._closes.clear()
        self._inputs.clear()
        self._dirty_shards.clear()
        self._category_parts.clear()
        out = BatchOutput()
        requests: list[_Request] = []
        dirty_users: dict[str, int] = {}
        dirty_parts: set[int] = set()
        try:
            self._idle = set(idle) & set(held)
            for source in held:
                clock = self._ensure_partition(source)
                before = clock.closed_through
                self._close_to_watermark(source, clock, requests, dirty_users, now)
                if clock.closed_through != before:
                    dirty_parts.add(source)
                if not announce:
                    continue
                value = encode_watermark(
                    source, SourceMark(clock.max_event_ms, source in self._idle, now)
                )
                out.watermarks += [
                    (key, value) for q, key in enumerate(self._watermark_keys) if q != source
                ]
            self._finish(out, requests, dirty_users, dirty_parts, now)
        except Exception:
            self._rollback()
            raise
        return out

    def _begin_window_close(self, p: int, clock: PartitionClock, window: int) -> None:
        """Begin closing ``window`` on ``p``: its candidates, as they are now, are the users it
        takes (:data:`CLOSE_SLICE` a run); its events are late from here on."""
        clock.closing = window
        clock.queue = tuple(self._active.get(p, {}))
        clock.queued = 0
        if self.series_level is not None:
            self._close_series(p, window)

    def _close_slice(
        self, p: int, clock: PartitionClock, requests: list[_Request], dirty: dict[str, int]
    ) -> bool:
        """Close the window in progress for the next users of its queue, as many as the run's
        budget allows; ``True`` when that completed the close."""
        window = clock.closing
        assert window is not None
        if clock.queue is None:
            # Restored in the middle of the close: its candidates now are those it had left
            # (the users it closed already are skipped by their own closed_through).
            clock.queue = tuple(self._active.get(p, {}))
            clock.queued = 0
        start = clock.queued
        if self._close_budget <= 0 and start < len(clock.queue):
            return False  # the budget is spent: the next run goes on
        users = clock.queue[start : start + max(self._close_budget, 0)]
        clock.queued = start + len(users)
        self._close_budget -= len(users)
        self._close(p, window, users, requests, dirty)
        done = clock.queued >= len(clock.queue)
        self._closes.append((p, window, done))
        if done:
            clock.closed_through = window
            clock.closing = None
            clock.queue = None
            clock.queued = 0
        return done

    def _close(
        self,
        p: int,
        window: int,
        users: Sequence[str],
        requests: list[_Request],
        dirty: dict[str, int],
    ) -> None:
        floor = window - self.spec.lookback + 1
        active = self._active.get(p, {})
        gone: list[str] = []
        # Two passes: decide who closes and fold their histories, then assemble every
        # closing vector of the window in one call (features.state.finish_closes), then score.
        closing: list[tuple[str, UserRecord, bool, bool, bool, bool]] = []
        pending_closes: list[Closing] = []
        for user in users:
            last = active.get(user)
            if last is None:
                continue  # no longer a candidate (dropped by a later run's dormant rule)
            record = self._record(user, p)
            if record is None:
                gone.append(user)
                continue
            dormant = last < floor
            pending = user in self._closing
            # Predictions waiting for their horizon keep the user closed at each window,
            # scored or not, until the last is settled (issue 15: every prediction's outcome
            # is known exactly one horizon later).
            settling = pending or bool(record.pending)
            # Out of the lookback: only a customer under the churn floor stays. Decided on the
            # stored state before closing it, so dropping costs no write; with a close of
            # theirs still unscored in this batch the score decides in _score.
            scorable = not (
                dormant
                and not record.state.open
                and (
                    record.state.order_days_total <= 0
                    or (not pending and not self._dormant_candidate(record))
                )
            )
            if not scorable and not settling:
                gone.append(user)
                continue
            closed = record.state.closed_through
            if closed is not None and closed >= window:
                # Closed and scored before a restart whose partition clock was stored
                # behind this user's state: that signal went out then.
                continue
            begun = begin_close(record.state, window, self.spec)
            if begun is not None:
                pending_closes.append(begun[0])
            closing.append((user, record, dormant, pending, settling, scorable))
        finish_closes(pending_closes, self.spec)
        for user, record, dormant, pending, settling, scorable in closing:
            dirty[user] = p
            # The rule, on the closed sequence; a pending previous close counts as under the
            # floor here and is checked again once scored.
            previous = 0.0 if pending else self._close_churn(record)
            ring, lookback, floor_churn = (
                record.state.ring,
                self.spec.lookback,
                self.dormant_churn_floor,
            )
            request: _Request | None = None
            if scorable and is_scored_at_close(ring, lookback, previous, floor_churn):
                # Scored only by the floor rule on a pending previous close: checked again once
                # that is scored. A customer with an event in a later window (folded while the
                # partition waits for the other sources) is "dormant" by the closed sequence
                # too, though not by their latest event.
                speculative = pending and not is_scored_at_close(ring, lookback, None, floor_churn)
                end_ms = self.spec.end_ms(window)
                request = _Request(
                    user,
                    end_ms,
                    "window_close",
                    ring.copy(),
                    partition=p,
                    dormant=dormant or speculative,
                )
                requests.append(request)
                self._closing.add(user)
                if self.evaluate and ring[-1, I_ACTIVE] > 0:
                    # The request's copy: the ring itself moves on if the run closes the
                    # user's next window too.
                    self._inputs.setdefault((p, window), []).append(request.sequence[-1])
            elif dormant and not settling:
                gone.append(user)
            state = record.state
            self._settles.append(
                _Settle(user, p, window, state.order_days_total, state.spend_total, request)
            )
        for user in gone:
            self._active_undo.append((p, user, active.pop(user)))
            # A user out of the lookback is no longer needed in memory; the table has them.
            if user not in dirty:
                self._users.pop(user, None)

    def _fold_series(
        self, p: int, event: ClickEvent, window: int, origin: tuple[int, int] | None
    ) -> None:
        """Fold the event into the partition's category sums (when category demand is on)."""
        if self.series_level is None:
            return
        changed = fold(self._book(p), self.series_level, event, window, origin)
        if changed:
            self._dirty_shards.setdefault(p, set()).update(changed)

    def _close_series(self, p: int, window: int) -> None:
        """Take the window's category sums out of the partition's book, as parts to send."""
        cells, totals, overflow, changed = close(self._book(p), window)
        self._dirty_shards.setdefault(p, set()).update({0} | changed)
        if overflow:
            log.warning(
                "partition %d, window ending %s: %d events of series beyond the %d kept per "
                "window counted in the totals only",
                p,
                self.spec.end_ms(window),
                overflow,
                MAX_SERIES_PER_WINDOW,
            )
        self._category_parts += category_parts(
            cells,
            totals,
            overflow,
            window_end_ms=self.spec.end_ms(window),
            partition=p,
            partitions=self.partitions,
        )

    def _book(self, p: int) -> SeriesBook:
        """The partition's category sums: cached, or read from its shards in the table. The
        run's changes are journaled, so that a run that raises can be taken back."""
        book = self._books.get(p)
        if book is not None:
            if p not in self._book_backup:
                self._book_backup[p] = book
                book.begin()
            return book
        self._book_backup.setdefault(p, None)
        values = []
        for key in self._book_keys[p]:
            raw = self._get(key, p)
            if not raw:
                continue
            try:
                values.append(orjson.loads(raw))
            except orjson.JSONDecodeError as exc:
                raise StateError(
                    f"partition {p}: table key {key!r} does not hold category sums ({exc}); "
                    f"the state was written by an incompatible version"
                ) from exc
        try:
            book = decode_shards(values)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateError(
                f"partition {p}: the category sums in the table are malformed ({exc!r}); "
                f"the state was written by an incompatible version"
            ) from exc
        self._books[p] = book
        return book

    def _score(self, requests: list[_Request], out: BatchOutput, now: int) -> None:
        if not requests:
            return
        finish_closes(self._previews, self.spec)
        self._previews.clear()
        started, in_session = time.perf_counter(), self.scorer.session_seconds
        scores = self.scorer.score(np.stack([r.sequence for r in requests]))
        out.inference_seconds += time.perf_counter() - started
        out.ort_seconds += self.scorer.session_seconds - in_session
        out.scored += len(requests)
        spec = self.spec
        version = self.scorer.version
        horizon_days = spec.horizon * spec.length_ms / DAY_MS
        # Python floats in one pass each (the same values float() of each element gives).
        orders_of = scores.expected_orders.tolist()
        means_of = None if scores.mean_orders is None else scores.mean_orders.tolist()
        spend_of = scores.expected_spend.tolist()
        churn_of = scores.churn_probability.tolist()
        for i, r in enumerate(requests):
            record = self._users.get(r.user_id)
            if r.dormant and not self._dormant_scored(r, record):
                continue
            end_ms = r.end_ms
            orders = orders_of[i]
            mean = None if means_of is None else means_of[i]
            spend = spend_of[i]
            churn = churn_of[i]
            since = days_since_last_order(record.state, end_ms) if record else None
            trigger: Any = r.trigger
            out.demand.append(
                DemandSignal.create(
                    user_id=r.user_id,
                    window_end_ms=end_ms,
                    horizon_windows=spec.horizon,
                    horizon_days=horizon_days,
                    expected_orders=orders,
                    expected_spend=spend,
                    purchase_probability=1.0 - churn,
                    trigger=trigger,
                    model_version=version,
                    emitted_at_ms=now,
                    mean_orders=mean,
                )
            )
            out.churn.append(
                ChurnSignal.create(
                    user_id=r.user_id,
                    window_end_ms=end_ms,
                    churn_probability=churn,
                    thresholds=self.thresholds,
                    days_since_last_order=since,
                    trigger=trigger,
                    model_version=version,
                    emitted_at_ms=now,
                )
            )
            if r.trigger == "window_close":
                r.result = (orders, spend, churn, version)
            if record is not None:
                close_churn = churn if r.trigger == "window_close" else self._close_churn(record)
                record.last_scores = {
                    "window_end_ms": end_ms,
                    "trigger": r.trigger,
                    "expected_orders": orders,
                    "expected_spend": spend,
                    "churn_probability": churn,
                    "model_version": version,
                }
                if r.trigger != "window_close" and close_churn is not None:
                    record.last_scores[LAST_CLOSE_CHURN] = close_churn
        self._score_shadow(requests, out)

    def _score_shadow(self, requests: list[_Request], out: BatchOutput) -> None:
        """The shadow model on the window-close sequences whose signals went out."""
        shadow = self.shadow
        if shadow is None or not self.evaluate:
            return
        closes = [r for r in requests if r.result is not None]
        if not closes:
            return
        started, in_session = time.perf_counter(), shadow.session_seconds
        scores = shadow.score(np.stack([r.sequence for r in closes]))
        out.inference_seconds += time.perf_counter() - started
        out.ort_seconds += shadow.session_seconds - in_session
        version = shadow.version
        for i, r in enumerate(closes):
            r.shadow_result = (
                float(scores.expected_orders[i]),
                float(scores.expected_spend[i]),
                float(scores.churn_probability[i]),
                version,
            )

    def _settle(self, out: BatchOutput, now: int) -> None:
        """Settle the run's closes in order: each user's predictions whose horizon has passed
        become outcomes, the close's own prediction joins the ring; then every partition close
        sends its quality parts for the cohort one horizon before it."""
        if not self._closes or not self.evaluate:
            return
        spec = self.spec
        horizon = spec.horizon
        settled: dict[tuple[int, int], list[PredictionOutcome]] = {}
        for s in self._settles:
            record = self._users.get(s.user_id)
            if record is None:
                continue
            done, waiting = settle(
                record.pending, s.window, s.order_days_total, s.spend_total, horizon
            )
            for outcome in done:
                record_out = PredictionOutcome.create(
                    outcome,
                    user_id=s.user_id,
                    window_end_ms=spec.end_ms(outcome.prediction.window),
                    settled_through_ms=spec.end_ms(s.window),
                    horizon_windows=horizon,
                    on_time=on_time(outcome, s.window, horizon),
                    emitted_at_ms=now,
                )
                out.outcomes.append(record_out)
                settled.setdefault((s.partition, s.window), []).append(record_out)
            r = s.request
            if r is not None and r.result is not None:
                orders, spend, churn, version = r.result
                new = Pending(
                    s.window, version, orders, spend, churn, s.order_days_total, s.spend_total
                )
                waiting = remember(waiting, new, horizon)
                if r.shadow_result is not None:
                    orders, spend, churn, version = r.shadow_result
                    new = Pending(
                        s.window,
                        version,
                        orders,
                        spend,
                        churn,
                        s.order_days_total,
                        s.spend_total,
                        shadow=True,
                    )
                    waiting = remember(waiting, new, horizon)
            record.pending = waiting
            active = self._active.get(s.partition)
            if waiting and active is not None and s.user_id not in active:
                # A dormant close that did not stand dropped them (_dormant_scored); a
                # prediction of theirs still waits, so they stay closed until it is settled.
                active[s.user_id] = spec.index(record.state.last_event_ms)
                self._active_undo.append((s.partition, s.user_id, None))
        reference = self.scorer.manifest.input_reference
        # One entry per close the run worked on (each slice's users settled once, above).
        slices: dict[tuple[int, int], bool] = {}
        for p, window, complete in self._closes:
            slices[(p, window)] = slices.get((p, window), False) or complete
        for (p, window), complete in slices.items():
            counts = None
            if reference is not None:
                rows = self._inputs.get((p, window), [])
                binned = bin_counts(
                    reference, np.stack(rows) if rows else np.zeros((0, N_FEATURES))
                )
                counts = tuple(tuple(int(x) for x in row) for row in binned)
            cohort_end = spec.end_ms(window - horizon)
            piece = CohortProgress(
                window, cohort_tallies(settled.get((p, window), []), cohort_end), counts
            )
            clock = self._clocks[p]
            before = self._cohort_slices(p, clock, window)
            if not complete:
                # Stored on its own, once: the clock says how many slices are stored.
                key = cohort_key(p, self.partitions, clock.slices)
                out.writes.setdefault(p, {})[key] = orjson.dumps(piece.to_dict())
                clock.slices += 1
                clock.cohort = (*before, piece)
                continue
            clock.slices = 0
            clock.cohort = None
            progress = merge_progress((*before, piece))
            inputs = None
            if progress.counts is not None:
                inputs = InputCounts(spec.end_ms(window), self.scorer.version, progress.counts)
            out.quality_parts += parts_of(
                progress.tallies,
                window_end_ms=cohort_end,
                horizon_windows=horizon,
                partition=p,
                partitions=self.partitions,
                inputs=inputs,
            )

    def _cohort_slices(
        self, p: int, clock: PartitionClock, window: int
    ) -> tuple[CohortProgress, ...]:
        """The tallies the close in progress on ``p`` has stored so far (read from the table
        after a restart)."""
        if clock.cohort is None:
            pieces = []
            for i in range(clock.slices):
                key = cohort_key(p, self.partitions, i)
                raw = self._get(key, p)
                try:
                    pieces.append(CohortProgress.from_dict(orjson.loads(raw or b"null")))
                except (TypeError, KeyError, ValueError) as exc:
                    raise StateError(
                        f"partition {p}: table key {key!r} does not hold the tallies of a "
                        f"close in progress ({exc!r}); the state was written by an "
                        f"incompatible version"
                    ) from exc
            clock.cohort = tuple(pieces)
        return tuple(piece for piece in clock.cohort if piece.window == window)

    def _dormant_scored(self, request: _Request, record: UserRecord | None) -> bool:
        """Whether a dormant customer's close request stands: their latest close score, now
        known even if it came earlier in this batch, is under the floor. If not, the close
        before was their last: they leave the candidates (until an event brings them back)."""
        if record is not None and self._dormant_candidate(record):
            return True
        if record is not None and (
            record.state.open
            or is_scored_at_close(
                record.state.ring, self.spec.lookback, None, self.dormant_churn_floor
            )
        ):
            # An event (later in this batch, or in a later window closed in this batch) made
            # them active: they stay a candidate.
            return False
        active = self._active.get(request.partition)
        if active is not None and request.user_id in active:
            self._active_undo.append(
                (request.partition, request.user_id, active.pop(request.user_id))
            )
        return False

    # --- views ----------------------------------------------------------------------------------

    def user_view(self, user: str) -> dict[str, Any] | None:
        if is_internal_key(user):
            return None  # not a user: the table's internal keys are never shown as one
        record = self._users.get(user)
        if record is None:
            raw = self.store.get(user, partition_of(user.encode(), self.partitions))
            record = decode_user(raw) if raw else None
        if record is None:
            return None
        s = record.state
        return {
            "user_id": user,
            "first_window_start_ms": self.spec.start_ms(s.first_window),
            "closed_through_end_ms": (
                self.spec.end_ms(s.closed_through) if s.closed_through is not None else None
            ),
            "open_windows": sorted(self.spec.start_ms(w) for w in s.open),
            "orders_total": s.orders_total,
            "spend_total": s.spend_total,
            "last_event_ms": s.last_event_ms,
            "last_order_ms": s.last_order_ms,
            "last_scores": record.last_scores,
        }

    def clocks_view(self, held: Iterable[int] = ()) -> dict[int, dict[str, Any]]:
        """The clocks of the partitions touched since start, and of ``held`` ones read from
        the store: a partition whose records were all processed before a restart gets no
        message afterwards, and its clock must still show (read only, nothing cached)."""
        clocks = dict(self._clocks)
        for p in held:
            if p not in clocks and 0 <= p < self.partitions:
                key = self._clock_keys[p]
                raw = self.store.get(key, p)
                if raw:
                    clocks[p] = self._decode_clock(key, p, raw)
        return {
            p: {
                "max_event_ms": c.max_event_ms,
                "closed_through": c.closed_through,
                "closing": c.closing,
                "watermark_ms": self.watermark(p) if p in self._clocks else None,
                "idle": p in self._idle,
                "sources": {
                    s: {"event_ms": m.event_ms, "idle": m.idle, "sent_ms": m.sent_ms}
                    for s, m in sorted(self._marks.get(p, {}).items())
                },
            }
            for p, c in sorted(clocks.items())
        }
