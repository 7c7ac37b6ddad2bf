"""The worker's logic, without Faust: raw messages in, signals, dead letters and state out.

Owns :class:`Processor`, which takes a micro-batch of raw Kafka messages and returns what to
send and what to store. Per message: validate (invalid → dead letter with reason), route
(a message on the wrong partition for its user is re-keyed, never folded into state there),
drop late events (their window already closed for the partition → dead letter ``late``),
fold the event into the user's window state, maybe request an activity ("fresh") score, and
advance the partition's watermark; when the watermark passes a window end, the partition's
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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from features.events import ClickEvent
from features.signals import ChurnSignal, DeadLetter, DemandSignal, RiskThresholds
from features.state import add_event, close_through, days_since_last_order, peek_sequence
from features.validation import Invalid, ValidationPolicy, validate
from features.windows import DAY_MS, DORMANT_CHURN_FLOOR, WindowSpec, is_scored_at_close
from serving.scorer import Scorer
from stream.codec import (
    PartitionClock,
    UserRecord,
    decode_clock,
    decode_user,
    encode_clock,
    encode_user,
)
from stream.publish import partition_of

if TYPE_CHECKING:
    from settings import Settings

log = logging.getLogger(__name__)

INTERNAL_PREFIX = "\x00"
"""Every internal table key starts with it; validated user ids never contain it."""
META_PREFIX = INTERNAL_PREFIX + "clock/"
ORIGIN_HEADER = "clicksignals-origin"
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
    i = 0
    while True:
        key = f"{META_PREFIX}{partition}/{i}"
        if partition_of(key.encode(), partitions) == partition:
            return key
        i += 1


class StateStore(Protocol):
    """Where encoded state lives between batches (a Faust table in the worker, a dict in tests).

    Reads name the partition the key belongs to, because Faust's RocksDB store keeps one
    database per partition and must be told which to read.
    """

    def get(self, key: str, partition: int) -> bytes | None: ...

    def items(self) -> Iterator[tuple[str, bytes]]: ...


class DictStore:
    """A :class:`StateStore` over a plain dict, for tests and benchmarks."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str, partition: int) -> bytes | None:
        return self.data.get(key)

    def items(self) -> Iterator[tuple[str, bytes]]:
        return iter(list(self.data.items()))

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
    duplicates: int = 0
    """Messages skipped because the state already holds them (redelivery after a crash)."""
    writes: dict[int, dict[str, bytes]] = field(default_factory=dict)
    """Partition → table key → encoded state: one write per key per batch."""
    scored: int = 0
    inference_seconds: float = 0.0
    invalid_by_reason: dict[str, int] = field(default_factory=dict)
    processing_errors: dict[str, int] = field(default_factory=dict)
    """Exception type name -> messages dead-lettered as ``processing_error`` for it."""
    isolation_runs: int = 0
    """Extra runs over parts of the batch to find the messages that raise (0: none raised)."""

    def merge(self, later: BatchOutput) -> None:
        """Append the outputs of a run that came after this one (isolation's halves)."""
        self.demand += later.demand
        self.churn += later.churn
        self.dead_letters += later.dead_letters
        self.reroute += later.reroute
        self.reroute_origins += later.reroute_origins
        self.duplicates += later.duplicates
        for p, entries in later.writes.items():
            # Each write is a key's whole encoded state: the later run's is the current one.
            self.writes.setdefault(p, {}).update(entries)
        self.scored += later.scored
        self.inference_seconds += later.inference_seconds
        for reason, n in later.invalid_by_reason.items():
            self.invalid_by_reason[reason] = self.invalid_by_reason.get(reason, 0) + n
        for name, n in later.processing_errors.items():
            self.processing_errors[name] = self.processing_errors.get(name, 0) + n
        self.isolation_runs += later.isolation_runs


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
) -> Processor:
    """The processor the worker runs for ``settings`` (also the demo's offline twin's)."""
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
    ) -> None:
        self.scorer = scorer
        self.spec: WindowSpec = scorer.manifest.spec
        self.store = store
        self.partitions = partitions
        self.policy = policy
        self.lateness_ms = allowed_lateness_ms
        self.fresh_interval_ms = fresh_interval_ms
        self.routed_topics = routed_topics
        self.thresholds = thresholds or scorer.manifest.thresholds
        self.now_ms = clock or (lambda: int(time.time() * 1000))
        self.dormant_churn_floor = dormant_churn_floor
        self._users: dict[str, UserRecord] = {}
        self._clocks: dict[int, PartitionClock] = {}
        self._active: dict[int, dict[str, int]] = {}
        """Per partition: user → last window with an event (the close candidates: users in the
        lookback and dormant customers under the churn floor)."""
        self._closing: set[str] = set()
        """Users with a window-close request in the run in progress (its score not known yet)."""
        self._clock_keys = {p: clock_key(p, partitions) for p in range(partitions)}
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
        self._overlay: dict[str, bytes] = {}
        """During isolation: writes of the parts already done, read before the store."""

    # --- partition lifecycle -------------------------------------------------------------

    def forget_partitions(self, partitions: set[int]) -> None:
        """Drop cached state of partitions this worker no longer holds (or gets back: the
        table is the truth then). Every cached user of them goes, not only the close
        candidates: a user read for a redelivered duplicate, or dropped from the candidates in
        a batch that also wrote them, is cached too, and must not outlive the partition."""
        if not partitions:
            return
        for p in partitions:
            self._clocks.pop(p, None)
            self._active.pop(p, None)
        stale = [u for u in self._users if partition_of(u.encode(), self.partitions) in partitions]
        for user in stale:
            self._users.pop(user, None)

    def _ensure_partition(self, p: int) -> PartitionClock:
        clock = self._clocks.get(p)
        if clock is not None:
            if p not in self._clock_backup:
                self._clock_backup[p] = replace(clock)
            return clock
        self._clock_backup.setdefault(p, None)
        key = self._clock_keys[p]
        raw = self._get(key, p)
        clock = self._decode_clock(key, p, raw) if raw else PartitionClock()
        self._clocks[p] = clock
        active: dict[str, int] = {}
        if clock.closed_through is not None:
            # Rebuild the close candidates from the restored table (after a restart or a
            # rebalance moved this partition here).
            horizon = clock.closed_through - self.spec.lookback + 1
            for key, value in self._items():
                # Internal keys are not users. Before user ids with control characters were
                # refused, a user could be stored under this namespace: such a record is
                # left alone (no event can reach it any more), never read as a clock.
                if is_internal_key(key) or partition_of(key.encode(), self.partitions) != p:
                    continue
                try:
                    record = decode_user(value)
                except Exception as exc:
                    # One unreadable record must not stop the partition: the user is no close
                    # candidate; an event of theirs fails alone (processing_error).
                    log.error("partition %d: user %r has unreadable state: %r", p, key, exc)
                    continue
                last = self.spec.index(record.state.last_event_ms)
                # Dormant customers under the floor too, from their stored last scores: the
                # restored worker closes the same users an uninterrupted one would.
                if last >= horizon or record.state.open or self._dormant_candidate(record):
                    active[key] = last
        log.info(
            "partition %d: clock closed through %s, %d close candidates restored from the table",
            p,
            clock.closed_through,
            len(active),
        )
        self._active[p] = active
        return clock

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
        """Churn of the user's latest score if it was a window close's, else None.

        For a dormant user the latest score is always a close's: each of their events was
        followed by the close of its window, where they were in the lookback.
        """
        scores = record.last_scores
        if scores.get("trigger") != "window_close":
            return None
        churn = scores.get("churn_probability")
        return float(churn) if churn is not None else None

    def _dormant_candidate(self, record: UserRecord) -> bool:
        """A customer whose latest close score is under the floor (the part of
        :func:`features.windows.close_population` that does not need the sequence)."""
        churn = self._close_churn(record)
        return (
            record.state.order_days_total > 0
            and churn is not None
            and churn < self.dormant_churn_floor
        )

    def _get(self, key: str, partition: int) -> bytes | None:
        if self._overlay:
            value = self._overlay.get(key)
            if value is not None:
                return value
        return self.store.get(key, partition)

    def _items(self) -> Iterator[tuple[str, bytes]]:
        yield from self.store.items()

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
        self._checkpoint()

    # --- the batch ----------------------------------------------------------------------------

    def process(self, messages: list[RawMessage]) -> BatchOutput:
        """One micro-batch: outputs and table writes. Raises only :class:`FatalError`.

        A message whose processing raises is dead-lettered as ``processing_error`` and the
        rest of the batch is processed as if it had not been there (module doc).
        """
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
        self._closing.clear()
        dirty_users: dict[str, int] = {}
        dirty_parts: set[int] = set()
        for msg in messages:
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
            if p != msg.partition:
                if msg.topic in self.routed_topics:
                    # A routed message on the wrong partition means the topic's partition
                    # count differs from settings: refuse loudly rather than corrupt state.
                    raise FatalError(
                        f"{msg.topic}[{msg.partition}] holds user {event.user_id!r} of "
                        f"partition {p}: partition counts do not match settings"
                    )
                out.reroute.append((key, msg.value))
                out.reroute_origins.append((msg.partition, msg.offset))
                continue
            clock = self._ensure_partition(p)
            origin = msg.origin if msg.topic in self.routed_topics else (msg.partition, msg.offset)
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
                self._advance(clock, p, event.event_time_ms, now, requests, dirty_users)
                continue
            window = self.spec.index(event.event_time_ms)
            closed = clock.closed_through
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
            self._fold(event, window, p, requests, origin)
            dirty_users[event.user_id] = p
            dirty_parts.add(p)
            self._advance(clock, p, event.event_time_ms, now, requests, dirty_users)
        self._score(requests, out, now)
        for user, p in dirty_users.items():
            record = self._users.get(user)
            if record is not None:
                out.writes.setdefault(p, {})[user] = encode_user(record)
        for p in dirty_parts:
            out.writes.setdefault(p, {})[self._clock_keys[p]] = encode_clock(self._clocks[p])
        return out

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
            requests.append(_Request(user, t, "activity", peek_sequence(state, upto, self.spec)))

    def _advance(
        self,
        clock: PartitionClock,
        p: int,
        event_ms: int,
        now: int,
        requests: list[_Request],
        dirty: dict[str, int],
    ) -> None:
        """Move the partition's event time to ``event_ms`` and close the windows it passes.

        Event time never runs ahead of the wall clock: an event dated in the future (within
        the accepted skew) is folded into its window, but moves the partition's time only to
        ``now``. Otherwise one such event would close the current window for every user of the
        partition and make the rest of its events late. In a backfill every event time is in
        the past, so this bound never acts there."""
        event_ms = min(event_ms, now)
        if clock.max_event_ms is not None and event_ms <= clock.max_event_ms:
            return
        clock.max_event_ms = event_ms
        target = self.spec.index(event_ms - self.lateness_ms) - 1
        if clock.closed_through is None:
            # Nothing of this partition was seen before: windows before the first event
            # hold no users, there is nothing to close.
            clock.closed_through = min(target, self.spec.index(event_ms) - 1)
            return
        for window in range(clock.closed_through + 1, target + 1):
            self._close(p, window, requests, dirty)
            clock.closed_through = window

    def _close(self, p: int, window: int, requests: list[_Request], dirty: dict[str, int]) -> None:
        floor = window - self.spec.lookback + 1
        active = self._active.get(p, {})
        gone: list[str] = []
        for user, last in active.items():
            record = self._record(user, p)
            if record is None:
                gone.append(user)
                continue
            dormant = last < floor
            pending = user in self._closing
            if dormant and not record.state.open:
                # Out of the lookback: only a customer under the churn floor stays. Decided
                # on the stored state before closing it, so dropping costs no write; with a
                # close of theirs still unscored in this batch the score decides in _score.
                if record.state.order_days_total <= 0:
                    gone.append(user)
                    continue
                if not pending and not self._dormant_candidate(record):
                    gone.append(user)
                    continue
            closed = record.state.closed_through
            if closed is not None and closed >= window:
                # Closed and scored before a restart whose partition clock was stored
                # behind this user's state: that signal went out then.
                continue
            close_through(record.state, window, self.spec)
            dirty[user] = p
            # The rule, on the closed sequence; a pending previous close counts as under the
            # floor here and is checked again once scored.
            previous = 0.0 if pending else self._close_churn(record)
            if is_scored_at_close(
                record.state.ring, self.spec.lookback, previous, self.dormant_churn_floor
            ):
                end_ms = self.spec.end_ms(window)
                requests.append(
                    _Request(
                        user,
                        end_ms,
                        "window_close",
                        record.state.ring.copy(),
                        partition=p,
                        dormant=dormant,
                    )
                )
                self._closing.add(user)
            elif dormant:
                gone.append(user)
        for user in gone:
            self._active_undo.append((p, user, active.pop(user)))
            # A user out of the lookback is no longer needed in memory; the table has them.
            if user not in dirty:
                self._users.pop(user, None)

    def _score(self, requests: list[_Request], out: BatchOutput, now: int) -> None:
        if not requests:
            return
        started = time.perf_counter()
        scores = self.scorer.score(np.stack([r.sequence for r in requests]))
        out.inference_seconds += time.perf_counter() - started
        out.scored += len(requests)
        spec = self.spec
        version = self.scorer.version
        horizon_days = spec.horizon * spec.length_ms / DAY_MS
        for i, r in enumerate(requests):
            record = self._users.get(r.user_id)
            if r.dormant and not self._dormant_scored(r, record):
                continue
            end_ms = r.end_ms
            orders = float(scores.expected_orders[i])
            spend = float(scores.expected_spend[i])
            churn = float(scores.churn_probability[i])
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
            if record is not None:
                record.last_scores = {
                    "window_end_ms": end_ms,
                    "trigger": r.trigger,
                    "expected_orders": orders,
                    "expected_spend": spend,
                    "churn_probability": churn,
                    "model_version": version,
                }

    def _dormant_scored(self, request: _Request, record: UserRecord | None) -> bool:
        """Whether a dormant customer's close request stands: their latest close score, now
        known even if it came earlier in this batch, is under the floor. If not, the close
        before was their last: they leave the candidates (until an event brings them back)."""
        if record is not None and self._dormant_candidate(record):
            return True
        if record is not None and record.state.open:
            return False  # an event later in this batch made them active: they stay
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
            p: {"max_event_ms": c.max_event_ms, "closed_through": c.closed_through}
            for p, c in sorted(clocks.items())
        }
