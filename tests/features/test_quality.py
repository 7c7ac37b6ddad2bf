"""Online quality tallies: partitions' parts add up to the cohort's figures, and those are the
offline evaluation's (training.evaluate) for the same predictions and outcomes."""

from __future__ import annotations

import math
import zlib

import numpy as np
import orjson
import pytest

from features.quality import CohortTally, merge, quality, tally
from tests.support.cohorts import close_cohort, tally_of
from training import evaluate

PARTITIONS = 4


def partition_tallies(c: dict[str, np.ndarray]) -> list[CohortTally]:
    part = np.array([zlib.crc32(u.encode()) % PARTITIONS for u in c["users"]])
    return [tally_of(c, part == p) for p in range(PARTITIONS)]


def test_the_partitions_tallies_merge_into_the_offline_evaluation_of_the_whole_cohort() -> None:
    c = close_cohort()
    got = quality(merge(partition_tallies(c)))
    for key, pred, actual in (
        ("orders", c["pred_orders"], c["actual_orders"]),
        ("spend", c["pred_spend"], c["actual_spend"]),
    ):
        want = evaluate.evaluate_demand(pred, actual)
        for metric in ("mae", "rmse", "wape", "bias", "sum_pred", "sum_actual"):
            assert got[key][metric] == pytest.approx(want[metric], rel=1e-12, abs=1e-12), metric
    want_churn = evaluate.evaluate_churn(c["prob"], c["churned"])
    for metric in ("n", "n_pos", "base_rate", "mean_pred", "roc_auc", "pr_auc", "log_loss"):
        assert got["churn"][metric] == pytest.approx(want_churn[metric], rel=1e-12), metric
    assert got["churn"]["brier"] == pytest.approx(want_churn["brier"], rel=1e-12)
    assert got["churn"]["ece"] == pytest.approx(want_churn["ece"], rel=1e-12, abs=1e-15)
    assert np.allclose(got["churn"]["calibration"], want_churn["calibration"], rtol=1e-12)
    # The tied dormant block is one histogram entry with its 600 users.
    whole = merge(partition_tallies(c))
    tied = np.flatnonzero(whole.scores == 0.84375)
    assert tied.size == 1 and whole.churners[tied[0]] + whole.stayers[tied[0]] == 600


def test_merging_in_any_grouping_gives_the_same_histogram_and_auc() -> None:
    c = close_cohort(seed=11)
    parts = partition_tallies(c)
    flat = merge(parts)
    nested = merge([merge(parts[:2]), merge(parts[2:][::-1])])
    assert np.array_equal(flat.scores, nested.scores)
    assert np.array_equal(flat.churners, nested.churners)
    assert np.array_equal(flat.stayers, nested.stayers)
    assert quality(flat)["churn"]["roc_auc"] == quality(nested)["churn"]["roc_auc"]
    assert quality(flat)["churn"]["pr_auc"] == quality(nested)["churn"]["pr_auc"]
    assert flat.n == nested.n == len(c["users"])


def test_a_tally_survives_its_json_record_exactly() -> None:
    c = close_cohort(seed=5)
    t = partition_tallies(c)[1]
    back = CohortTally.from_dict(orjson.loads(orjson.dumps(t.to_dict())))
    assert back.to_dict() == t.to_dict()
    assert _same_with_nan(quality(back), quality(t))


def _same_with_nan(a: object, b: object) -> bool:
    return orjson.dumps(a) == orjson.dumps(b)


def test_a_partition_with_nobody_to_score_and_a_cohort_of_one_class() -> None:
    """A partition that scored nobody at this window end adds nothing; a cohort where
    everybody churned has no AUC, as offline."""
    c = close_cohort(seed=7)
    nobody = tally_of(c, np.zeros(len(c["users"]), dtype=bool))
    assert nobody.n == 0 and math.isnan(quality(nobody)["orders"]["mae"])
    parts = partition_tallies(c)
    assert _same_with_nan(quality(merge([*parts, nobody])), quality(merge(parts)))
    churners = c["churned"] == 1
    only = quality(tally_of(c, churners))["churn"]
    assert math.isnan(only["roc_auc"]) and only["n_pos"] == int(churners.sum())
    assert math.isnan(evaluate.roc_auc(c["prob"][churners], c["churned"][churners]))


def test_bad_inputs_are_refused_with_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="churned must be 0 or 1"):
        tally([1.0], [1.0], [1.0], [1.0], [0.5], [2.0])
    with pytest.raises(ValueError, match="actual_orders has 2 values"):
        tally([1.0], [1.0, 2.0], [1.0], [1.0], [0.5], [1.0])
    with pytest.raises(ValueError, match="non-finite values in churn_probability"):
        tally([1.0], [1.0], [1.0], [1.0], [math.nan], [1.0])
