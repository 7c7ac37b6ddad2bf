"""Inventory demand offline: the series panel of a history, and how forecasts of it are scored.

Owns :func:`series_codes` (a canonical frame's series per event, by the rule of
:func:`features.demand.series_key`, vectorised), :class:`SeriesPanel` and :func:`series_panel`
(the dense ``[series, windows, aggregates]`` history on the user model's window grid, from
:func:`features.demand.series_windows`), and the metrics of issue 17's evaluation: WAPE, MAE and
bias of the median, the P10-P90 interval's coverage and the pinball loss (:func:`score_quantiles`).

Nothing here defines an aggregate: :mod:`features.demand` does, for this path and the worker's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pandas as pd

from features.demand import DEMAND_QUANTILES, SERIES_AGGREGATES, SeriesLevel, series_windows
from features.events import EVENT_TYPE_CODES
from features.windows import WindowSpec

QUANTILES: Final = DEMAND_QUANTILES
"""The forecast's quantiles: P10, P50, P90 (an 80 % interval around the median)."""


def series_codes(events: pd.DataFrame, level: SeriesLevel) -> tuple[np.ndarray, np.ndarray]:
    """Each event's series code (``-1``: none) and the series names by code, in order of first
    appearance. The same keys as :func:`features.demand.series_key`, row for row."""
    column = "category" if level.field == "category" else "product_id"
    if column not in events.columns:
        return np.full(len(events), -1, dtype=np.int64), np.asarray([], dtype=object)
    # Python's own str.strip (not pyarrow's trim), as series_key strips.
    text = events[column].astype("string[python]").str.strip()
    text = text.mask(text == "")
    if level.prefix is not None:
        text = text.str.slice(0, level.prefix)
    codes, names = pd.factorize(text, use_na_sentinel=True)
    return codes.astype(np.int64), np.asarray(names, dtype=object)


@dataclass(frozen=True)
class SeriesPanel:
    """Windows ``first .. first + W - 1`` of every series: ``cells`` ``[series, W, 4]`` and the
    shop's ``totals`` ``[W, 4]`` (:data:`features.demand.SERIES_AGGREGATES` order)."""

    level: SeriesLevel
    spec: WindowSpec
    first: int
    names: np.ndarray
    cells: np.ndarray
    totals: np.ndarray

    @property
    def n_windows(self) -> int:
        return int(self.totals.shape[0])

    def column(self, window: int) -> int:
        """The column of window index ``window``."""
        return window - self.first

    def subset(self, series: np.ndarray) -> SeriesPanel:
        """The panel of these series only (same windows, same shop totals)."""
        return SeriesPanel(
            self.level,
            self.spec,
            self.first,
            self.names[series],
            self.cells[series],
            self.totals,
        )

    def aggregate(self, name: str) -> np.ndarray:
        """``[series, W]`` of one aggregate."""
        return self.cells[:, :, SERIES_AGGREGATES.index(name)]


def series_panel(
    events: pd.DataFrame, spec: WindowSpec, level: SeriesLevel, first: int, last: int
) -> SeriesPanel:
    """The panel of windows ``first .. last`` of a canonical frame in arrival order (sums run
    in that order, as the worker adds); events outside the windows are not counted."""
    if last < first:
        raise ValueError(f"empty window range {first}..{last}")
    codes, names = series_codes(events, level)
    time_ms = events["event_time_ms"].to_numpy(dtype=np.int64)
    column = (time_ms - spec.origin_ms) // spec.length_ms - first
    kinds = events["event_type"].map(EVENT_TYPE_CODES)
    if kinds.isna().any():
        unknown = sorted(events["event_type"][kinds.isna()].unique())
        raise ValueError(f"unknown event types: {unknown}")
    cells, totals = series_windows(
        codes,
        column,
        kinds.to_numpy(dtype=np.int64),
        events["quantity"].to_numpy(dtype=np.int64),
        events["price"].to_numpy(dtype=np.float64, na_value=np.nan),
        len(names),
        last - first + 1,
    )
    return SeriesPanel(level, spec, first, names, cells, totals)


def score_quantiles(actual: np.ndarray, forecast: np.ndarray) -> dict[str, Any]:
    """Issue 17's scores of quantile forecasts ``forecast`` ``[..., 3]`` (:data:`QUANTILES`)
    against ``actual`` ``[...]``, pooled over every series and horizon window given:

    * ``wape``: sum |actual - P50| / sum actual (``None`` when nothing sold);
    * ``mae``: mean |actual - P50|;
    * ``bias``: sum (P50 - actual) / sum actual (``None`` when nothing sold);
    * ``coverage``: share of actuals within [P10, P90], ends included (target 0.8);
    * ``pinball``: the mean pinball loss over the three quantiles.
    """
    actual = np.asarray(actual, dtype=np.float64)
    forecast = np.asarray(forecast, dtype=np.float64)
    if forecast.shape != (*actual.shape, len(QUANTILES)):
        raise ValueError(f"forecast {forecast.shape} for actuals {actual.shape}")
    p10, p50, p90 = (forecast[..., i] for i in range(len(QUANTILES)))
    total = float(actual.sum())
    error = np.abs(actual - p50)
    levels = np.asarray(QUANTILES)
    gap = actual[..., None] - forecast
    pinball = np.maximum(levels * gap, (levels - 1.0) * gap)
    return {
        "wape": float(error.sum()) / total if total > 0 else None,
        "mae": float(error.mean()),
        "bias": float((p50 - actual).sum()) / total if total > 0 else None,
        "coverage": float(((actual >= p10) & (actual <= p90)).mean()),
        "pinball": float(pinball.mean()),
        "cells": int(actual.size),
    }
