"""BG/NBD expressions in features.clv: published CDNOW values, hyp2f1 against scipy, P(no
purchase) and expectations against simulated customers, and finite outputs on degenerate input."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import features.clv as clv
from features.clv import (
    LOGIT_CLIP,
    PRIOR_FEATURE_NAMES,
    BgNbdParams,
    bgnbd_expected,
    bgnbd_p_alive,
    bgnbd_p_zero,
    hyp2f1,
    prior_features,
)
from tests.support.clv_checks import assert_odd_customers_are_finite
from tests.support.clv_simulate import simulate_bgnbd

CDNOW = BgNbdParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
"""Fader, Hardie & Lee (2005), Table/section 5: BG/NBD fitted to CDNOW's 2,357 customers, weeks."""
CDNOW_4DP = BgNbdParams(r=0.2426, alpha=4.4136, a=0.7929, b=2.4259)
"""The same MLE to four decimals (as lifetimes and BTYD print it); the Excel-sheet aggregate
expectations below were computed at full precision, so three-decimal parameters miss them by
~3e-3 at 78 weeks."""


# --- published values ---------------------------------------------------------------------------


def test_cdnow_worked_example_customer_expects_1_226_purchases_in_39_weeks() -> None:
    # FHL 2005's worked example (also lifetimes' test against Hardie's Excel sheet): x = 2,
    # t_x = 30.43, T = 38.86 weeks -> 1.226 expected purchases in weeks 39-78.
    got = bgnbd_expected(CDNOW, 2, 30.43, 38.86, 39.0)
    assert abs(float(got[()]) - 1.226) < 1e-3


def test_cdnow_new_customer_expectation_matches_hardie_excel_sheet() -> None:
    # E[X(t)] for a just-acquired customer is the conditional expectation at x = t_x = T = 0;
    # the values are those of Hardie's BG/NBD spreadsheet (lifetimes' test_estimation.py).
    times = [0.1429, 1.0, 3.0, 31.8571, 32.0, 78.0]
    expected = [0.0078, 0.0532, 0.1506, 1.0405, 1.0437, 1.8576]
    got = [float(bgnbd_expected(CDNOW_4DP, 0, 0, 0, t)[()]) for t in times]
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_p_alive_is_one_without_repeat_purchases_and_a_probability_otherwise() -> None:
    x, t_x = np.meshgrid(np.arange(0, 100, 10.0), np.arange(0, 100, 10.0))
    T = np.full_like(x, 100.0)
    pa = bgnbd_p_alive(CDNOW, x, t_x, T)
    assert np.all(pa[x == 0] == 1.0)
    assert np.all((pa >= 0.0) & (pa <= 1.0))
    # More recent last purchase -> more likely alive, for the same frequency.
    assert np.all(np.diff(pa[:, 1:], axis=0) >= 0.0)


def test_p_alive_matches_the_closed_form() -> None:
    x, t_x, T = 6.0, 30.43, 38.86
    p = CDNOW
    direct = 1.0 / (1.0 + p.a / (p.b + x - 1.0) * ((p.alpha + T) / (p.alpha + t_x)) ** (p.r + x))
    assert float(bgnbd_p_alive(p, x, t_x, T)[()]) == pytest.approx(direct, rel=1e-12)


def test_params_round_trip_and_reject_non_positive_values() -> None:
    assert BgNbdParams.from_dict(CDNOW.to_dict()) == CDNOW
    with pytest.raises(ValueError):
        BgNbdParams(r=0.0, alpha=1.0, a=1.0, b=1.0)
    with pytest.raises(ValueError):
        BgNbdParams(r=1.0, alpha=math.inf, a=1.0, b=1.0)
    with pytest.raises(ValueError):
        BgNbdParams.from_dict({"r": "1", "alpha": 1.0, "a": 1.0, "b": 1.0})


# --- hyp2f1 -------------------------------------------------------------------------------------


