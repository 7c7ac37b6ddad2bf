"""train-and-export from the command line: a tiny generated history end to end, and the clear
errors a user gets for inputs that cannot give an honest model."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.drift import DRIFT_FEATURES
from serving.scorer import load_model
from training.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model")
    code = main(["--out", str(out), "--gen-users", "800", "--gen-days", "180", "--epochs", "2"])
    assert code == 0
    return out


def test_writes_every_artifact(trained: Path) -> None:
    for name in ("model.onnx", "manifest.json", "report.json", "report.md", "predictions.csv"):
        assert (trained / name).is_file(), name
    assert list(trained.glob("*.png"))


def test_the_worker_accepts_the_exported_model(trained: Path) -> None:
    scorer = load_model(trained)
    manifest = json.loads((trained / "manifest.json").read_text())
    assert scorer.version == manifest["model_version"]
    assert manifest["libraries"]["tf2onnx"]
    assert manifest["training_data"]["cutoff"]
    # The drift check's training distribution: the window features of the active users.
    reference = scorer.manifest.input_reference
    assert reference is not None and reference.rows > 100
    assert set(manifest["input_reference"]["features"]) == set(DRIFT_FEATURES)


def test_predictions_cover_the_cutoff_population(trained: Path) -> None:
    predictions = pd.read_csv(trained / "predictions.csv")
    expected = {"user_id", "window_end", "expected_orders", "expected_spend", "churn_probability"}
    assert expected <= set(predictions.columns)
    assert predictions.window_end.nunique() == 1
    assert predictions.user_id.is_unique
    assert predictions.churn_probability.between(0, 1).all()


def test_report_sets_the_model_beside_every_baseline(trained: Path) -> None:
    report = json.loads((trained / "report.json").read_text())
    models = report["models"] if "models" in report else report["metrics"]
    assert {"model", "historical_rate", "last_window"} <= set(models)


def test_missing_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--events", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "no such file" in capsys.readouterr().err


def test_unknown_columns_name_what_was_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "odd.csv"
    path.write_text("a,b,c\n1,2,3\n")
    assert main(["--events", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "a" in capsys.readouterr().err


@pytest.mark.parametrize("engine", ["pandas", "duckdb"])
def test_an_order_file_of_number_dates_says_which_rule_it_broke(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], engine: str
) -> None:
    """CDNOW's own master file dates its orders as YYYYMMDD numbers. Read as milliseconds they
    would be a few hours into 1970, above a history file's 1900 floor, and train as a history
    of seconds: it trains nothing, and the error names the rows, the first line and what the
    number looks like. (Plain ISO dates, ``1997-01-01``, are read as their UTC day.)"""
    path = tmp_path / "orders.csv"
    path.write_text("event_time,event_type,user_id\n19970101,purchase,c1\n19970112,purchase,c2\n")
    code = main(
        [
            "--events",
            str(path),
            "--format",
            "canonical",
            "--engine",
            engine,
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "no valid events to train on (2 of 2 rows refused as bad_value:event_time" in err
    assert "the first on line 2" in err
    assert "YYYYMMDD" in err


def test_cutoff_outside_the_data_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "--out",
            str(tmp_path / "o"),
            "--gen-users",
            "100",
            "--gen-days",
            "120",
            "--cutoff",
            "2030-01-01",
        ]
    )
    assert code == 2
    assert "outside the data" in capsys.readouterr().err


def test_too_few_users_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--out", str(tmp_path / "o"), "--gen-users", "20", "--gen-days", "200"])
    assert code == 2
    assert "users" in capsys.readouterr().err


def test_a_shop_a_few_weeks_old_is_served_its_customer_base_prior(tmp_path: Path) -> None:
    """A generated shop of 8 weeks with a 4-week horizon: 4 weeks of history before the
    cutoff, less than the horizon and two windows a pseudo-cutoff needs. Training used to
    refuse it; a young shop still gets BG/NBD's forecast, served like every model's (the
    network's corrections are not learnt: nothing could check them), and the report says
    why."""
    out = tmp_path / "young"
    code = main(["--out", str(out), "--gen-users", "400", "--gen-days", "56", "--epochs", "2"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    training = report["extra"]["training"]
    assert training["epochs"] == 0
    assert training["pseudo_cutoffs"] == []
    assert training["prior"]["model"] == "bgnbd"
    assert "no pseudo-cutoff" in training["prior"]["why"]
    assert report["extra"]["rolling_origin"]["pseudo_cutoff"] is None
    assert report["extra"]["split"]["samples"]["pseudo_cutoff"] == 0
    # The served model is the prior: its churn ranks customers exactly as BG/NBD's does.
    churn = report["models"]["model"]["churn"]["roc_auc"]
    assert churn == pytest.approx(report["models"]["bgnbd"]["churn"]["roc_auc"], abs=1e-6)
    scorer = load_model(out)
    assert scorer.manifest.prior is not None
    predictions = pd.read_csv(out / "predictions.csv")
    assert len(predictions) == report["extra"]["split"]["users"]["cutoff"] > 0


@pytest.mark.realdata
def test_online_retail_with_a_quarter_of_history_is_served_bgnbd_at_a_lower_mae(
    shared_data: Path, tmp_path: Path
) -> None:
    """UCI Online Retail cut at 2011-03-01: 13 weeks of a wholesaler's order lines, a 13-week
    horizon. Refused before; now the customer-base prior is the model, and on these 1,749
    customers its served forecast has a lower MAE than BG/NBD's mean and the same churn
    ranking (measured: 0.959 against 0.974, AUC 0.697 both, bias -1.7 %)."""
    out = tmp_path / "or"
    events = shared_data / "online_retail.csv.gz"
    args = ["--events", str(events), "--format", "transactions", "--window", "7d"]
    args += ["--seq-len", "26", "--horizon", "13", "--cutoff", "2011-03-01", "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["extra"]["training"]["epochs"] == 0
    model, bgnbd = report["models"]["model"], report["models"]["bgnbd"]
    assert model["orders"]["n"] == bgnbd["orders"]["n"] > 1000
    assert model["orders"]["mae"] < bgnbd["orders"]["mae"]
    assert model["churn"]["roc_auc"] == pytest.approx(bgnbd["churn"]["roc_auc"], abs=1e-6)
    assert abs(model["orders"]["bias"]) <= 0.05


@pytest.mark.realdata
def test_online_retail_with_two_months_of_history_is_served_the_posteriors_zinb(
    shared_data: Path, tmp_path: Path
) -> None:
    """UCI Online Retail cut at 2011-02-04: nine weeks of history, most of its 1,441
    customers with one or two order days, so each one's rate is barely known. The ZIP's
    quantile of BG/NBD's mean lost to BG/NBD's mean itself here (MAE 1.062 against 1.055);
    the zero-inflated negative binomial of each customer's posterior shape (r + x) serves
    0.988. The total, and so the bias, is the prior's either way."""
    out = tmp_path / "or"
    events = shared_data / "online_retail.csv.gz"
    args = ["--events", str(events), "--format", "transactions", "--window", "7d"]
    args += ["--seq-len", "26", "--horizon", "13", "--cutoff", "2011-02-04", "--out", str(out)]
    assert main(args) == 0
    assert json.loads((out / "manifest.json").read_text())["orders_forecast"]["kind"] == (
        "zinb_quantile"
    )
    report = json.loads((out / "report.json").read_text())
    model, bgnbd = report["models"]["model"], report["models"]["bgnbd"]
    assert model["orders"]["n"] == bgnbd["orders"]["n"] > 1400
    assert model["orders"]["mae"] < 0.97 * bgnbd["orders"]["mae"]
    assert model["orders"]["bias"] == pytest.approx(bgnbd["orders"]["bias"], abs=0.005)


def test_the_epoch_count_is_chosen_on_several_pseudo_cutoffs_a_horizon_apart(
    trained: Path,
) -> None:
    """25 weeks of generated history, 4-week horizon: the selection pools pseudo-cutoffs one,
    two, ... horizons before the cutoff (each with a horizon of origins before it), not only
    the quarter before it, and says which it used."""
    report = json.loads((trained / "report.json").read_text())["extra"]
    training = report["training"]
    cutoffs = [pd.Timestamp(c) for c in training["pseudo_cutoffs"]]
    assert len(cutoffs) >= 2
    horizon = pd.Timedelta(days=7 * report["window"]["horizon_windows"])
    cutoff = pd.Timestamp(report["split"]["cutoff"])
    assert cutoffs[0] == cutoff - horizon
    assert all(a - b == horizon for a, b in itertools.pairwise(cutoffs))
    assert len(training["selections"]) == len(cutoffs)
    assert len(training["pooled_val_loss"]) >= 1


def test_the_report_says_which_customer_base_model_and_whose_total_were_chosen(
    trained: Path,
) -> None:
    """The prior (BG/NBD or Pareto/NBD) is compared on the same pseudo-cutoffs as the epoch
    count, and the manifest pins the one chosen; the served forecast's total says its source."""
    report = json.loads((trained / "report.json").read_text())["extra"]
    prior = report["training"]["prior"]
    assert prior["model"] in ("bgnbd", "pareto_nbd")
    assert [c["cutoff"] for c in prior["pseudo_cutoffs"]] == [
        c[:10] for c in report["training"]["pseudo_cutoffs"]
    ]
    manifest = json.loads((trained / "manifest.json").read_text())
    assert manifest["prior"]["model"] == prior["model"]
    level = report["training"]["level"]
    assert level["source"] in ("model", "prior") and level["prior_total"] > 0


@pytest.fixture(scope="module")
def wholesaler(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,000 wholesale customers over 20 months who buy 60 % more in October-November
    (bench.model_quality's ``wholesale`` shape, a fifth of it); cutoff 2023-09-04, so the
    13-week horizon holds the peak and the history holds last year's."""
    from bench.model_quality import gen_wholesale, write_canonical

    tmp = tmp_path_factory.mktemp("wholesale")
    shop = gen_wholesale(seed=3, scale=0.2)
    events = write_canonical(shop, tmp / "events.csv")
    out = tmp / "model"
    args = ["--events", str(events), "--format", "canonical", "--window", "7d"]
    args += ["--seq-len", "26", "--horizon", "13", "--cutoff", "2023-09-04", "--out", str(out)]
    assert main([*args, "--epochs", "1", "--seeds", "1"]) == 0
    return out


@pytest.mark.slow
def test_a_wholesalers_christmas_quarter_is_forecast_from_last_years(wholesaler: Path) -> None:
    report = json.loads((wholesaler / "report.json").read_text())
    calendar = report["extra"]["calendar"]
    assert calendar["found"]["2023-09-04"].startswith("season")
    assert calendar["horizon_factor_at_cutoff"]["mean"] > 1.15
    models = report["models"]
    model, bgnbd = models["model"]["orders"]["bias"], models["bgnbd"]["orders"]["bias"]
    assert bgnbd < -0.15 and abs(model) < abs(bgnbd) / 2
    # The worker reads the calendar from the manifest and scores as training did.
    manifest = json.loads((wholesaler / "manifest.json").read_text())
    assert manifest["prior"]["season"]["cos"]
    assert load_model(wholesaler).version == manifest["model_version"]


def test_the_report_gives_each_stages_wall_time_and_peak_memory(trained: Path) -> None:
    report = json.loads((trained / "report.json").read_text())["extra"]
    stages = report["resources"]["stages"]
    assert [s["stage"] for s in stages] == ["read", "features", "fit", "export", "evaluate"]
    assert all(s["seconds"] > 0 and s["peak_rss_mb"] > 50 for s in stages)
    assert report["resources"]["peak_rss_mb"] >= max(s["peak_rss_mb"] for s in stages)
    assert "## Resources" in (trained / "report.md").read_text()


def test_the_report_says_which_training_rows_the_sample_rule_kept(trained: Path) -> None:
    samples = json.loads((trained / "report.json").read_text())["extra"]["training"]["samples"]
    assert samples["rule"].startswith("when the (customer, origin) rows exceed the cap")
    assert samples["cap"] == 200_000 and samples["kept_fraction"] == 1.0
    assert samples["rows_before_cap"] == sum(samples["rows_by_stratum"].values())
    # Under the cap every row is kept, but for the shop's first weeks: too few buyers yet to
    # fit an origin's prior, so those origins give no rows.
    assert 0.9 * samples["rows_before_cap"] < samples["kept"] <= samples["rows_before_cap"]
    assert set(samples["rows_by_stratum"]) == {"recent_buyers", "dormant_customers", "browsers"}
    assert "## Training rows" in (trained / "report.md").read_text()


def test_predictions_carry_the_served_forecast_and_the_mean(trained: Path) -> None:
    manifest = json.loads((trained / "manifest.json").read_text())
    level = manifest["orders_forecast"]["level"]
    assert 0 < level < 1
    assert manifest["orders_forecast"]["kind"] == "zinb_quantile"  # it has a prior
    rows = pd.read_csv(trained / "predictions.csv")
    served, mean = rows["expected_orders"].to_numpy(), rows["mean_orders"].to_numpy()
    assert np.array_equal(served, np.round(served))  # counts
    # The level keeps the cutoff population's total (to within a count or two of customers).
    assert abs(served.sum() - mean.sum()) <= max(2.0, 0.01 * mean.sum())
