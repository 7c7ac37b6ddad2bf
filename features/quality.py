"""Model quality over a cohort, in parts that add up exactly: the online evaluation's arithmetic.

Owns :class:`CohortTally`, the summary of one cohort's predictions and realised outcomes (in
the worker: one window end, one model version) that each partition builds for its own users
and that merge into the whole cohort's by addition (issue 15):

* demand errors of orders and spend as sums (absolute, squared, predicted, actual);
* churn log loss and Brier score as sums, calibration bins as per-bin counts and sums;
* ROC-AUC and PR-AUC from an **exact score histogram**: every distinct churn score with its
  count of churners and of stayers. Merging adds counts at equal scores, so the merged AUC is
  the whole cohort's, not an approximation, with the offline evaluation's tie handling
  (:mod:`training.evaluate`: a churner and a stayer with equal scores count one half; the
  precision-recall curve steps at distinct scores). A partition's histogram holds at most one
  entry per user it scored (float32 scores: ~10 bytes each in the record).

:func:`quality` gives the figures under the keys :mod:`training.evaluate` uses, so an online
figure and the offline one for the same cohort compare key by key. Sums merge in any order to
the same figure up to float64 rounding (about 1e-15 relative); counts and AUCs exactly.
Pure: NumPy only, no I/O, no Faust, no TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

CALIBRATION_BINS = 10
"""Equal-width bins of [0, 1] for the reliability table, as the offline report uses."""

LOG_LOSS_EPS = 1e-7
"""Probabilities are clipped to ``[eps, 1 - eps]`` for the log loss, as offline."""


@dataclass(frozen=True)
class ErrorSums:
    """A point forecast's errors over a cohort, as sums."""

    abs_error: float
    squared_error: float
    predicted: float
    actual: float

    def __add__(self, other: ErrorSums) -> ErrorSums:
        return ErrorSums(
            self.abs_error + other.abs_error,
            self.squared_error + other.squared_error,
            self.predicted + other.predicted,
            self.actual + other.actual,
        )


