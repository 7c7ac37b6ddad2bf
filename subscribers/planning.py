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

The planner app (:mod:`subscribers.planner`) also needs, and finds here:

* its inputs off the wire, refused with a reason and never raised: :func:`parse_forecast` (a
  ``category-demand`` record's units) and :func:`parse_stock` (a ``stock-levels`` record);
  :func:`read_stock_csv`, a stock file whose bad row is an error that names it;
* its state per series (:class:`PlanState`: the newest forecast, the newest stock from the
  topic, the last suggestion's id) and the two transitions, :func:`on_forecast` and
  :func:`on_stock`. An older forecast (an earlier window end) or older stock (an earlier
  ``as_of_ms``) is stale and changes nothing; the same forecast again, or a suggestion equal to
  the last one, is a duplicate. The newer of the topic's and the file's stock is planned with.
  The planner plans *as of the forecast's window end* (event time), so that a replay of
  history plans as it would have then.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, Literal

from features.windows import DAY_MS
from subscribers.records import (
    Rejected,
    _Bad,
    _get,
    _int,
    _load,
    _num,
    _str,
    derived_id,
)

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

    def to_dict(self) -> dict[str, Any]:
        """The ``reorder-suggestions`` record (docs/schemas/reorder-suggestion.schema.json)."""
        from features.signals import ms_to_iso

        return {
            "suggestion_id": self.suggestion_id,
            "series": self.series,
            "quantity": self.quantity,
            "projected_p90": self.projected_p90,
            "projected_p50": self.projected_p50,
            "available": self.available,
            "cover_days": self.cover_days,
            "from": ms_to_iso(self.from_ms),
            "from_ms": self.from_ms,
            "model_version": self.model_version,
            "forecast_id": self.forecast_id,
            "rule": self.rule,
        }


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


# --------------------------------------------------------------------------------------------
# The planner's inputs off the wire and from a file, and its state per series
# --------------------------------------------------------------------------------------------

MAX_HORIZON: Final = 520
"""Forecast windows a record may carry (ten years of weeks): more is not a forecast."""


def parse_forecast(raw: bytes | str | Mapping[str, Any]) -> UnitsForecast | Rejected:
    """The units part of a ``category-demand`` record
    (:meth:`features.series_book.CategoryForecast.to_dict`), or :class:`Rejected`. Never
    raises. The forecast starts at the record's window end."""
    try:
        obj = _load(raw)
        horizon = _get(obj, "horizon")
        if not isinstance(horizon, list) or not 1 <= len(horizon) <= MAX_HORIZON:
            raise _Bad("bad_value", f"horizon must be a list of 1 to {MAX_HORIZON} windows")
        quantiles: dict[str, list[float]] = {"p10": [], "p50": [], "p90": []}
        for h in horizon:
            if not isinstance(h, dict) or not isinstance(h.get("units"), dict):
                raise _Bad("bad_value", "each horizon window needs a units object")
            for name, values in quantiles.items():
                values.append(_num(h["units"], name, lo=0.0))
        return UnitsForecast(
            series=_str(obj, "series"),
            origin_ms=_int(obj, "window_end_ms"),
            window_ms=_int(obj, "window_ms", minimum=1),
            p10=quantiles["p10"],
            p50=quantiles["p50"],
            p90=quantiles["p90"],
            model_version=_str(obj, "model_version"),
            forecast_id=_str(obj, "forecast_id"),
        )
    except _Bad as bad:
        return bad.rejected


def parse_stock(raw: bytes | str | Mapping[str, Any]) -> StockLevel | Rejected:
    """A ``stock-levels`` record (``series``, ``on_hand``, ``on_order``, ``as_of_ms``), or
    :class:`Rejected`. Never raises."""
    try:
        obj = _load(raw)
        return StockLevel(
            series=_str(obj, "series"),
            on_hand=_num(obj, "on_hand", lo=0.0),
            on_order=_num(obj, "on_order", lo=0.0) if obj.get("on_order") is not None else 0.0,
            as_of_ms=_int(obj, "as_of_ms") if obj.get("as_of_ms") is not None else 0,
        )
    except _Bad as bad:
        return bad.rejected


class StockFileError(ValueError):
    """A stock file that cannot be read: the message names the row and the problem."""


STOCK_COLUMNS: Final = ("series", "on_hand")
"""Required columns of a stock file; ``on_order`` and ``as_of_ms`` are optional (0)."""


def read_stock_csv(path: Path) -> dict[str, StockLevel]:
    """Stock levels by series from a CSV file (header ``series,on_hand[,on_order][,as_of_ms]``).
    Raises :class:`StockFileError` naming the row and the problem (a file row number, the
    header being row 1); a series given twice is an error, not a silent overwrite."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in STOCK_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise StockFileError(f"{path}: row 1 (header) lacks column(s) {missing}")
            out: dict[str, StockLevel] = {}
            for row in reader:
                where = f"{path}: row {reader.line_num}"
                level = parse_stock(
                    {
                        "series": row.get("series") or None,
                        "on_hand": _csv_number(row.get("on_hand"), where, "on_hand"),
                        "on_order": _csv_number(row.get("on_order"), where, "on_order"),
                        "as_of_ms": _csv_int(row.get("as_of_ms"), where),
                    }
                )
                if isinstance(level, Rejected):
                    raise StockFileError(f"{where}: {level.detail}")
                if level.series in out:
                    raise StockFileError(f"{where}: series {level.series!r} is given twice")
                out[level.series] = level
            return out
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise StockFileError(f"{path}: cannot be read: {exc}") from None


def _csv_number(text: str | None, where: str, name: str) -> float | None:
    if text is None or not text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        raise StockFileError(f"{where}: {name} {text!r} is not a number") from None


def _csv_int(text: str | None, where: str) -> int | None:
    if text is None or not text.strip():
        return None
    try:
        return int(text)
    except ValueError:
        raise StockFileError(f"{where}: as_of_ms {text!r} is not a whole number") from None


Outcome = Literal[
    "suggested", "enough_stock", "no_stock", "no_forecast", "stale", "duplicate", "beyond_forecast"
]


@dataclass(frozen=True, slots=True)
class PlanState:
    """What the planner holds of one series: the newest forecast (its record, as served by
    ``GET /forecast/{series}``), the newest stock from the topic, the last suggestion's id."""

    forecast: Mapping[str, Any] | None = None
    stock: StockLevel | None = None
    last_suggestion_id: str | None = None

    def to_json(self) -> bytes:
        stock = self.stock
        return json.dumps(
            {
                "forecast": self.forecast,
                "stock": None
                if stock is None
                else [stock.series, stock.on_hand, stock.on_order, stock.as_of_ms],
                "last_suggestion_id": self.last_suggestion_id,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> PlanState:
        d = json.loads(raw)
        s = d.get("stock")
        return cls(
            forecast=d.get("forecast"),
            stock=StockLevel(str(s[0]), float(s[1]), float(s[2]), int(s[3])) if s else None,
            last_suggestion_id=d.get("last_suggestion_id"),
        )


@dataclass(frozen=True, slots=True)
class Plan:
    """What one input did: the series' new state (``None``: unchanged), the suggestion to
    send (``None``: none), and the outcome to count."""

    state: PlanState | None
    suggestion: ReorderSuggestion | None
    outcome: Outcome


def on_forecast(
    held: PlanState | None,
    forecast: UnitsForecast,
    record: Mapping[str, Any],
    file_stock: StockLevel | None,
    config: PlanningConfig,
) -> Plan:
    """A forecast arrived: kept if newer than the held one (a later window end; the same
    window end and id is a duplicate), then the rule with the newest stock (the topic's, else
    the file's). The planner plans as of the forecast's window end (event time), so a replay
    plans as it would have then."""
    held = held or PlanState()
    if held.forecast is not None:
        old_end = int(held.forecast.get("window_end_ms", -1))
        if forecast.forecast_id == held.forecast.get("forecast_id"):
            return Plan(None, None, "duplicate")
        if forecast.origin_ms < old_end:
            return Plan(None, None, "stale")
    state = replace(held, forecast=dict(record))
    return _decide(state, forecast, newest_stock(held.stock, file_stock), config)


def on_stock(
    held: PlanState | None, stock: StockLevel, config: PlanningConfig
) -> tuple[Plan, UnitsForecast | None]:
    """A stock level arrived on the topic: kept unless older than the held one, then the rule
    with the held forecast, if any."""
    held = held or PlanState()
    if held.stock is not None and stock.as_of_ms < held.stock.as_of_ms:
        return Plan(None, None, "stale"), None
    state = replace(held, stock=stock)
    if held.forecast is None:
        return Plan(state, None, "no_forecast"), None
    forecast = parse_forecast(held.forecast)
    if isinstance(forecast, Rejected):  # never stored so; refused rather than trusted
        return Plan(state, None, "no_forecast"), None
    return _decide(state, forecast, stock, config), forecast


def newest_stock(topic: StockLevel | None, file: StockLevel | None) -> StockLevel | None:
    """The stock to plan with: the topic's or the file's, whichever is newer (the topic's on
    a tie: it is the live one)."""
    if topic is None:
        return file
    if file is None:
        return topic
    return topic if topic.as_of_ms >= file.as_of_ms else file


def _decide(
    state: PlanState, forecast: UnitsForecast, stock: StockLevel | None, config: PlanningConfig
) -> Plan:
    if stock is None:
        return Plan(state, None, "no_stock")
    try:
        suggestion = suggest(forecast, stock, config, now_ms=forecast.origin_ms)
    except ValueError:
        return Plan(state, None, "beyond_forecast")
    if suggestion is None:
        return Plan(state, None, "enough_stock")
    if suggestion.suggestion_id == state.last_suggestion_id:
        return Plan(state, None, "duplicate")
    return Plan(
        replace(state, last_suggestion_id=suggestion.suggestion_id), suggestion, "suggested"
    )


__all__ = [
    "RULE",
    "Plan",
    "PlanState",
    "PlanningConfig",
    "ReorderSuggestion",
    "StockFileError",
    "StockLevel",
    "UnitsForecast",
    "newest_stock",
    "on_forecast",
    "on_stock",
    "parse_forecast",
    "parse_stock",
    "projected",
    "read_stock_csv",
    "suggest",
]
