"""training.calibration: the churn recalibration is kept only where it ranks customers better
out of sample. Populations: a BG/NBD world (the churn head is the true P(no order): nothing to
gain) and a shop like real CDNOW (the expected count carries what the head misses)."""

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
