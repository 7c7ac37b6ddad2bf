"""A window end's close cohort in the shapes the worker scores, for the online evaluation's
tests (quality tallies, feedback records, schemas)."""

from __future__ import annotations

import numpy as np

from features.feedback import PredictionOutcome
from features.outcomes import Outcome, Pending
from features.quality import CohortTally, tally


def close_cohort(seed: int = 3) -> dict[str, np.ndarray]:
    """One window end's close population, in the shapes the worker scores:

    * 1,200 active buyers: a few orders predicted and realised, low churn scores;
    * 900 long-dormant customers: near-zero orders, churn scores crowded near the floor,
      600 of them with exactly the same float32 score (identical dormant states);
    * 400 browsers who never ordered: zero orders predicted and realised, high churn scores.

    Scores are float32 values, as ONNX Runtime gives them, so ties are real ties.
    """
    rng = np.random.default_rng(seed)
    active = 1_200
    dormant = 900
    browsers = 400
    n = active + dormant + browsers
    pred = np.concatenate(
        [
            rng.gamma(2.0, 1.2, active),
            rng.gamma(0.3, 0.2, dormant),
            np.zeros(browsers),
        ]
    )
    actual = np.concatenate(
        [
            rng.poisson(pred[:active]),
            rng.poisson(0.05, dormant),
            np.zeros(browsers),
        ]
    ).astype(np.float64)
    value = rng.gamma(2.0, 30.0, n)
    prob = np.concatenate(
        [
            rng.beta(2, 6, active),
            np.r_[np.full(600, 0.84375), rng.beta(12, 2, dormant - 600)],
            rng.beta(9, 1, browsers),
        ]
    ).astype(np.float32)
    churned = (actual == 0).astype(np.float64)
    users = np.array([f"u{i:05d}" for i in range(n)])
    return {
        "users": users,
        "pred_orders": pred,
        "actual_orders": actual,
        "pred_spend": pred * value,
        "actual_spend": actual * value,
        "prob": prob.astype(np.float64),
        "churned": churned,
    }


def tally_of(c: dict[str, np.ndarray], mask: np.ndarray) -> CohortTally:
    return tally(
        c["pred_orders"][mask],
        c["actual_orders"][mask],
        c["pred_spend"][mask],
        c["actual_spend"][mask],
        c["prob"][mask],
        c["churned"][mask],
    )


WEEK = 7 * 86_400_000
END = 1_300_000_000_000 - 1_300_000_000_000 % WEEK
PARTITIONS = 4


def outcomes_of(c: dict[str, np.ndarray], end_ms: int = END) -> list[PredictionOutcome]:
    """The cohort as the worker's records: one on-time outcome per user."""
    return [
        PredictionOutcome.create(
            Outcome(
                Pending(0, "m-1", float(po), float(ps), float(p), 0.0, 0.0), float(ao), float(a_s)
            ),
            user_id=str(u),
            window_end_ms=end_ms,
            settled_through_ms=end_ms + 13 * WEEK,
            horizon_windows=13,
            on_time=True,
            emitted_at_ms=0,
        )
        for u, po, ao, ps, a_s, p in zip(
            c["users"],
            c["pred_orders"],
            c["actual_orders"],
            c["pred_spend"],
            c["actual_spend"],
            c["prob"],
            strict=True,
        )
    ]
