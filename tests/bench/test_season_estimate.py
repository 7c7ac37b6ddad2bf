"""``bench.season_estimate``'s simulation: its shops are what it says, and its rules read the
same fits (a few dozen shops, no assertion on which rule wins: that is the bench's figure)."""

from __future__ import annotations

import numpy as np
import pytest

from bench import season_estimate as se
from features.season import SeasonIndex


def test_no_index_is_a_multiplier_of_one_at_every_start_week() -> None:
    assert np.array_equal(se.horizon_multipliers(None), np.ones(52))
    peak = se.horizon_multipliers(SeasonIndex((0.2, 0.1, 0.0, 0.0), (0.0,) * 4))
    assert peak.shape == (52,) and peak.max() > 1.1 and peak.min() < 0.95
    assert float(np.mean(peak)) == pytest.approx(1.0, abs=0.01)  # the year averages out


def test_a_strong_season_at_a_thousand_order_days_a_week_is_sized_within_two_percent() -> None:
    found, worst = se.errors(0.2, 1000.0, shops=20, seed=3)
    assert set(found) == set(worst) == set(se.RULES)
    for name, error in found.items():
        assert error < 0.02, name
        assert 0.0 <= worst[name] <= 1.0, name


def test_shops_without_a_season_are_mostly_left_alone() -> None:
    found, worst = se.errors(0.0, 100.0, shops=40, seed=3)
    assert all(error < 0.02 for error in found.values())
    # The rules only differ in what they keep: 1 % keeps the least of a false season, the
    # shrinkage without a test the most.
    assert found["test at 1 %"] <= found["test at 5 %"] <= found["James-Stein alone"]
    assert worst["test at 1 %"] <= worst["test at 10 % + James-Stein"] <= worst["James-Stein alone"]


@pytest.mark.parametrize("season", list(se.SEASONS))
def test_the_true_horizons_of_each_simulated_season_average_to_one(season: str) -> None:
    truth, year_mean = se._true_horizons(se.SEASONS[season], phase=1.0)
    assert truth.shape == (52,)
    assert float(np.mean(truth)) == pytest.approx(1.0, abs=0.01)
    if season == "one month +30 %":
        # A quarter holding the whole month: 30 % of one month over three, on a year whose
        # mean the month lifts by 2.5 %.
        assert year_mean == pytest.approx(1.025, abs=0.001)
        assert float(truth.max()) == pytest.approx((1.0 + 0.3 / 3) / 1.025, abs=0.01)


def test_with_a_year_and_a_quarter_both_history_rules_read_the_same_fit() -> None:
    """65 weeks hold one year after the burn-in: the wider fit has nothing more to read."""
    found = se.history_errors("one month +30 %", 200.0, weeks=65, shops=10, seed=2)
    assert found[1] == found[se.WIDER_YEARS]
