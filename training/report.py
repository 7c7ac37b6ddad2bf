"""Evaluation report: ``report.json``, ``report.md`` and PNG plots (matplotlib, Agg).

Everything takes plain dicts and arrays. The metrics dicts are the ones
:func:`training.evaluate.evaluate_demand` / :func:`training.evaluate.evaluate_churn` return,
arranged as ``{model_name: {task: metrics}}`` (e.g. tasks ``orders``, ``spend``, ``churn``);
one model is the *reference* (the trained network), the others are baselines.

Entry point: :func:`write_report`. The plot functions are public for use on their own.
No TensorFlow here.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt

from training.evaluate import (
    CHURN_METRICS,
    DEMAND_METRICS,
    calibration_bins,
    compare,
    task_kind,
    verdicts,
)

log = logging.getLogger(__name__)

_LABELS = {
    "mae": "MAE",
    "rmse": "RMSE",
    "wape": "WAPE",
    "bias": "bias",
    "mape_nonzero": "MAPE (actual>0)",
    "roc_auc": "ROC-AUC",
    "pr_auc": "PR-AUC",
    "log_loss": "log loss",
    "brier": "Brier",
}


# --- plots --------------------------------------------------------------------------------


def plot_learning_curves(history: Mapping[str, Sequence[float]], path: str | Path) -> Path:
    """Train/val total loss per epoch, plus one panel per head's train/val loss."""
    heads = sorted(
        k[: -len("_loss")]
        for k in history
        if k.endswith("_loss") and not k.startswith("val_") and k != "loss"
    )
    n_panels = 1 + len(heads)
    fig, axes = plt.subplots(1, n_panels, figsize=(4.2 * n_panels, 3.4), squeeze=False)
    panels = [("loss", "total")] + [(f"{h}_loss", h) for h in heads]
    best = int(np.argmin(history["val_loss"])) + 1 if history.get("val_loss") else None
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        for k, style in ((key, "-o"), (f"val_{key}", "-s")):
            values = history.get(k)
            if values:
                ax.plot(range(1, len(values) + 1), values, style, ms=3, label=k)
        if best is not None:
            ax.axvline(best, color="grey", ls=":", lw=1, label=f"best epoch {best}")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss")
    return _save(fig, path)


