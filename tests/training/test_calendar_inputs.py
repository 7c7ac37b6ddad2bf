"""The model reads the calendar only when the history has seen the whole year.

A shop whose history before the cutoff is shorter than a year (plus a horizon of customers)
never had the horizon's time of year as a target: the Complete Journey grocery panel's 38
weeks before October, Online Retail's 40 before September, CDNOW's 52 before January 1998.
Their models are built with the calendar columns blanked inside the graph, so nothing learnt
along the season coordinate is extrapolated into the horizon.
"""

from __future__ import annotations

import numpy as np
import pytest

from features.manifest import INPUT_NAME, SUMMARY_INPUT_NAME
from features.summary import CALENDAR_SUMMARY, N_SUMMARY, SUMMARY_INDEX
from features.windows import CALENDAR_FEATURES, FEATURE_INDEX, N_FEATURES
from training.model import ResidualConfig, build_residual_model
from training.season import year_observed

SEQ_LEN, HORIZON = 6, 4


@pytest.mark.parametrize(
    ("shop", "windows", "read"),
    [
        ("Complete Journey grocery panel, cutoff 2017-10-01", 38, False),
        ("Online Retail, cutoff 2011-09-09", 40, False),
        ("CDNOW, cutoff 1998-01-01", 52, False),
        ("CDNOW-like generator, cutoff at week 65 of 1997-98", 64, False),
        ("regular buyers, two years, cutoff 13 weeks before the end", 90, True),
        ("long-dormant base, five years", 247, True),
    ],
)
def test_the_calendar_is_read_only_after_a_year_after_a_horizon(
    shop: str, windows: int, read: bool
) -> None:
    seen, why = year_observed(windows, 7.0, burn_in=13)
    assert seen is read, (shop, why)
    assert str(windows) in why


def _inputs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    seq = rng.normal(size=(64, SEQ_LEN, N_FEATURES)).astype(np.float32)
    summary = rng.normal(size=(64, N_SUMMARY)).astype(np.float32)
    return seq, summary


def _with_other_calendar(seq: np.ndarray, summary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(99)
    seq, summary = seq.copy(), summary.copy()
    for name in CALENDAR_FEATURES:
        seq[:, :, FEATURE_INDEX[name]] = rng.uniform(-1, 1, size=seq.shape[:2])
    for name in CALENDAR_SUMMARY:
        summary[:, SUMMARY_INDEX[name]] = rng.uniform(-1, 1, size=len(summary))
    return seq, summary


def _outputs(calendar_inputs: bool, seq: np.ndarray, summary: np.ndarray) -> np.ndarray:
    cfg = ResidualConfig(units=4, dense_units=4, calendar_inputs=calendar_inputs)
    model = build_residual_model(
        SEQ_LEN, N_FEATURES, HORIZON, np.zeros(N_SUMMARY), np.ones(N_SUMMARY), cfg
    )
    # Untrained, the corrections are zero and nothing but BG/NBD's columns matter: give every
    # weight a value, as training would.
    rng = np.random.default_rng(5)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in model.get_weights()])
    out = model.predict({INPUT_NAME: seq, SUMMARY_INPUT_NAME: summary}, verbose=0)
    return np.concatenate([np.asarray(out[k]).reshape(len(seq), -1) for k in sorted(out)], axis=1)


def test_a_model_without_calendar_inputs_ignores_the_season_columns() -> None:
    seq, summary = _inputs(1)
    other_seq, other_summary = _with_other_calendar(seq, summary)
    blind = _outputs(False, seq, summary)
    np.testing.assert_array_equal(blind, _outputs(False, other_seq, other_summary))
    # The same weights with the calendar read do see the change, so the check can fail.
    assert not np.allclose(_outputs(True, seq, summary), _outputs(True, other_seq, other_summary))
