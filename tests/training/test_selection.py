"""The epoch count the residual model is refitted with: BG/NBD is kept unless the correction
shows a gain beyond noise on the pseudo-cutoff (training.model.significant_epoch)."""

from __future__ import annotations

import numpy as np

from training.model import EpochCheck, choose_epochs, significant_epoch


def _losses(base: np.ndarray, shifts: list[float], noise: float, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [base] + [base - s + rng.normal(0.0, noise, base.size) for s in shifts]


def test_a_shop_where_bgnbd_is_the_truth_keeps_bgnbd() -> None:
    # 3,000 customers at the pseudo-cutoff; the corrections only fit noise: the mean loss
    # wobbles by a few thousandths around BG/NBD's, below two standard errors.
    base = np.random.default_rng(1).gamma(2.0, 0.5, 3_000)
    losses = _losses(base, [0.001, 0.002, 0.0015], noise=0.3, seed=2)
    assert int(np.argmin([x.mean() for x in losses])) > 0  # a naive argmin would train
    assert significant_epoch(losses) == 0


def test_a_shop_with_a_learnable_correction_trains_to_the_best_epoch() -> None:
    # A seasonal shop: the correction lowers every customer's loss by ~0.05 after 2 epochs.
    base = np.random.default_rng(3).gamma(2.0, 0.5, 3_000)
    losses = _losses(base, [0.02, 0.05, 0.04], noise=0.1, seed=4)
    assert significant_epoch(losses) == 2


def test_no_gain_at_all_is_bgnbd() -> None:
    base = np.ones(500)
    assert significant_epoch([base, base + 0.1, base + 0.2]) == 0


def test_a_single_validation_customer_cannot_show_significance() -> None:
    assert significant_epoch([np.array([1.0]), np.array([0.5])]) == 0


def _check(losses: np.ndarray, mae: float, bias: float, auc: float) -> EpochCheck:
    return EpochCheck(losses=losses, orders_mae=mae, orders_bias=bias, churn_auc=auc)


def test_choose_epochs_decides_on_the_loss_alone() -> None:
    """Online Retail's pseudo-cutoff: the corrections lower the loss clearly while MAE and bias
    there get worse (a quiet summer horizon; the real one is Christmas): still trained."""
    base = np.random.default_rng(6).gamma(2.0, 0.5, 3_000)
    prior = _check(base, mae=0.8223, bias=0.083, auc=0.7405)
    corrected = _check(base - 0.08, mae=0.8234, bias=0.197, auc=0.752)
    assert choose_epochs([prior, corrected]) == 1
    assert choose_epochs([prior, _check(base + 0.01, 0.8, 0.0, 0.76)]) == 0


def test_a_gain_beyond_noise_but_of_a_thousandth_keeps_bgnbd() -> None:
    """A CDNOW-like shop (BG/NBD is the true process), 90,000 pooled pseudo-cutoff rows: the
    corrections gain 0.1 % of the loss, many standard errors out, and still do not carry to
    the test. Below the 0.3 % floor, BG/NBD is kept."""
    base = np.random.default_rng(7).gamma(2.0, 1.5, 90_000)
    tiny = base - 0.001 * base.mean() + np.random.default_rng(8).normal(0.0, 0.01, base.size)
    assert significant_epoch([base, tiny], min_gain=0.0) == 1
    assert significant_epoch([base, tiny]) == 0
