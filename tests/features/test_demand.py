"""Demand series: the batch panel and the event-by-event cells give the same sums.

Populations: a generated shop with categories (category level), Online Retail's order lines
(no categories: stock-code families, ``family:3``), REES46's clickstream sample (categories,
views and carts), and small hand-made shapes: returns, unknown prices, blank and absent keys.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.demand import (
    N_AGGREGATES,
    DemandManifest,
    SeriesCell,
    SeriesLevel,
    add_event,
    parse_level,
    series_key,
)
from features.events import ClickEvent
from features.windows import DAY_MS, WindowSpec
from ingest.adapters import read_events
from ingest.generator import generate_clickstream
from tests.support.events import events_from_frame
from training.demand import series_panel

WEEK = 7 * DAY_MS


def step_cells(
    events: Iterable[ClickEvent], spec: WindowSpec, level: SeriesLevel, first: int, last: int
) -> tuple[dict[tuple[str, int], SeriesCell], dict[int, SeriesCell]]:
    """The worker's way: each event folded into its (series, window) cell and its window's
    totals, one at a time."""
    cells: dict[tuple[str, int], SeriesCell] = {}
    totals: dict[int, SeriesCell] = {}
    for event in events:
        window = spec.index(event.event_time_ms)
        if not first <= window <= last:
            continue
        add_event(totals.setdefault(window, SeriesCell()), event)
        key = series_key(level, event.category, event.product_id)
        if key is not None:
            add_event(cells.setdefault((key, window), SeriesCell()), event)
    return cells, totals


def assert_paths_agree(frame: pd.DataFrame, spec: WindowSpec, level: SeriesLevel) -> int:
    """Batch panel == step cells, bit for bit; returns the number of non-empty cells."""
    first = spec.index(int(frame["event_time_ms"].min()))
    last = spec.index(int(frame["event_time_ms"].max()))
    panel = series_panel(frame, spec, level, first, last)
    cells, totals = step_cells(events_from_frame(frame), spec, level, first, last)
    expected = np.zeros_like(panel.cells)
    index = {name: i for i, name in enumerate(panel.names)}
    assert set(index) == {key for key, _ in cells}
    for (key, window), cell in cells.items():
        expected[index[key], window - first] = cell.values()
    np.testing.assert_array_equal(panel.cells, expected)
    expected_totals = np.zeros_like(panel.totals)
    for window, cell in totals.items():
        expected_totals[window - first] = cell.values()
    np.testing.assert_array_equal(panel.totals, expected_totals)
    return len(cells)


def test_levels_parse_and_refuse() -> None:
    assert parse_level("category") == SeriesLevel("category")
    assert parse_level("product") == SeriesLevel("product")
    assert parse_level("family:3") == SeriesLevel("product", 3)
    assert str(parse_level("family:3")) == "family:3"
    for bad in ("family", "family:0", "family:x", "brand", ""):
        with pytest.raises(ValueError, match="category, product, family:N"):
            parse_level(bad)


def test_keys_by_level() -> None:
    family = SeriesLevel("product", 3)
    assert series_key(SeriesLevel("category"), " toys ", "85123A") == "toys"
    assert series_key(SeriesLevel("category"), "  ", "85123A") is None
    assert series_key(SeriesLevel("category"), None, "85123A") is None
    assert series_key(SeriesLevel("product"), "toys", "85123A") == "85123A"
    assert series_key(family, None, " 85123A") == "851"
    assert series_key(family, None, "M") == "M"  # shorter than the family: itself


def test_a_generated_shop_by_category_agrees_step_by_step() -> None:
    frame = generate_clickstream(n_users=300, start="2024-01-01", days=70, seed=3)
    spec = WindowSpec(WEEK, int(pd.Timestamp("2024-01-01", tz="UTC").value // 10**6), 4, 2, 4)
    assert assert_paths_agree(frame, spec, SeriesLevel("category")) > 20


def test_returns_unknown_prices_and_keyless_events() -> None:
    """A return does not subtract units; an unknown price adds no revenue; an event without a
    category counts in the window's totals and in no series."""
    rows = [
        ("view", "a", 10.0, 1),
        ("cart", "a", 10.0, 1),
        ("purchase", "a", 10.0, 3),
        ("purchase", "a", None, 2),
        ("return", "a", 10.0, 3),
        ("view", None, 5.0, 1),
        ("purchase", " ", 5.0, 1),
    ]
    frame = pd.DataFrame(
        {
            "event_time_ms": [1_000 + i for i in range(len(rows))],
            "event_type": [r[0] for r in rows],
            "user_id": "u",
            "product_id": "p1",
            "category": [r[1] for r in rows],
            "price": [r[2] for r in rows],
            "quantity": [r[3] for r in rows],
            "session_id": None,
            "order_id": None,
        }
    )
    spec = WindowSpec(WEEK, 0, 1, 1, 1)
    assert assert_paths_agree(frame, spec, SeriesLevel("category")) == 1
    panel = series_panel(frame, spec, SeriesLevel("category"), 0, 0)
    assert panel.names.tolist() == ["a"]
    assert panel.cells[0, 0].tolist() == [5.0, 30.0, 1.0, 1.0]
    assert panel.totals[0].tolist() == [6.0, 35.0, 2.0, 1.0]
    assert panel.cells.shape[-1] == N_AGGREGATES


@pytest.mark.realdata
def test_online_retail_by_stock_code_family_agrees_step_by_step(shared_data: Path) -> None:
    """UCI Online Retail has no categories: its series are stock-code families (``family:3``)."""
    frame = read_events(shared_data / "online_retail.csv.gz", "transactions").events
    spec = WindowSpec(WEEK, int(pd.Timestamp("2011-09-05", tz="UTC").value // 10**6), 26, 13, 26)
    assert assert_paths_agree(frame, spec, parse_level("family:3")) > 1_000
    panel = series_panel(frame, spec, SeriesLevel("category"), -1, -1)
    assert len(panel.names) == 0 and panel.totals[0, 0] > 0  # no category: totals only


@pytest.mark.realdata
def test_rees46_by_category_agrees_step_by_step(shared_data: Path) -> None:
    """REES46's sample: categories (category_code, else category_id), views and carts."""
    frame = read_events(shared_data / "rees46_2019oct_head.csv", "rees46").events
    spec = WindowSpec(DAY_MS, int(pd.Timestamp("2019-10-01", tz="UTC").value // 10**6), 7, 1, 7)
    assert assert_paths_agree(frame, spec, SeriesLevel("category")) > 100


def test_a_demand_manifest_round_trips_and_names_what_does_not_match() -> None:
    manifest = DemandManifest(
        model_version="d-1",
        group="category",
        level="category",
        window_ms=WEEK,
        origin_ms=0,
        seq_len=8,
        horizon=13,
        interval_width=1.25,
        onnx_sha256="ab",
    )
    data = manifest.to_dict()
    assert DemandManifest.from_dict(data) == manifest
    renamed = {**data, "inputs": {**data["inputs"], "sequence": ["units", "spend"]}}
    with pytest.raises(ValueError, match="sequence inputs"):
        DemandManifest.from_dict(renamed)
    with pytest.raises(ValueError, match="format 2"):
        DemandManifest.from_dict({**data, "format": 2})
    with pytest.raises(ValueError, match="missing or malformed"):
        DemandManifest.from_dict({k: v for k, v in data.items() if k != "horizon"})
