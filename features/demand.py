"""Per-series window aggregates for inventory demand: the one definition, batch and step-wise.

Owns what a demand series is and what it sums per window, for the category (or product)
forecasts of issue 17:

* :func:`series_key`: which series an event counts under, by level (``category``,
  ``product``, or ``family:N``, the first ``N`` characters of the product id: stock-code
  families where a shop has no categories, as Online Retail);
* :data:`SERIES_AGGREGATES`: units and revenue of purchases, views and carts, per (series,
  window);
* :func:`series_windows`: those aggregates for a whole history at once, a dense
  ``[series, windows, 4]`` array (the training path);
* :class:`SeriesCell` and :func:`add_event`: the same sums one event at a time (the worker's
  path); a parity test proves the two agree.

Choices: demand is gross purchases (returns do not subtract: a return is not a sale that did
not happen, and stock planning reads what was asked for); an unknown price adds 0 to revenue,
as in the user features; an event with no key at the level (no category, no product) counts in
no series, but still in the window's totals, so that shares stay shares of the whole shop.

Pure: numpy only, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from features.events import CART, EVENT_TYPE_CODES, PURCHASE, VIEW, ClickEvent
from features.windows import Float32Array, FloatArray, IntArray

SERIES_AGGREGATES: Final[tuple[str, ...]] = ("units", "revenue", "views", "carts")
"""Per (series, window): purchased units, purchase revenue, view events, cart events."""
N_AGGREGATES: Final = len(SERIES_AGGREGATES)
I_UNITS, I_REVENUE, I_VIEWS, I_CARTS = range(N_AGGREGATES)

LEVELS: Final[tuple[str, ...]] = ("category", "product", "family:N")
"""The series levels :func:`parse_level` accepts (``family:N`` with a whole ``N`` >= 1)."""

_VIEW: Final = EVENT_TYPE_CODES[VIEW]
_CART: Final = EVENT_TYPE_CODES[CART]
_PURCHASE: Final = EVENT_TYPE_CODES[PURCHASE]


@dataclass(frozen=True)
class SeriesLevel:
    """What a series is: ``field`` ("category" or "product") cut to ``prefix`` characters
    (``None``: the whole value)."""

    field: str
    prefix: int | None = None

    def __str__(self) -> str:
        return self.field if self.prefix is None else f"family:{self.prefix}"


def parse_level(text: str) -> SeriesLevel:
    """``category``, ``product`` or ``family:N``; anything else is a ValueError naming them."""
    if text in ("category", "product"):
        return SeriesLevel(text)
    name, _, digits = text.partition(":")
    if name == "family" and digits.isdigit() and int(digits) >= 1:
        return SeriesLevel("product", int(digits))
    raise ValueError(f"series level {text!r}: expected one of {', '.join(LEVELS)}")


def series_key(level: SeriesLevel, category: str | None, product_id: str | None) -> str | None:
    """The series an event with this category and product counts under, ``None`` for none.

    A value of only whitespace is no value, as a blank field is elsewhere; a family is cut
    from the stripped product id.
    """
    value = category if level.field == "category" else product_id
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    return value if level.prefix is None else value[: level.prefix]


def series_windows(
    series: IntArray,
    column: IntArray,
    event_type: IntArray,
    quantity: IntArray,
    price: FloatArray,
    n_series: int,
    n_windows: int,
) -> tuple[FloatArray, FloatArray]:
    """Aggregates of every (series, window) cell, and the window totals over all events.

    ``series`` is each event's series code (``0 .. n_series - 1``; ``-1``: none), ``column``
    its window's column (``0 .. n_windows - 1``; events outside are ignored), ``price`` NaN
    when unknown. Returns ``[n_series, n_windows, 4]`` and ``[n_windows, 4]``, in
    :data:`SERIES_AGGREGATES` order. Sums run in event order, as the step-wise path adds.
    """
    n = len(series)
    for name, given in (("column", column), ("event_type", event_type), ("quantity", quantity)):
        if len(given) != n:
            raise ValueError(f"{name} has {len(given)} events, series {n}")
    if len(price) != n:
        raise ValueError(f"price has {len(price)} events, series {n}")
    inside = (column >= 0) & (column < n_windows)
    values = _event_values(event_type, quantity, price)
    totals = np.zeros((n_windows, N_AGGREGATES), dtype=np.float64)
    for k in range(N_AGGREGATES):
        totals[:, k] = np.bincount(column[inside], values[inside, k], minlength=n_windows)
    keyed = inside & (series >= 0) & (series < n_series)
    cells = np.zeros((n_series * n_windows, N_AGGREGATES), dtype=np.float64)
    flat = series[keyed].astype(np.int64) * n_windows + column[keyed].astype(np.int64)
    for k in range(N_AGGREGATES):
        cells[:, k] = np.bincount(flat, values[keyed, k], minlength=n_series * n_windows)
    return cells.reshape(n_series, n_windows, N_AGGREGATES), totals


def _event_values(event_type: IntArray, quantity: IntArray, price: FloatArray) -> FloatArray:
    """Each event's contribution to the four aggregates, ``[events, 4]``."""
    bought = event_type == _PURCHASE
    units = np.where(bought, quantity, 0).astype(np.float64)
    revenue = np.where(bought & ~np.isnan(price), price * quantity, 0.0)
    views = (event_type == _VIEW).astype(np.float64)
    carts = (event_type == _CART).astype(np.float64)
    return np.stack([units, revenue, views, carts], axis=1)