@dataclass(frozen=True)
class CohortTally:
    """One cohort's (or one partition's part of it) predictions against outcomes."""

    n: int
    orders: ErrorSums
    spend: ErrorSums
    log_loss_sum: float
    brier_sum: float
    bin_count: IntArray
    """Per calibration bin: predictions in it."""
    bin_prob: FloatArray
    """Per calibration bin: sum of the predicted churn probabilities."""
    bin_churned: IntArray
    """Per calibration bin: churners."""
    scores: FloatArray
    """Distinct churn scores, ascending."""
    churners: IntArray
    """Per distinct score: users with it who churned."""
    stayers: IntArray
    """Per distinct score: users with it who did not."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly and exact (float64 values round-trip through JSON)."""
        return {
            "n": self.n,
            "orders": asdict(self.orders),
            "spend": asdict(self.spend),
            "log_loss_sum": self.log_loss_sum,
            "brier_sum": self.brier_sum,
            "bins": {
                "count": self.bin_count.tolist(),
                "prob": self.bin_prob.tolist(),
                "churned": self.bin_churned.tolist(),
            },
            "histogram": {
                "score": self.scores.tolist(),
                "churned": self.churners.tolist(),
                "stayed": self.stayers.tolist(),
            },
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CohortTally:
        bins, hist = d["bins"], d["histogram"]
        return cls(
            int(d["n"]),
            ErrorSums(**d["orders"]),
            ErrorSums(**d["spend"]),
            float(d["log_loss_sum"]),
            float(d["brier_sum"]),
            np.asarray(bins["count"], dtype=np.int64),
            np.asarray(bins["prob"], dtype=np.float64),
            np.asarray(bins["churned"], dtype=np.int64),
            np.asarray(hist["score"], dtype=np.float64),
            np.asarray(hist["churned"], dtype=np.int64),
            np.asarray(hist["stayed"], dtype=np.int64),
        )


def _vector(values: npt.ArrayLike, name: str, n: int | None = None) -> FloatArray:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if n is not None and v.size != n:
        raise ValueError(f"{name} has {v.size} values, expected {n}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"non-finite values in {name}")
    return v


def _errors(pred: FloatArray, actual: FloatArray) -> ErrorSums:
    diff = pred - actual
    return ErrorSums(
        float(np.abs(diff).sum()),
        float((diff * diff).sum()),
        float(pred.sum()),
        float(actual.sum()),
    )


def tally(
    pred_orders: npt.ArrayLike,
    actual_orders: npt.ArrayLike,
    pred_spend: npt.ArrayLike,
    actual_spend: npt.ArrayLike,
    churn_probability: npt.ArrayLike,
    churned: npt.ArrayLike,
    n_bins: int = CALIBRATION_BINS,
) -> CohortTally:
    """The tally of one set of users: their predictions and what happened (``churned``: 1 if
    no order in the horizon, else 0)."""
    p_orders = _vector(pred_orders, "pred_orders")
    n = p_orders.size
    a_orders = _vector(actual_orders, "actual_orders", n)
    p_spend = _vector(pred_spend, "pred_spend", n)
    a_spend = _vector(actual_spend, "actual_spend", n)
    prob = _vector(churn_probability, "churn_probability", n)
    label = _vector(churned, "churned", n)
    if not np.all((label == 0) | (label == 1)):
        raise ValueError("churned must be 0 or 1")
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    q = np.clip(prob, LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)
    log_loss = -(label * np.log(q) + (1.0 - label) * np.log(1.0 - q))
    idx = np.clip((prob * n_bins).astype(np.int64), 0, n_bins - 1)
    scores, inverse = np.unique(prob, return_inverse=True)
    churners = np.bincount(inverse, weights=label, minlength=scores.size).astype(np.int64)
    counts = np.bincount(inverse, minlength=scores.size).astype(np.int64)
    return CohortTally(
        n=n,
        orders=_errors(p_orders, a_orders),
        spend=_errors(p_spend, a_spend),
        log_loss_sum=float(log_loss.sum()),
        brier_sum=float(((prob - label) ** 2).sum()),
        bin_count=np.bincount(idx, minlength=n_bins).astype(np.int64),
        bin_prob=np.asarray(np.bincount(idx, weights=prob, minlength=n_bins), dtype=np.float64),
        bin_churned=np.bincount(idx, weights=label, minlength=n_bins).astype(np.int64),
        scores=scores,
        churners=churners,
        stayers=counts - churners,
    )


def merge(tallies: Iterable[CohortTally]) -> CohortTally:
    """The tally of the union of disjoint sets of users (partitions of one cohort)."""
    parts = list(tallies)
    if not parts:
        raise ValueError("nothing to merge")
    n_bins = {t.bin_count.size for t in parts}
    if len(n_bins) != 1:
        raise ValueError(f"tallies with different calibration bins: {sorted(n_bins)}")
    scores, inverse = np.unique(np.concatenate([t.scores for t in parts]), return_inverse=True)
    churners = np.bincount(
        inverse, weights=np.concatenate([t.churners for t in parts]), minlength=scores.size
    )
    stayers = np.bincount(
        inverse, weights=np.concatenate([t.stayers for t in parts]), minlength=scores.size
    )
    first = parts[0]
    orders, spend = first.orders, first.spend
    for t in parts[1:]:
        orders, spend = orders + t.orders, spend + t.spend
    return CohortTally(
        n=sum(t.n for t in parts),
        orders=orders,
        spend=spend,
        log_loss_sum=math.fsum(t.log_loss_sum for t in parts),
        brier_sum=math.fsum(t.brier_sum for t in parts),
        bin_count=np.sum([t.bin_count for t in parts], axis=0).astype(np.int64),
        bin_prob=np.sum([t.bin_prob for t in parts], axis=0),
        bin_churned=np.sum([t.bin_churned for t in parts], axis=0).astype(np.int64),
        scores=scores,
        # Counts below 2**53 are exact in float64's bincount.
        churners=np.rint(churners).astype(np.int64),
        stayers=np.rint(stayers).astype(np.int64),
    )


def split(t: CohortTally, max_scores: int) -> list[CohortTally]:
    """``t`` as tallies of at most ``max_scores`` histogram entries each, whose :func:`merge`
    is ``t`` again (exactly): the first carries the sums and bins, the rest histogram slices
    only. A partition's part of a large cohort then fits in Kafka messages of bounded size."""
    if max_scores < 1:
        raise ValueError("max_scores must be >= 1")
    size = t.scores.size
    if size <= max_scores:
        return [t]
    zero = ErrorSums(0.0, 0.0, 0.0, 0.0)
    parts: list[CohortTally] = []
    for start in range(0, size, max_scores):
        cut = slice(start, start + max_scores)
        churners, stayers = t.churners[cut], t.stayers[cut]
        if start == 0:
            parts.append(replace(t, scores=t.scores[cut], churners=churners, stayers=stayers))
            continue
        parts.append(
            CohortTally(
                n=0,
                orders=zero,
                spend=zero,
                log_loss_sum=0.0,
                brier_sum=0.0,
                bin_count=np.zeros_like(t.bin_count),
                bin_prob=np.zeros_like(t.bin_prob),
                bin_churned=np.zeros_like(t.bin_churned),
                scores=t.scores[cut],
                churners=churners,
                stayers=stayers,
            )
        )
    # ``n`` counts users; a slice's users are counted once, in the first part.
    return parts


def roc_auc(t: CohortTally) -> float:
    """Mann-Whitney: the chance a churner scores above a stayer, ties counting one half."""
    pos, neg = int(t.churners.sum()), int(t.stayers.sum())
    if pos == 0 or neg == 0:
        return math.nan
    stayers_below = np.cumsum(t.stayers) - t.stayers
    wins = float(np.sum(t.churners * (stayers_below + 0.5 * t.stayers)))
    return wins / (pos * neg)


def pr_auc(t: CohortTally) -> float:
    """Average precision, one threshold per distinct score (highest first)."""
    pos = int(t.churners.sum())
    if pos == 0:
        return math.nan
    tp = np.cumsum(t.churners[::-1]).astype(np.float64)
    seen = np.cumsum((t.churners + t.stayers)[::-1]).astype(np.float64)
    recall = tp / pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * (tp / seen)))


