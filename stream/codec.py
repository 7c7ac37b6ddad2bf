"""Byte encoding of per-user and per-partition worker state, as stored in the Faust table.

Owns :class:`UserRecord` (the feature state of :mod:`features.state` plus what the worker
adds: last fresh-signal time and last scores) and its compact codec: a small JSON header
(orjson) followed by the ring buffer's raw float32 bytes, so the bulk of a user's state is
copied, not formatted; then, for a user with window-close predictions waiting for their
horizon (the online evaluation, :mod:`features.outcomes`), a fixed binary block of 36 bytes
per prediction, named by the optional header keys ``pn`` (count) and ``pv`` (model versions):
a record without them, written before, has none waiting. Also :class:`PartitionClock`, a
partition's event-time watermark.

Versions: a record names its :data:`CODEC_VERSION`, and a record of another version is refused
with :class:`StateVersionError`, never migrated. Version 2 (feature definition 2) holds each
user's order days and first/last purchase times; a version-1 record has none of them and its
ring holds vectors of the old length, so no decoding could recover them: the worker's state
must be rebuilt from the clickstream, as for a changed window grid (the error says how).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from features.feedback import CohortProgress
from features.outcomes import Pending
from features.state import OpenWindow, UserState
from features.windows import N_FEATURES

# 2: order days and first/last purchase times (feature definition 2, issue 14).
CODEC_VERSION = 2


class StateVersionError(ValueError):
    """A stored user state of another codec version: this worker cannot read it."""


@dataclass(slots=True)
class UserRecord:
    state: UserState
    last_fresh_ms: int | None = None
    last_scores: dict[str, Any] = field(default_factory=dict)
    seen: dict[int, int] = field(default_factory=dict)
    """Clickstream partition -> highest offset from it folded into ``state``: a message
    delivered again after a crash (at-least-once) is recognised and not counted twice."""
    pending: list[Pending] = field(default_factory=list)
    """Window-close predictions whose horizon has not passed, oldest first (at most the
    horizon's length, :mod:`features.outcomes`). Replaced, never changed in place: the
    encoding below is kept for the list it was made of."""
    pending_code: tuple[list[Pending], list[str], bytes] | None = field(
        default=None, repr=False, compare=False
    )
    """``pending``'s encoded block, for the list object it encodes: a user is written at
    each of their events but their predictions change only at a close (issue 15's cost)."""


def _open_to_json(w: OpenWindow) -> list[Any]:
    return [
        w.counts,
        w.units,
        w.spend,
        sorted(w.orders),
        w.anonymous_orders,
        sorted(w.products),
        sorted(w.categories),
        sorted(w.sessions),
        sorted(w.purchase_days),
        w.first_purchase_ms,
        w.last_purchase_ms,
    ]


def _open_from_json(v: list[Any]) -> OpenWindow:
    return OpenWindow(
        counts=list(v[0]),
        units=int(v[1]),
        spend=float(v[2]),
        orders=set(v[3]),
        anonymous_orders=int(v[4]),
        products=set(v[5]),
        categories=set(v[6]),
        sessions=set(v[7]),
        purchase_days={int(d) for d in v[8]},
        first_purchase_ms=v[9],
        last_purchase_ms=v[10],
    )


_PENDING = struct.Struct("<ihhfffdd")
"""One waiting prediction after the ring (36 bytes): window (int32), model version index and
shadow flag (int16 each), the scores as float32 (ONNX Runtime's own values, so float32 keeps
them exactly), the totals as float64 like the state's. In JSON the 13 entries of a weekly user
took ~1.5 kB, more than the rest of the header. Packed with :mod:`struct`, not a numpy record
array: per user there are at most a horizon's few entries, where numpy's per-call overhead
was most of the online evaluation's cost in the codec."""


def _pack(p: Pending, version_index: int) -> bytes:
    """One entry of the block, in :data:`_PENDING`'s layout."""
    return _PENDING.pack(
        p.window,
        version_index,
        p.shadow,
        p.orders,
        p.spend,
        p.churn,
        p.order_days_before,
        p.spend_before,
    )


def _pending_block(pending: list[Pending]) -> tuple[list[str], bytes]:
    versions = sorted({p.model_version for p in pending})
    index = {v: i for i, v in enumerate(versions)}
    return versions, b"".join(_pack(p, index[p.model_version]) for p in pending)


def _pending_from_block(versions: list[str], data: bytes) -> list[Pending]:
    return [
        Pending(w, versions[v], orders, spend, churn, days, spent, bool(shadow))
        for w, v, shadow, orders, spend, churn, days, spent in _PENDING.iter_unpack(data)
    ]


def _pending_encoded(record: UserRecord) -> tuple[list[str], bytes]:
    code = record.pending_code
    pending = record.pending
    if code is not None and code[0] is not pending:
        code = _pending_moved_on(code, pending)
        record.pending_code = code
    if code is None:
        versions, block = _pending_block(pending)
        code = record.pending_code = (pending, versions, block)
    return code[1], code[2]


def _pending_moved_on(
    code: tuple[list[Pending], list[str], bytes], pending: list[Pending]
) -> tuple[list[Pending], list[str], bytes] | None:
    """The block of ``pending`` from the block of the list before it, when a close only
    settled the oldest entries and added one of a known model version (the usual close):
    the kept entries' bytes are reused. ``None`` when it is not that case."""
    before, versions, block = code
    if not pending:
        return None
    kept = len(pending) - 1
    dropped = len(before) - kept
    if dropped < 0 or any(a is not b for a, b in zip(before[dropped:], pending, strict=False)):
        return None
    new = pending[-1]
    if new.model_version not in versions or (
        dropped and len({p.model_version for p in pending}) != len(versions)
    ):
        return None
    entry = _pack(new, versions.index(new.model_version))
    return pending, versions, block[dropped * _PENDING.size :] + entry


def encode_user(record: UserRecord) -> bytes:
    s = record.state
    fields: dict[str, Any] = {
        "v": CODEC_VERSION,
        "f": s.first_window,
        "c": s.closed_through,
        "lo": s.last_order_window,
        "ot": s.orders_total,
        "st": s.spend_total,
        "le": s.last_event_ms,
        "lom": s.last_order_ms,
        "odt": s.order_days_total,
        "fom": s.first_order_ms,
        "lcm": s.last_closed_order_ms,
        "o": {str(k): _open_to_json(w) for k, w in s.open.items()},
        "lf": record.last_fresh_ms,
        "ls": record.last_scores,
        "so": {str(k): v for k, v in record.seen.items()},
        "n": int(s.ring.shape[0]),
    }
    pending = b""
    if record.pending:
        # Only when there is something: a user with no prediction waiting carries no key.
        fields["pv"], pending = _pending_encoded(record)
        fields["pn"] = len(record.pending)
    header = orjson.dumps(fields)
    return (
        len(header).to_bytes(4, "big")
        + header
        + s.ring.astype("<f4", copy=False).tobytes()
        + pending
    )


@dataclass(frozen=True, slots=True)
class UserPeek:
    """What a restored worker needs to know of a stored user to decide whether they are a
    close candidate, read from the header alone (no ring, no predictions decoded)."""

    last_event_ms: int
    has_open: bool
    order_days_total: float
    last_scores: dict[str, Any]
    has_pending: bool


def peek_user(data: bytes) -> UserPeek:
    """The header fields of a stored user that decide candidacy; refuses another version as
    :func:`decode_user` does. A quarter of a full decode's cost: a restart reads every user."""
    h = _header(data)
    return UserPeek(
        last_event_ms=int(h["le"]),
        has_open=bool(h["o"]),
        order_days_total=float(h["odt"]),
        last_scores=h["ls"],
        has_pending=bool(h.get("pn")),
    )


def _header(data: bytes) -> dict[str, Any]:
    size = int.from_bytes(data[:4], "big")
    h: dict[str, Any] = orjson.loads(data[4 : 4 + size])
    if h.get("v") != CODEC_VERSION:
        raise StateVersionError(
            f"stored user state has codec version {h.get('v')}; this worker reads version "
            f"{CODEC_VERSION} only. Version 2 (feature definition 2) keeps order days and "
            "first/last purchase times that older records never recorded, so they are not "
            "migrated. Rebuild the state: run the worker under a new app id "
            "(CLICKSIGNALS_APP_ID) replaying the clickstream from the start of the history, or "
            "stop every worker and delete the '<app_id>-user-state-changelog' topic, each "
            "worker's data dir and the consumer group's offsets"
        )
    return h


def decode_user(data: bytes) -> UserRecord:
    h = _header(data)
    size = int.from_bytes(data[:4], "big")
    ring_end = 4 + size + int(h["n"]) * N_FEATURES * 4
    ring = np.frombuffer(data[4 + size : ring_end], dtype="<f4").astype(np.float32)
    ring = ring.reshape(int(h["n"]), N_FEATURES).copy()
    state = UserState(
        first_window=int(h["f"]),
        ring=ring,
        closed_through=h["c"],
        last_order_window=h["lo"],
        orders_total=float(h["ot"]),
        spend_total=float(h["st"]),
        last_event_ms=int(h["le"]),
        last_order_ms=h["lom"],
        order_days_total=float(h["odt"]),
        first_order_ms=h["fom"],
        last_closed_order_ms=h["lcm"],
        open={int(k): _open_from_json(v) for k, v in h["o"].items()},
    )
    seen = {int(k): int(v) for k, v in h.get("so", {}).items()}
    # Optional: a record written before the online evaluation has none waiting.
    pending = _pending_from_block(h["pv"], data[ring_end:]) if h.get("pn") else []
    record = UserRecord(state, h["lf"], h["ls"], seen, pending)
    if pending:
        record.pending_code = (pending, h["pv"], bytes(data[ring_end:]))
    return record


@dataclass(slots=True)
class PartitionClock:
    """Event-time progress of one partition: of its source (the clickstream partition) and of
    the windows closed for its users."""

    max_event_ms: int | None = None
    """Latest event time read on the clickstream partition (folded or re-keyed), bounded by the
    wall clock: the source's own watermark, which it announces to the other partitions."""
    closed_through: int | None = None
    """Last window closed for every user of the partition."""
    first_window: int | None = None
    """Earliest window of an event folded into the partition's users before its first close:
    the first close starts there (re-keyed copies may come before the partition's own time)."""
    closing: int | None = None
    """The window whose close is in progress (``closed_through + 1``), done a slice of users
    per run: events of it are late already, and users not reached yet close in later runs."""
    slices: int = 0
    """Slices of the close in progress whose quality tallies are stored, one table record each
    (:func:`stream.processor.cohort_key`); they are sent together once the close is done."""
    cohort: tuple[CohortProgress, ...] | None = field(default=None, compare=False)
    """Not stored here: those slices' tallies in memory (``None``: not read from the table yet,
    after a restart)."""
    queue: tuple[str, ...] | None = field(default=None, compare=False)
    """Not stored: the users the close in progress takes, in order, as they were when it
    began (rebuilt from the close candidates after a restart)."""
    queued: int = field(default=0, compare=False)
    """Not stored: how many of ``queue`` the close has taken."""


def encode_clock(clock: PartitionClock) -> bytes:
    head: dict[str, Any] = {
        "m": clock.max_event_ms,
        "c": clock.closed_through,
        "f": clock.first_window,
    }
    if clock.closing is not None:
        head["k"] = clock.closing
    if clock.slices:
        head["n"] = clock.slices
    return orjson.dumps(head)


def decode_clock(data: bytes) -> PartitionClock:
    h = orjson.loads(data)
    # "f": since aligned watermarks; "k", "n": only while a close is in progress.
    return PartitionClock(h["m"], h["c"], h.get("f"), h.get("k"), int(h.get("n", 0)))
