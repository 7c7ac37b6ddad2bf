"""The planner's reorder rule as a pure function (``p90-lead-time-v1``).

Shapes named: a steady seller with enough stock, one running low, a fractional cover over weekly
windows, a stale forecast, a cover beyond the horizon, bad stock and forecast values.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from features.windows import DAY_MS
from subscribers.planning import (
    RULE,
    PlanningConfig,
    PlanState,
    StockFileError,
    StockLevel,
    UnitsForecast,
    newest_stock,
    on_forecast,
    on_stock,
    parse_forecast,
    parse_stock,
    projected,
    read_stock_csv,
    suggest,
)
from subscribers.records import Rejected
from tests.support.factories import category_forecast

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


# --------------------------------------------------------------------------------------------
# The planner's inputs and its state per series
# --------------------------------------------------------------------------------------------


def record(
    series: str = "851", end_ms: int = 10 * WEEK, p90: float = 20.0, version: str = "d-1"
) -> dict[str, Any]:
    """A ``category-demand`` record as the worker writes it: 13 weekly windows."""
    return category_forecast(series, end_ms=end_ms, p90=p90, version=version).to_dict()


def test_a_category_demand_record_is_the_planner_s_forecast() -> None:
    r = record(p90=20.0)
    f = parse_forecast(orjson.dumps(r))
    assert isinstance(f, UnitsForecast)
    assert (f.series, f.origin_ms, f.window_ms) == ("851", 10 * WEEK, WEEK)
    assert list(f.p90) == [20.0] * 13 and list(f.p50) == [16.0] * 13
    assert f.forecast_id == r["forecast_id"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"horizon": []}, "bad_value"),
        ({"horizon": "soon"}, "bad_value"),
        ({"series": ""}, "bad_value"),
        ({"series": "x" * 257}, "bad_value"),
        ({"window_ms": 0}, "bad_value"),
        ({"forecast_id": None}, "missing_field"),
    ],
)
def test_a_malformed_forecast_is_rejected_with_a_reason(
    change: dict[str, Any], reason: str
) -> None:
    got = parse_forecast({**record(), **change})
    assert isinstance(got, Rejected) and got.reason == reason
    assert isinstance(parse_forecast(b"{nope"), Rejected)
    negative = record()
    negative["horizon"][3]["units"]["p90"] = -1.0
    assert isinstance(parse_forecast(negative), Rejected)


def test_stock_records_and_their_defaults() -> None:
    s = parse_stock(b'{"series": "851", "on_hand": 12}')
    assert s == StockLevel("851", 12.0, 0.0, 0)
    for bad in (
        b'{"series": "851", "on_hand": -1}',
        b'{"series": "851"}',
        b'{"on_hand": 3}',
        b'{"series": "851", "on_hand": 3, "as_of_ms": 1.5}',
        b"[1, 2]",
    ):
        assert isinstance(parse_stock(bad), Rejected), bad


def test_a_stock_file_is_read_and_a_bad_row_is_named(tmp_path: Path) -> None:
    good = tmp_path / "stock.csv"
    good.write_text("series,on_hand,on_order,as_of_ms\n851,10,5,100\n22A,0,,\n")
    assert read_stock_csv(good) == {
        "851": StockLevel("851", 10.0, 5.0, 100),
        "22A": StockLevel("22A", 0.0, 0.0, 0),
    }
    cases = {
        "series,on_order\n851,3\n": "row 1 (header) lacks column(s) ['on_hand']",
        "series,on_hand\n851,10\n851,11\n": "row 3: series '851' is given twice",
        "series,on_hand\n851,ten\n": "row 2: on_hand 'ten' is not a number",
        "series,on_hand\n851,-4\n": "row 2: on_hand=-4.0 outside",
        "series,on_hand\n,4\n": "row 2: series is missing",
        "series,on_hand,as_of_ms\n851,4,yesterday\n": "row 2: as_of_ms 'yesterday'",
    }
    for text, message in cases.items():
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(StockFileError, match=re.escape(message)):
            read_stock_csv(bad)
    with pytest.raises(StockFileError, match="cannot be read"):
        read_stock_csv(tmp_path / "absent.csv")


CONFIG = PlanningConfig(lead_time_days=14.0, review_days=7.0)


def test_a_forecast_with_too_little_stock_suggests_once() -> None:
    r = record(p90=20.0)
    f = parse_forecast(r)
    assert isinstance(f, UnitsForecast)
    plan = on_forecast(None, f, r, StockLevel("851", 10.0, 0.0, 0), CONFIG)
    assert plan.outcome == "suggested" and plan.suggestion is not None
    # Three weeks of cover at a P90 of 20 a week: 60 against 10 on hand.
    assert plan.suggestion.quantity == 50 and plan.suggestion.from_ms == 10 * WEEK
    assert plan.state is not None and plan.state.forecast == r
    again = on_forecast(plan.state, f, r, StockLevel("851", 10.0, 0.0, 0), CONFIG)
    assert again.outcome == "duplicate" and again.suggestion is None
    state = PlanState.from_json(plan.state.to_json())
    assert state == plan.state


def test_older_forecasts_and_stock_are_stale_and_change_nothing() -> None:
    new, old = record(end_ms=11 * WEEK), record(end_ms=10 * WEEK, version="d-0")
    fn, fo = parse_forecast(new), parse_forecast(old)
    assert isinstance(fn, UnitsForecast) and isinstance(fo, UnitsForecast)
    held = on_forecast(None, fn, new, None, CONFIG)
    assert held.outcome == "no_stock" and held.state is not None
    stale = on_forecast(held.state, fo, old, None, CONFIG)
    assert stale.outcome == "stale" and stale.state is None
    plan, _ = on_stock(held.state, StockLevel("851", 100.0, 0.0, 50), CONFIG)
    assert plan.outcome == "enough_stock" and plan.state is not None
    older, _ = on_stock(plan.state, StockLevel("851", 0.0, 0.0, 49), CONFIG)
    assert older.outcome == "stale" and older.state is None


def test_stock_that_drops_brings_a_suggestion_for_the_held_forecast() -> None:
    r = record(p90=20.0)
    f = parse_forecast(r)
    assert isinstance(f, UnitsForecast)
    held = on_forecast(None, f, r, StockLevel("851", 100.0, 0.0, 0), CONFIG)
    assert held.outcome == "enough_stock"
    plan, used = on_stock(held.state, StockLevel("851", 5.0, 10.0, 1), CONFIG)
    assert plan.outcome == "suggested" and plan.suggestion is not None
    assert plan.suggestion.quantity == 45 and used == f
    # No forecast yet: the stock is kept for the next one.
    first, _ = on_stock(None, StockLevel("22A", 5.0, 0.0, 1), CONFIG)
    assert first.outcome == "no_forecast" and first.state is not None
    assert first.state.stock == StockLevel("22A", 5.0, 0.0, 1)


def test_the_topic_s_stock_is_planned_with_unless_the_file_s_is_newer() -> None:
    topic, file = StockLevel("851", 1.0, 0.0, 10), StockLevel("851", 2.0, 0.0, 5)
    assert newest_stock(topic, file) is topic
    assert newest_stock(StockLevel("851", 1.0, 0.0, 1), file) is file
    assert newest_stock(None, file) is file and newest_stock(topic, None) is topic


def test_a_cover_beyond_the_forecast_is_an_outcome_not_an_error() -> None:
    r = record(p90=20.0)
    f = parse_forecast(r)
    assert isinstance(f, UnitsForecast)
    long = PlanningConfig(lead_time_days=90.0, review_days=7.0)
    plan = on_forecast(None, f, r, StockLevel("851", 0.0, 0.0, 0), long)
    assert plan.outcome == "beyond_forecast" and plan.suggestion is None