def _demand(s: ErrorSums, n: int) -> dict[str, float]:
    if n == 0:
        return {k: math.nan for k in ("mae", "rmse", "wape", "bias", "sum_pred", "sum_actual")}
    return {
        "mae": s.abs_error / n,
        "rmse": math.sqrt(s.squared_error / n),
        "wape": s.abs_error / s.actual if s.actual != 0 else math.nan,
        "bias": (s.predicted - s.actual) / s.actual if s.actual != 0 else math.nan,
        "sum_pred": s.predicted,
        "sum_actual": s.actual,
    }


def quality(t: CohortTally) -> dict[str, Any]:
    """The cohort's figures, keyed as :func:`training.evaluate.evaluate_demand` and
    :func:`~training.evaluate.evaluate_churn` key them (``orders``, ``spend``, ``churn``)."""
    n = t.n
    pos = int(t.churners.sum())
    filled = np.flatnonzero(t.bin_count)
    calibration = [
        [
            float(t.bin_prob[b] / t.bin_count[b]),
            float(t.bin_churned[b] / t.bin_count[b]),
            int(t.bin_count[b]),
        ]
        for b in filled
    ]
    ece = math.fsum(c * abs(mp - fp) for mp, fp, c in calibration) / n if n else math.nan
    churn = {
        "n": n,
        "n_pos": pos,
        "base_rate": pos / n if n else math.nan,
        "mean_pred": float(t.bin_prob.sum()) / n if n else math.nan,
        "roc_auc": roc_auc(t),
        "pr_auc": pr_auc(t),
        "log_loss": t.log_loss_sum / n if n else math.nan,
        "brier": t.brier_sum / n if n else math.nan,
        "ece": ece,
        "calibration": calibration,
    }
    return {
        "n": n,
        "orders": {"n": n, **_demand(t.orders, n)},
        "spend": {"n": n, **_demand(t.spend, n)},
        "churn": churn,
    }


__all__ = [
    "CALIBRATION_BINS",
    "CohortTally",
    "ErrorSums",
    "merge",
    "pr_auc",
    "quality",
    "roc_auc",
    "split",
    "tally",
]
