"""training.calibration: the churn recalibration is kept only where it ranks customers better
out of sample, and in time. Populations: a BG/NBD world (the churn head is the true P(no order):
nothing to gain), a shop like real CDNOW (the expected count carries what the head misses, every
horizon), and a shop where it did for one horizon and the other way the horizon before."""

from __future__ import annotations

import numpy as np

from training.calibration import fit_churn_calibration
from training.evaluate import roc_auc


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def test_a_bgnbd_world_keeps_its_churn_head() -> None:
    rng = np.random.default_rng(1)
    n = 6000
    churn = rng.beta(2.0, 2.0, n)  # the true P(no order)
    mean = rng.gamma(1.0, 1.0, n)  # unrelated to it once the head is known
    no_order = (rng.random(n) < churn).astype(float)
    cal, info = fit_churn_calibration(churn, mean, no_order)
    assert cal is None and info["kept"] is False


def test_a_shop_whose_expected_count_ranks_non_buyers_better_gets_the_blend() -> None:
    rng = np.random.default_rng(2)

    def shop(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mean = rng.gamma(0.6, 0.6, n)
        truth = _sigmoid(0.2 - 1.4 * np.log(mean))
        churn = _sigmoid(0.5 * _logit(truth) + rng.normal(0, 0.8, n))  # a noisier head
        return churn, mean, (rng.random(n) < truth).astype(float)

    churn, mean, no_order = shop(20_000)
    cal, info = fit_churn_calibration(churn, mean, no_order)
    assert cal is not None and info["kept"] and min(info["held_out_auc_gain"]) > 0
    later_churn, later_mean, later_y = shop(20_000)  # new customers, the same shop
    assert roc_auc(cal.apply(later_churn, later_mean), later_y) > roc_auc(later_churn, later_y)


def test_too_few_labelled_customers_or_one_class_keep_the_head() -> None:
    assert fit_churn_calibration(np.full(50, 0.5), np.ones(50), np.zeros(50))[0] is None
    assert fit_churn_calibration(np.full(500, 0.5), np.ones(500), np.ones(500))[0] is None


def _horizon(
    rng: np.random.Generator, n: int, weight: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One origin's customers: the truth ranks by the head plus ``weight`` x log mean orders."""
    mean = rng.gamma(0.6, 0.6, n)
    churn = rng.beta(2.0, 2.0, n)
    truth = _sigmoid(_logit(churn) + weight * np.log(mean))
    return churn, mean, (rng.random(n) < truth).astype(float)


def test_a_blend_that_held_one_horizon_and_reversed_the_one_before_is_not_served() -> None:
    """At the latest origin, buyers with a high expected count stayed (weight -0.5): the halves
    agree. One horizon earlier they were the ones who left (+0.5): the blend fitted there
    ranks the latest origin worse, so it is not served."""
    rng = np.random.default_rng(3)
    latest = _horizon(rng, 20_000, -0.5)
    assert fit_churn_calibration(*latest)[1]["kept"]  # the halves alone would keep it
    earlier = _horizon(rng, 20_000, 0.5)
    cal, info = fit_churn_calibration(*latest, earlier=lambda: earlier)
    assert cal is None and info["kept"] is False
    assert info["out_of_time_auc_gain"] < 0 and "one horizon earlier" in info["why"]


def test_a_blend_that_holds_in_time_is_served_and_says_it_was_checked() -> None:
    rng = np.random.default_rng(4)
    earlier = _horizon(rng, 20_000, -0.5)
    cal, info = fit_churn_calibration(*_horizon(rng, 20_000, -0.5), earlier=lambda: earlier)
    assert cal is not None and info["kept"] and info["out_of_time_auc_gain"] > 5e-4


def test_an_earlier_origin_too_small_to_fit_leaves_the_halves_to_decide() -> None:
    rng = np.random.default_rng(5)
    latest = _horizon(rng, 20_000, -0.5)
    small = _horizon(rng, 100, 0.5)
    cal, info = fit_churn_calibration(*latest, earlier=lambda: small)
    assert cal is not None and "halves only" in info["out_of_time"]


def test_the_earlier_origin_is_not_scored_when_the_halves_already_say_no() -> None:
    rng = np.random.default_rng(6)
    asked: list[bool] = []

    def earlier() -> None:
        asked.append(True)

    cal, info = fit_churn_calibration(*_horizon(rng, 20_000, 0.0), earlier=earlier)
    assert cal is None and asked == [] and "out_of_time" not in info