def test_hyp2f1_matches_scipy_over_a_grid() -> None:
    special = pytest.importorskip("scipy.special")
    grid_ab = [0.1, 0.5, 1.3, 4.2, 11.0]
    grid_c = [0.3, 1.7, 6.5, 20.0]
    grid_z = [0.0, 0.1, 0.5, 0.9, 0.97]
    a, b, c, z = np.array(np.meshgrid(grid_ab, grid_ab, grid_c, grid_z, indexing="ij")).reshape(
        4, -1
    )
    np.testing.assert_allclose(hyp2f1(a, b, c, z), special.hyp2f1(a, b, c, z), rtol=1e-10)


def test_hyp2f1_agrees_with_a_brute_force_sum_where_scipy_is_off() -> None:
    # scipy 1.17's hyp2f1 returns 1.286e8 here; every term of the series is positive and a direct
    # log-gamma sum over 3,000 terms gives 266,336.35 (the value this module returns).
    special = pytest.importorskip("scipy.special")
    a, b, c, z = 0.2013802626441295, 48.97570607497802, 25.10208283871671, 0.8311698767943586
    k = np.arange(3000.0)
    log_terms = (
        special.gammaln(a + k)
        - special.gammaln(a)
        + special.gammaln(b + k)
        - special.gammaln(b)
        - special.gammaln(c + k)
        + special.gammaln(c)
        - special.gammaln(k + 1)
        + k * math.log(z)
    )
    brute = float(np.exp(log_terms).sum())
    assert float(hyp2f1(a, b, c, z)[()]) == pytest.approx(brute, rel=1e-12)


def test_hyp2f1_is_finite_in_log_space_for_a_thousand_repeat_purchases() -> None:
    # 2F1(r + x, b + x; a + b + x - 1; 0.9) for x = 1000 is ~1e1000: only its log is finite.
    log_f = clv.log_hyp2f1(1000.2, 1002.4, 1002.2, 0.9)
    assert np.isfinite(log_f) and log_f > 700.0


def test_quadrature_and_series_agree_where_both_apply() -> None:
    rng = np.random.default_rng(3)
    for p in (CDNOW, BgNbdParams(2.0, 1.0, 3.0, 10.0), BgNbdParams(10.0, 2.0, 1.5, 100.0)):
        x = rng.integers(0, 50, 300).astype(np.float64)
        T = rng.uniform(0.0, 30.0, 300)
        t = 39.0
        keep = (t / (p.alpha + T + t) < clv.Z_QUADRATURE) & (p.a + p.b + x - 1.0 >= clv.C_MIN)
        x, T = x[keep], T[keep]
        series = clv._log_h(p, p.a, x, T, t)
        quad = clv._log_h_quadrature(p.a, p.b + x, p.r + x, t / (p.alpha + T))
        np.testing.assert_allclose(quad, series, rtol=0, atol=1e-9)


def test_expectation_is_continuous_through_a_equal_one() -> None:
    x = np.array([0.0, 1.0, 5.0, 40.0])
    t_x = np.array([0.0, 3.0, 20.0, 50.0])
    T = np.array([0.0, 10.0, 30.0, 52.0])
    values = np.array(
        [
            bgnbd_expected(BgNbdParams(0.5, 3.0, a, 2.0), x, t_x, T, 13.0)
            for a in (1.0 - 1e-3, 1.0 - 1e-7, 1.0, 1.0 + 1e-7, 1.0 + 1e-3)
        ]
    )
    assert np.all(np.isfinite(values))
    np.testing.assert_allclose(values[1:4], np.broadcast_to(values[2], (3, 4)), rtol=1e-6)
    # At a = 1 the 2F1 form is 0/0 and is interpolated; the integral over p has no singularity.
    p = BgNbdParams(0.5, 3.0, 1.0, 2.0)
    alive = bgnbd_p_alive(p, x, t_x, T)
    direct = np.exp(clv._log_h_quadrature(1.0, p.b + x, p.r + x, 13.0 / (p.alpha + T))) * alive
    np.testing.assert_allclose(values[2], direct, rtol=1e-8)
    # ±1e-3 in a moves the expectation by ~1e-3 relative, and the midpoint sits between.
    np.testing.assert_allclose(values[0], values[2], rtol=5e-3)
    np.testing.assert_allclose(values[4], values[2], rtol=5e-3)


