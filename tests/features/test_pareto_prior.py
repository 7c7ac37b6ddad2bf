"""Pareto/NBD as the model's prior: its features, its manifest entry, and extreme customers.

The worker computes these with numpy alone (features.clv); training's fits use scipy. The
published CDNOW walkthrough values are checked in tests/training/test_clv.py through the same
functions (training.clv re-exports them).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from features.clv import (
    LOGIT_CLIP,
    PRIOR_FEATURE_NAMES,
    BgNbdParams,
    ParetoNbdParams,
    pareto_nbd_expected,
    pareto_nbd_p_alive,
    pareto_nbd_p_zero,
    prior_features,
)
from features.summary import PriorSpec, summarize
from features.windows import FEATURE_INDEX, N_FEATURES, WindowSpec
from tests.support.clv_checks import assert_odd_customers_are_finite

# Published fits to CDNOW (BTYD's walkthrough; Fader, Hardie & Lee 2005).
CDNOW_PN = ParetoNbdParams(r=0.5534, alpha=10.5802, s=0.6061, beta=11.6562)
CDNOW_BG = BgNbdParams(r=0.243, alpha=4.414, a=0.793, b=2.426)


def test_pareto_prior_features_are_its_expectation_p_alive_and_p_zero() -> None:
    x = np.array([0.0, 2.0, 26.0, 3.0])
    t_x = np.array([0.0, 30.43, 30.86, 9.0])
    T = np.array([10.0, 38.86, 31.0, 12.0])
    ordered = np.array([True, True, True, False])
    f = prior_features(CDNOW_PN, x, t_x, T, ordered, 13.0)
    assert f.dtype == np.float32 and f.shape == (4, len(PRIOR_FEATURE_NAMES))
    e = pareto_nbd_expected(CDNOW_PN, x[:3], t_x[:3], T[:3], 13.0)
    pa = pareto_nbd_p_alive(CDNOW_PN, x[:3], t_x[:3], T[:3])
    p0 = pareto_nbd_p_zero(CDNOW_PN, x[:3], t_x[:3], T[:3], 13.0)
    np.testing.assert_allclose(f[:3, 0], np.log(e), rtol=1e-6)
    np.testing.assert_allclose(f[1:3, 1], np.log(pa[1:] / (1 - pa[1:])), rtol=1e-5)
    np.testing.assert_allclose(f[:3, 2], np.log(p0 / (1 - p0)), rtol=1e-5)
    # Unlike BG/NBD, a Pareto/NBD customer without a repeat purchase can be dead.
    assert f[0, 1] < LOGIT_CLIP
    # A user who never ordered is scored as just acquired.
    np.testing.assert_array_equal(
        f[3], prior_features(CDNOW_PN, [0.0], [0.0], [0.0], [True], 13.0)[0]
    )


def test_a_frequent_recent_buyer_expects_more_and_churns_less_than_a_lapsed_one() -> None:
    # Two CDNOW customers with the same frequency: one bought last week, one 25 weeks ago.
    e = pareto_nbd_expected(CDNOW_PN, [5.0, 5.0], [30.0, 6.0], [31.0, 31.0], 13.0)
    p0 = pareto_nbd_p_zero(CDNOW_PN, [5.0, 5.0], [30.0, 6.0], [31.0, 31.0], 13.0)
    assert e[0] > 3 * e[1] and p0[0] < p0[1]


PARETO_EXTREMES = {
    "CDNOW": CDNOW_PN,
    "alpha far above beta": ParetoNbdParams(0.5, 200.0, 0.6, 0.05),
    "beta far above alpha": ParetoNbdParams(0.5, 0.05, 0.6, 200.0),
    "s near one": ParetoNbdParams(0.5, 10.0, 1.0 + 1e-13, 12.0),
    "s above one": ParetoNbdParams(2.0, 5.0, 3.0, 40.0),
    "near-immortal heavy buyers": ParetoNbdParams(10.465, 7.98565181e-03, 3.0516, 2.820),
}


@pytest.mark.parametrize("name", sorted(PARETO_EXTREMES))
def test_degenerate_customers_give_finite_pareto_features(name: str) -> None:
    assert_odd_customers_are_finite(
        name, PARETO_EXTREMES[name], pareto_nbd_expected, pareto_nbd_p_alive, pareto_nbd_p_zero
    )


def test_a_pareto_prior_round_trips_through_the_manifest_and_changes_the_summary() -> None:
    bg = PriorSpec(CDNOW_BG, 13.0, 40.0)
    pn = PriorSpec(CDNOW_BG, 13.0, 40.0, pareto=CDNOW_PN)
    assert (bg.model, pn.model) == ("bgnbd", "pareto_nbd")
    again = PriorSpec.from_dict(pn.to_dict())
    assert again == pn and again.customer_base == CDNOW_PN
    assert PriorSpec.from_dict(bg.to_dict()).pareto is None
    broken = pn.to_dict()
    del broken["pareto_nbd"]
    with pytest.raises(ValueError, match="without its parameters"):
        PriorSpec.from_dict(broken)
    with pytest.raises(ValueError, match="this code knows"):
        PriorSpec.from_dict({**bg.to_dict(), "model": "gamma_gamma"})

    # A customer with three order days, the last 10 weeks ago, first 30 weeks ago.
    spec = WindowSpec(7 * 86_400_000, 1_693_785_600_000, 4, 13, 4)
    raw = np.zeros((1, 4, N_FEATURES), dtype=np.float32)
    raw[0, -1, FEATURE_INDEX["order_days_total"]] = 3.0
    raw[0, -1, FEATURE_INDEX["days_since_first_order"]] = 30.0 * 7
    raw[0, -1, FEATURE_INDEX["days_since_last_order"]] = 10.0 * 7
    raw[0, -1, FEATURE_INDEX["spend_total"]] = 120.0
    s_bg, s_pn = summarize(raw, bg, spec), summarize(raw, pn, spec)
    e = pareto_nbd_expected(CDNOW_PN, 2.0, 20.0, 30.0, 13.0)
    assert s_pn[0, 0] == pytest.approx(math.log(float(e[0])), rel=1e-5)
    assert s_pn[0, 0] != s_bg[0, 0]
    # The lifetime columns do not depend on the prior's model.
    np.testing.assert_array_equal(
        s_bg[0, len(PRIOR_FEATURE_NAMES) :], s_pn[0, len(PRIOR_FEATURE_NAMES) :]
    )


@pytest.mark.parametrize(
    "params",
    [
        # Real CDNOW at 1997-04-15: Pareto/NBD near its no-drop-out corner (s and beta large),
        # where each 2F1 series needs a few thousand terms per row.
        ParetoNbdParams(r=0.5206, alpha=8.622, s=24.08, beta=417.2),
        BgNbdParams(r=0.2522, alpha=4.064, a=0.7332, b=1.653),
    ],
    ids=["pareto_nbd_no_dropout_corner", "bgnbd"],
)
def test_a_micro_batch_with_repeated_customers_gives_each_customer_its_own_bits(
    params: ParetoNbdParams | BgNbdParams,
) -> None:
    """A worker's micro-batch of 300 customers of a young shop: whole order days and days of
    age, so one-time buyers of the same day share (x, t_x, T), and browsers without an order
    all enter as just acquired. Evaluated together (each distinct row once) and one customer
    at a time, the features are the same bits."""
    rng = np.random.default_rng(5)
    n = 300
    T = np.floor(rng.uniform(0.0, 15.0, n) * 7.0) / 7.0
    x = np.floor(rng.gamma(0.5, 2.0, n))
    t_x = np.where(x > 0, np.floor(T * rng.random(n) * 7.0) / 7.0, 0.0)
    ordered = rng.random(n) > 0.2
    together = prior_features(params, x, t_x, T, ordered, 13.0)
    distinct = np.unique(np.stack([x, t_x, T], 1)[ordered], axis=0)
    assert len(distinct) < ordered.sum()  # the batch does repeat customers
    alone = np.concatenate(
        [
            prior_features(
                params, x[i : i + 1], t_x[i : i + 1], T[i : i + 1], ordered[i : i + 1], 13.0
            )
            for i in range(n)
        ]
    )
    np.testing.assert_array_equal(together, alone)
