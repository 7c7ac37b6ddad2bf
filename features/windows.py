"""The window feature definition, the one both training and the worker use.

Owns: how event time maps to tumbling windows (:class:`WindowSpec`), the named per-window
feature vector (:data:`FEATURE_NAMES`), its model-input transform and normalisation, the
population rule (who is scored at a window close) and the label definition.

A window's vector is built in two steps:

1. *base aggregates* (counts per event type, orders, units, spend, distinct products,
   categories and sessions) — computed by two code paths, vectorised in
   :func:`features.batch.build_window_tensor` and event by event in :mod:`features.state`;
2. *assembly* (:func:`assemble`), which adds the history features (tenure, windows since the
   last order, running totals) and the calendar encoding. Both paths call this same function,
   so the derived features cannot drift apart; tests check that the base aggregates agree.

Pure: stdlib and numpy only, no I/O.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Final

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

COUNT_FEATURES: Final[tuple[str, ...]] = tuple(f"n_{t}" for t in EVENT_TYPES)
BASE_FEATURES: Final[tuple[str, ...]] = (
    *COUNT_FEATURES,
    "orders",
    "units",
    "spend",
    "distinct_products",
    "distinct_categories",
    "sessions",
)
"""Aggregates of one window's events; the two code paths each compute these."""

FEATURE_NAMES: Final[tuple[str, ...]] = (
    *BASE_FEATURES,
    "cart_conversion",
    "active",
    "windows_since_last_order",
    "tenure_windows",
    "orders_total",
    "spend_total",
    "season_sin",
    "season_cos",
)
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
    }
)
FEATURE_TRANSFORMS: Final[tuple[str, ...]] = tuple(
    "log1p" if name in _UNBOUNDED else "identity" for name in FEATURE_NAMES
)

# Bump when the meaning of any feature changes without its name changing.
FEATURE_DEFINITION_VERSION: Final = 1

_I = {name: i for i, name in enumerate(BASE_FEATURES)}
I_PURCHASE: Final = _I["n_purchase"]
I_CART: Final = _I["n_cart"]
I_ORDERS: Final = _I["orders"]
I_SPEND: Final = _I["spend"]
I_ACTIVE: Final = FEATURE_INDEX["active"]


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

    def index(self, time_ms: int) -> int:
        """Window index holding ``time_ms`` (floor division: negative before the origin)."""
        return (time_ms - self.origin_ms) // self.length_ms

    def start_ms(self, index: int) -> int:
        return self.origin_ms + index * self.length_ms

    def end_ms(self, index: int) -> int:
        return self.origin_ms + (index + 1) * self.length_ms

    def aligned(self, instant_ms: int) -> WindowSpec:
        """The same spec with its boundary grid moved so that one boundary is ``instant_ms``."""
        return WindowSpec(self.length_ms, instant_ms, self.seq_len, self.horizon, self.lookback)


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
) -> Float32Array:
    """Full feature vectors from base aggregates plus history, shape ``[..., N_FEATURES]``.

    ``last_order_window`` is the latest window ``<=`` this one with an order, or a value below
    ``first_window`` when there was none; ``orders_total``/``spend_total`` include this window.
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
    sin, cos = season(start_ms)
    derived = np.stack(
        np.broadcast_arrays(conversion, active, since, tenure, orders_total, spend_total, sin, cos),
        axis=-1,
    )
    return np.concatenate([base, derived], axis=-1).astype(np.float32)


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
