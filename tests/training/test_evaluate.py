"""Metrics against hand-computed values; comparison helpers; report files."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.evaluate import (
    bias,
    brier,
    calibration_bins,
    compare,
    evaluate_churn,
    evaluate_demand,
    expected_calibration_error,
    log_loss,
    mae,
    mape_nonzero,
    pr_auc,
    rmse,
    roc_auc,
    verdicts,
    wape,
)
from training.report import write_report


def test_demand_metrics_by_hand() -> None:
    pred, actual = [1.0, 2.0, 3.0], [0.0, 2.0, 5.0]
    assert mae(pred, actual) == pytest.approx(1.0)
    assert rmse(pred, actual) == pytest.approx(math.sqrt(5 / 3))
    assert wape(pred, actual) == pytest.approx(3 / 7)
    assert bias(pred, actual) == pytest.approx(-1 / 7)
    mape, n = mape_nonzero(pred, actual)
    assert (mape, n) == (pytest.approx(0.2), 2)
    d = evaluate_demand(pred, actual)
    assert d["n"] == 3 and d["mape_n"] == 2 and d["sum_actual"] == 7.0 and d["sum_pred"] == 6.0


def test_demand_metrics_all_zero_actual() -> None:
    assert math.isnan(wape([1, 2], [0, 0]))
    assert math.isnan(bias([1, 2], [0, 0]))
    assert mape_nonzero([1, 2], [0, 0])[1] == 0
    with pytest.raises(ValueError):
        mae([1, 2], [1])


def test_roc_auc_known_and_ties() -> None:
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # pos {0.5, 0.9} vs neg {0.2, 0.5}: 1 + 0.5 (tie) + 1 + 1 = 3.5 of 4 pairs
    assert roc_auc([0.2, 0.5, 0.5, 0.9], [0, 0, 1, 1]) == pytest.approx(0.875)
    assert roc_auc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == pytest.approx(0.5)
    assert roc_auc([0.9, 0.1], [0, 1]) == pytest.approx(0.0)
    assert math.isnan(roc_auc([0.1, 0.2], [1, 1]))


def test_roc_auc_matches_pairwise_count() -> None:
    rng = np.random.default_rng(0)
    p = rng.integers(0, 6, 80) / 5.0  # many ties
    y = (rng.random(80) < 0.4).astype(float)
    pos, neg = p[y == 1], p[y == 0]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    assert roc_auc(p, y) == pytest.approx(wins / (len(pos) * len(neg)))


def test_pr_auc_known_and_ties() -> None:
    # P@1 = 1 (R .5), P@3 = 2/3 (R 1): 0.5 * 1 + 0.5 * 2/3
    assert pr_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(5 / 6)
    # tie at 0.5 is one threshold: P = 1/2 at R = 1/2, then P = 2/3 at R = 1
    assert pr_auc([0.5, 0.5, 0.2, 0.1], [1, 0, 1, 0]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert pr_auc([0.3, 0.3, 0.3], [1, 0, 0]) == pytest.approx(1 / 3)
    assert math.isnan(pr_auc([0.3, 0.2], [0, 0]))


def test_log_loss_brier_calibration() -> None:
    assert log_loss([0.9, 0.2], [1, 0]) == pytest.approx(-(math.log(0.9) + math.log(0.8)) / 2)
    assert log_loss([1.0], [0]) == pytest.approx(-math.log(1e-7))
    assert brier([0.9, 0.2], [1, 0]) == pytest.approx((0.01 + 0.04) / 2)
    bins = calibration_bins([0.05, 0.15, 0.12, 0.95, 1.0], [0, 1, 0, 1, 1], n_bins=10)
    assert bins == [
        (pytest.approx(0.05), 0.0, 1),
        (pytest.approx(0.135), 0.5, 2),
        (pytest.approx(0.975), 1.0, 2),
    ]
    ece = expected_calibration_error([0.05, 0.15, 0.12, 0.95, 1.0], [0, 1, 0, 1, 1])
    assert ece == pytest.approx((0.05 + 2 * 0.365 + 2 * 0.025) / 5)
    with pytest.raises(ValueError):
        roc_auc([0.1, 0.2], [0, 2])


def _models() -> dict[str, dict[str, dict[str, object]]]:
    rng = np.random.default_rng(1)
    actual = rng.poisson(1.5, 300).astype(float)
    y = (actual == 0).astype(float)
    good = actual + rng.normal(0, 0.3, 300)
    p_good = np.clip(0.8 * y + 0.1 + rng.normal(0, 0.05, 300), 0.01, 0.99)
    return {
        "lstm": {
            "orders": evaluate_demand(np.maximum(good, 0), actual),
            "churn": evaluate_churn(p_good, y),
        },
        "last_window": {
            "orders": evaluate_demand(np.full(300, actual.mean()), actual),
            "churn": evaluate_churn(np.full(300, y.mean()), y),
        },
        "orders_only": {"orders": evaluate_demand(actual + 2.0, actual)},
    }


def test_compare_and_verdicts() -> None:
    models = _models()
    rows = compare(models)
    assert [r["name"] for r in rows] == ["lstm", "last_window", "orders_only"]
    assert rows[0]["orders_mae"] == models["lstm"]["orders"]["mae"]
    assert rows[2]["churn_roc_auc"] is None and "orders_mape_n" in rows[2]
    v = {(r["baseline"], r["task"]): r["beats"] for r in verdicts(models, "lstm")}
    assert v == {
        ("last_window", "orders"): True,
        ("last_window", "churn"): True,
        ("orders_only", "orders"): True,
        ("orders_only", "churn"): None,
    }


def test_write_report(tmp_path: Path) -> None:
    models = _models()
    rng = np.random.default_rng(2)
    actual = rng.poisson(1.5, 500).astype(float)
    history = {
        "loss": [3.0, 2.5, 2.4],
        "val_loss": [2.9, 2.6, 2.7],
        "orders_loss": [1.0, 0.9, 0.85],
        "val_orders_loss": [1.0, 0.95, 0.96],
        "churn_loss": [0.6, 0.5, 0.5],
        "val_churn_loss": [0.6, 0.55, 0.56],
    }
    ends = np.arange(8) * 7 * 86_400_000 + 1_291_161_600_000  # weekly, epoch ms
    paths = write_report(
        tmp_path / "rep",
        models,
        "lstm",
        history=history,
        churn_p=rng.random(500),
        churn_y=(rng.random(500) < 0.3).astype(float),
        orders_pred=actual + rng.normal(0, 0.5, 500).clip(-actual),
        orders_actual=actual,
        weekly={
            "window_end": ends,
            "actual": rng.random(8) * 100,
            "predicted": rng.random(8) * 100,
        },
        export_info={"recurrent_op": "LSTM", "max_abs_diff": {"expected_orders": 1e-7}},
        extra={"n_test": 500, "mean": float("nan")},
    )
    for name in ("learning_curves", "calibration", "pred_vs_actual_orders", "weekly_orders"):
        assert paths[name].exists() and paths[name].read_bytes()[:4] == b"\x89PNG", name
    report = json.loads(paths["json"].read_text())
    assert report["reference"] == "lstm" and report["extra"]["mean"] is None
    assert len(report["verdicts"]) == 4
    md = paths["markdown"].read_text()
    assert "lstm beats last_window on demand (orders) MAE: yes" in md
    assert "lstm beats last_window on churn (churn) ROC-AUC: yes" in md
    assert "lstm beats orders_only on churn (churn) ROC-AUC: n/a" in md
    assert "| **lstm** |" in md and "![weekly_orders](weekly_orders.png)" in md


def test_evaluate_and_report_do_not_import_tensorflow() -> None:
    code = (
        "import sys, training.evaluate, training.report; "
        "sys.exit(1 if 'tensorflow' in sys.modules or 'keras' in sys.modules else 0)"
    )
    root = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, check=False).returncode == 0