@dataclass(slots=True)
class SeriesCell:
    """One (series, window)'s aggregates, summed one event at a time."""

    units: float = 0.0
    revenue: float = 0.0
    views: float = 0.0
    carts: float = 0.0

    def values(self) -> list[float]:
        """The aggregates in :data:`SERIES_AGGREGATES` order."""
        return [self.units, self.revenue, self.views, self.carts]

    def merge(self, other: SeriesCell) -> None:
        """Add another cell's sums (a batch's partial sums into the kept cell)."""
        self.units += other.units
        self.revenue += other.revenue
        self.views += other.views
        self.carts += other.carts


def add_event(cell: SeriesCell, event: ClickEvent) -> None:
    """Fold one event into its (series, window) cell, or a window's totals."""
    if event.event_type == PURCHASE:
        cell.units += float(event.quantity)
        if event.price is not None:
            cell.revenue += event.price * event.quantity
    elif event.event_type == VIEW:
        cell.views += 1.0
    elif event.event_type == CART:
        cell.carts += 1.0


# --- the demand model's inputs: one definition for training and the worker ---------------------

INPUT_FEATURES: Final[tuple[str, ...]] = (
    "units",
    "revenue",
    "views",
    "carts",
    "shop_units",
    "season_sin",
    "season_cos",
)
"""Per input window: the series' units, revenue, views and carts, and the shop's units, each
``log1p`` of the value over its mean across the input windows (0 where that mean is 0: scale
free, so one model serves every series, and a window's level against the series' own recent
level is what leads demand); then the window's place in the year."""
FUTURE_FEATURES: Final[tuple[str, ...]] = ("season_sin", "season_cos")
"""Per horizon window: its place in the year (known ahead)."""


def _relative(values: FloatArray) -> FloatArray:
    """``log1p(values / their mean over the last axis)``, 0 where that mean is 0."""
    mean = values.mean(axis=-1, keepdims=True)
    ratio = np.divide(values, mean, out=np.zeros_like(values), where=mean > 0)
    return np.asarray(np.log1p(ratio), dtype=np.float64)


SCALE_WINDOWS: Final = 4
"""The scale is the mean of the last four input windows: the moving average a planner would
read, so that the model learns how far demand departs from it."""


def series_scale(cells: FloatArray) -> FloatArray:
    """``[series, 2]``: each series' mean units and mean revenue over its last
    :data:`SCALE_WINDOWS` input windows (``cells`` ``[series, L, 4]``): what the model's
    scale-free quantiles are multiplied by."""
    return np.asarray(cells[:, -SCALE_WINDOWS:, [I_UNITS, I_REVENUE]].mean(axis=1), np.float64)


def series_inputs(cells: FloatArray, totals: FloatArray, start_ms: IntArray) -> Float32Array:
    """``[series, L, len(INPUT_FEATURES)]`` float32 model inputs from ``cells``
    ``[series, L, 4]``, the shop's ``totals`` ``[L, 4]`` and the windows' start times."""
    from features.windows import season

    n_series, n_windows, _ = cells.shape
    out = np.empty((n_series, n_windows, len(INPUT_FEATURES)), dtype=np.float32)
    for i in range(N_AGGREGATES):
        out[:, :, i] = _relative(cells[:, :, i])
    out[:, :, 4] = _relative(totals[None, :, I_UNITS])
    sin, cos = season(np.asarray(start_ms, dtype=np.int64))
    out[:, :, 5] = sin[None, :]
    out[:, :, 6] = cos[None, :]
    return out


def future_inputs(start_ms: IntArray) -> Float32Array:
    """``[H, len(FUTURE_FEATURES)]`` float32: the horizon windows' place in the year."""
    from features.windows import season

    sin, cos = season(np.asarray(start_ms, dtype=np.int64))
    return np.stack([sin, cos], axis=-1).astype(np.float32)


