"""The calendar's estimate (training.season): last year's one-step ratios of a wholesaler with
a Christmas quarter, of a shop without a season, of a growing shop, and histories too short or
windows too long to show a year."""

from __future__ import annotations

import numpy as np
import pytest

from features.season import angle_of
from features.windows import DAY_MS, YEAR_DAYS
from training.season import SeasonRatios, fit_season_index

WEEK_MS = 7 * DAY_MS
START_MS = 1_641_168_000_000  # 2022-01-03


def _ratios(
    weeks: int,
    multiplier: np.ndarray | None,
    seed: int,
    expected: float = 400.0,
    trend: float = 0.0,
) -> SeasonRatios:
    rng = np.random.default_rng(seed)
    middle = START_MS + WEEK_MS * np.arange(weeks) + WEEK_MS // 2
    e = np.full(weeks, expected)
    m = np.ones(weeks) if multiplier is None else multiplier(middle)
    growth = np.exp(trend * np.arange(weeks) / 52.0)
    return SeasonRatios(rng.poisson(e * m * growth).astype(float), e, middle)


def _oct_nov(middle_ms: np.ndarray) -> np.ndarray:
    day = angle_of(middle_ms) / (2 * np.pi) * YEAR_DAYS
    return np.where((day >= 273) & (day < 334), 1.6, 1.0)


def test_a_christmas_quarter_is_found_and_sized() -> None:
    index, why = fit_season_index(_ratios(86, _oct_nov, seed=1), 7.0, burn_in=13)
    assert index is not None, why
    day = 2 * np.pi / YEAR_DAYS
    peak = index.mean_over(day * 334, day * 61)
    rest = index.mean_over(day * 273, day * 273)
    assert peak / rest == pytest.approx(1.6, rel=0.1)


@pytest.mark.parametrize("seed", range(5))
def test_a_shop_without_a_season_gets_no_index(seed: int) -> None:
    index, why = fit_season_index(_ratios(86, None, seed=seed), 7.0, burn_in=13)
    assert index is None and why.startswith("no season")


def test_a_customer_base_model_drifting_over_the_year_is_not_a_season() -> None:
    index, _ = fit_season_index(_ratios(86, None, seed=3, trend=0.4), 7.0, burn_in=13)
    assert index is None


def test_less_than_a_year_after_the_first_customers_gives_no_index() -> None:
    """Online Retail's shape: 40 weeks before the cutoff."""
    index, why = fit_season_index(_ratios(40, _oct_nov, seed=1), 7.0, burn_in=13)
    assert index is None and "needs a year" in why


def test_monthly_windows_are_too_coarse_for_an_index() -> None:
    index, why = fit_season_index(_ratios(40, _oct_nov, seed=1), 30.0, burn_in=3)
    assert index is None and "per year" in why
