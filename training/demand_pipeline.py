"""Inventory demand, offline: train, evaluate against the baselines, export. One function.

Owns :func:`run_demand`: a canonical event frame -> the series panel at a level
(:mod:`training.demand`), the global quantile model (:mod:`training.demand_model`) fitted on
origins before the cutoff, its forecasts and the baselines' (:mod:`training.demand_baselines`)
scored on the top series at two origins (the pseudo-cutoff one horizon before the cutoff, and
the cutoff), plots of actual against forecast for the top series, the model in ONNX with
its manifest, and a report. ``python -m training.demand_pipeline`` runs it on a file.

Which series are scored: the ``top`` series by units sold in the year of windows before the
origin (the planning team's big lines); every series with sales in the input windows trains.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from features.demand import (
    FUTURE_FEATURES,
    INPUT_FEATURES,
    SCALE_WINDOWS,
    DemandManifest,
    SeriesLevel,
    parse_level,
    widened,
)
from features.windows import WindowSpec
from training.demand import QUANTILES, SeriesPanel, score_quantiles, series_panel
from training.demand_baselines import auto_ets, moving_average, season_length, seasonal_naive
from training.demand_model import (
    TARGETS,
    DemandConfig,
    DemandFit,
    export_demand,
    fit_demand,
    predict_demand,
    run_demand_onnx,
    samples_at,
)

log = logging.getLogger(__name__)

TOP_SERIES: Final = 20
"""Series scored: the top 20 by units in the year before the origin."""
YEAR_DAYS: Final = 365
ONNX_TOLERANCE: Final = 1e-4
"""Largest relative difference between the exported graph's quantiles and Keras' allowed."""
DENSE_SHARE: Final = 0.5
"""A product is dense enough for its own series when it sold in half the windows of the year
before the cutoff."""


def top_series(panel: SeriesPanel, through: int, n: int) -> np.ndarray:
    """The ``n`` series with the most units in the year of windows up to column ``through``
    (ties by code), in that order; only series that sold."""
    year = max(1, round(YEAR_DAYS * 86_400_000 / panel.spec.length_ms))
    units = panel.cells[:, max(0, through - year + 1) : through + 1, 0].sum(axis=1)
    order = np.lexsort((np.arange(len(units)), -units))
    return np.asarray(order[units[order] > 0][:n], dtype=np.int64)


def baseline_forecasts(
    panel: SeriesPanel, series: np.ndarray, origin: int, horizon: int, seed: int
) -> dict[str, np.ndarray]:
    """Each baseline's ``[series, horizon, 2, 3]`` from the history through column ``origin``."""
    season = season_length(panel.spec)
    out: dict[str, np.ndarray] = {}
    for name in ("seasonal_naive", "moving_average", "auto_ets"):
        parts = []
        for k in (0, 1):
            history = panel.cells[series, : origin + 1, k]
            if name == "seasonal_naive":
                parts.append(seasonal_naive(history, horizon, season))
            elif name == "moving_average":
                parts.append(moving_average(history, horizon))
            else:
                parts.append(auto_ets(history, horizon, season, seed))
        out[name] = np.stack(parts, axis=2)
    return out


def actuals(panel: SeriesPanel, series: np.ndarray, origin: int, horizon: int) -> np.ndarray:
    """``[series, horizon, 2]`` units and revenue after column ``origin`` (NaN past the data)."""
    out = np.full((len(series), horizon, 2), np.nan)
    cols = np.arange(origin + 1, origin + 1 + horizon)
    inside = cols < panel.n_windows
    out[:, inside] = panel.cells[series][:, cols[inside]][:, :, :2]
    return out


def score_all(forecasts: dict[str, np.ndarray], actual: np.ndarray) -> dict[str, Any]:
    """Scores of every forecaster, per target, on the observed horizon windows."""
    seen = ~np.isnan(actual[:, :, 0])
    out: dict[str, Any] = {}
    for name, q in forecasts.items():
        out[name] = {
            target: score_quantiles(actual[:, :, k][seen], q[:, :, k][seen])
            for k, target in enumerate(TARGETS)
        }
    return out


def dense_series(panel: SeriesPanel, through: int, share: float = DENSE_SHARE) -> np.ndarray:
    """Series that sold in at least ``share`` of the year of windows up to column
    ``through`` (or of the windows there are, in a shorter history)."""
    year = max(1, round(YEAR_DAYS * 86_400_000 / panel.spec.length_ms))
    units = panel.cells[:, max(0, through - year + 1) : through + 1, 0]
    return np.flatnonzero((units > 0).mean(axis=1) >= share)


