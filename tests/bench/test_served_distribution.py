"""``bench.served_distribution``: on a run directory as ``train-and-export`` writes it, the
four forecasts are scored on the cutoff's customers, the two quantiles keep the run's served
total, and each customer's repeat order days are read from the events as training reads them.

The population: a shop eight weeks old whose customers bought on one to six days before the
cutoff (most of them once or twice), scored by a model that is its customer-base prior."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from bench.served_distribution import compare, render

CUTOFF = pd.Timestamp("2024-03-04", tz="UTC")


def _run(tmp_path: Path, n: int = 400, seed: int = 5) -> tuple[Path, Path, np.ndarray]:
    rng = np.random.default_rng(seed)
    days = rng.integers(1, 7, n)  # order days before the cutoff
    rows = []
    for i, k in enumerate(days):
        for d in rng.choice(56, k, replace=False):
            t = CUTOFF - pd.Timedelta(days=int(d) + 1) + pd.Timedelta(hours=12)
            rows.append((t.isoformat().replace("+00:00", "Z"), "purchase", f"u{i}", 10.0))
    events = tmp_path / "events.csv"
    pd.DataFrame(rows, columns=["event_time", "event_type", "user_id", "price"]).to_csv(
        events, index=False
    )
    mean = 0.6 * days
    p0 = np.clip(np.exp(-mean) + 0.2, 0, 0.95)
    actual = np.where(rng.random(n) < 0.2, 0, rng.poisson(rng.gamma(days, 0.6)))
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(n)],
            "expected_orders": np.round(mean),
            "mean_orders": mean,
            "churn_probability": p0,
            "actual_orders": actual.astype(float),
        }
    ).to_csv(run / "predictions.csv", index=False)
    report = {
        "models": {"bgnbd": {"orders": {"mae": 1.0, "bias": 0.0}}},
        "extra": {
            "prior": {"model": "bgnbd", "bgnbd": {"r": 0.8}},
            "split": {"cutoff": CUTOFF.isoformat()},
            "training": {"level": {"source": "prior", "prior_total": 1.1 * mean.sum()}},
            "orders_forecast": {"kind": "zinb_quantile"},
        },
    }
    (run / "report.json").write_text(json.dumps(report))
    return run, events, days


def test_the_quantiles_keep_the_runs_served_total_and_differ_only_in_the_distribution(
    tmp_path: Path,
) -> None:
    run, events, days = _run(tmp_path)
    result = compare(run, events, "canonical")
    assert result["customers"] == 400 and result["r"] == 0.8
    assert result["median_repeat_days"] == float(np.median(days - 1))
    actual_total = pd.read_csv(run / "predictions.csv")["actual_orders"].sum()
    mean_total = pd.read_csv(run / "predictions.csv")["mean_orders"].sum()
    for kind in ("zip_quantile", "zinb_quantile"):
        total = (1 + result["bias"][kind]) * actual_total
        assert abs(total - 1.1 * mean_total) <= 0.01 * mean_total  # the prior's total
    rows = pd.read_csv(run / "predictions.csv")
    served = np.abs(rows["expected_orders"] - rows["actual_orders"]).mean()
    assert result["mae"]["served"] == served
    table = render([result])
    assert "| run | 400 | 0.80 |" in table and "(zinb_quantile)" in table
