"""The worker's logic, without Faust: raw messages in, signals, dead letters and state out.

Owns :class:`Processor`, which takes a micro-batch of raw Kafka messages and returns what to
send and what to store. Per message: validate (invalid → dead letter with reason), route
(a message on the wrong partition for its user is re-keyed, never folded into state there),
drop late events (their window already closed for the partition → dead letter ``late``),
fold the event into the user's window state, maybe request an activity ("fresh") score, and
advance the partition's watermark; when the watermark passes a window end, every user of the
partition active within the lookback is closed and scored — silent users included.

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
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from aiokafka.partitioner import murmur2

from features.events import ClickEvent
from features.signals import ChurnSignal, DeadLetter, DemandSignal, RiskThresholds
from features.state import add_event, close_through, days_since_last_order, peek_sequence
from features.validation import Invalid, ValidationPolicy, validate
from features.windows import WindowSpec, is_scored
from stream.codec import (
    PartitionClock,
    UserRecord,
    decode_clock,
    decode_user,
    encode_clock,
    encode_user,
)
from stream.model import Scorer

log = logging.getLogger(__name__)

META_PREFIX = "\x00clock/"
DAY_MS = 86_400_000


@functools.lru_cache(maxsize=1 << 20)
def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java and aiokafka alike) gives ``key``.

    Cached: murmur2 in pure Python costs more per event than the lookup, and the same users
    recur batch after batch (the processor per event, the publisher per signal).
    """
    return (murmur2(key) & 0x7FFFFFFF) % partitions


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
    value: bytes
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


@dataclass(slots=True)
class _Request:
    user_id: str
    end_ms: int
    """The window end scored; for an activity signal, the event time the open window is cut at."""
    trigger: str
    sequence: np.ndarray


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
    ) -> None:
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
        self._users: dict[str, UserRecord] = {}
        self._clocks: dict[int, PartitionClock] = {}
        self._active: dict[int, dict[str, int]] = {}
        """Per partition: user → last window with an event (the close candidates)."""
        self._clock_keys = {p: clock_key(p, partitions) for p in range(partitions)}
        """user id → partition: murmur2 in pure Python costs more than the dict lookup, and
        a user's events come again and again."""

    # --- partition lifecycle -------------------------------------------------------------

    def forget_partitions(self, partitions: set[int]) -> None:
        """Drop cached state of partitions this worker no longer holds."""
        for p in partitions:
            self._clocks.pop(p, None)
            users = self._active.pop(p, {})
            for user in users:
                self._users.pop(user, None)

    def _ensure_partition(self, p: int) -> PartitionClock:
        clock = self._clocks.get(p)
        if clock is not None:
            return clock
        raw = self.store.get(self._clock_keys[p], p)
        clock = decode_clock(raw) if raw else PartitionClock()
        self._clocks[p] = clock
        active: dict[str, int] = {}
        if clock.closed_through is not None:
            # Rebuild the close candidates from the restored table (after a restart or a
            # rebalance moved this partition here).
            horizon = clock.closed_through - self.spec.lookback + 1
            for key, value in self._items():
                if key.startswith(META_PREFIX) or partition_of(key.encode(), self.partitions) != p:
                    continue
                record = decode_user(value)
                last = self.spec.index(record.state.last_event_ms)
                if last >= horizon or record.state.open:
                    active[key] = last
        self._active[p] = active
        return clock

    def _items(self) -> Iterator[tuple[str, bytes]]:
        yield from self.store.items()

    def _record(self, user: str, partition: int) -> UserRecord | None:
        record = self._users.get(user)
        if record is None:
            raw = self.store.get(user, partition)
            if raw:
                record = decode_user(raw)
                self._users[user] = record
        return record

    # --- the batch ----------------------------------------------------------------------------

    def process(self, messages: list[RawMessage]) -> BatchOutput:
        out = BatchOutput()
        requests: list[_Request] = []
        dirty_users: dict[str, int] = {}
        dirty_parts: set[int] = set()
        now = self.now_ms()
        for msg in messages:
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
                    raise RuntimeError(
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
                self._advance(clock, p, event.event_time_ms, requests, dirty_users)
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
                self._dead(out, late, msg, now)  # type: ignore[arg-type]
                continue
            self._fold(event, window, p, requests, origin)
            dirty_users[event.user_id] = p
            dirty_parts.add(p)
            self._advance(clock, p, event.event_time_ms, requests, dirty_users)
        self._score(requests, out, now)
        for user, p in dirty_users.items():
            record = self._users.get(user)
            if record is not None:
                out.writes.setdefault(p, {})[user] = encode_user(record)
        for p in dirty_parts:
            out.writes.setdefault(p, {})[self._clock_keys[p]] = encode_clock(self._clocks[p])
        return out

    def _dead(self, out: BatchOutput, invalid: Invalid, msg: RawMessage, now: int) -> None:
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
        active[user] = max(window, active.get(user, window))
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
        requests: list[_Request],
        dirty: dict[str, int],
    ) -> None:
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
            if last < floor:
                gone.append(user)
                continue
            record = self._record(user, p)
            if record is None:
                gone.append(user)
                continue
            closed = record.state.closed_through
            if closed is not None and closed >= window:
                # Closed and scored before a restart whose partition clock was stored
                # behind this user's state: that signal went out then.
                continue
            close_through(record.state, window, self.spec)
            dirty[user] = p
            if is_scored(record.state.ring, self.spec.lookback):
                end_ms = self.spec.end_ms(window)
                requests.append(_Request(user, end_ms, "window_close", record.state.ring.copy()))
        for user in gone:
            del active[user]
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
            end_ms = r.end_ms
            orders = float(scores.expected_orders[i])
            spend = float(scores.expected_spend[i])
            churn = float(scores.churn_probability[i])
            record = self._users.get(r.user_id)
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

    # --- views ----------------------------------------------------------------------------------

    def user_view(self, user: str) -> dict[str, Any] | None:
        record = self._record(user, partition_of(user.encode(), self.partitions))
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
                raw = self.store.get(self._clock_keys[p], p)
                if raw:
                    clocks[p] = decode_clock(raw)
        return {
            p: {"max_event_ms": c.max_event_ms, "closed_through": c.closed_through}
            for p, c in sorted(clocks.items())
        }
