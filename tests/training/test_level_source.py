"""Whose total the served order forecast keeps: the corrected model's or the prior's.

The evidence is the aggregate bias at the pseudo-cutoffs, per epoch (epoch 0 is the prior).
Shapes named after what the bench saw: real CDNOW with a Pareto/NBD prior (a correction whose
level helped one pseudo-cutoff and hurt two), Online Retail (one quiet summer horizon
over-predicted), and a grocery panel where the correction's level is as good.
"""

from __future__ import annotations

from training.model import level_source


def _runs(*biases: list[float]) -> list[dict[str, list[float]]]:
    return [{"val_orders_bias": list(b), "val_loss": [1.0] * len(b)} for b in biases]


def test_a_correction_whose_level_missed_two_of_three_pseudo_cutoffs_keeps_the_prior_total() -> (
    None
):
    cdnow = _runs([-0.133, -0.083, -0.122], [0.039, 0.154, 0.231], [-0.08, -0.221, -0.22])
    source, why = level_source(cdnow, 1)
    assert source == "prior", why
    assert "3 pseudo-cutoff(s)" in why


def test_a_correction_whose_level_was_closer_keeps_its_own_total() -> None:
    grocery = _runs([0.05, 0.01, 0.004], [-0.04, -0.02, -0.01])
    assert level_source(grocery, 2)[0] == "model"


def test_a_run_stopped_early_is_read_at_its_last_epoch() -> None:
    # Online Retail-like: the second pseudo-cutoff's run stopped after 2 epochs.
    retail = _runs(
        [0.083, 0.201, 0.222, 0.215, 0.206, 0.213, 0.216, 0.214], [-0.044, -0.049, -0.03]
    )
    source, why = level_source(retail, 7)
    assert source == "prior", why


def test_zero_epochs_or_no_evidence_keep_the_model_total() -> None:
    assert level_source(_runs([0.1, 0.0]), 0)[0] == "model"
    assert level_source([{}], 3)[0] == "model"
