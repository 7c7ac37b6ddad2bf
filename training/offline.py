"""Offline prediction with an exported model: the reference the stream is compared against.

Owns :func:`predict_windows`, which scores every user the close population rule
(:func:`features.windows.close_population`) selects at each window close of a history, with the
batch feature path and the same ONNX Runtime scorer the worker uses. Replaying that history
through Kafka must give the same (user, window end) keys and scores. And
:func:`evaluate_closes`, the offline evaluation of those predictions at every window end whose
horizon the history covers: what the worker's online evaluation (``model-quality``) must give
for the same cohorts. No TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.batch import WindowTensor, sequences_at
from features.manifest import OUTPUT_NAMES
from features.windows import DORMANT_CHURN_FLOOR, FEATURE_INDEX, close_population
from serving.scorer import Scorer, load_model
from training.dataset import Samples, build_tensor, first_window, to_event_arrays
from training.origins import OriginSet
from training.resources import progress

SCORE_COLUMNS = (*OUTPUT_NAMES, "mean_orders")
"""The score columns of a predictions frame: the served outputs and the model's mean."""


def score_samples(scorer: Scorer, samples: Samples, batch_size: int = 8192) -> pd.DataFrame:
    """One row per sample: ids, window end, the three scores and the actuals if known."""
    parts: dict[str, list[np.ndarray]] = {
        "expected_orders": [],
        "expected_spend": [],
        "churn_probability": [],
        "mean_orders": [],
    }
    for lo in range(0, len(samples), batch_size):
        scores = scorer.score(samples.sequences[lo : lo + batch_size])
        for k in OUTPUT_NAMES:
            parts[k].append(getattr(scores, k))
        parts["mean_orders"].append(scores.means())
    columns = {k: np.concatenate(v) if v else np.zeros(0, np.float32) for k, v in parts.items()}
    return pd.DataFrame(
        {
            "user_id": samples.user_ids.astype(str),
            "window_end": pd.to_datetime(samples.window_end_ms, unit="ms", utc=True),
            "window_end_ms": samples.window_end_ms,
            **columns,
            "actual_orders": samples.orders,
            "actual_spend": samples.spend,
            "actual_churn": samples.churn,
        }
    )