def run_demand(
    events: pd.DataFrame,
    spec: WindowSpec,
    level: SeriesLevel,
    out: Path,
    cfg: DemandConfig | None = None,
    top: int = TOP_SERIES,
) -> dict[str, Any]:
    """Train, evaluate and export the demand model; writes ``out`` and returns the report.

    Series: the level's (every one that sold), and, below a product level, the dense
    products (:func:`dense_series` before the cutoff): a model for each group."""
    cfg = cfg or DemandConfig(horizon=spec.horizon)
    out.mkdir(parents=True, exist_ok=True)
    times = events["event_time_ms"]
    first = spec.index(int(times.min()))
    last = spec.index(int(times.max()) + 1) - 1  # the last window the events cover whole
    groups = {str(level): series_panel(events, spec, level, first, last)}
    if level != SeriesLevel("product"):
        products = series_panel(events, spec, SeriesLevel("product"), first, last)
        dense = dense_series(products, products.column(-1))
        if len(dense):
            groups["dense products"] = products.subset(dense)
        else:
            log.info("demand: no product sold in half the windows of the year; no product model")
    some = next(iter(groups.values()))
    cutoff_col = some.column(-1)
    pseudo = cutoff_col - cfg.horizon
    # One model per group: a level's series and single products differ in scale and in how
    # intermittent they are, and each group's epochs and interval are chosen on its own.
    fits = {
        group: fit_demand([(panel, top_series(panel, pseudo, top))], cutoff_col, cfg)
        for group, panel in groups.items()
    }
    origins: dict[str, Any] = {}
    for name, origin in (("pseudo_cutoff", pseudo), ("cutoff", cutoff_col)):
        end = pd.Timestamp(spec.end_ms(some.first + origin), unit="ms", tz="UTC")
        origins[name] = {"window_end": str(end), "groups": {}}
        for group, panel in groups.items():
            series = top_series(panel, origin, top)
            if not len(series):
                continue
            fit = fits[group]
            models = fit.selection if name == "pseudo_cutoff" else fit.models
            actual = actuals(panel, series, origin, cfg.horizon)
            samples = samples_at(panel, [origin], cfg.seq_len, cfg.horizon, origin, series)
            forecasts = {"model": predict_demand(models, samples, fit.width)}
            forecasts.update(baseline_forecasts(panel, series, origin, cfg.horizon, cfg.seed))
            origins[name]["groups"][group] = {
                "series": [str(panel.names[i]) for i in series],
                "observed_windows": int((~np.isnan(actual[0, :, 0])).sum()),
                "scores": score_all(forecasts, actual),
            }
            if name == "cutoff":
                _plot(panel, series[:6], origin, forecasts, actual, out / f"{_slug(group)}.png")
    exports = {
        group: export_group(group, level, panel, fits[group], cutoff_col, cfg, out / _slug(group))
        for group, panel in groups.items()
    }
    report = {
        "level": str(level),
        "series": {group: len(panel.names) for group, panel in groups.items()},
        "top": top,
        "quantiles": list(QUANTILES),
        "inputs": list(INPUT_FEATURES),
        "future_inputs": list(FUTURE_FEATURES),
        "fit": {group: fit.info for group, fit in fits.items()},
        "exports": exports,
        "origins": origins,
    }
    (out / "demand_report.json").write_text(json.dumps(report, indent=2))
    (out / "demand_report.md").write_text(render(report))
    return report


def _slug(group: str) -> str:
    return group.replace(" ", "_").replace(":", "")


def export_group(
    group: str,
    level: SeriesLevel,
    panel: SeriesPanel,
    fit: DemandFit,
    cutoff_col: int,
    cfg: DemandConfig,
    directory: Path,
) -> dict[str, Any]:
    """One group's ensemble in ONNX with its manifest, checked against Keras, and its
    forecasts after the cutoff for every series that sold in the input windows, from ONNX
    Runtime (what a server computes), in ``forecasts.csv``."""
    spec = panel.spec
    onnx_path = directory / "model.onnx"
    sha = export_demand(fit.models, cfg, onnx_path)
    manifest = DemandManifest(
        model_version="d-" + sha[:12],
        group=group,
        level=str(level) if group == str(level) else "product",
        window_ms=spec.length_ms,
        origin_ms=spec.origin_ms,
        seq_len=cfg.seq_len,
        horizon=cfg.horizon,
        interval_width=fit.width,
        onnx_sha256=sha,
    )
    (directory / "manifest.json").write_text(json.dumps(manifest.to_dict(), indent=2))
    samples = samples_at(panel, [cutoff_col], cfg.seq_len, cfg.horizon, cutoff_col)
    samples = samples.select(samples.scale[:, 0] > 0)
    served = run_demand_onnx(onnx_path, samples)
    keras_q = predict_demand(fit.models, samples, 1.0)
    worst = float(np.max(np.abs(served - keras_q) / np.maximum(1.0, np.abs(keras_q))))
    if worst > ONNX_TOLERANCE:
        raise RuntimeError(f"{group}: ONNX and Keras differ by {worst:.2e} (relative)")
    q = widened(served, fit.width)
    starts = (
        spec.origin_ms + (panel.first + cutoff_col + 1 + np.arange(cfg.horizon)) * spec.length_ms
    )
    rows = []
    for i, code in enumerate(samples.series):
        for h in range(cfg.horizon):
            row: dict[str, Any] = {
                "series": panel.names[code],
                "window_start": pd.Timestamp(int(starts[h]), unit="ms", tz="UTC").isoformat(),
            }
            for k, target in enumerate(TARGETS):
                for j, level_name in enumerate(("p10", "p50", "p90")):
                    row[f"{target}_{level_name}"] = round(float(q[i, h, k, j]), 4)
            rows.append(row)
    pd.DataFrame(rows).to_csv(directory / "forecasts.csv", index=False)
    return {
        "model_version": manifest.model_version,
        "onnx": str(onnx_path.relative_to(directory.parent)),
        "onnx_vs_keras_max_relative": worst,
        "series_forecast": len(samples),
    }


