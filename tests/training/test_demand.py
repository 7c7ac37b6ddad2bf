"""Inventory demand offline: the scores, the baselines, the samples and the whole run.

Shapes named: a flat shop, a trending line, a line a season long, a line that never sold, a
generated shop with categories over a year (the whole run, slow).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.demand import DemandManifest, SeriesLevel, series_scale, widened
from features.windows import DAY_MS, WindowSpec
from training.demand import SeriesPanel, score_quantiles
from training.demand_baselines import auto_ets, moving_average, season_length, seasonal_naive
from training.demand_model import calibrate_width, samples_at

WEEK = 7 * DAY_MS


def test_scores_of_a_hand_made_forecast() -> None:
    actual = np.array([10.0, 0.0, 5.0, 5.0])
    forecast = np.array([[8.0, 10.0, 12.0], [0.0, 1.0, 2.0], [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    got = score_quantiles(actual, forecast)
    assert got["wape"] == pytest.approx((0 + 1 + 3 + 0) / 20)
    assert got["mae"] == pytest.approx(1.0)
    assert got["bias"] == pytest.approx((0 + 1 - 3 + 0) / 20)
    assert got["coverage"] == pytest.approx(0.75)  # 5 is above [1, 3]
    # pinball of the third row alone: 0.1*4 + 0.5*3 + 0.9*2 over three quantiles
    third = score_quantiles(actual[2:3], forecast[2:3])
    assert third["pinball"] == pytest.approx((0.4 + 1.5 + 1.8) / 3)
    assert score_quantiles(np.zeros(2), np.zeros((2, 3)))["wape"] is None
    with pytest.raises(ValueError, match="forecast"):
        score_quantiles(actual, forecast[:, :2])


def test_season_lengths() -> None:
    assert season_length(WindowSpec(WEEK, 0, 1, 1, 1)) == 52
    assert season_length(WindowSpec(DAY_MS, 0, 1, 1, 1)) == 7
    assert season_length(WindowSpec(30 * DAY_MS, 0, 1, 1, 1)) == 12


def test_seasonal_naive_repeats_the_last_season_and_widens_per_season_ahead() -> None:
    season = np.array([1.0, 5.0, 3.0])
    history = np.tile(season, 3)[None, :] + np.array([0.0, 0, 0, 1, 1, 1, 2, 2, 2])[None, :]
    got = seasonal_naive(history, 6, 3)
    assert got[0, :, 1].tolist() == [3.0, 7.0, 5.0, 3.0, 7.0, 5.0]
    width = got[0, :, 2] - got[0, :, 1]
    assert width[0] == pytest.approx(width[2]) and width[3] == pytest.approx(width[0] * np.sqrt(2))
    # Less than a season of history: the naive forecast (the last window).
    short = seasonal_naive(np.array([[2.0, 4.0]]), 3, 52)
    assert short[0, :, 1].tolist() == [4.0, 4.0, 4.0]
    assert np.all(short >= 0)


def test_moving_average_of_a_flat_shop_is_its_level_with_no_spread() -> None:
    got = moving_average(np.full((2, 10), 7.0), 4)
    assert np.allclose(got, 7.0)
    noisy = moving_average(np.array([[1.0, 3.0, 1.0, 3.0, 1.0, 3.0]]), 2, k=2)
    assert noisy[0, 0, 1] == pytest.approx(2.0)
    assert noisy[0, 0, 2] - noisy[0, 0, 1] == pytest.approx(1.2815515655446004)


def test_auto_ets_follows_a_trend_and_leaves_a_line_that_never_sold_at_zero() -> None:
    rng = np.random.default_rng(0)
    trending = 20.0 + 2.0 * np.arange(40) + rng.normal(0, 1.0, 40)
    history = np.stack([trending, np.zeros(40)])
    got = auto_ets(history, 5, 52, seed=1)
    assert got[0, -1, 1] > trending[-1] + 4  # still rising
    assert np.all(got[0, :, 0] <= got[0, :, 1]) and np.all(got[0, :, 1] <= got[0, :, 2])
    assert np.all(got[1] == 0.0)
    np.testing.assert_array_equal(got, auto_ets(history, 5, 52, seed=1))


def test_widened_intervals_keep_the_median() -> None:
    q = np.array([[2.0, 5.0, 9.0]])
    assert widened(q, 1.0).tolist() == q.tolist()
    assert widened(q, 2.0).tolist() == [[0.0, 5.0, 13.0]]  # P10 floored at zero


def test_calibrated_width_brings_a_too_narrow_interval_to_80_percent() -> None:
    rng = np.random.default_rng(3)
    actual = rng.normal(100.0, 10.0, 4000)
    half = 0.5 * 1.2816 * 10.0  # half the right half-width: about 47 % coverage
    q = np.stack([np.full(4000, 100 - half), np.full(4000, 100.0), np.full(4000, 100 + half)], -1)
    factor = calibrate_width(q[:, None, :], actual[:, None])
    assert factor == pytest.approx(2.0, abs=0.1)


def _panel(units: np.ndarray) -> SeriesPanel:
    n_series, n_windows = units.shape
    cells = np.zeros((n_series, n_windows, 4))
    cells[:, :, 0] = units
    cells[:, :, 1] = 2.0 * units
    spec = WindowSpec(WEEK, 0, 1, 3, 1)
    totals = cells.sum(axis=0)
    names = np.asarray([f"s{i}" for i in range(n_series)], dtype=object)
    return SeriesPanel(SeriesLevel("category"), spec, 0, names, cells, totals)


def test_samples_scale_on_the_last_four_windows_and_mask_what_is_not_yet_seen() -> None:
    units = np.arange(1.0, 13.0)[None, :].repeat(2, axis=0)
    units[1] = 0.0
    panel = _panel(units)
    got = samples_at(panel, [7], seq_len=6, horizon=3, observed_through=9)
    assert got.inputs.shape == (2, 6, 7) and got.future.shape == (2, 3, 2)
    assert got.scale[0].tolist() == [6.5, 13.0]  # mean of windows 4..7 (units 5..8)
    assert got.target[0, :, 0].tolist()[:2] == [9.0, 10.0] and np.isnan(got.target[0, 2, 0])
    assert got.scale[1].tolist() == [0.0, 0.0] and np.all(got.inputs[1, :, :4] == 0)
    np.testing.assert_array_equal(series_scale(panel.cells[:, 2:8]), got.scale)
    with pytest.raises(ValueError, match="fewer than 6 windows"):
        samples_at(panel, [4], seq_len=6, horizon=3, observed_through=9)


@pytest.mark.slow
def test_a_generated_shop_trains_evaluates_and_reports(tmp_path: Path) -> None:
    """A generated shop with categories over a year: the report scores the model and the
    three baselines at the pseudo-cutoff and the cutoff, and plots the top series."""
    from ingest.generator import generate_clickstream
    from serving.scorer import sha256_file
    from training.demand_model import DemandConfig
    from training.demand_pipeline import run_demand

    frame = generate_clickstream(n_users=1500, start="2024-01-01", days=364, seed=5)
    cutoff = int(pd.Timestamp("2024-10-07", tz="UTC").value // 10**6)
    spec = WindowSpec(WEEK, cutoff, 1, 8, 1)
    cfg = DemandConfig(horizon=8, max_epochs=3)
    report = run_demand(frame, spec, SeriesLevel("category"), tmp_path, cfg, top=5)
    for origin in ("pseudo_cutoff", "cutoff"):
        scored = report["origins"][origin]["groups"]["category"]
        assert len(scored["series"]) == 5 and scored["observed_windows"] == 8
        assert set(scored["scores"]) == {"model", "seasonal_naive", "moving_average", "auto_ets"}
        for target in ("units", "revenue"):
            assert 0.0 <= scored["scores"]["model"][target]["coverage"] <= 1.0
    assert json.loads((tmp_path / "demand_report.json").read_text())["level"] == "category"
    assert (tmp_path / "category.png").stat().st_size > 0
    assert "auto_ets" in (tmp_path / "demand_report.md").read_text()
    # The ensemble in ONNX, its manifest, and every selling series' forecasts from ONNX Runtime.
    manifest = DemandManifest.from_dict(
        json.loads((tmp_path / "category" / "manifest.json").read_text())
    )
    assert manifest.horizon == 8 and manifest.level == "category"
    assert manifest.onnx_sha256 == sha256_file(tmp_path / "category" / "model.onnx")
    forecasts = pd.read_csv(tmp_path / "category" / "forecasts.csv")
    assert len(forecasts) == 8 * report["exports"]["category"]["series_forecast"]
    ordered = forecasts[["units_p10", "units_p50", "units_p90"]].to_numpy()
    assert np.all(np.diff(ordered, axis=1) >= 0)
    assert report["exports"]["category"]["onnx_vs_keras_max_relative"] < 1e-4


def test_train_and_export_refuses_demand_out_of_core_and_unknown_levels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.cli import main

    events = tmp_path / "events.csv"
    events.write_text("event_time,event_type,user_id\n2024-01-01T00:00:00Z,view,u1\n")
    out = str(tmp_path / "o")
    args = ["--events", str(events), "--engine", "duckdb", "--demand", "category", "--out", out]
    assert main(args) == 2
    assert "--demand reads the events in memory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--events", str(events), "--demand", "brand", "--out", out])
    assert "expected one of category, product, family:N" in capsys.readouterr().err


@pytest.mark.slow
def test_train_and_export_writes_the_demand_model_beside_the_user_model(tmp_path: Path) -> None:
    """A generated year, --demand category: the user model and, under demand/, the category
    model, its manifest, forecasts and report, from the one command."""
    from training.cli import main

    args = ["--gen-users", "600", "--gen-days", "364", "--horizon", "8", "--epochs", "1"]
    assert main([*args, "--seeds", "1", "--demand", "category", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "manifest.json").is_file()
    demand = tmp_path / "demand"
    report = json.loads((demand / "demand_report.json").read_text())
    assert report["level"] == "category" and report["fit"]["category"]["config"]["horizon"] == 8
    assert (demand / "category" / "model.onnx").is_file()
    assert len(pd.read_csv(demand / "category" / "forecasts.csv")) > 0


SHIPPED_DEMAND = Path(__file__).resolve().parents[2] / "onnx_models" / "default" / "demand"


@pytest.mark.parametrize("group", ["family3", "dense_products"])
def test_the_shipped_demand_models_match_their_manifests_and_give_ordered_quantiles(
    group: str,
) -> None:
    """Online Retail's shipped demand models (stock-code families, dense products): the
    manifest reads, names this file's bytes, and ONNX Runtime gives P10 <= P50 <= P90 of the
    manifest's shape, in the data's units (a scale of 0 gives 0)."""
    import onnxruntime as ort

    from features.demand import DEMAND_INPUTS, DEMAND_OUTPUT, FUTURE_FEATURES, INPUT_FEATURES
    from serving.scorer import sha256_file

    directory = SHIPPED_DEMAND / group
    manifest = DemandManifest.from_dict(json.loads((directory / "manifest.json").read_text()))
    assert manifest.onnx_sha256 == sha256_file(directory / manifest.onnx_file)
    assert manifest.horizon == 13 and manifest.window_ms == WEEK
    rng = np.random.default_rng(0)
    n = 5
    feeds = {
        DEMAND_INPUTS[0]: rng.uniform(0, 1, (n, manifest.seq_len, len(INPUT_FEATURES))),
        DEMAND_INPUTS[1]: rng.uniform(-1, 1, (n, manifest.horizon, len(FUTURE_FEATURES))),
        DEMAND_INPUTS[2]: np.array([[10.0, 25.0]] * (n - 1) + [[0.0, 0.0]]),
    }
    session = ort.InferenceSession(str(directory / manifest.onnx_file))
    (got,) = session.run([DEMAND_OUTPUT], {k: v.astype(np.float32) for k, v in feeds.items()})
    assert got.shape == (n, manifest.horizon, 2, 3)
    assert np.all(np.diff(got, axis=-1) >= 0) and np.all(got >= 0)
    assert np.all(got[-1] == 0.0)