# --- against simulated customers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("population", "params"),
    [
        ("CDNOW-like occasional music buyers", (0.243, 4.414, 0.793, 2.426)),
        ("weekly grocery shoppers", (4.0, 4.0, 0.3, 20.0)),
        ("fast churners", (1.0, 2.0, 3.0, 2.0)),
    ],
)
def test_p_zero_and_expectation_match_simulated_holdout(
    population: str, params: tuple[float, float, float, float]
) -> None:
    # P(no purchase) = (1 - PA) + PA ((alpha+T)/(alpha+T+t))^(r+x) is exact because a BG/NBD
    # customer can only drop out right after a purchase. Conditional predictions average to the
    # holdout truth over the population and over any group defined by the calibration summary.
    r, alpha, a, b = params
    p = BgNbdParams(r, alpha, a, b)
    sim = simulate_bgnbd(r, alpha, a, b, 60_000, seed=11, t=26.0)
    p0 = bgnbd_p_zero(p, sim.x, sim.t_x, sim.T, 26.0)
    e = bgnbd_expected(p, sim.x, sim.t_x, sim.T, 26.0)
    zero = (sim.future == 0).astype(np.float64)
    groups = {"x=0": sim.x == 0, "x=1-3": (sim.x >= 1) & (sim.x <= 3), "x>=4": sim.x >= 4}
    for name, g in groups.items():
        if g.sum() < 2000:
            continue
        se0 = math.sqrt(zero[g].var() / g.sum())
        assert abs(p0[g].mean() - zero[g].mean()) < 4 * se0 + 2e-3, (population, name)
        se = math.sqrt(sim.future[g].var() / g.sum())
        assert abs(e[g].mean() - sim.future[g].mean()) < 4 * se + 0.01 * e[g].mean(), (
            population,
            name,
        )


# --- prior_features -----------------------------------------------------------------------------


def test_prior_features_shape_names_and_never_ordered_rows() -> None:
    x = np.array([0.0, 2.0, 7.0, 3.0])
    t_x = np.array([0.0, 30.43, 40.0, 9.0])
    T = np.array([10.0, 38.86, 41.0, 12.0])
    ordered = np.array([True, True, True, False])
    f = prior_features(CDNOW, x, t_x, T, ordered, 39.0)
    assert f.dtype == np.float32 and f.shape == (4, len(PRIOR_FEATURE_NAMES))
    new = prior_features(CDNOW, [0.0], [0.0], [0.0], [True], 39.0)
    np.testing.assert_array_equal(f[3], new[0])
    e = bgnbd_expected(CDNOW, 2, 30.43, 38.86, 39.0)
    assert f[1, 0] == pytest.approx(math.log(float(e[()])), rel=1e-6)
    assert f[0, 1] == LOGIT_CLIP  # P(alive) = 1 with no repeat purchase
    pz = float(bgnbd_p_zero(CDNOW, 2, 30.43, 38.86, 39.0)[()])
    assert f[1, 2] == pytest.approx(math.log(pz / (1 - pz)), rel=1e-5)
    assert f[1, 3] == pytest.approx(math.log((CDNOW.r + 2) / (CDNOW.alpha + 38.86)), rel=1e-6)


# --- degenerate inputs --------------------------------------------------------------------------


EXTREME_PARAMS = {
    "CDNOW": CDNOW,
    "tiny alpha": BgNbdParams(0.243, 1e-9, 0.793, 2.426),
    "a exactly one": BgNbdParams(0.5, 3.0, 1.0, 2.0),
    "a + b below one": BgNbdParams(0.05, 0.3, 0.2, 0.5),
    "near-immortal heavy buyers": BgNbdParams(50.0, 0.01, 100.0, 0.01),
    "tiny r, a and alpha": BgNbdParams(0.01, 1e-6, 0.01, 1000.0),
    "huge alpha": BgNbdParams(0.5, 1e6, 0.8, 2.0),
}