def plot_calibration(
    p: npt.ArrayLike | None,
    y: npt.ArrayLike | None,
    path: str | Path,
    n_bins: int = 10,
    bins: Sequence[Sequence[float]] | None = None,
) -> Path:
    """Reliability diagram (mean predicted vs observed churn rate per bin) + bin counts.

    Pass either raw ``p``/``y`` or a precomputed ``bins`` table of
    ``(mean_pred, frac_pos, count)`` (as in ``evaluate_churn(...)["calibration"]``).
    """
    if bins is None:
        if p is None or y is None:
            raise ValueError("need p and y, or bins")
        bins = calibration_bins(p, y, n_bins)
    table = np.asarray(bins, dtype=np.float64).reshape(-1, 3)
    fig, (ax, axc) = plt.subplots(
        2, 1, figsize=(5, 5.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    ax.plot(table[:, 0], table[:, 1], "o-", label="model")
    ax.set_ylabel("observed churn rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("Churn calibration")
    ax.legend()
    ax.grid(alpha=0.3)
    axc.bar(table[:, 0], table[:, 2], width=0.8 / max(n_bins, len(table), 1), color="C0")
    axc.set_xlabel("mean predicted churn probability")
    axc.set_ylabel("count")
    return _save(fig, path)


def plot_pred_vs_actual(
    pred: npt.ArrayLike,
    actual: npt.ArrayLike,
    path: str | Path,
    label: str = "orders",
    seed: int = 0,
) -> Path:
    """Hexbin of predicted vs actual (log1p axes, actual jittered by ±0.3 so integer counts
    spread), with the mean prediction per actual value (for values with ≥ 20 rows)."""
    pr = np.asarray(pred, dtype=np.float64).reshape(-1)
    ac = np.asarray(actual, dtype=np.float64).reshape(-1)
    rng = np.random.default_rng(seed)
    jitter = rng.uniform(-0.3, 0.3, ac.size)
    x = np.log1p(np.maximum(ac + jitter, 0.0))
    yv = np.log1p(np.maximum(pr, 0.0))
    fig, ax = plt.subplots(figsize=(5.6, 5))
    if ac.size:
        hb = ax.hexbin(x, yv, gridsize=50, bins="log", mincnt=1, cmap="viridis")
        fig.colorbar(hb, ax=ax, label="rows (log)")
        top = float(max(x.max(), yv.max()))
        ax.plot([0, top], [0, top], "r--", lw=1, label="pred = actual")
        values, counts = np.unique(np.round(ac), return_counts=True)
        keep = values[counts >= 20]
        if keep.size:
            means = [pr[np.round(ac) == v].mean() for v in keep]
            ax.plot(np.log1p(keep), np.log1p(means), "wo-", ms=4, mec="k", label="mean pred")
        ax.legend(fontsize=8)
    ax.set_xlabel(f"log1p(actual {label}) (jittered)")
    ax.set_ylabel(f"log1p(predicted {label})")
    ax.set_title(f"Predicted vs actual {label}")
    return _save(fig, path)


def _as_datetimes(window_end: npt.ArrayLike) -> npt.NDArray[Any]:
    arr = np.asarray(window_end)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype("datetime64[ms]")  # epoch milliseconds, like Samples.window_end_ms
    if np.issubdtype(arr.dtype, np.datetime64):
        return arr
    return arr.astype("datetime64[ms]")


def plot_weekly_aggregate(
    window_end: npt.ArrayLike,
    actual: npt.ArrayLike,
    predicted: npt.ArrayLike,
    path: str | Path,
    label: str = "orders",
) -> Path:
    """Summed actual vs predicted per window end over the test period.

    ``window_end``: epoch-ms integers, ``datetime64`` or ISO strings; ``actual`` and
    ``predicted`` are the per-window-end sums (already aggregated by the caller).
    """
    t = _as_datetimes(window_end)
    a = np.asarray(actual, dtype=np.float64).reshape(-1)
    p = np.asarray(predicted, dtype=np.float64).reshape(-1)
    order = np.argsort(t)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.plot(t[order], a[order], "o-", ms=3, label=f"actual {label}")
    ax.plot(t[order], p[order], "s--", ms=3, label=f"predicted {label}")
    ax.set_xlabel("window end")
    ax.set_ylabel(f"{label} (sum over users)")
    ax.set_title(f"Aggregate {label} per window end: actual vs predicted")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- tables -------------------------------------------------------------------------------


def _fmt(value: Any, key: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    v = float(value)
    if not math.isfinite(v):
        return "n/a"
    if key in ("wape", "bias", "mape_nonzero"):
        return f"{v:+.1%}" if key == "bias" else f"{v:.1%}"
    return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.1f}"


def _markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def markdown_tables(
    models: Mapping[str, Mapping[str, Mapping[str, Any]]], reference: str
) -> list[str]:
    """One Markdown table per task: rows are models (reference first), columns metrics."""
    rows = compare({reference: models[reference], **models})
    tasks: dict[str, str] = {}
    for per_task in models.values():
        for t, m in per_task.items():
            tasks.setdefault(t, task_kind(m))
    lines: list[str] = []
    for task, kind in tasks.items():
        keys = DEMAND_METRICS if kind == "demand" else CHURN_METRICS
        title = f"### {task} ({'demand' if kind == 'demand' else 'churn'})"
        headers = ["model", *(_LABELS[k] for k in keys)]
        if kind == "demand":
            headers.append("MAPE n")
        body: list[list[str]] = []
        for row in rows:
            if all(row.get(f"{task}_{k}") is None for k in keys):
                continue
            name = f"**{row['name']}**" if row["name"] == reference else row["name"]
            cells = [name, *(_fmt(row.get(f"{task}_{k}"), k) for k in keys)]
            if kind == "demand":
                cells.append(_fmt(row.get(f"{task}_mape_n")))
            body.append(cells)
        lines += [title, "", *_markdown_table(headers, body), ""]
    return lines


def verdict_lines(
    models: Mapping[str, Mapping[str, Mapping[str, Any]]], reference: str
) -> list[str]:
    """``- <reference> beats <baseline> on <task> MAE: yes/no`` (and ROC-AUC for churn)."""
    lines: list[str] = []
    for v in verdicts(models, reference):
        kind = "demand" if v["metric"] in DEMAND_METRICS else "churn"
        answer = {True: "yes", False: "no", None: "n/a (baseline has no such output)"}[v["beats"]]
        detail = ""
        if v["beats"] is not None:
            detail = (
                f" ({_fmt(v['model_value'], v['metric'])} vs "
                f"{_fmt(v['baseline_value'], v['metric'])})"
            )
        lines.append(
            f"- {reference} beats {v['baseline']} on {kind} ({v['task']}) "
            f"{_LABELS.get(v['metric'], v['metric'])}: {answer}{detail}"
        )
    return lines


# --- report -------------------------------------------------------------------------------


def _jsonable(obj: Any) -> Any:
    """NumPy scalars/arrays to Python, NaN/inf to None, Paths to str, tuples to lists."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.datetime64):
        return str(obj)
    return obj


def resources_lines(resources: Mapping[str, Any] | None) -> list[str]:
    """The ``## Resources`` table: wall time and peak RSS per stage (:mod:`training.resources`)."""
    if not resources or not resources.get("stages"):
        return []
    rows = [
        [str(st["stage"]), f"{st['seconds']:.1f}", f"{st['peak_rss_mb']:,.0f}"]
        for st in resources["stages"]
    ]
    rows.append(["**run**", f"{resources['seconds']:.1f}", f"{resources['peak_rss_mb']:,.0f}"])
    return [
        "## Resources",
        "",
        *_markdown_table(["stage", "wall s", "peak RSS MB"], rows),
        "",
        f"Peak RSS per stage sampled every {resources['rss_sampled_every_s']} s; the run's "
        "peak is the kernel's high-water mark. The report itself is written after them.",
        "",
    ]


def sample_lines(samples: Mapping[str, Any] | None) -> list[str]:
    """The ``## Training rows`` paragraph: the sample rule and what it kept
    (:class:`training.origins.SamplePlan`)."""
    if not samples:
        return []
    by = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in samples["rows_by_stratum"].items())
    return [
        "## Training rows",
        "",
        f"{samples['kept']:,} of {samples['rows_before_cap']:,} (customer, origin) rows over "
        f"{samples['origins']} origins ({by}); cap {samples['cap']:,}, kept fraction "
        f"{samples['kept_fraction']:.4f} (origins too early to fit a prior give no rows). "
        f"Rule: {samples['rule']}.",
        "",
    ]


def write_report(
    out_dir: str | Path,
    models: Mapping[str, Mapping[str, Mapping[str, Any]]],
    reference: str,
    *,
    history: Mapping[str, Sequence[float]] | None = None,
    churn_p: npt.ArrayLike | None = None,
    churn_y: npt.ArrayLike | None = None,
    orders_pred: npt.ArrayLike | None = None,
    orders_actual: npt.ArrayLike | None = None,
    weekly: Mapping[str, npt.ArrayLike] | None = None,
    export_info: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    title: str = "Demand & churn model evaluation",
) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and whichever plots the inputs allow.

    * ``models``: ``{name: {task: metrics}}``; ``reference`` names the trained model.
    * ``history``: per-epoch losses (``train_model``'s dict) → ``learning_curves.png``.
    * ``churn_p``/``churn_y`` (test set) → ``calibration.png``; without them the reference's
      ``churn`` metrics' ``calibration`` table is used if present.
    * ``orders_pred``/``orders_actual`` (per row) → ``pred_vs_actual_orders.png``.
    * ``weekly``: ``{"window_end", "actual", "predicted"}`` per-window-end sums →
      ``weekly_orders.png``.
    * ``export_info`` (e.g. ``ExportInfo.to_dict()`` plus verify diffs) and ``extra``
      (run metadata: data sizes, config, …) are copied into both files.

    Returns ``{artifact_name: path}``.
    """
    if reference not in models:
        raise KeyError(f"reference {reference!r} not among models {list(models)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    if history and history.get("loss"):
        paths["learning_curves"] = plot_learning_curves(history, out / "learning_curves.png")
    ref_churn = next((m for m in models[reference].values() if task_kind(m) == "churn"), None)
    if churn_p is not None and churn_y is not None:
        paths["calibration"] = plot_calibration(churn_p, churn_y, out / "calibration.png")
    elif ref_churn is not None and ref_churn.get("calibration"):
        paths["calibration"] = plot_calibration(
            None, None, out / "calibration.png", bins=ref_churn["calibration"]
        )
    if orders_pred is not None and orders_actual is not None:
        paths["pred_vs_actual_orders"] = plot_pred_vs_actual(
            orders_pred, orders_actual, out / "pred_vs_actual_orders.png"
        )
    if weekly is not None:
        paths["weekly_orders"] = plot_weekly_aggregate(
            weekly["window_end"], weekly["actual"], weekly["predicted"], out / "weekly_orders.png"
        )

    verdict_rows = verdicts(models, reference)
    payload = {
        "title": title,
        "reference": reference,
        "models": models,
        "comparison": compare({reference: models[reference], **models}),
        "verdicts": verdict_rows,
        "history": history,
        "export": export_info,
        "extra": extra,
        "plots": {k: p.name for k, p in paths.items()},
    }
    json_path = out / "report.json"
    json_path.write_text(json.dumps(_jsonable(payload), indent=2, allow_nan=False) + "\n")
    paths["json"] = json_path

    md: list[str] = [f"# {title}", ""]
    if extra:
        md += ["## Run", ""]
        md += [f"- **{k}**: {_jsonable(v)}" for k, v in extra.items() if k != "resources"]
        md.append("")
        md += resources_lines(extra.get("resources"))
        md += sample_lines(extra.get("training", {}).get("samples"))
    md += ["## Metrics (test set)", "", *markdown_tables(models, reference)]
    md += ["## Model vs baselines", "", *verdict_lines(models, reference), ""]
    if history and history.get("val_loss"):
        best = int(np.argmin(history["val_loss"]))
        md += [
            "## Training",
            "",
            f"- epochs run: {len(history['val_loss'])}, best epoch: {best + 1} "
            f"(val_loss {history['val_loss'][best]:.4f})",
            "",
        ]
    if export_info:
        md += ["## Export", ""]
        md += [f"- **{k}**: {_jsonable(v)}" for k, v in export_info.items()]
        md.append("")
    if paths.keys() - {"json"}:
        md += ["## Plots", ""]
        md += [f"![{k}]({p.name})" for k, p in paths.items() if k != "json"]
        md.append("")
    md_path = out / "report.md"
    md_path.write_text("\n".join(md))
    paths["markdown"] = md_path
    log.info("report written to %s (%d files)", out, len(paths))
    return paths
