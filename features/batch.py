"""Vectorised window features for a whole history at once: the training path.

Owns :class:`EventArrays` (events as integer-coded numpy columns) and
:func:`build_window_tensor`, which turns them into a dense ``[user, window, feature]`` tensor
using the definition in :mod:`features.windows`: it computes the per-cell base aggregates and
hands them to :func:`tensor_from_base`, the one place the rest of the tensor is made (the
out-of-core path, :mod:`training.outofcore`, computes the same aggregates in SQL and calls it
too); plus the sequence, population and label slices that training takes from that tensor.
The event-by-event twin is :mod:`features.state`.

Pure: numpy only, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from features.events import EVENT_TYPE_CODES, EVENT_TYPES, PURCHASE
from features.windows import (
    DAY_MS,
    I_ACTIVE,
    N_BASE,
    N_FEATURES,
    Float32Array,
    FloatArray,
    IntArray,
    WindowSpec,
    assemble,
)

_N_TYPES = len(EVENT_TYPES)
_PURCHASE = EVENT_TYPE_CODES[PURCHASE]


@dataclass(frozen=True)
class EventArrays:
    """Events as aligned columns, in arrival order (time order, ties in input order).

    Categorical columns are integer codes with ``-1`` for missing; ``price`` is NaN when
    unknown. ``user`` codes run ``0 .. n_users - 1``.
    """

    user: IntArray
    time_ms: IntArray
    event_type: IntArray
    quantity: IntArray
    price: FloatArray
    product: IntArray
    category: IntArray
    session: IntArray
    order: IntArray
    n_users: int

    def __len__(self) -> int:
        return int(self.user.shape[0])


@dataclass(frozen=True)
class WindowTensor:
    """Feature vectors of every user for windows ``first_index .. first_index + W - 1``."""

    spec: WindowSpec
    first_index: int
    features: Float32Array
    """``[users, windows, N_FEATURES]``; zero before a user's first event."""
    orders: FloatArray
    """``[users, windows]`` orders per window, for labels."""
    spend: FloatArray
    """``[users, windows]`` spend per window, for labels."""

    @property
    def n_windows(self) -> int:
        return int(self.features.shape[1])

    def column(self, window: int) -> int:
        return window - self.first_index


