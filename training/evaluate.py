"""Offline evaluation metrics for the demand (count/amount) and churn (probability) outputs.

NumPy only (no scikit-learn, no TensorFlow). Conventions:

* Demand: ``wape = sum|pred - actual| / sum(actual)``, ``bias = sum(pred - actual) / sum(actual)``
  (both NaN when ``sum(actual) == 0``); ``mape_nonzero`` is the mean of
  ``|pred - actual| / actual`` over rows with ``actual != 0`` and is reported with the number of
  rows used (``mape_n``).
* Churn: ``roc_auc`` is the Mann-Whitney statistic with average ranks (a tie between a positive
  and a negative counts 1/2); ``pr_auc`` is average precision (step-wise, ties grouped, as
  scikit-learn's ``average_precision_score``); ``log_loss`` clips p to ``[eps, 1 - eps]``.
  Rank metrics are NaN when only one class is present.

``evaluate_demand`` / ``evaluate_churn`` return flat JSON-friendly dicts; ``compare`` and
``verdicts`` turn ``{model_name: {task: metrics}}`` into table rows and "beats baseline" lines.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

ArrayLike = npt.ArrayLike
FloatArray = npt.NDArray[np.float64]

#: Metric keys shown for each kind of task, with whether higher is better.
DEMAND_METRICS: tuple[str, ...] = ("mae", "rmse", "wape", "bias", "mape_nonzero")
CHURN_METRICS: tuple[str, ...] = ("roc_auc", "pr_auc", "log_loss", "brier")
HIGHER_IS_BETTER: dict[str, bool] = {
    "mae": False,
    "rmse": False,
    "wape": False,
    "mape_nonzero": False,
    "roc_auc": True,
    "pr_auc": True,
    "log_loss": False,
    "brier": False,
    "ece": False,
}


def _pair(pred: ArrayLike, actual: ArrayLike) -> tuple[FloatArray, FloatArray]:
    p = np.asarray(pred, dtype=np.float64).reshape(-1)
    a = np.asarray(actual, dtype=np.float64).reshape(-1)
    if p.shape != a.shape:
        raise ValueError(f"pred has {p.size} values, actual {a.size}")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(a))):
        raise ValueError("non-finite values in pred/actual")
    return p, a


# --- demand -------------------------------------------------------------------------------


def mae(pred: ArrayLike, actual: ArrayLike) -> float:
    p, a = _pair(pred, actual)
    return float(np.mean(np.abs(p - a))) if p.size else math.nan


def rmse(pred: ArrayLike, actual: ArrayLike) -> float:
    p, a = _pair(pred, actual)
    return float(np.sqrt(np.mean((p - a) ** 2))) if p.size else math.nan


def wape(pred: ArrayLike, actual: ArrayLike) -> float:
    """Weighted absolute percentage error: ``sum|pred - actual| / sum(actual)``."""
    p, a = _pair(pred, actual)
    total = float(np.sum(a))
    return float(np.sum(np.abs(p - a)) / total) if total != 0 else math.nan


def bias(pred: ArrayLike, actual: ArrayLike) -> float:
    """Relative aggregate bias: ``sum(pred - actual) / sum(actual)`` (> 0: over-forecast)."""
    p, a = _pair(pred, actual)
    total = float(np.sum(a))
    return float(np.sum(p - a) / total) if total != 0 else math.nan


def mape_nonzero(pred: ArrayLike, actual: ArrayLike) -> tuple[float, int]:
    """Mean ``|pred - actual| / |actual|`` over rows with ``actual != 0``; returns (mape, n)."""
    p, a = _pair(pred, actual)
    nz = a != 0
    n = int(nz.sum())
    if n == 0:
        return math.nan, 0
    return float(np.mean(np.abs(p[nz] - a[nz]) / np.abs(a[nz]))), n


def evaluate_demand(pred: ArrayLike, actual: ArrayLike) -> dict[str, float | int]:
    """All demand metrics, plus ``n``, ``mape_n``, ``sum_pred`` and ``sum_actual``."""
    p, a = _pair(pred, actual)
    mape, mape_n = mape_nonzero(p, a)
    return {
        "n": int(p.size),
        "mae": mae(p, a),
        "rmse": rmse(p, a),
        "wape": wape(p, a),
        "bias": bias(p, a),
        "mape_nonzero": mape,
        "mape_n": mape_n,
        "sum_pred": float(p.sum()),
        "sum_actual": float(a.sum()),
    }


# --- churn --------------------------------------------------------------------------------


def _binary(p: ArrayLike, y: ArrayLike) -> tuple[FloatArray, FloatArray]:
    prob, lab = _pair(p, y)
    if not np.all((lab == 0) | (lab == 1)):
        raise ValueError("labels must be 0/1")
    return prob, lab


def _average_ranks(x: FloatArray) -> FloatArray:
    """1-based ranks of ``x`` with ties given the mean of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # start index of each run of equal values
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], xs.size]  # exclusive
    run_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks_sorted = np.repeat(run_rank, ends - starts)
    ranks = np.empty_like(ranks_sorted)
    ranks[order] = ranks_sorted
    return ranks


