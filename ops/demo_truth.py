"""Are the demo's churn scores right? The generator's ground truth beside the live scores.

The seeded generator (:func:`ingest.generator.simulate`) decides who churns and when; this
module keeps that truth per user (:class:`Truth`: written as ``truth.jsonl`` beside the
outputs) and compares it with each user's current churn probability as
:class:`ops.demo_view.Tally` reduces it (:func:`evaluate`): ROC-AUC, a calibration table, the
score spread, and the share of true churners among the users the alerter alerted. The metric
functions are :mod:`training.evaluate`'s (numpy only, no TensorFlow), so the demo and the
offline report compute them identically.

A user is a true churner when the generator makes them leave during the replayed span. Every
such departure falls before the horizon of the user's latest window-close score ends (the
span is shorter than score time + horizon for the shipped demo settings), so "leaves" is what
a churn score there predicts; the generator has no departures after the span.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import orjson

from training.evaluate import calibration_bins, roc_auc

CALIBRATION_BINS: Final = 10
QUANTILES: Final = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass(frozen=True, slots=True)
class Truth:
    """Per user: when the generator makes them churn (``None``: never, in the span)."""

    churn_ms: Mapping[str, int | None]
    span_end_ms: int

    def churned(self, user_id: str) -> bool | None:
        """Whether the user churns in the span; ``None`` for a user the generator never made."""
        if user_id not in self.churn_ms:
            return None
        return self.churn_ms[user_id] is not None

    @classmethod
    def from_users(cls, users: Any, span_end_ms: int) -> Truth:
        """From :attr:`ingest.generator.SimulatedClickstream.users` (``churn_ms`` -1: never)."""
        ids = [str(u) for u in users["user_id"]]
        churn = [int(c) for c in users["churn_ms"]]
        churn_ms = {u: (c if c >= 0 else None) for u, c in zip(ids, churn, strict=True)}
        return cls(churn_ms, span_end_ms)

    def write(self, path: Path) -> None:
        """``truth.jsonl``: one ``{"user_id", "churned", "churn_ms"}`` per line."""
        with path.open("wb") as f:
            for user, churn in sorted(self.churn_ms.items()):
                record = {"user_id": user, "churned": churn is not None, "churn_ms": churn}
                f.write(orjson.dumps(record) + b"\n")

    @classmethod
    def read(cls, path: Path, span_end_ms: int = 0) -> Truth:
        churn: dict[str, int | None] = {}
        with path.open("rb") as f:
            for line in f:
                if line.strip():
                    r = orjson.loads(line)
                    churn[str(r["user_id"])] = None if r["churn_ms"] is None else int(r["churn_ms"])
        return cls(churn, span_end_ms)


def _finite(x: float) -> float | None:
    return round(x, 4) if math.isfinite(x) else None


def evaluate(
    scores: Mapping[str, float], alerted: Iterable[str], truth: Truth, *, high: float | None = None
) -> dict[str, Any]:
    """Scores (user -> current churn probability) and alerts against the truth.

    Users without a truth entry (e.g. ids the generator did not make) are left out and counted
    in ``unknown_users``. ``high`` (the served model's high-risk cut, if known) adds the share
    of churners above it, the alerter's rule without its cooldown.
    """
    users = [u for u in scores if truth.churned(u) is not None]
    p = np.array([scores[u] for u in users], dtype=np.float64)
    y = np.array([1.0 if truth.churned(u) else 0.0 for u in users], dtype=np.float64)
    alerted_known = [u for u in set(alerted) if truth.churned(u) is not None]
    alerted_churners = sum(1 for u in alerted_known if truth.churned(u))
    bins = calibration_bins(p, y, CALIBRATION_BINS) if len(users) else []
    out: dict[str, Any] = {
        "users_scored": len(users),
        "unknown_users": len(scores) - len(users),
        "true_churners": int(y.sum()),
        "base_rate": _finite(float(y.mean())) if len(users) else None,
        "roc_auc": _finite(roc_auc(p, y)) if len(users) else None,
        "score_quantiles": (
            {f"p{round(q * 100):02d}": round(float(np.quantile(p, q)), 4) for q in QUANTILES}
            if len(users)
            else {}
        ),
        "mean_score": _finite(float(p.mean())) if len(users) else None,
        "calibration": [
            {"mean_score": round(mp, 4), "churn_rate": round(fp, 4), "users": n}
            for mp, fp, n in bins
        ],
        "alerted_users": len(alerted_known),
        "alerted_true_churners": alerted_churners,
        "alerted_precision": (
            round(alerted_churners / len(alerted_known), 4) if alerted_known else None
        ),
    }
    if high is not None and len(users):
        above = p >= high
        out["high_cut"] = high
        out["above_high"] = int(above.sum())
        out["above_high_precision"] = _finite(float(y[above].mean())) if above.any() else None
    return out


__all__ = ["CALIBRATION_BINS", "Truth", "evaluate"]