def _count_distinct(cell: IntArray, key: IntArray, n_cells: int) -> IntArray:
    """Number of distinct ``key`` per ``cell`` (keys < 0 are missing and not counted)."""
    keep = key >= 0
    cell, key = cell[keep], key[keep]
    if cell.size == 0:
        return np.zeros(n_cells, dtype=np.int64)
    span = int(key.max()) + 1
    pairs = np.unique(cell * span + key)
    return np.bincount(pairs // span, minlength=n_cells)


def _order_keys(ev: EventArrays, rows: IntArray) -> IntArray:
    """One key per purchase line naming its order: the order id, else the session, else itself.

    Mirrors :func:`features.state.order_key`: order and session keys never collide (even/odd),
    and a line with neither is an order of its own.
    """
    order, session = ev.order[rows], ev.session[rows]
    anonymous_base = 2 * (max(int(ev.order.max(initial=0)), int(ev.session.max(initial=0))) + 1)
    return np.where(
        order >= 0,
        order * 2,
        np.where(session >= 0, session * 2 + 1, anonymous_base + rows),
    )


def build_window_tensor(ev: EventArrays, spec: WindowSpec, first: int, last: int) -> WindowTensor:
    """Feature tensor for windows ``first .. last`` (inclusive, global indices).

    Events after window ``last`` are ignored (they are the future). Events before ``first``
    are an error: history would be cut and tenure-like features would be wrong.
    """
    n_windows = last - first + 1
    if n_windows < 1:
        raise ValueError(f"empty window range {first}..{last}")
    window = (ev.time_ms - spec.origin_ms) // spec.length_ms
    if len(ev) and int(window.min()) < first:
        raise ValueError(f"events start in window {int(window.min())}, before {first}")
    keep = np.flatnonzero(window <= last)
    col = window[keep] - first
    user = ev.user[keep]
    n_users = ev.n_users
    n_cells = n_users * n_windows
    cell = user * n_windows + col

    base = np.zeros((n_cells, N_BASE), dtype=np.float64)
    etype = ev.event_type[keep]
    counts = np.bincount(cell * _N_TYPES + etype, minlength=n_cells * _N_TYPES)
    base[:, :_N_TYPES] = counts.reshape(n_cells, _N_TYPES)

    is_purchase = etype == _PURCHASE
    purchase_rows = keep[is_purchase]
    purchase_cell = cell[is_purchase]
    quantity = ev.quantity[purchase_rows]
    price = ev.price[purchase_rows]
    line_value = np.where(np.isnan(price), 0.0, price * quantity)
    base[:, _N_TYPES + 0] = _count_distinct(purchase_cell, _order_keys(ev, purchase_rows), n_cells)
    # bincount accumulates in input order, as the event path does: sums agree bit for bit.
    base[:, _N_TYPES + 1] = np.bincount(purchase_cell, weights=quantity, minlength=n_cells)
    base[:, _N_TYPES + 2] = np.bincount(purchase_cell, weights=line_value, minlength=n_cells)
    base[:, _N_TYPES + 3] = _count_distinct(cell, ev.product[keep], n_cells)
    base[:, _N_TYPES + 4] = _count_distinct(cell, ev.category[keep], n_cells)
    base[:, _N_TYPES + 5] = _count_distinct(cell, ev.session[keep], n_cells)
    purchase_ms = ev.time_ms[purchase_rows]
    # UTC day numbers; only events of this window are counted (see BASE_FEATURES on the
    # boundary case).
    day = purchase_ms // DAY_MS
    # Offset to 0: _count_distinct drops negative keys (pre-1970) and sizes its key by the span.
    if day.size:
        day = day - int(day.min())
    base[:, _N_TYPES + 6] = _count_distinct(purchase_cell, day, n_cells)
    # First and last purchase time per cell (NaN without one). Per-cell min/max rather than
    # first/last row, so input order does not matter.
    first_ms = np.full(n_cells, np.nan)
    last_ms = np.full(n_cells, np.nan)
    np.fmin.at(first_ms, purchase_cell, purchase_ms.astype(np.float64))
    np.fmax.at(last_ms, purchase_cell, purchase_ms.astype(np.float64))
    first_col = np.full(n_users, n_windows, dtype=np.int64)
    np.minimum.at(first_col, user, col)
    return tensor_from_base(
        spec,
        first,
        base.reshape(n_users, n_windows, N_BASE),
        first_ms.reshape(n_users, n_windows),
        last_ms.reshape(n_users, n_windows),
        first_col,
    )


USERS_AT_ONCE = 1_024
"""Users whose rows :func:`tensor_from_base` computes together (memory and cache, not
results: any grouping gives the same bits). 200k users x 27 windows, best of five: 2.0 s in
blocks of 16,384, 0.87 s of 2,048, 0.76 s of 1,024, 0.73 s of 512: a block's intermediates
small enough for the allocator to reuse rather than map afresh."""


def tensor_from_base(
    spec: WindowSpec,
    first: int,
    base: FloatArray,
    first_purchase_ms: FloatArray,
    last_purchase_ms: FloatArray,
    first_column: IntArray,
) -> WindowTensor:
    """The tensor from per-cell base aggregates: everything after them, for every batch path.

    ``base`` is ``[users, windows, N_BASE]`` (:data:`features.windows.BASE_FEATURES`, in that
    order) for windows ``first .. first + windows - 1``; ``first_purchase_ms`` /
    ``last_purchase_ms`` are ``[users, windows]``, the earliest / latest purchase time in each
    cell (float64 ms, NaN without a purchase); ``first_column`` is per user the column of their
    first window with an event (``windows`` when none falls in the range). Whoever computed the
    base aggregates (:func:`build_window_tensor` from :class:`EventArrays`, or an out-of-core
    engine), the history features come from here and :func:`features.windows.assemble`, so
    they cannot differ.
    """
    n_users, n_windows, n_base = base.shape
    if n_base != N_BASE:
        raise ValueError(f"base has {n_base} aggregates, the definition {N_BASE}")
    if first_purchase_ms.shape != (n_users, n_windows) or last_purchase_ms.shape != (
        n_users,
        n_windows,
    ):
        raise ValueError("first/last purchase times must be [users, windows]")
    if first_column.shape != (n_users,):
        raise ValueError("first_column must hold one column per user")
    if n_users > USERS_AT_ONCE:
        # Whole-array intermediates of millions of cells cost more in page faults and cache
        # misses than the arithmetic (200k users: 13.7 s at once): a block of users at a time,
        # which gives the same numbers, since no user's features read another user's row.
        features = np.empty((n_users, n_windows, N_FEATURES), dtype=np.float32)
        orders_out = np.empty((n_users, n_windows), dtype=np.float64)
        spend_out = np.empty((n_users, n_windows), dtype=np.float64)
        for lo in range(0, n_users, USERS_AT_ONCE):
            hi = min(lo + USERS_AT_ONCE, n_users)
            part = tensor_from_base(
                spec,
                first,
                base[lo:hi],
                first_purchase_ms[lo:hi],
                last_purchase_ms[lo:hi],
                first_column[lo:hi],
            )
            features[lo:hi] = part.features
            orders_out[lo:hi] = part.orders
            spend_out[lo:hi] = part.spend
        return WindowTensor(spec, first, features, orders_out, spend_out)
    # Carried through the later windows: fmin/fmax ignore NaN, so a window without purchases
    # keeps the earlier value.
    first_order_ms = np.fmin.accumulate(first_purchase_ms, axis=1)
    last_order_ms = np.fmax.accumulate(last_purchase_ms, axis=1)

    cols = np.arange(n_windows, dtype=np.int64)
    orders = base[:, :, _N_TYPES + 0]
    spend = base[:, :, _N_TYPES + 2]
    last_order_col = np.maximum.accumulate(np.where(orders > 0, cols, -1), axis=1)
    # No order yet: one below the first window, the convention assemble() reads as "none".
    last_order_col = np.where(last_order_col >= 0, last_order_col, first_column[:, None] - 1)

    start_ms = spec.origin_ms + (cols + first) * spec.length_ms
    features = assemble(
        base,
        window=(cols + first)[None, :],
        first_window=(first_column + first)[:, None],
        last_order_window=last_order_col + first,
        orders_total=np.cumsum(orders, axis=1),
        spend_total=np.cumsum(spend, axis=1),
        start_ms=start_ms[None, :],
        end_ms=(start_ms + spec.length_ms)[None, :],
        order_days_total=np.cumsum(base[:, :, _N_TYPES + 6], axis=1),
        first_order_ms=first_order_ms,
        last_order_ms=last_order_ms,
    )
    features[cols[None, :] < first_column[:, None]] = 0.0
    return WindowTensor(spec, first, features, orders.copy(), spend.copy())


def sequences_at(
    tensor: WindowTensor, window: int, rows: npt.NDArray[np.intp] | None = None
) -> Float32Array:
    """``[users, seq_len, N_FEATURES]`` inputs for a sequence ending with window ``window``;
    with ``rows``, of those users only (memory: the rows asked for, not every user)."""
    seq_len = tensor.spec.seq_len
    end = tensor.column(window) + 1
    if end > tensor.n_windows:
        raise ValueError(f"window {window} is beyond the tensor")
    start = end - seq_len
    n_users = tensor.features.shape[0] if rows is None else len(rows)
    out = np.zeros((n_users, seq_len, N_FEATURES), dtype=np.float32)
    lo = max(start, 0)
    if end > 0:
        part = tensor.features[:, lo:end, :] if rows is None else tensor.features[rows, lo:end, :]
        out[:, lo - start :, :] = part
    return out


def scored_mask(sequences: Float32Array, lookback: int) -> npt.NDArray[np.bool_]:
    """Users active in the last ``lookback`` windows (:func:`features.windows.is_scored`),
    vectorised: the lookback half of the close population; the whole rule, dormant customers
    included, is :func:`features.windows.close_population`."""
    return np.asarray(np.any(sequences[:, -lookback:, I_ACTIVE] > 0, axis=1))


def labels_at(tensor: WindowTensor, window: int) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Orders and spend in the ``horizon`` windows after ``window``, and churn (no order)."""
    horizon = tensor.spec.horizon
    lo = tensor.column(window) + 1
    hi = lo + horizon
    if hi > tensor.n_windows:
        raise ValueError(f"labels for window {window} need windows the tensor does not hold")
    orders = tensor.orders[:, lo:hi].sum(axis=1)
    spend = tensor.spend[:, lo:hi].sum(axis=1)
    churn = (orders == 0).astype(np.float64)
    return orders, spend, churn
