"""Per-user window state updated one event at a time: the worker's path.

Owns :class:`UserState` (a plain dataclass: open windows' aggregates, the last ``seq_len``
closed window vectors and the history the features need) and the functions that move it:
:func:`add_event`, :func:`close_through`, :func:`sequence`, :func:`peek_sequence`, and the
two halves of a close that let a caller assemble many at once (:func:`begin_close`,
:func:`preview`, :func:`finish_closes`).
Vectors come out of :func:`features.windows.assemble`, the same function the batch path
uses, so the two paths differ only in how the base aggregates are summed.

Pure: stdlib and numpy only, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from features.events import EVENT_TYPE_CODES, EVENT_TYPES, PURCHASE, ClickEvent
from features.windows import (
    DAY_MS,
    N_BASE,
    N_FEATURES,
    Float32Array,
    WindowSpec,
    assemble,
)

_N_TYPES = len(EVENT_TYPES)


def order_key(event: ClickEvent) -> str | None:
    """What makes a purchase line part of an order: its order id, else its session.

    ``None`` means the line is an order of its own. Mirrors ``features.batch._order_keys``.
    """
    if event.order_id is not None:
        return "o:" + event.order_id
    if event.session_id is not None:
        return "s:" + event.session_id
    return None


@dataclass(slots=True)
class OpenWindow:
    """Aggregates of one window that has not closed yet."""

    counts: list[int] = field(default_factory=lambda: [0] * _N_TYPES)
    units: int = 0
    spend: float = 0.0
    orders: set[str] = field(default_factory=set)
    anonymous_orders: int = 0
    products: set[str] = field(default_factory=set)
    categories: set[str] = field(default_factory=set)
    sessions: set[str] = field(default_factory=set)
    purchase_days: set[int] = field(default_factory=set)
    """UTC day numbers (``time_ms // DAY_MS``) with a purchase event in this window."""
    first_purchase_ms: int | None = None
    last_purchase_ms: int | None = None

    def add(self, event: ClickEvent) -> None:
        self.counts[EVENT_TYPE_CODES[event.event_type]] += 1
        if event.event_type == PURCHASE:
            key = order_key(event)
            if key is None:
                self.anonymous_orders += 1
            else:
                self.orders.add(key)
            self.units += event.quantity
            if event.price is not None:
                self.spend += event.price * event.quantity
            t = event.event_time_ms
            self.purchase_days.add(t // DAY_MS)
            # min/max, not first/last: events may arrive out of order within the lateness.
            if self.first_purchase_ms is None or t < self.first_purchase_ms:
                self.first_purchase_ms = t
            if self.last_purchase_ms is None or t > self.last_purchase_ms:
                self.last_purchase_ms = t
        if event.product_id is not None:
            self.products.add(event.product_id)
        if event.category is not None:
            self.categories.add(event.category)
        if event.session_id is not None:
            self.sessions.add(event.session_id)

    def base(self) -> list[float]:
        """The base aggregates, in :data:`features.windows.BASE_FEATURES` order."""
        return [
            *map(float, self.counts),
            float(len(self.orders) + self.anonymous_orders),
            float(self.units),
            self.spend,
            float(len(self.products)),
            float(len(self.categories)),
            float(len(self.sessions)),
            float(len(self.purchase_days)),
        ]


_EMPTY_BASE: list[float] = [0.0] * N_BASE


@dataclass(slots=True)
class UserState:
    """Everything the worker keeps about one user between events."""

    first_window: int
    ring: Float32Array
    """``[seq_len, N_FEATURES]`` last closed window vectors, oldest first; zeros before history."""
    closed_through: int | None = None
    """Last window whose vector is in ``ring``; ``None`` until one closes."""
    last_order_window: int | None = None
    orders_total: float = 0.0
    spend_total: float = 0.0
    last_event_ms: int = 0
    last_order_ms: int | None = None
    """Latest purchase seen by :func:`add_event`, open windows included: the worker's signals
    read it (:func:`days_since_last_order`); the feature vector does not."""
    open: dict[int, OpenWindow] = field(default_factory=dict)
    # Lifetime summary over CLOSED windows only, folded in _vector like orders_total, so that an
    # open window ahead of the one closing cannot leak into that window's vector.
    order_days_total: float = 0.0
    first_order_ms: int | None = None
    """Time of the first purchase event in a closed window; ``None`` before one."""
    last_closed_order_ms: int | None = None
    """Time of the last purchase event in a closed window; ``None`` before one."""


def new_state(spec: WindowSpec, first_window: int) -> UserState:
    return UserState(
        first_window=first_window,
        ring=np.zeros((spec.seq_len, N_FEATURES), dtype=np.float32),
    )


def is_late(state: UserState | None, window: int) -> bool:
    """True when ``window`` has already closed for this user: its event cannot be counted."""
    return state is not None and state.closed_through is not None and window <= state.closed_through


def add_event(state: UserState | None, event: ClickEvent, spec: WindowSpec) -> UserState:
    """Fold one event into the user's open window; creates the state on a user's first event.

    The caller must not pass a late event (see :func:`is_late`); that is a bug, not input.
    """
    window = spec.index(event.event_time_ms)
    if state is None:
        state = new_state(spec, window)
    elif is_late(state, window):
        raise ValueError(f"window {window} already closed (through {state.closed_through})")
    elif window < state.first_window:
        # An earlier event arrived within the allowed lateness before anything closed.
        state.first_window = window
    open_window = state.open.get(window)
    if open_window is None:
        open_window = state.open[window] = OpenWindow()
    open_window.add(event)
    state.last_event_ms = max(state.last_event_ms, event.event_time_ms)
    if event.event_type == PURCHASE:
        state.last_order_ms = max(state.last_order_ms or event.event_time_ms, event.event_time_ms)
    return state


@dataclass(slots=True)
class _History:
    """The fields of :class:`UserState` a close folds, copied: what :func:`preview` folds
    instead of a copy of the whole state (ring and open windows are only read there)."""

    first_window: int
    last_order_window: int | None
    orders_total: float
    spend_total: float
    order_days_total: float
    first_order_ms: int | None
    last_closed_order_ms: int | None


def _fold_window(
    state: UserState | _History, window: int, aggregate: OpenWindow | None
) -> tuple[object, ...]:
    """Close ``window`` (its aggregates, ``None`` for a silent window): fold them into the
    history; returns the window's :func:`~features.windows.assemble` inputs as scalars (base
    as a list), in argument order."""
    base = aggregate.base() if aggregate is not None else _EMPTY_BASE
    orders, spend = base[_N_TYPES], base[_N_TYPES + 2]
    if orders > 0:
        state.last_order_window = window
    state.orders_total += orders
    state.spend_total += spend
    if aggregate is not None:
        _fold_purchases(state, aggregate)
    last_order = (
        state.last_order_window if state.last_order_window is not None else state.first_window - 1
    )
    return (
        base,
        window,
        state.first_window,
        last_order,
        state.orders_total,
        state.spend_total,
        state.order_days_total,
        _ms_or_nan(state.first_order_ms),
        _ms_or_nan(state.last_closed_order_ms),
    )


def _assemble_rows(rows: list[tuple[object, ...]], spec: WindowSpec) -> Float32Array:
    """Vectors of closed windows, shape ``[len(rows), N_FEATURES]``: one
    :func:`~features.windows.assemble` call for all of them (a catch-up of several windows
    costs one call's numpy overhead, not one per window)."""
    base, window, first, last_order, orders, spend, order_days, first_ms, last_ms = zip(
        *rows, strict=True
    )
    windows = np.asarray(window, dtype=np.int64)
    return assemble(
        np.asarray(base, dtype=np.float64),
        window=windows,
        first_window=np.asarray(first, dtype=np.int64),
        last_order_window=np.asarray(last_order, dtype=np.int64),
        orders_total=np.asarray(orders, dtype=np.float64),
        spend_total=np.asarray(spend, dtype=np.float64),
        start_ms=spec.origin_ms + windows * spec.length_ms,
        end_ms=spec.origin_ms + (windows + 1) * spec.length_ms,
        order_days_total=np.asarray(order_days, dtype=np.float64),
        first_order_ms=np.asarray(first_ms, dtype=np.float64),
        last_order_ms=np.asarray(last_ms, dtype=np.float64),
    )


def _fold_purchases(state: UserState | _History, closing: OpenWindow) -> None:
    """Add a closing window's purchases to the lifetime summary (closed windows only)."""
    first, last = closing.first_purchase_ms, closing.last_purchase_ms
    if first is None or last is None:
        return
    state.order_days_total += len(closing.purchase_days)
    # Windows close in order, so the first closed purchase is the first one; min/max anyway,
    # which costs nothing and cannot be wrong.
    state.first_order_ms = (
        first if state.first_order_ms is None else min(state.first_order_ms, first)
    )
    state.last_closed_order_ms = (
        last if state.last_closed_order_ms is None else max(state.last_closed_order_ms, last)
    )


def _ms_or_nan(ms: int | None) -> float:
    """assemble()'s convention for an optional time: float milliseconds, NaN for none."""
    return np.nan if ms is None else float(ms)


@dataclass(slots=True)
class Closing:
    """A close whose vectors are not assembled yet: ``ring``'s last ``len(rows)`` rows are
    to be written from ``rows`` (:func:`~features.windows.assemble`'s inputs, one per window).

    Closing is split in two so that the worker assembles every close and preview of a
    micro-batch in one :func:`finish_closes` call: one numpy call's overhead per batch, not
    one per user (issue 16). Nothing may read ``ring`` before it is finished.
    """

    ring: Float32Array
    rows: list[tuple[object, ...]]


def _close_plan(
    state: UserState, window: int, spec: WindowSpec
) -> tuple[list[int], int, int] | None:
    """The windows a close through ``window`` folds, in order, the first of them whose
    vector is kept (the last ``seq_len``), and the first window not closed before (how many
    the close closes counts from it); ``None`` when none is left to close."""
    start = state.first_window if state.closed_through is None else state.closed_through + 1
    if window < start:
        return None
    keep_from = max(start, window - spec.seq_len + 1)
    if keep_from == window and not any(w < window for w in state.open):
        return [window], keep_from, start  # the common case: one window, nothing older pending
    pending = sorted(w for w in state.open if w <= window)
    windows = sorted({*(w for w in pending if w < keep_from), *range(keep_from, window + 1)})
    return windows, keep_from, start


def begin_close(state: UserState, window: int, spec: WindowSpec) -> tuple[Closing, int] | None:
    """Close every window up to and including ``window`` except for assembling their vectors:
    the history is folded, ``state.ring`` shifted and left to :func:`finish_closes`. Returns
    the pending close and how many windows it closed; ``None`` when none was left to close.
    """
    plan = _close_plan(state, window, spec)
    if plan is None:
        return None
    windows, keep_from, start = plan
    opened = state.open
    rows = [_fold_window(state, w, opened.pop(w, None)) for w in windows]
    kept = [row for w, row in zip(windows, rows, strict=True) if w >= keep_from]
    ring = state.ring
    n = len(kept)  # 1 .. seq_len
    ring[: ring.shape[0] - n] = ring[n:]
    state.closed_through = window
    return Closing(ring, kept), window - start + 1


def finish_closes(closings: Sequence[Closing], spec: WindowSpec) -> None:
    """Assemble the vectors of every pending close in one call and write them into their
    rings. Each row's vector is the same whatever else is in the call (``assemble`` works
    row by row)."""
    rows = [row for closing in closings for row in closing.rows]
    if not rows:
        return
    vectors = _assemble_rows(rows, spec)
    at = 0
    for closing in closings:
        n = len(closing.rows)
        closing.ring[closing.ring.shape[0] - n :] = vectors[at : at + n]
        at += n


def close_through(state: UserState, window: int, spec: WindowSpec) -> int:
    """Close every window up to and including ``window``; returns how many were closed.

    Silent windows close too (zero activity, history features still advance): a user who goes
    quiet keeps a sequence, which is what churn risk reads. Only the last ``seq_len`` vectors
    are assembled; earlier silent windows change no history, so they are skipped.
    """
    begun = begin_close(state, window, spec)
    if begun is None:
        return 0
    closing, closed = begun
    finish_closes([closing], spec)
    return closed


def sequence(state: UserState) -> Float32Array:
    """The model input (raw, before normalisation) at the last closed window."""
    return state.ring.copy()


def preview(state: UserState, window: int, spec: WindowSpec) -> Closing:
    """:func:`peek_sequence` before its vectors are assembled (see :class:`Closing`): the
    pending close of a copy, the state itself unchanged.

    The copy is of the history a close folds (:class:`_History`) and of the ring, not of
    the whole state: the open windows are only read (an activity signal per event made the
    whole-state copy a tenth of the processor's time, issue 16)."""
    plan = _close_plan(state, window, spec)
    if plan is None:
        return Closing(state.ring.copy(), [])
    windows, keep_from, _ = plan
    history = _History(
        state.first_window,
        state.last_order_window,
        state.orders_total,
        state.spend_total,
        state.order_days_total,
        state.first_order_ms,
        state.last_closed_order_ms,
    )
    opened = state.open
    rows = [_fold_window(history, w, opened.get(w)) for w in windows]
    kept = [row for w, row in zip(windows, rows, strict=True) if w >= keep_from]
    n = len(kept)
    ring = np.empty_like(state.ring)
    ring[: ring.shape[0] - n] = state.ring[n:]
    return Closing(ring, kept)


def peek_sequence(state: UserState, window: int, spec: WindowSpec) -> Float32Array:
    """The sequence the user would have if every window through ``window`` closed now.

    Used for activity-triggered ("fresh") signals: the open window is scored with what it has
    so far, exactly as it would be assembled at its close. The state itself is not changed.
    """
    closing = preview(state, window, spec)
    finish_closes([closing], spec)
    return closing.ring


def days_since_last_order(state: UserState, at_ms: int) -> float | None:
    if state.last_order_ms is None:
        return None
    return max(0.0, (at_ms - state.last_order_ms) / DAY_MS)
