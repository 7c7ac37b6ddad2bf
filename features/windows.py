"""The window feature definition, the one both training and the worker use.

Owns: how event time maps to tumbling windows (:class:`WindowSpec`), the named per-window
feature vector (:data:`FEATURE_NAMES`), its model-input transform and normalisation, the
population rules (who a model is trained for, :func:`population_mask`; who is scored at a
window close, :func:`close_population`) and the label definition.

A window's vector is built in two steps:

1. *base aggregates* (counts per event type, orders, units, spend, distinct products,
   categories, sessions and order days) — computed by two code paths, vectorised in
   :func:`features.batch.build_window_tensor` and event by event in :mod:`features.state`;
2. *assembly* (:func:`assemble`), which adds the history features (tenure, windows since the
   last order, running totals, the lifetime order-day summary) and the calendar encoding. Both
   paths call this same function, so the derived features cannot drift apart; tests check that
   the base aggregates agree.

Pure: stdlib and numpy only, no I/O.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from features.events import EVENT_TYPES

FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

DAY_MS: Final = 86_400_000
YEAR_DAYS: Final = 365.2425
# History counters are capped so that a very old account does not produce values the
# training data never showed; two years of weekly windows is beyond any horizon we predict.
HISTORY_CAP: Final = 104
# The same guard for the lifetime day counts (days since first/last order): ten years, beyond
# any customer age the training data holds, so a stray very old first order cannot push the
# input outside what the model saw.
HISTORY_CAP_DAYS: Final = 3653

COUNT_FEATURES: Final[tuple[str, ...]] = tuple(f"n_{t}" for t in EVENT_TYPES)
BASE_FEATURES: Final[tuple[str, ...]] = (
    *COUNT_FEATURES,
    "orders",
    "units",
    "spend",
    "distinct_products",
    "distinct_categories",
    "sessions",
    "order_days",
)
"""Aggregates of one window's events; the two code paths each compute these.

