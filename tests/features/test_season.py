"""The shop's calendar (features.season) and BG/NBD's per-row horizons: a wholesaler whose
customers buy 60 % more in October-November, a shop without a season, customers who joined in
the peak, in the lull and long ago; manifests written before the calendar existed, and before
the calendar's churn rule."""

from __future__ import annotations

import numpy as np
import pytest

from features.clv import BgNbdParams, bgnbd_expected, bgnbd_p_zero, prior_features
from features.season import SeasonIndex, angle_of, horizon_multiplier, horizon_season
from features.summary import I_LOG_EXPECTED, I_LOGIT_P_ZERO, PriorSpec, summarize
from features.windows import (
    DAY_MS,
    FEATURE_INDEX,
    I_DAYS_SINCE_FIRST_ORDER,
    I_DAYS_SINCE_LAST_ORDER,
    I_ORDER_DAYS_TOTAL,
    N_FEATURES,
    YEAR_DAYS,
    WindowSpec,
)

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


def _customers(window_start_ms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Raw one-window sequences of 400 customers of every kind at one close (one-off buyers of
    last week and of two years ago, regulars of every tenure, users who never ordered), and
    their BG/NBD (x, t_x, T) in weeks."""
    rng = np.random.default_rng(7)
    n = 400
    age_days = rng.integers(0, 730, n).astype(np.float64)
    since_last = np.floor(age_days * rng.uniform(0.0, 1.0, n))
    order_days = 1.0 + rng.poisson(age_days / 40.0)
    order_days[since_last == age_days] = 1.0
    order_days[:20] = 0.0
    v = _last_vectors(window_start_ms, n)
    v[:, I_ORDER_DAYS_TOTAL] = order_days
    v[:, I_DAYS_SINCE_FIRST_ORDER] = np.where(order_days > 0, age_days, 0.0)
    v[:, I_DAYS_SINCE_LAST_ORDER] = np.where(order_days > 0, since_last, 0.0)
    x = np.maximum(order_days - 1.0, 0.0)
    T = np.where(order_days > 0, age_days / 7.0, 0.0)
    t_x = np.where(x > 0, (age_days - since_last) / 7.0, 0.0)
    return v[:, None, :], x, t_x, T


def test_the_calendar_moves_the_churn_level_and_keeps_the_priors_ranking() -> None:
    """Scored on 2023-09-04 for a horizon over the October-November peak: each customer's
    expected count reads the tenure-aware horizon; P(no order) is the prior's over the plain
    horizon raised to the horizon's season, lower for everyone by the peak, in the same order
    as BG/NBD's own (ties included), so a model that adds nothing to the prior ranks churn as
    BG/NBD does. A manifest of the rule before ("tenure") reads P(no order) over the stretched
    horizon, as it was trained."""
    index = _peak_index()
    raw, x, t_x, T = _customers(SPEC.start_ms(-1))
    prior = PriorSpec(CDNOW, 13.0, 50.0, index)
    out = summarize(raw, prior, SPEC).astype(np.float64)
    weeks = 13.0 * horizon_multiplier(index, raw[:, -1], T, CDNOW.alpha, SPEC)
    stretched = prior_features(CDNOW, x, t_x, T, np.ones(len(x), bool), weeks)
    np.testing.assert_array_equal(out[:, I_LOG_EXPECTED], stretched[:, 0])

    plain = bgnbd_p_zero(CDNOW, x, t_x, T, 13.0)
    p_zero = 1.0 / (1.0 + np.exp(-out[:, I_LOGIT_P_ZERO]))
    m = horizon_season(index, raw[:, -1], SPEC)
    assert np.all(m == m[0]) and 1.2 < m[0] < 1.5
    np.testing.assert_allclose(p_zero, plain ** m[0], rtol=1e-5, atol=1e-6)
    assert np.all(p_zero <= plain + 1e-6) and p_zero.mean() < plain.mean() - 0.02
    # The same order, pair by pair, wherever BG/NBD tells two customers apart.
    i, j = np.triu_indices(len(plain), 1)
    apart = np.abs(plain[i] - plain[j]) > 1e-4
    assert np.array_equal(
        np.sign(plain[i] - plain[j])[apart], np.sign(p_zero[i] - p_zero[j])[apart]
    )

    before = PriorSpec.from_dict({**prior.to_dict(), "p_zero_season": "tenure"})
    old = summarize(raw, before, SPEC)
    np.testing.assert_array_equal(old, np.nan_to_num(old))
    np.testing.assert_array_equal(old[:, I_LOGIT_P_ZERO], stretched[:, 2])
    no_calendar = summarize(raw, PriorSpec(CDNOW, 13.0, 50.0), SPEC)
    logit_plain = prior_features(CDNOW, x, t_x, T, np.ones(len(x), bool), 13.0)[:, 2]
    np.testing.assert_array_equal(no_calendar[:, I_LOGIT_P_ZERO], logit_plain)


def test_manifests_name_the_churn_rule_and_older_ones_read_as_trained() -> None:
    prior = PriorSpec(CDNOW, 13.0, 50.0, _peak_index())
    assert prior.to_dict()["p_zero_season"] == "power"
    assert PriorSpec.from_dict(prior.to_dict()) == prior
    written_before = prior.to_dict()
    del written_before["p_zero_season"]
    assert PriorSpec.from_dict(written_before).p_zero_season == "tenure"
    with pytest.raises(ValueError, match="p_zero_season 'weekly'"):
        PriorSpec.from_dict({**prior.to_dict(), "p_zero_season": "weekly"})


def test_a_power_of_p_zero_is_the_no_order_of_a_longer_poisson_horizon() -> None:
    """An always-alive customer (BG/NBD with no drop-out): P(no order) over m x 13 weeks is
    P(no order) over 13 weeks to the power m for a known rate; under the gamma posterior it is
    close, and exact at m = 1."""
    no_dropout = BgNbdParams(r=1.0, alpha=4.0, a=1e-9, b=1e3)
    x, t_x, T = np.array([0.0, 3.0, 10.0]), np.array([0.0, 8.0, 50.0]), np.array([5.0, 9.0, 52.0])
    ones = np.ones(3, bool)
    f1 = prior_features(no_dropout, x, t_x, T, ones, 13.0, zero_horizon=13.0, zero_power=1.0)
    np.testing.assert_array_equal(f1, prior_features(no_dropout, x, t_x, T, ones, 13.0))
    f = prior_features(no_dropout, x, t_x, T, ones, 13.0, zero_power=1.3)
    p13 = bgnbd_p_zero(no_dropout, x, t_x, T, 13.0)
    np.testing.assert_allclose(1.0 / (1.0 + np.exp(-f[:, 2])), p13**1.3, rtol=1e-5)
    p_longer = bgnbd_p_zero(no_dropout, x, t_x, T, 13.0 * 1.3)
    np.testing.assert_allclose(p13**1.3, p_longer, rtol=0.25)


@pytest.mark.parametrize(
    "cos,sin", [((), ()), ((0.1,), (0.1, 0.2)), ((float("nan"),), (0.0,))], ids=str
)
def test_a_malformed_index_is_refused(cos: tuple[float, ...], sin: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        SeasonIndex(cos, sin)