def widened(quantiles: FloatArray, factor: float) -> FloatArray:
    """Quantiles ``[..., 3]`` with P10 and P90 moved ``factor`` times as far from P50 (the
    interval's calibration, fitted offline on a pseudo-cutoff), P10 floored at zero."""
    p50 = quantiles[..., 1:2]
    out = p50 + factor * (quantiles - p50)
    out[..., 0] = np.maximum(out[..., 0], 0.0)
    return out


# --- the demand model's manifest: its contract with whoever serves it ---------------------------

DEMAND_MANIFEST_FORMAT: Final = 1
DEMAND_TARGETS: Final[tuple[str, ...]] = ("units", "revenue")
DEMAND_QUANTILES: Final[tuple[float, ...]] = (0.1, 0.5, 0.9)
DEMAND_INPUTS: Final[tuple[str, ...]] = ("sequence", "future", "scale")
DEMAND_OUTPUT: Final = "quantiles"


@dataclass(frozen=True)
class DemandManifest:
    """What ``manifest.json`` beside a demand model's ONNX file holds.

    The graph takes ``sequence`` ``[N, seq_len, len(INPUT_FEATURES)]`` (:func:`series_inputs`),
    ``future`` ``[N, horizon, len(FUTURE_FEATURES)]`` (:func:`future_inputs`) and ``scale``
    ``[N, 2]`` (:func:`series_scale`), and gives ``quantiles`` ``[N, horizon, 2, 3]``; the
    served quantiles are :func:`widened` by ``interval_width``.
    """

    model_version: str
    group: str
    level: str
    window_ms: int
    origin_ms: int
    seq_len: int
    horizon: int
    interval_width: float
    onnx_sha256: str
    onnx_file: str = "model.onnx"
    input_features: tuple[str, ...] = INPUT_FEATURES
    future_features: tuple[str, ...] = FUTURE_FEATURES
    targets: tuple[str, ...] = DEMAND_TARGETS
    quantiles: tuple[float, ...] = DEMAND_QUANTILES
    scale_windows: int = SCALE_WINDOWS

    def to_dict(self) -> dict[str, object]:
        return {
            "format": DEMAND_MANIFEST_FORMAT,
            "model_version": self.model_version,
            "group": self.group,
            "level": self.level,
            "window": {"length_ms": self.window_ms, "origin_ms": self.origin_ms},
            "seq_len": self.seq_len,
            "horizon": self.horizon,
            "interval_width": self.interval_width,
            "onnx": {"file": self.onnx_file, "sha256": self.onnx_sha256},
            "inputs": {
                "sequence": list(self.input_features),
                "future": list(self.future_features),
                "scale": ["units", "revenue"],
            },
            "output": {"targets": list(self.targets), "quantiles": list(self.quantiles)},
            "scale_windows": self.scale_windows,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DemandManifest:
        """Read a manifest; a wrong format, or inputs and outputs this code does not compute,
        is a ValueError that says what does not match."""
        try:
            if data["format"] != DEMAND_MANIFEST_FORMAT:
                raise ValueError(
                    f"format {data['format']}, this code reads {DEMAND_MANIFEST_FORMAT}"
                )
            got = cls(
                model_version=str(data["model_version"]),
                group=str(data["group"]),
                level=str(data["level"]),
                window_ms=int(data["window"]["length_ms"]),
                origin_ms=int(data["window"]["origin_ms"]),
                seq_len=int(data["seq_len"]),
                horizon=int(data["horizon"]),
                interval_width=float(data["interval_width"]),
                onnx_sha256=str(data["onnx"]["sha256"]),
                onnx_file=str(data["onnx"]["file"]),
                input_features=tuple(data["inputs"]["sequence"]),
                future_features=tuple(data["inputs"]["future"]),
                targets=tuple(data["output"]["targets"]),
                quantiles=tuple(float(q) for q in data["output"]["quantiles"]),
                scale_windows=int(data["scale_windows"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"demand manifest: missing or malformed {exc}") from exc
        for name, have, want in (
            ("sequence inputs", got.input_features, INPUT_FEATURES),
            ("future inputs", got.future_features, FUTURE_FEATURES),
            ("targets", got.targets, DEMAND_TARGETS),
            ("quantiles", got.quantiles, DEMAND_QUANTILES),
            ("scale windows", (got.scale_windows,), (SCALE_WINDOWS,)),
        ):
            if tuple(have) != tuple(want):
                raise ValueError(f"demand manifest: {name} {list(have)}, this code {list(want)}")
        parse_level(got.level)
        return got
