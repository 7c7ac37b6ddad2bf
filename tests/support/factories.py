"""Signal and forecast builders for the subscriber, schema and demo tests (records as the
worker makes them)."""

from __future__ import annotations

from typing import Any

import numpy as np

from features.series_book import CategoryForecast
from features.signals import ChurnSignal, DemandSignal, RiskThresholds

T0 = 1_569_888_000_000  # 2019-10-01T00:00:00Z
WEEK_MS = 7 * 86_400_000
THRESHOLDS = RiskThresholds(medium=0.5, high=0.85)


def demand(
    user: str = "u1",
    *,
    window: int = 0,
    orders: float = 0.56,
    horizon_days: float = 28.0,
    model: str = "m-a",
    trigger: Any = "window_close",
    emitted: int | None = None,
    window_end_ms: int | None = None,
    mean: float | None = None,
) -> DemandSignal:
    """A demand signal for window ``window`` (weeks after T0); ``orders`` over ``horizon_days``
    (``mean``: the model's mean beside a served quantile)."""
    end = T0 + window * WEEK_MS if window_end_ms is None else window_end_ms
    return DemandSignal.create(
        user_id=user,
        window_end_ms=end,
        horizon_windows=4,
        horizon_days=horizon_days,
        expected_orders=orders,
        expected_spend=orders * 40.0,
        purchase_probability=min(1.0, orders / (1.0 + orders)),
        trigger=trigger,
        model_version=model,
        emitted_at_ms=end + 1_000 if emitted is None else emitted,
        mean_orders=mean,
    )


def churn(
    user: str = "u1",
    *,
    window: int = 0,
    p: float = 0.2,
    model: str = "m-a",
    trigger: Any = "window_close",
    emitted: int | None = None,
    thresholds: RiskThresholds = THRESHOLDS,
    days: float | None = 3.0,
) -> ChurnSignal:
    """A churn signal with risk level from ``thresholds`` (high at p >= 0.85 by default)."""
    end = T0 + window * WEEK_MS
    return ChurnSignal.create(
        user_id=user,
        window_end_ms=end,
        churn_probability=p,
        thresholds=thresholds,
        days_since_last_order=days,
        trigger=trigger,
        model_version=model,
        emitted_at_ms=end + 1_000 if emitted is None else emitted,
    )


def category_forecast(
    series: str = "851",
    *,
    end_ms: int = T0,
    p90: float = 20.0,
    version: str = "d-1",
    level: str = "family:3",
    horizon: int = 13,
) -> CategoryForecast:
    """A ``category-demand`` forecast: every weekly window's units at P10/P50/P90 = 0.5, 0.8
    and 1 times ``p90``, revenue twice to thrice that; scale 0.8 x ``p90`` (0: nothing sold)."""
    quantiles = np.tile([[0.5 * p90, 0.8 * p90, p90], [p90, 2 * p90, 3 * p90]], (horizon, 1, 1))
    return CategoryForecast(
        series=series,
        level=level,
        window_end_ms=end_ms,
        window_ms=WEEK_MS,
        model_version=version,
        quantiles=quantiles,
        scale=(0.8 * p90, 1.6 * p90),
        emitted_at_ms=end_ms + 1,
    )