def score_rows(scorer: Scorer, rows: OriginSet, batch_size: int = 8192) -> pd.DataFrame:
    """Like :func:`score_samples` for training's origin rows (actuals where fully observed)."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in SCORE_COLUMNS}
    batches = range(0, len(rows), batch_size)
    for lo in progress(batches, desc="score", unit="batch"):
        scores = scorer.score(rows.sequences[lo : lo + batch_size])
        for k in OUTPUT_NAMES:
            parts[k].append(getattr(scores, k))
        parts["mean_orders"].append(scores.means())
    columns = {k: np.concatenate(v) if v else np.zeros(0, np.float32) for k, v in parts.items()}
    return rows_frame(
        rows.user_ids, rows.window_end_ms, columns, rows.orders_total, rows.spend_total
    )


def rows_frame(
    user_ids: np.ndarray,
    window_end_ms: np.ndarray,
    columns: dict[str, np.ndarray],
    orders_total: np.ndarray,
    spend_total: np.ndarray,
) -> pd.DataFrame:
    """The predictions frame of scored rows: ids, window end, :data:`SCORE_COLUMNS` and the
    actuals (NaN where the horizon is not fully observed)."""
    return pd.DataFrame(
        {
            "user_id": user_ids.astype(str),
            "window_end": pd.to_datetime(window_end_ms, unit="ms", utc=True),
            "window_end_ms": window_end_ms,
            **{k: columns[k] for k in SCORE_COLUMNS},
            "actual_orders": orders_total,
            "actual_spend": spend_total,
            "actual_churn": np.where(
                np.isnan(orders_total), np.nan, (orders_total == 0).astype(float)
            ),
        }
    )


def score_closes(
    scorer: Scorer,
    tensor: WindowTensor,
    user_ids: np.ndarray,
    windows: range,
    dormant_churn_floor: float = DORMANT_CHURN_FLOOR,
) -> pd.DataFrame:
    """The worker's window-close signals for ``windows`` (consecutive, in order), offline.

    Close by close, because the rule reads each user's latest close score: users are
    vectorised within a close, closes run in sequence. Only the users a close selects are
    scored, so a customer past the floor costs nothing after, as in the worker.
    """
    spec = tensor.spec
    previous = np.full(len(user_ids), np.nan)  # latest close churn per user, NaN: none yet
    parts: list[pd.DataFrame] = []
    for window in windows:
        seq = sequences_at(tensor, window)
        mask = close_population(seq, spec.lookback, previous, dormant_churn_floor)
        n = int(mask.sum())
        nan = np.full(n, np.nan)
        samples = Samples(
            user_ids[mask],
            np.full(n, window, dtype=np.int64),
            np.full(n, spec.end_ms(window), dtype=np.int64),
            seq[mask],
            nan,
            nan,
            nan,
        )
        frame = score_samples(scorer, samples)
        previous[mask] = frame["churn_probability"].to_numpy(dtype=np.float64)
        parts.append(frame)
    return pd.concat(parts, ignore_index=True)


def predict_windows(
    events: pd.DataFrame,
    model_dir: Path,
    last_window_end_ms: int | None = None,
    dormant_churn_floor: float = DORMANT_CHURN_FLOOR,
) -> pd.DataFrame:
    """Scores at every window close from the first event up to ``last_window_end_ms``.

    Defaults to the last window that closed before the final event (the stream only closes a
    window once event time has passed its end). ``dormant_churn_floor`` must be the worker's
    (``CLICKSIGNALS_DORMANT_CHURN_FLOOR``) for the rows to be the ones it emits.
    """
    scorer = load_model(model_dir)
    spec = scorer.manifest.spec
    arrays, user_ids = to_event_arrays(events)
    if last_window_end_ms is None:
        last = spec.index(int(arrays.time_ms.max())) - 1
    else:
        last = spec.index(last_window_end_ms) - 1
    first = first_window(arrays, spec)
    tensor = build_tensor(arrays, spec, last)
    return score_closes(scorer, tensor, user_ids, range(first, last + 1), dormant_churn_floor)


def evaluate_closes(
    events: pd.DataFrame,
    model_dir: Path,
    dormant_churn_floor: float = DORMANT_CHURN_FLOOR,
) -> dict[int, dict[str, Any]]:
    """Window end (ms) -> the offline evaluation (:mod:`training.evaluate`, keyed ``n``,
    ``orders``, ``spend``, ``churn``) of the window-close predictions there, for every window
    end whose horizon closed before the final event: the cohort is :func:`predict_windows`'s
    rows at that end (the worker's close population), the labels those of training."""
    from training.evaluate import evaluate_churn, evaluate_demand

    scorer = load_model(model_dir)
    spec = scorer.manifest.spec
    arrays, user_ids = to_event_arrays(events)
    last = spec.index(int(arrays.time_ms.max())) - 1
    tensor = build_tensor(arrays, spec, last)
    order_days = tensor.features[:, :, FEATURE_INDEX["order_days"]].astype(np.float64)
    rows = score_closes(
        scorer,
        tensor,
        user_ids,
        range(first_window(arrays, spec), last - spec.horizon + 1),
        dormant_churn_floor,
    )
    code = {u: i for i, u in enumerate(user_ids)}
    out: dict[int, dict[str, Any]] = {}
    for end_ms, cohort in rows.groupby("window_end_ms", sort=True):
        # The training labels (training.origins): order days and spend of the H windows after.
        lo = tensor.column(spec.index(int(end_ms)) - 1) + 1
        hi = lo + spec.horizon
        orders = order_days[:, lo:hi].sum(axis=1)
        spend = tensor.spend[:, lo:hi].sum(axis=1)
        churn = (orders == 0).astype(np.float64)
        users = np.array([code[u] for u in cohort["user_id"]], dtype=np.int64)
        n = len(cohort)
        out[int(end_ms)] = {
            "n": n,
            "orders": evaluate_demand(cohort["expected_orders"], orders[users]),
            "spend": evaluate_demand(cohort["expected_spend"], spend[users]),
            "churn": evaluate_churn(cohort["churn_probability"], churn[users]),
        }
    return out