def render(report: dict[str, Any]) -> str:
    counts = ", ".join(f"{n} {group}" for group, n in report["series"].items())
    lines = [
        f"# Demand forecasts by {report['level']}",
        "",
        f"Series: {counts}; the top {report['top']} of each by units in the year before each "
        "origin are scored.",
        "",
    ]
    for group, fit in report["fit"].items():
        lines.append(
            f"- {group}: {fit['epochs']} epochs, interval width x{fit['interval_width']:.2f}, "
            f"{fit['samples']['final']} samples."
        )
    lines.append("")
    for name, origin in report["origins"].items():
        for group, scored in origin["groups"].items():
            lines += [
                f"## {group} at the {name.replace('_', ' ')} (window end "
                f"{origin['window_end']}, {scored['observed_windows']} windows observed)",
                "",
                "| forecaster | target | WAPE | MAE | bias | P10-P90 coverage | pinball |",
                "|---|---|---|---|---|---|---|",
            ]
            for forecaster, by_target in scored["scores"].items():
                for target, sc in by_target.items():
                    lines.append(
                        f"| {forecaster} | {target} | {_f(sc['wape'])} | {_f(sc['mae'])} | "
                        f"{_f(sc['bias'], pct=True)} | {_f(sc['coverage'], pct=True)} | "
                        f"{_f(sc['pinball'])} |"
                    )
            lines.append("")
    return "\n".join(lines) + "\n"


def _f(value: float | None, pct: bool = False) -> str:
    if value is None:
        return "-"
    return (
        f"{100 * value:+.1f} %"
        if pct and value < 0
        else (f"{100 * value:.1f} %" if pct else f"{value:.3f}")
    )


def _plot(
    panel: SeriesPanel,
    series: np.ndarray,
    origin: int,
    forecasts: dict[str, np.ndarray],
    actual: np.ndarray,
    path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(series)
    if n == 0:
        return
    fig, axes = plt.subplots(n, 1, figsize=(9, 2.4 * n), squeeze=False)
    history = np.arange(max(0, origin - 25), origin + 1)
    ahead = np.arange(origin + 1, origin + 1 + actual.shape[1])
    for row, (ax, code) in enumerate(zip(axes[:, 0], series, strict=True)):
        ax.plot(history, panel.cells[code, history, 0], color="black", lw=1, label="history")
        ax.plot(ahead, actual[row, :, 0], color="black", lw=1, ls="--", label="actual")
        q = forecasts["model"][row, :, 0]
        ax.fill_between(ahead, q[:, 0], q[:, 2], alpha=0.25, label="model P10-P90")
        ax.plot(ahead, q[:, 1], lw=1.5, label="model P50")
        ax.plot(ahead, forecasts["auto_ets"][row, :, 0, 1], lw=1, label="AutoETS")
        ax.set_title(f"{panel.names[code]}: units per window", fontsize=9)
        if row == 0:
            ax.legend(fontsize=7, ncol=5)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    from ingest.adapters import read_events
    from training.cli import parse_duration_ms, parse_instant_ms

    p = argparse.ArgumentParser(
        prog="python -m training.demand_pipeline", description=__doc__.split("\n")[0]
    )
    p.add_argument("--events", type=Path, required=True)
    p.add_argument("--format", default="canonical")
    p.add_argument("--level", type=parse_level, default=parse_level("category"))
    p.add_argument("--window", type=parse_duration_ms, default=parse_duration_ms("7d"))
    p.add_argument("--horizon", type=int, default=13)
    p.add_argument(
        "--seq-len",
        type=int,
        default=DemandConfig.seq_len,
        help="input windows (default 8; at least the scale's 4)",
    )
    p.add_argument("--cutoff", type=parse_instant_ms, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    events = read_events(args.events, args.format).events
    spec = WindowSpec(args.window, args.cutoff, 1, args.horizon, 1)
    if args.seq_len < SCALE_WINDOWS:
        p.error(f"--seq-len {args.seq_len}: at least the scale's {SCALE_WINDOWS} windows")
    cfg = DemandConfig(seq_len=args.seq_len, horizon=args.horizon)
    run_demand(events, spec, args.level, args.out, cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