``order_days`` is the number of distinct UTC calendar days (``time_ms // DAY_MS``) with at
least one purchase event in the window: the "frequency" unit of BG/NBD, where several orders on
one day are one purchase occasion. It is exact when windows are whole days aligned on midnight
UTC (the default: 7-day windows laid on a 00:00 UTC cutoff). Otherwise a day cut by a window
boundary, with purchases on both sides, counts once in each window, so ``order_days_total``
can exceed the true number of distinct order days by the number of such cut days.
"""

FEATURE_NAMES: Final[tuple[str, ...]] = (
    *BASE_FEATURES,
    "cart_conversion",
    "active",
    "windows_since_last_order",
    "tenure_windows",
    "orders_total",
    "spend_total",
    "order_days_total",
    "days_since_first_order",
    "days_since_last_order",
    "season_sin",
    "season_cos",
)
"""The per-window vector. The lifetime summary (what BG/NBD reads, see :func:`lifetime_summary`):

* ``order_days_total`` — ``order_days`` summed over every window through this one;
* ``days_since_first_order`` — (this window's end − time of the user's first purchase event)
  in days, 0.0 before any purchase; capped at :data:`HISTORY_CAP_DAYS`;
* ``days_since_last_order`` — (this window's end − time of the last purchase event at or before
  that end) in days, 0.0 before any purchase; capped at :data:`HISTORY_CAP_DAYS`.

Both day features are measured to the window END, so they are what is known when the window
closes, the instant the vector is scored.
"""
CALENDAR_FEATURES: Final[tuple[str, ...]] = ("season_sin", "season_cos")
"""The columns that say where in the year a window lies (and nothing of the user)."""
N_BASE: Final = len(BASE_FEATURES)
N_FEATURES: Final = len(FEATURE_NAMES)
FEATURE_INDEX: Final[dict[str, int]] = {name: i for i, name in enumerate(FEATURE_NAMES)}

# Counts and money are heavy-tailed: the model sees log1p of them. Ratios, flags and the
# calendar are already bounded.
_UNBOUNDED: Final = frozenset(
    {
        *BASE_FEATURES,
        "windows_since_last_order",
        "tenure_windows",
        "orders_total",
        "spend_total",
        "order_days_total",
        "days_since_first_order",
        "days_since_last_order",
    }
)
FEATURE_TRANSFORMS: Final[tuple[str, ...]] = tuple(
    "log1p" if name in _UNBOUNDED else "identity" for name in FEATURE_NAMES
)

# Bump when the meaning of any feature changes without its name changing.
# 2: order_days, order_days_total, days_since_first_order, days_since_last_order added.
FEATURE_DEFINITION_VERSION: Final = 2

_I = {name: i for i, name in enumerate(BASE_FEATURES)}
I_PURCHASE: Final = _I["n_purchase"]
I_CART: Final = _I["n_cart"]
I_ORDERS: Final = _I["orders"]
I_SPEND: Final = _I["spend"]
I_ORDER_DAYS: Final = _I["order_days"]
I_ACTIVE: Final = FEATURE_INDEX["active"]
I_ORDER_DAYS_TOTAL: Final = FEATURE_INDEX["order_days_total"]
I_DAYS_SINCE_FIRST_ORDER: Final = FEATURE_INDEX["days_since_first_order"]
I_DAYS_SINCE_LAST_ORDER: Final = FEATURE_INDEX["days_since_last_order"]


def contract_fingerprint() -> str:
    """A hash of everything that fixes the meaning of a feature vector.

    The manifest stores it; the worker refuses a model trained against another definition.
    """
    payload = json.dumps(
        {
            "version": FEATURE_DEFINITION_VERSION,
            "names": FEATURE_NAMES,
            "transforms": FEATURE_TRANSFORMS,
            "history_cap": HISTORY_CAP,
            "history_cap_days": HISTORY_CAP_DAYS,
            "event_types": EVENT_TYPES,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """Tumbling event-time windows: boundaries at ``origin_ms + k * length_ms``.

    ``seq_len`` closed windows form one model input; ``horizon`` windows ahead are predicted;
    a user is scored at a window close when active in any of the last ``lookback`` windows.
    """

    length_ms: int
    origin_ms: int
    seq_len: int
    horizon: int
    lookback: int

    def __post_init__(self) -> None:
        if self.length_ms <= 0:
            raise ValueError("window length must be positive")
        if self.seq_len < 1 or self.horizon < 1:
            raise ValueError("seq_len and horizon must be >= 1")
        if not 1 <= self.lookback <= self.seq_len:
            # The population rule reads activity from the sequence itself, so the lookback
            # cannot reach further back than the sequence does.
            raise ValueError("lookback must be between 1 and seq_len")

    def same_grid(self, other: WindowSpec) -> bool:
        """Whether a model on ``other`` can take over from one on this spec without a rebuild
        of the per-user state: the same window boundaries (same length, origins a whole
        number of windows apart: a model retrained at a later cutoff), the same sequence,
        horizon and lookback."""
        return (
            self.length_ms == other.length_ms
            and (self.origin_ms - other.origin_ms) % self.length_ms == 0
            and (self.seq_len, self.horizon, self.lookback)
            == (other.seq_len, other.horizon, other.lookback)
        )

    def index(self, time_ms: int) -> int:
        """Window index holding ``time_ms`` (floor division: negative before the origin)."""
        return (time_ms - self.origin_ms) // self.length_ms

    def start_ms(self, index: int) -> int:
        return self.origin_ms + index * self.length_ms

    def end_ms(self, index: int) -> int:
        return self.origin_ms + (index + 1) * self.length_ms


def season(start_ms: IntArray) -> tuple[FloatArray, FloatArray]:
    """Position in the year of each window start, as a point on the unit circle."""
    days = start_ms.astype(np.float64) / DAY_MS
    angle = 2.0 * np.pi * (np.mod(days, YEAR_DAYS) / YEAR_DAYS)
    return np.sin(angle), np.cos(angle)


def assemble(
    base: FloatArray,
    window: IntArray,
    first_window: IntArray,
    last_order_window: IntArray,
    orders_total: FloatArray,
    spend_total: FloatArray,
    start_ms: IntArray,
    end_ms: IntArray,
    order_days_total: FloatArray,
    first_order_ms: FloatArray,
    last_order_ms: FloatArray,
) -> Float32Array:
    """Full feature vectors from base aggregates plus history, shape ``[..., N_FEATURES]``.

    ``last_order_window`` is the latest window ``<=`` this one with an order, or a value below
    ``first_window`` when there was none; ``orders_total``/``spend_total``/``order_days_total``
    include this window. ``start_ms``/``end_ms`` bound the window (``end_ms`` exclusive).
    ``first_order_ms`` is the time of the user's first purchase event, ``last_order_ms`` of the
    last one before ``end_ms``; both float64 milliseconds, NaN when there was no purchase yet.
    Every argument broadcasts over the leading axes; the batch path passes whole tensors, the
    event path arrays of one.
    """
    carts = base[..., I_CART]
    purchases = base[..., I_PURCHASE]
    conversion = np.divide(purchases, carts, out=np.zeros_like(purchases), where=carts > 0)
    active = (base[..., : len(COUNT_FEATURES)].sum(axis=-1) > 0).astype(np.float64)
    tenure = np.minimum(window - first_window + 1, HISTORY_CAP).astype(np.float64)
    ordered = last_order_window >= first_window
    since = np.where(ordered, window - last_order_window, window - first_window + 1)
    since = np.minimum(since, HISTORY_CAP).astype(np.float64)
    since_first = _days_before(end_ms, first_order_ms)
    since_last = _days_before(end_ms, last_order_ms)
    sin, cos = season(start_ms)
    derived = (
        conversion,
        active,
        since,
        tenure,
        orders_total,
        spend_total,
        order_days_total,
        since_first,
        since_last,
        sin,
        cos,
    )
    shape = np.broadcast_shapes(base.shape[:-1], *(np.shape(part) for part in derived))
    # Each part cast into its column of one float32 array: the same rounding as stacking in
    # float64 and casting the whole, without the two float64 intermediates of every cell.
    features = np.empty((*shape, base.shape[-1] + len(derived)), dtype=np.float32)
    features[..., : base.shape[-1]] = base
    for i, part in enumerate(derived, start=base.shape[-1]):
        features[..., i] = part
    return features


def _days_before(end_ms: IntArray, event_ms: FloatArray) -> FloatArray:
    """Days from ``event_ms`` to ``end_ms``, 0.0 where ``event_ms`` is NaN, capped."""
    # Milliseconds below 2**53 are exact in float64, so both paths get the same bits.
    days = (end_ms.astype(np.float64) - event_ms) / DAY_MS
    days = np.where(np.isnan(event_ms), 0.0, days)
    return np.minimum(days, float(HISTORY_CAP_DAYS))


def lifetime_summary(
    last_vectors: npt.NDArray[np.floating[Any]],
) -> tuple[FloatArray, FloatArray, FloatArray, npt.NDArray[np.bool_]]:
    """BG/NBD's inputs ``(x, t_x, T, ordered)`` read from raw feature vectors ``[..., N_FEATURES]``.

    Pass each user's RAW (untransformed, unnormalised) vector of the window at which the model
    is fitted or scored, e.g. ``sequence[:, -1, :]``; the summary is as of that window's end.
    In BG/NBD's units, with order days as purchase occasions and time in WEEKS:

    * ``x`` — repeat order days: ``order_days_total - 1``, 0 for a user who never ordered;
    * ``T`` — age: weeks from the first purchase to the window end;
    * ``t_x`` — recency: weeks from the first to the last purchase (``T`` minus weeks since the
      last purchase), 0 when ``x`` is 0;
    * ``ordered`` — users with at least one order day; BG/NBD says nothing of the others, whose
      ``x``, ``t_x`` and ``T`` are all 0.

    Limits inherited from the features: order days are exact only for day-aligned windows
    (see :data:`BASE_FEATURES`); the time of the first and last purchase *event* stands for the
    day, so ``T`` and ``t_x`` are fractional; both day features are capped at
    :data:`HISTORY_CAP_DAYS`, so for a customer older than that ``T`` is the cap and ``t_x`` is
    understated by the same amount.
    """
    v = np.asarray(last_vectors, dtype=np.float64)
    order_days = v[..., I_ORDER_DAYS_TOTAL]
    ordered = np.asarray(order_days > 0)
    x = np.where(ordered, order_days - 1.0, 0.0)
    age_days = v[..., I_DAYS_SINCE_FIRST_ORDER]
    since_last_days = v[..., I_DAYS_SINCE_LAST_ORDER]
    big_t = np.where(ordered, age_days / 7.0, 0.0)
    # BG/NBD's convention: no repeat, no recency (several purchases on the first order day
    # would otherwise give a recency of hours). max() guards against float32 rounding.
    t_x = np.where(x > 0, np.maximum(age_days - since_last_days, 0.0) / 7.0, 0.0)
    return x, t_x, big_t, ordered


def transform(raw: Float32Array) -> Float32Array:
    """Model-input transform (before normalisation): log1p on the unbounded features."""
    out = raw.astype(np.float32, copy=True)
    mask = np.array([t == "log1p" for t in FEATURE_TRANSFORMS])
    out[..., mask] = np.log1p(np.maximum(out[..., mask], 0.0))
    return out


@dataclass(frozen=True, slots=True)
class NormStats:
    """Per-feature mean and standard deviation of the transformed training inputs."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, raw: Float32Array) -> NormStats:
        flat = transform(raw).reshape(-1, raw.shape[-1]).astype(np.float64)
        mean = flat.mean(axis=0)
        std = flat.std(axis=0)
        # A feature constant on the training split (e.g. carts in order-line data) must not
        # blow up: it is centred and left unscaled.
        std = np.where(std < 1e-6, 1.0, std)
        return cls(tuple(float(x) for x in mean), tuple(float(x) for x in std))

    def apply(self, raw: Float32Array) -> Float32Array:
        """Transformed and standardised model input, float32."""
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return ((transform(raw) - mean) / std).astype(np.float32)


def is_scored(sequence: Float32Array, lookback: int) -> bool:
    """Population rule: active in any of the last ``lookback`` windows of the sequence."""
    return bool(np.any(sequence[-lookback:, I_ACTIVE] > 0))


def population_mask(sequences: Float32Array, lookback: int) -> npt.NDArray[np.bool_]:
    """Who a model is trained on and evaluated for at a window end, vectorised over raw
    sequences ``[N, seq_len, F]``: every customer with an order day at any time before
    (however long dormant: those are who a churn model exists for), and every user active in
    the last ``lookback`` windows (viewers and carters who never bought)."""
    ordered = sequences[:, -1, I_ORDER_DAYS_TOTAL] > 0
    active = np.any(sequences[:, -lookback:, I_ACTIVE] > 0, axis=1)
    return np.asarray(ordered | active)


DORMANT_CHURN_FLOOR: Final = 0.8
"""Default churn probability at which a dormant customer stops being scored at window closes.

Chosen from what the shipped model (m-93f83fb9098d) gives long-dormant customers: their churn
rises with dormancy and then plateaus with a seasonal swing, 0.74-0.93 (a one-time buyer sits
at 0.82-0.93 for years; the median Online Retail customer's maximum over four dormant years is
0.89). Of 1,195 Online Retail customers followed four years past the data's end, the share
whose churn ever reaches the floor is 98 % at 0.75, 90 % at 0.80 (median 73 weeks), 70 % at
0.85 and 10 % at 0.95. At 0.95 almost nobody would ever leave the close population, so the
cost would not be bounded; 0.80 bounds it for nine customers in ten while every frozen signal
still says "likely churned". ``CLICKSIGNALS_DORMANT_CHURN_FLOOR`` sets it in the worker.
"""


def close_population(
    sequences: Float32Array,
    lookback: int,
    previous_churn: npt.NDArray[np.floating[Any]],
    floor: float,
) -> npt.NDArray[np.bool_]:
    """Who is scored at a window close, vectorised over raw sequences ``[N, seq_len, F]``.

    The rule the worker and offline prediction both apply:

    * a user active in any of the last ``lookback`` windows is scored (:func:`is_scored`);
    * a customer (``order_days_total > 0``) who is not — dormant — is scored as long as the
      churn probability of their latest window-close score, ``previous_churn``, is below
      ``floor``; once a close's score reaches it they are not scored again (their last signal
      stands) until an event makes them active;
    * anyone else (never ordered, out of the lookback) is not scored.

    ``previous_churn`` is per user the churn of their latest window-close score before this
    close, NaN if they were never scored at a close. The latest score rather than "the score
    at the previous close" because the two agree wherever the rule is applied close after
    close (a dormant customer not scored at the previous close had, by the same rule, a latest
    score at or above the floor), and the latest is what a user's stored state holds.

    The result is a subset of :func:`population_mask` (training's population): equal to it
    except for dormant customers whose risk already passed the floor. Applying it needs the
    scores of the previous close, so callers go close by close (see
    :func:`training.offline.predict_windows`).
    """
    active = np.any(sequences[:, -lookback:, I_ACTIVE] > 0, axis=1)
    ordered = sequences[:, -1, I_ORDER_DAYS_TOTAL] > 0
    # NaN < floor is False: a customer never scored at a close is not dormant-scored.
    under = np.asarray(previous_churn, dtype=np.float64) < floor
    return np.asarray(active | (ordered & under))


def is_scored_at_close(
    sequence: Float32Array, lookback: int, previous_churn: float | None, floor: float
) -> bool:
    """:func:`close_population` for one user's raw sequence ``[seq_len, F]`` (the worker's)."""
    churn = np.asarray([np.nan if previous_churn is None else previous_churn])
    return bool(close_population(sequence[None], lookback, churn, floor)[0])
