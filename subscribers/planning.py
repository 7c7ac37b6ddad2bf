"""Stock planning: a series' demand forecast and its stock -> a reorder suggestion (pure logic).

The planner (issue 17) keeps the newest forecast of each series (category or product) and the
stock a planning team gives it, and suggests an order when demand over the lead time may
exceed what is on hand and on order. The rule (``p90-lead-time-v1``)::

    cover     = lead_time_days + review_days                    # days an order must last
    projected = sum over the forecast's windows w of
                P90(w) * overlap(w, [from, from + cover)) / window_days
    available = on_hand + on_order
    suggest   = projected > available
    quantity  = ceil(projected - available)                     # when suggested

* **Why P90.** Running out costs a sale; a unit too many costs its holding. Ordering up to
  the forecast's P90 over the cover is a 90 % service level for one window. Over several
  windows the sum of per-window P90s is at least the P90 of their sum for demand that moves
  together (and more for windows that do not), so the rule errs towards enough stock, which
  is what a reorder point is for.
* **Partial windows** count in proportion to their overlap with the cover: a 10-day cover over
  weekly windows takes the first window whole and 3/7 of the second.
* **Beyond the forecast.** A cover longer than the forecast's horizon is refused
  (``ValueError``): there is no number for it, and a silent truncation would under-order.
* **Stale forecasts.** ``from`` is the later of the forecast's origin and ``now``: windows
  already past are not demand to come.
* Each suggestion has a deterministic ``suggestion_id`` (the series, the forecast, the stock
  snapshot), so a redelivered input repeats the same id.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from features.windows import DAY_MS
from subscribers.records import derived_id

RULE: Final = "p90-lead-time-v1"


@dataclass(frozen=True, slots=True)
class UnitsForecast:
    """A series' forecast of units: P10, P50 and P90 of each window after ``origin_ms``
    (window ``k`` covers ``[origin_ms + k * window_ms, origin_ms + (k + 1) * window_ms)``)."""

    series: str
    origin_ms: int
    window_ms: int
    p10: Sequence[float]
    p50: Sequence[float]
    p90: Sequence[float]
    model_version: str
    forecast_id: str

    def __post_init__(self) -> None:
        if self.window_ms <= 0:
            raise ValueError(f"window must be positive, got {self.window_ms} ms")
        if not len(self.p10) == len(self.p50) == len(self.p90) >= 1:
            raise ValueError("P10, P50 and P90 need one value per window, at least one")
        for name, values in (("p10", self.p10), ("p50", self.p50), ("p90", self.p90)):
            if not all(math.isfinite(v) and v >= 0 for v in values):
                raise ValueError(f"{name} must be finite and non-negative")

    @property
    def end_ms(self) -> int:
        return self.origin_ms + len(self.p90) * self.window_ms


@dataclass(frozen=True, slots=True)
class StockLevel:
    """What a planning team has of a series: on hand and already ordered, as of ``as_of_ms``."""

    series: str
    on_hand: float
    on_order: float
    as_of_ms: int

    def __post_init__(self) -> None:
        for name, value in (("on_hand", self.on_hand), ("on_order", self.on_order)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and non-negative, got {value}")


@dataclass(frozen=True, slots=True)
class PlanningConfig:
    lead_time_days: float = 14.0
    """Days from ordering to the goods on the shelf."""
    review_days: float = 7.0
    """Days until the next review: an order must also last until the next chance to order."""

    def __post_init__(self) -> None:
        for name, value in (
            ("lead_time_days", self.lead_time_days),
            ("review_days", self.review_days),
        ):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and non-negative, got {value}")
        if self.lead_time_days + self.review_days <= 0:
            raise ValueError("lead time plus review period must be positive")

    @property
    def cover_ms(self) -> float:
        return (self.lead_time_days + self.review_days) * DAY_MS


@dataclass(frozen=True, slots=True)
class ReorderSuggestion:
    series: str
    quantity: int
    projected_p90: float
    projected_p50: float
    available: float
    cover_days: float
    from_ms: int
    model_version: str
    forecast_id: str
    rule: str
    suggestion_id: str


def projected(
    forecast: UnitsForecast, values: Sequence[float], start_ms: float, span_ms: float
) -> float:
    """``values`` (one per forecast window) summed over ``[start_ms, start_ms + span_ms)``, each
    window in proportion to its overlap."""
    total = 0.0
    stop = start_ms + span_ms
    for k, value in enumerate(values):
        lo = forecast.origin_ms + k * forecast.window_ms
        hi = lo + forecast.window_ms
        overlap = min(hi, stop) - max(lo, start_ms)
        if overlap > 0:
            total += value * overlap / forecast.window_ms
    return total


def suggest(
    forecast: UnitsForecast, stock: StockLevel, config: PlanningConfig, now_ms: int
) -> ReorderSuggestion | None:
    """The rule of the module doc: a suggestion when the P90 over the cover exceeds what is on
    hand and on order, ``None`` otherwise."""
    if forecast.series != stock.series:
        raise ValueError(f"forecast of {forecast.series!r} with stock of {stock.series!r}")
    start = max(forecast.origin_ms, now_ms)
    cover = config.cover_ms
    if start + cover > forecast.end_ms:
        raise ValueError(
            f"cover of {cover / DAY_MS:g} days from {start} ms goes past the forecast's end "
            f"({forecast.end_ms} ms)"
        )
    p90 = projected(forecast, forecast.p90, start, cover)
    available = stock.on_hand + stock.on_order
    if p90 <= available:
        return None
    quantity = math.ceil(p90 - available - 1e-9)
    return ReorderSuggestion(
        series=forecast.series,
        quantity=quantity,
        projected_p90=round(p90, 6),
        projected_p50=round(projected(forecast, forecast.p50, start, cover), 6),
        available=available,
        cover_days=cover / DAY_MS,
        from_ms=int(start),
        model_version=forecast.model_version,
        forecast_id=forecast.forecast_id,
        rule=RULE,
        suggestion_id=derived_id(
            "reorder",
            forecast.series,
            forecast.forecast_id,
            repr(stock.on_hand),
            repr(stock.on_order),
            str(stock.as_of_ms),
            str(int(start)),
        ),
    )
