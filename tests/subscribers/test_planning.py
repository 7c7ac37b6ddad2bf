"""The planner's reorder rule as a pure function (``p90-lead-time-v1``).

Shapes named: a steady seller with enough stock, one running low, a fractional cover over weekly
windows, a stale forecast, a cover beyond the horizon, bad stock and forecast values.
"""

from __future__ import annotations

import math

import pytest

from features.windows import DAY_MS
from subscribers.planning import (
    RULE,
    PlanningConfig,
    StockLevel,
    UnitsForecast,
    projected,
    suggest,
)

WEEK = 7 * DAY_MS


def forecast(p90: list[float], series: str = "851", origin_ms: int = 0) -> UnitsForecast:
    return UnitsForecast(
        series=series,
        origin_ms=origin_ms,
        window_ms=WEEK,
        p10=[0.5 * v for v in p90],
        p50=[0.8 * v for v in p90],
        p90=p90,
        model_version="d-1",
        forecast_id="f-1",
    )


def stock(on_hand: float, on_order: float = 0.0, series: str = "851") -> StockLevel:
    return StockLevel(series=series, on_hand=on_hand, on_order=on_order, as_of_ms=0)


def test_a_steady_seller_with_three_weeks_on_hand_gets_no_suggestion() -> None:
    config = PlanningConfig(lead_time_days=14, review_days=7)
    assert suggest(forecast([100.0] * 4), stock(300.0), config, now_ms=0) is None


def test_a_seller_running_low_gets_the_gap_to_its_p90_over_the_cover() -> None:
    config = PlanningConfig(lead_time_days=14, review_days=7)
    got = suggest(forecast([100.0, 120.0, 80.0, 50.0]), stock(150.0, on_order=50.0), config, 0)
    assert got is not None
    assert got.projected_p90 == pytest.approx(300.0)
    assert got.projected_p50 == pytest.approx(240.0)
    assert got.available == 200.0 and got.quantity == 100 and got.rule == RULE
    again = suggest(forecast([100.0, 120.0, 80.0, 50.0]), stock(150.0, 50.0), config, 0)
    assert again is not None and again.suggestion_id == got.suggestion_id
    other = suggest(forecast([100.0, 120.0, 80.0, 50.0]), stock(149.0, 50.0), config, 0)
    assert other is not None and other.suggestion_id != got.suggestion_id


def test_a_ten_day_cover_takes_a_week_and_three_sevenths_of_the_next() -> None:
    f = forecast([70.0, 70.0, 70.0])
    assert projected(f, f.p90, 0, 10 * DAY_MS) == pytest.approx(100.0)
    config = PlanningConfig(lead_time_days=10, review_days=0)
    got = suggest(f, stock(99.5), config, 0)
    assert got is not None and got.quantity == 1


def test_a_stale_forecast_counts_only_the_windows_still_ahead() -> None:
    f = forecast([1000.0, 10.0, 10.0, 10.0])
    config = PlanningConfig(lead_time_days=7, review_days=7)
    # A week after the origin the big first week is past: 20 units to come, 30 on hand.
    assert suggest(f, stock(30.0), config, now_ms=WEEK) is None
    assert suggest(f, stock(30.0), config, now_ms=0) is not None


def test_a_cover_beyond_the_forecast_is_refused_not_truncated() -> None:
    with pytest.raises(ValueError, match="past the forecast's end"):
        suggest(forecast([10.0, 10.0]), stock(0.0), PlanningConfig(14, 7), now_ms=0)


def test_bad_inputs_are_refused_with_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="on_hand"):
        stock(-1.0)
    with pytest.raises(ValueError, match="on_order"):
        stock(1.0, math.nan)
    with pytest.raises(ValueError, match="p90 must be finite"):
        UnitsForecast("s", 0, WEEK, [1.0, 1.0], [1.0, 1.0], [1.0, math.inf], "d", "f")
    with pytest.raises(ValueError, match="one value per window"):
        UnitsForecast("s", 0, WEEK, [1.0], [1.0, 2.0], [1.0], "d", "f")
    with pytest.raises(ValueError, match="lead_time_days"):
        PlanningConfig(lead_time_days=-1)
    with pytest.raises(ValueError, match="stock of 'other'"):
        suggest(forecast([10.0] * 4), stock(0.0, series="other"), PlanningConfig(), 0)
