"""Whose churn ranking is served: the trained correction's or the prior's P(no order).

The evidence is the churn ROC-AUC at the pseudo-cutoffs, per epoch (epoch 0 is the prior).
Shapes named after what the model-quality bench saw (``bench/results``): the generated
marketplace of one-off buyers, whose correction ranked below BG/NBD at its pseudo-cutoffs on
two seeds of three; Online Retail and the grocery panel, whose corrections rank clearly
better; real CDNOW, better on average though not at every pseudo-cutoff; the long-dormant
base, better by little everywhere.
"""

from __future__ import annotations

import numpy as np

from features.manifest import INPUT_NAME, SUMMARY_INPUT_NAME
from features.summary import I_LOGIT_P_ZERO, N_SUMMARY
from features.windows import N_FEATURES
from training.model import (
    CHURN_CORRECTION_LAYER,
    ResidualConfig,
    build_residual_model,
    churn_source,
    drop_churn_correction,
)


def _runs(*aucs: list[float]) -> list[dict[str, list[float]]]:
    return [{"val_churn_auc": list(a), "val_loss": [1.0] * len(a)} for a in aucs]


def test_a_marketplace_whose_correction_ranked_worse_at_its_pseudo_cutoffs_serves_the_prior() -> (
    None
):
    # Generated marketplace, seed 3, 3 epochs: gains -0.1, -0.5, -1.4, -5.4e-4.
    marketplace = _runs(
        [0.90957, 0.90956, 0.90955, 0.90956],
        [0.90700, 0.90698, 0.90697, 0.90695],
        [0.91000, 0.90990, 0.90985, 0.90986],
        [0.89000, 0.88980, 0.88960, 0.88946],
    )
    source, why = churn_source(marketplace, 3)
    assert source == "prior", why
    assert "4 pseudo-cutoff(s)" in why


def test_shops_whose_correction_ranks_better_on_average_keep_it() -> None:
    retail = _runs([0.7405, 0.7445, 0.7482], [0.7300, 0.7400, 0.7535])
    assert churn_source(retail, 2)[0] == "model"
    # Real CDNOW: better at two pseudo-cutoffs, worse at the third, +8.9e-4 on average.
    cdnow = _runs([0.770, 0.77462], [0.780, 0.78344], [0.760, 0.75461])
    assert churn_source(cdnow, 1)[0] == "model"
    # The long-dormant base: +1 to +4e-4 at every pseudo-cutoff.
    dormant = _runs([0.97903, 0.97935], [0.9781, 0.97829], [0.977, 0.97736], [0.976, 0.97629])
    assert churn_source(dormant, 1)[0] == "model"


def test_a_run_stopped_early_is_read_at_its_last_epoch() -> None:
    # The second run stopped after one epoch, below the prior; the first gains more at 4.
    mixed = _runs([0.90, 0.901, 0.902, 0.903, 0.904], [0.90, 0.8995])
    source, why = churn_source(mixed, 4)
    assert source == "model", why  # +4e-3 and -5e-4: +1.75e-3 on average


def test_no_gain_at_all_serves_the_prior() -> None:
    assert churn_source(_runs([0.8, 0.8, 0.8]), 2)[0] == "prior"


def test_zero_epochs_or_no_evidence_keep_the_model() -> None:
    assert churn_source(_runs([0.9, 0.8]), 0)[0] == "model"
    assert churn_source([{}], 3)[0] == "model"
    assert churn_source(_runs([float("nan"), float("nan")]), 1)[0] == "model"


def test_a_dropped_correction_serves_the_priors_p_zero_and_leaves_the_other_heads() -> None:
    seq_len, horizon = 6, 4
    cfg = ResidualConfig(units=4, dense_units=4, calendar_inputs=True)
    model = build_residual_model(
        seq_len, N_FEATURES, horizon, np.zeros(N_SUMMARY), np.ones(N_SUMMARY), cfg
    )
    rng = np.random.default_rng(3)
    # As after training: every weight has a value, the churn correction included.
    model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in model.get_weights()])
    feeds = {
        INPUT_NAME: rng.normal(size=(32, seq_len, N_FEATURES)).astype(np.float32),
        SUMMARY_INPUT_NAME: rng.normal(size=(32, N_SUMMARY)).astype(np.float32),
    }
    before = model.predict(feeds, verbose=0)
    prior = 1.0 / (1.0 + np.exp(-feeds[SUMMARY_INPUT_NAME][:, I_LOGIT_P_ZERO]))
    assert not np.allclose(np.asarray(before["churn"])[:, 0], prior, atol=1e-4)

    drop_churn_correction(model)
    after = model.predict(feeds, verbose=0)
    np.testing.assert_allclose(np.asarray(after["churn"])[:, 0], prior, rtol=1e-6, atol=1e-7)
    for head in ("orders", "spend"):
        np.testing.assert_array_equal(after[head], before[head])
    assert not any(np.any(w) for w in model.get_layer(CHURN_CORRECTION_LAYER).get_weights())