def roc_auc(p: ArrayLike, y: ArrayLike) -> float:
    """Area under the ROC curve via the rank-sum (Mann-Whitney U) with tie correction."""
    prob, lab = _binary(p, y)
    n_pos = int(lab.sum())
    n_neg = int(lab.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(prob)
    u = float(ranks[lab == 1].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def pr_auc(p: ArrayLike, y: ArrayLike) -> float:
    """Average precision: ``sum_k (R_k - R_{k-1}) * P_k`` over distinct score thresholds."""
    prob, lab = _binary(p, y)
    n_pos = int(lab.sum())
    if n_pos == 0:
        return math.nan
    order = np.argsort(-prob, kind="mergesort")
    ps, ys = prob[order], lab[order]
    # last index of each run of equal scores = one threshold
    last = np.flatnonzero(np.r_[ps[1:] != ps[:-1], True])
    tps = np.cumsum(ys)[last]
    precision = tps / (last + 1)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def log_loss(p: ArrayLike, y: ArrayLike, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy with p clipped to ``[eps, 1 - eps]`` (float32-safe eps)."""
    prob, lab = _binary(p, y)
    if prob.size == 0:
        return math.nan
    q = np.clip(prob, eps, 1.0 - eps)
    return float(-np.mean(lab * np.log(q) + (1.0 - lab) * np.log(1.0 - q)))


def brier(p: ArrayLike, y: ArrayLike) -> float:
    prob, lab = _binary(p, y)
    return float(np.mean((prob - lab) ** 2)) if prob.size else math.nan


def calibration_bins(
    p: ArrayLike, y: ArrayLike, n_bins: int = 10
) -> list[tuple[float, float, int]]:
    """Reliability table over equal-width bins of [0, 1]: ``(mean_pred, frac_pos, count)``.

    Only non-empty bins are returned, in increasing order of probability; p == 1 falls in
    the last bin.
    """
    prob, lab = _binary(p, y)
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    idx = np.clip((prob * n_bins).astype(np.int64), 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=prob, minlength=n_bins)
    sum_y = np.bincount(idx, weights=lab, minlength=n_bins)
    return [
        (float(sum_p[b] / counts[b]), float(sum_y[b] / counts[b]), int(counts[b]))
        for b in range(n_bins)
        if counts[b] > 0
    ]


def expected_calibration_error(p: ArrayLike, y: ArrayLike, n_bins: int = 10) -> float:
    """Count-weighted mean ``|mean_pred - frac_pos|`` over :func:`calibration_bins`."""
    bins = calibration_bins(p, y, n_bins)
    total = sum(c for _, _, c in bins)
    if total == 0:
        return math.nan
    return float(sum(c * abs(mp - fp) for mp, fp, c in bins) / total)


def evaluate_churn(p: ArrayLike, y: ArrayLike, n_bins: int = 10) -> dict[str, Any]:
    """All churn metrics plus ``n``, ``n_pos``, ``base_rate``, ``mean_pred``, ``ece`` and the
    ``calibration`` table (list of ``[mean_pred, frac_pos, count]``)."""
    prob, lab = _binary(p, y)
    return {
        "n": int(prob.size),
        "n_pos": int(lab.sum()),
        "base_rate": float(lab.mean()) if lab.size else math.nan,
        "mean_pred": float(prob.mean()) if prob.size else math.nan,
        "roc_auc": roc_auc(prob, lab),
        "pr_auc": pr_auc(prob, lab),
        "log_loss": log_loss(prob, lab),
        "brier": brier(prob, lab),
        "ece": expected_calibration_error(prob, lab, n_bins),
        "calibration": [list(b) for b in calibration_bins(prob, lab, n_bins)],
    }


# --- comparison ---------------------------------------------------------------------------


def lift_by_decile(score: ArrayLike, actual: ArrayLike, n: int = 10) -> list[dict[str, float]]:
    """Rows ranked by ``score`` (highest first) in ``n`` equal groups: each group's mean score,
    mean actual and lift (group mean actual / overall mean actual)."""
    s, a = _pair(score, actual)
    if s.size == 0:
        return []
    order = np.argsort(-s, kind="stable")
    overall = float(a.mean())
    out: list[dict[str, float]] = []
    for k, idx in enumerate(np.array_split(order, n)):
        if idx.size == 0:
            continue
        mean_a = float(a[idx].mean())
        out.append(
            {
                "decile": float(k + 1),
                "mean_score": float(s[idx].mean()),
                "mean_actual": mean_a,
                "lift": mean_a / overall if overall > 0 else math.nan,
            }
        )
    return out


def task_kind(metrics: Mapping[str, Any]) -> str:
    """``"demand"`` or ``"churn"`` from the keys of a metrics dict."""
    if "roc_auc" in metrics:
        return "churn"
    if "mae" in metrics:
        return "demand"
    raise ValueError(f"cannot tell the task kind of metrics with keys {sorted(metrics)}")


def compare(
    models: Mapping[str, Mapping[str, Mapping[str, Any]]],
    tasks: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Flatten ``{model: {task: metrics}}`` into one row per model.

    Each row is ``{"name": model, "<task>_<metric>": value, ...}`` for the headline metrics
    of each task's kind (demand: MAE, RMSE, WAPE, bias, MAPE (+ ``mape_n``); churn: ROC-AUC,
    PR-AUC, log loss, Brier). A task a model lacks gives ``None`` cells. Row order follows
    ``models``; ``tasks`` defaults to every task seen, in first-seen order.
    """
    if tasks is None:
        seen: dict[str, None] = {}
        for per_task in models.values():
            for t in per_task:
                seen.setdefault(t, None)
        tasks = list(seen)
    kinds: dict[str, str] = {}
    for t in tasks:
        for per_task in models.values():
            if t in per_task:
                kinds[t] = task_kind(per_task[t])
                break
    rows: list[dict[str, Any]] = []
    for name, per_task in models.items():
        row: dict[str, Any] = {"name": name}
        for t in tasks:
            keys = (*DEMAND_METRICS, "mape_n") if kinds.get(t) == "demand" else CHURN_METRICS
            metrics = per_task.get(t)
            for k in keys:
                value = None if metrics is None else metrics.get(k)
                row[f"{t}_{k}"] = value
        rows.append(row)
    return rows


def _better(metric: str, a: float | None, b: float | None) -> bool | None:
    """Is value ``a`` strictly better than ``b`` for ``metric``? None if not comparable."""
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
        return None
    if metric == "bias":
        return abs(a) < abs(b)
    return a > b if HIGHER_IS_BETTER[metric] else a < b


def verdicts(
    models: Mapping[str, Mapping[str, Mapping[str, Any]]],
    reference: str,
    checks: Sequence[tuple[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """Does ``reference`` beat each other model on the given ``(task, metric)`` checks?

    Default checks: MAE on every demand task and ROC-AUC on every churn task the reference
    has. Returns rows ``{"baseline", "task", "metric", "model_value", "baseline_value",
    "beats"}`` with ``beats`` True/False, or None when the baseline lacks the task.
    ``bias`` compares absolute values; every other metric uses its direction.
    """
    ref = models[reference]
    if checks is None:
        checks = [(t, "mae" if task_kind(m) == "demand" else "roc_auc") for t, m in ref.items()]
    out: list[dict[str, Any]] = []
    for name, per_task in models.items():
        if name == reference:
            continue
        for task, metric in checks:
            mv = ref.get(task, {}).get(metric)
            bv = per_task.get(task, {}).get(metric) if task in per_task else None
            out.append(
                {
                    "baseline": name,
                    "task": task,
                    "metric": metric,
                    "model_value": mv,
                    "baseline_value": bv,
                    "beats": _better(metric, mv, bv) if bv is not None else None,
                }
            )
    return out
