"""``ops.dashboard``: the demo's self-contained HTML, without a broker or a browser."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np
import orjson

from features.series_book import CategoryForecast
from ops.dashboard import histogram_svg, render_dashboard, thin, timeline_svg
from ops.demo_view import Sample, Tally, summary_record
from subscribers.bidding import BidConfig, adjustment_for
from tests.support.factories import churn, demand

SVG = "{http://www.w3.org/2000/svg}"
WEEK_MS = 7 * 86_400_000


def _tally() -> Tally:
    tally = Tally()
    tally.sample(0.0, 0)
    for i in range(40):
        user = f"u{i:03d}"
        tally.add("demand", orjson.dumps(demand(user).to_dict()))
        tally.add("churn", orjson.dumps(churn(user, p=i / 40).to_dict()))
        adjustment = adjustment_for(demand(user, orders=0.05 * i), BidConfig(), 1)
        tally.add("bids", orjson.dumps(adjustment.to_dict()))
        tally.sample(0.1 * (i + 1), 100 * (i + 1))
    return tally


def _summary(tally: Tally, interrupted: bool = False) -> dict[str, object]:
    return summary_record(
        tally,
        events=4000,
        events_sent=4000,
        replay_seconds=1.5,
        wall_seconds=40.0,
        interrupted=interrupted,
        outputs={},
    )


def _svgs(html: str) -> list[ET.Element]:
    return [ET.fromstring(s) for s in re.findall(r"<svg\b.*?</svg>", html, flags=re.S)]


def test_dashboard_has_the_three_charts_as_well_formed_svg() -> None:
    tally = _tally()
    html = render_dashboard(tally, _summary(tally), title="generated traffic")
    assert html.startswith("<!DOCTYPE html>")
    charts = _svgs(html)
    labels = [c.get("aria-label") for c in charts]
    assert labels == [
        "signals over time",
        "churn-risk distribution",
        "bid multiplier distribution",
    ]
    timeline, risk, bids = charts
    # One line per series: events replayed + seven output kinds.
    assert len(timeline.findall(f"{SVG}polyline")) == 8
    # 20 churn bins and 15 multiplier bins; each bar says what it counts.
    risk_bars = [r for r in risk.findall(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    bid_bars = [r for r in bids.findall(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    assert len(risk_bars) == 20 and len(bid_bars) == 15
    assert sum(int(r.find(f"{SVG}title").text.split(": ")[1].split()[0]) for r in risk_bars) == 40  # type: ignore[union-attr]


def test_the_category_panel_shows_each_series_newest_forecast_with_its_intervals() -> None:
    tally = _tally()
    html = render_dashboard(tally, _summary(tally))
    assert "No category forecast" in html
    for week, units in ((1, 5.0), (2, 8.0)):  # the later window end replaces the earlier
        for i, series in enumerate(("c001", "c002", "électro <&>")):
            q = np.tile([[0.5, 1.0, 1.6]], (2, 2, 1)) * units * (i + 1)
            record = CategoryForecast(
                series, "category", week * WEEK_MS, WEEK_MS, "d-1", q, (1.0, 2.0), 0
            ).to_dict()
            tally.add("categories", orjson.dumps(record))
    tally.add("categories", b"{not json")
    assert tally.counts["categories"] == 7 and tally.malformed == 1
    assert {r["window_end_ms"] for r in tally.categories.values()} == {2 * WEEK_MS}
    html = render_dashboard(tally, _summary(tally))
    charts = _svgs(html)
    (panel,) = [c for c in charts if c.get("aria-label") == "category forecasts"]
    # Two horizon windows per series: an interval bar and a P50 dot each.
    assert len(panel.findall(f"{SVG}line")) == 6 and len(panel.findall(f"{SVG}circle")) == 6
    assert "Category demand (3 series, level category)" in html
    assert "électro &lt;&amp;&gt;" in html and "<&>" not in html
    # The largest first: P50 of the next window 24.0, within 12.0-38.4.
    assert html.index("électro") < html.index("c002") < html.index(">c001<")
    assert "24.0 [12.0-38.4]" in html


def test_dashboard_is_self_contained() -> None:
    tally = _tally()
    html = render_dashboard(tally, _summary(tally))
    assert "<script" not in html and "<link" not in html and "<img" not in html
    assert "src=" not in html and "url(" not in html
    # The only URL is the SVG namespace identifier, which nothing fetches.
    assert set(re.findall(r"https?://[^\s\"'<>]+", html)) == {"http://www.w3.org/2000/svg"}


def test_dashboard_shows_top_users_counts_and_state() -> None:
    tally = _tally()
    html = render_dashboard(tally, _summary(tally, interrupted=True))
    assert "run interrupted" in html
    assert "u039" in html  # highest churn probability and highest multiplier
    assert "4,000" in html  # events replayed
    assert "bid-adjustments" in html and "churn-alerts" in html and "dead letters" in html


def test_user_ids_from_input_files_are_escaped() -> None:
    tally = Tally()
    evil = '<script>alert("x")</script>'
    tally.add("churn", orjson.dumps(churn(evil, p=0.9).to_dict()))
    html = render_dashboard(tally, _summary(tally))
    assert evil not in html
    assert "&lt;script&gt;" in html


def test_empty_run_still_renders() -> None:
    html = render_dashboard(Tally(), _summary(Tally()))
    assert len(_svgs(html)) == 3
    assert "no samples" in html and "no data" in html


def test_long_runs_are_thinned_keeping_the_ends() -> None:
    samples = [Sample(float(i), i, {}) for i in range(10_000)]
    kept = thin(samples, 100)
    assert len(kept) == 100
    assert kept[0] is samples[0] and kept[-1] is samples[-1]
    assert thin(samples[:5], 100) == samples[:5]
    polyline = ET.fromstring(timeline_svg(samples)).find(f"{SVG}polyline")
    assert polyline is not None
    assert len(polyline.get("points", "").split()) <= 400


def test_histogram_bars_scale_to_the_axis() -> None:
    svg = ET.fromstring(histogram_svg([0, 5, 10], 0.0, 1.0, color="#000", x_title="x", title="t"))
    bars = [r for r in svg.findall(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    heights = [float(r.get("height", "nan")) for r in bars]
    assert heights[0] == 0.0 and heights[2] == 2 * heights[1] > 0


def test_the_online_evaluation_panel_lists_each_evaluated_window_end() -> None:
    """A run whose replay passed two window ends' horizons: one row each, figures as the
    model-quality records say; a run that passed none says why there is nothing."""
    from ops.dashboard import quality_section

    tally = Tally()
    assert "nothing to evaluate yet" in quality_section(tally)
    for end, auc in ((1_704_672_000_000, 0.8123), (1_705_276_800_000, 0.7988)):
        record = {
            "window_end": "2024-01-08T00:00:00.000Z" if auc > 0.8 else "2024-01-15T00:00:00.000Z",
            "window_end_ms": end,
            "model_version": "m-abc",
            "population": 1750,
            "orders": {"mae": 0.61, "bias": -0.021},
            "churn": {"roc_auc": auc, "brier": 0.14},
        }
        tally.add("quality", orjson.dumps(record))
    html = quality_section(tally)
    assert html.count("<tr>") == 3  # header + two window ends
    assert "2024-01-08" in html and "0.812" in html and "-2.1%" in html and "1,750" in html
