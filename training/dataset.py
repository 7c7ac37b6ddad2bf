"""From canonical events to model-ready samples: the offline half of the feature contract.

Owns the conversion of a canonical event DataFrame (see :mod:`ingest.adapters`) into
integer-coded :class:`features.batch.EventArrays`, and the assembly of training / evaluation
samples (sequences, labels, population) at chosen window ends. The features themselves come
from :mod:`features` — nothing here defines one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.batch import (
    EventArrays,
    WindowTensor,
    build_window_tensor,
    labels_at,
    scored_mask,
    sequences_at,
)
from features.drift import InputReference, fit_reference
from features.events import EVENT_TYPE_CODES
from features.windows import I_ACTIVE, N_FEATURES, Float32Array, FloatArray, WindowSpec

log = logging.getLogger(__name__)


def _codes(column: pd.Series) -> np.ndarray:
    codes, _ = pd.factorize(column, use_na_sentinel=True)
    return np.asarray(codes, dtype=np.int64)


def to_event_arrays(events: pd.DataFrame) -> tuple[EventArrays, np.ndarray]:
    """Integer-code a canonical event frame; returns the arrays and the user id per code.

    Rows keep their order: the frame must already be in arrival order (time, then input
    order), because per-window sums are taken in that order on both feature paths.
    """
    user_codes, user_ids = pd.factorize(events["user_id"].astype(str))
    unknown = set(events["event_type"].unique()) - set(EVENT_TYPE_CODES)
    if unknown:
        raise ValueError(f"unknown event types in frame: {sorted(unknown)}")
    arrays = EventArrays(
        user=user_codes.astype(np.int64),
        time_ms=events["event_time_ms"].to_numpy(dtype=np.int64),
        event_type=events["event_type"].map(EVENT_TYPE_CODES).to_numpy(dtype=np.int64),
        quantity=events["quantity"].to_numpy(dtype=np.int64),
        price=events["price"].to_numpy(dtype=np.float64, na_value=np.nan),
        product=_codes(events["product_id"]),
        category=_codes(events["category"]),
        session=_codes(events["session_id"]),
        order=_codes(events["order_id"]),
        n_users=len(user_ids),
    )
    return arrays, np.asarray(user_ids, dtype=object)


@dataclass(frozen=True)
class Samples:
    """Scored (user, window end) rows: raw sequences and their labels."""

    user_ids: np.ndarray
    window_index: np.ndarray
    window_end_ms: np.ndarray
    sequences: Float32Array
    orders: FloatArray
    spend: FloatArray
    churn: FloatArray

    def __len__(self) -> int:
        return int(self.user_ids.shape[0])

    def select(self, mask: np.ndarray) -> Samples:
        return Samples(
            self.user_ids[mask],
            self.window_index[mask],
            self.window_end_ms[mask],
            self.sequences[mask],
            self.orders[mask],
            self.spend[mask],
            self.churn[mask],
        )

    @staticmethod
    def concat(parts: list[Samples]) -> Samples:
        return Samples(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in Samples.__dataclass_fields__)
        )


def first_window(arrays: EventArrays, spec: WindowSpec) -> int:
    return int((arrays.time_ms.min() - spec.origin_ms) // spec.length_ms)


def samples_at(
    tensor: WindowTensor, user_ids: np.ndarray, windows: list[int], with_labels: bool = True
) -> Samples:
    """Samples for every user active in the lookback at the close of each window in
    ``windows`` (:func:`features.batch.scored_mask`). What the worker emits, dormant customers
    included, is :func:`training.offline.score_closes`: that rule needs the previous scores."""
    spec = tensor.spec
    parts: list[Samples] = []
    for window in windows:
        seq = sequences_at(tensor, window)
        mask = scored_mask(seq, spec.lookback)
        n = int(mask.sum())
        if with_labels:
            orders, spend, churn = labels_at(tensor, window)
            orders, spend, churn = orders[mask], spend[mask], churn[mask]
        else:
            orders = spend = churn = np.full(n, np.nan)
        parts.append(
            Samples(
                user_ids[mask],
                np.full(n, window, dtype=np.int64),
                np.full(n, spec.end_ms(window), dtype=np.int64),
                seq[mask],
                orders,
                spend,
                churn,
            )
        )
    return Samples.concat(parts)


def fit_input_reference(tensor: WindowTensor, last_window: int) -> InputReference:
    """The training distribution the worker's drift check compares with
    (:mod:`features.drift`): the window vectors of the users active in the window, at the last
    ``horizon`` window ends through ``last_window`` (the latest behaviour the model saw)."""
    spec = tensor.spec
    rows = []
    for window in range(max(last_window - spec.horizon + 1, tensor.first_index), last_window + 1):
        # The window's own column: the sequences' last vectors, without cutting sequences.
        last = tensor.features[:, tensor.column(window), :]
        rows.append(last[last[:, I_ACTIVE] > 0])
    return fit_reference(np.concatenate(rows) if rows else np.zeros((0, N_FEATURES)))


def build_tensor(arrays: EventArrays, spec: WindowSpec, last_window: int) -> WindowTensor:
    return build_window_tensor(arrays, spec, first_window(arrays, spec), last_window)