@pytest.mark.parametrize("name", sorted(EXTREME_PARAMS))
def test_degenerate_customers_give_finite_outputs(name: str) -> None:
    assert_odd_customers_are_finite(
        name, EXTREME_PARAMS[name], bgnbd_expected, bgnbd_p_alive, bgnbd_p_zero
    )


def test_expectation_grows_with_horizon_for_a_just_acquired_customer_with_tiny_alpha() -> None:
    # z = t/(alpha + t) is within 1e-10 of 1: the series would stop at its cap; the quadrature
    # path must still give a sensible, increasing expectation.
    p = EXTREME_PARAMS["tiny alpha"]
    e = [float(bgnbd_expected(p, 0, 0, 0, t)[()]) for t in (1.0, 13.0, 39.0, 104.0)]
    assert all(0.0 < u < v for u, v in itertools.pairwise(e))


@pytest.mark.parametrize("abr", [(0.2, 0.5, 0.05), (0.3, 0.6, 0.4), (0.6, 0.35, 0.8)])
def test_one_time_buyers_when_a_plus_b_is_below_one_match_scipy(
    abr: tuple[float, float, float],
) -> None:
    # Early-origin fits on Online Retail land at a + b < 1: for x = 0 the 2F1's c = a + b - 1 is
    # negative, outside the positive series; those rows are integrated over p instead.
    special = pytest.importorskip("scipy.special")
    a, b, r = abr
    alpha, t = 2.0, 13.0
    T = np.array([0.0, 1.0, 5.0, 20.0, 80.0])
    c = a + b - 1.0
    z = t / (alpha + T + t)
    v = (alpha + T) / (alpha + T + t)
    ref = c / (a - 1.0) * (1.0 - v**r * special.hyp2f1(r, b, c, z))
    got = bgnbd_expected(BgNbdParams(r, alpha, a, b), np.zeros(5), np.zeros(5), T, t)
    np.testing.assert_allclose(got, ref, rtol=1e-8)


@pytest.mark.parametrize("name", ["CDNOW", "tiny alpha", "a + b below one"])
def test_a_large_population_is_evaluated_in_row_blocks_with_the_same_bits(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """5,000 customers of a shop's cutoff (many just acquired, so z near 1 and the quadrature;
    repeat buyers on the series; one in six of them the same just-acquired row), evaluated row by
    row at once, once per distinct row, and in blocks of 7 rows: the same bits, so bounding
    the work arrays' memory and skipping repeated rows change no feature."""
    rng = np.random.default_rng(11)
    n = 5_000
    T = rng.uniform(0.0, 52.0, n) * (rng.random(n) > 0.3)
    x = np.floor(rng.gamma(0.6, 3.0, n))
    t_x = np.where(x > 0, T * rng.random(n), 0.0)
    ordered = rng.random(n) > 0.1
    params = EXTREME_PARAMS[name]
    assert np.sum((x == 0) & (T == 0)) > 500
    monkeypatch.setattr(clv, "ROWS_AT_ONCE", 10**9)
    whole = prior_features(params, x, t_x, T, ordered, 13.0)
    for at_once in (2048, 7):
        monkeypatch.setattr(clv, "ROWS_AT_ONCE", at_once)
        np.testing.assert_array_equal(prior_features(params, x, t_x, T, ordered, 13.0), whole)
    z = 13.0 / (params.alpha + T + 13.0)
    quad = (z > clv.Z_QUADRATURE) | (params.a + params.b + x - 1.0 < clv.C_MIN)
    assert quad.sum() > 100 or name == "CDNOW"  # both methods' rows are there
    assert (~quad).sum() > 100
