"""The shop's calendar (features.season) and BG/NBD's per-row horizons: a wholesaler whose
customers buy 60 % more in October-November, a shop without a season, customers who joined in
the peak, in the lull and long ago; manifests written before the calendar existed."""

from __future__ import annotations

import numpy as np
import pytest

from features.clv import BgNbdParams, bgnbd_expected, bgnbd_p_zero, prior_features
from features.season import SeasonIndex, angle_of, horizon_multiplier
from features.summary import PriorSpec
from features.windows import DAY_MS, FEATURE_INDEX, N_FEATURES, YEAR_DAYS, WindowSpec

CDNOW = BgNbdParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
WEEK_MS = 7 * DAY_MS
# Weekly windows, a 13-week horizon, origin on a Monday (2023-09-04).
SPEC = WindowSpec(WEEK_MS, 1_693_785_600_000, 26, 13, 26)


def _peak_index() -> SeasonIndex:
    """A Fourier fit of "x1.6 from October to November, 1 otherwise" (8 harmonics)."""
    theta = np.linspace(0.0, 2.0 * np.pi, 2000, endpoint=False)
    days = theta / (2.0 * np.pi) * YEAR_DAYS
    # Day 0 of the angle is the epoch's anniversary (1 January): October-November ~ days 273-334.
    log_m = np.where((days >= 273) & (days < 334), np.log(1.6), 0.0)
    cos = tuple(float(2 * np.mean(log_m * np.cos(k * theta))) for k in range(1, 9))
    sin = tuple(float(2 * np.mean(log_m * np.sin(k * theta))) for k in range(1, 9))
    return SeasonIndex(cos, sin)


def _last_vectors(window_start_ms: int, n: int) -> np.ndarray:
    v = np.zeros((n, N_FEATURES), dtype=np.float32)
    angle = angle_of(window_start_ms)
    v[:, FEATURE_INDEX["season_sin"]] = np.sin(angle)
    v[:, FEATURE_INDEX["season_cos"]] = np.cos(angle)
    return v


def test_per_row_horizons_equal_one_call_per_row() -> None:
    x = np.array([0.0, 2.0, 7.0, 1.0])
    t_x = np.array([0.0, 30.4, 40.0, 3.0])
    T = np.array([10.0, 38.9, 41.0, 12.0])
    t = np.array([39.0, 13.0, 0.0, 20.5])
    e = bgnbd_expected(CDNOW, x, t_x, T, t)
    pz = bgnbd_p_zero(CDNOW, x, t_x, T, t)
    f = prior_features(CDNOW, x, t_x, T, np.ones(4, bool), t)
    for i in range(4):
        assert e[i] == pytest.approx(float(bgnbd_expected(CDNOW, x[i], t_x[i], T[i], t[i])))
        assert pz[i] == pytest.approx(float(bgnbd_p_zero(CDNOW, x[i], t_x[i], T[i], t[i])))
        one = prior_features(CDNOW, x[i : i + 1], t_x[i : i + 1], T[i : i + 1], [True], t[i])
        np.testing.assert_array_equal(f[i], one[0])
    assert e[2] == 0.0 and pz[2] == 1.0  # a horizon of no time: nothing bought


def test_the_index_averages_one_over_a_year_and_integrates_whole_years_exactly() -> None:
    index = _peak_index()
    assert index.mean_over(2.0, 2.0 * np.pi) == pytest.approx(1.0, abs=1e-9)
    assert index.mean_over(5.0, 6.0 * np.pi) == pytest.approx(1.0, abs=1e-9)
    assert index.mean_over(1.0, 0.0) == 1.0
    day = 2.0 * np.pi / YEAR_DAYS
    october = index.mean_over(day * 334, day * 61)
    spring = index.mean_over(day * 150, day * 61)
    assert october / spring == pytest.approx(1.6, rel=0.05)


def test_a_shop_without_an_index_or_with_a_flat_one_keeps_the_year_round_horizon() -> None:
    v = _last_vectors(SPEC.start_ms(-1), 3)
    age = np.array([0.0, 10.0, 200.0])
    np.testing.assert_array_equal(horizon_multiplier(None, v, age, 4.0, SPEC), np.ones(3))
    flat = SeasonIndex((0.0,), (0.0,))
    np.testing.assert_allclose(horizon_multiplier(flat, v, age, 4.0, SPEC), 1.0, atol=1e-12)


def test_a_horizon_over_the_peak_grows_most_for_customers_who_joined_in_the_lull() -> None:
    """Scored on 2023-09-04 for September-November: a customer of two years (both seasons in
    their rate) and one who never ordered (the population's year-round prior) get the peak
    against the year's mean; one who joined this spring, whose rate holds no peak, gets more;
    a horizon over the summer gets less than 1."""
    index = _peak_index()
    alpha = 4.0
    v = _last_vectors(SPEC.start_ms(-1), 3)
    old, spring_joiner, new = horizon_multiplier(
        index, v, np.array([104.0, 20.0, 0.0]), alpha, SPEC
    )
    assert 1.2 < old < spring_joiner < 1.5
    assert new == pytest.approx(old, rel=0.01)
    summer = horizon_multiplier(index, _last_vectors(SPEC.start_ms(-20), 1), [104.0], alpha, SPEC)
    assert summer[0] < 1.0


def test_prior_spec_carries_the_index_and_reads_manifests_without_one() -> None:
    prior = PriorSpec(CDNOW, 13.0, 50.0, _peak_index())
    again = PriorSpec.from_dict(prior.to_dict())
    assert again == prior
    old = prior.to_dict()
    del old["season"]
    assert PriorSpec.from_dict(old).season is None


@pytest.mark.parametrize(
    "cos,sin", [((), ()), ((0.1,), (0.1, 0.2)), ((float("nan"),), (0.0,))], ids=str
)
def test_a_malformed_index_is_refused(cos: tuple[float, ...], sin: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        SeasonIndex(cos, sin)
