"""Samples at window-close origins: inputs, masked per-window targets and per-origin priors.

Owns :class:`OriginSet` and :func:`origin_set`. An *origin* is a window end at which the
model could have been asked for a prediction. For each origin the set holds, for every
customer the population rule selects (:func:`features.windows.population_mask`: active in the
lookback, or ordered at any time before, however long ago):

* the raw window sequence (:func:`features.batch.sequences_at`) and the summary
  (:func:`features.summary.summarize`) with a BG/NBD prior fitted on data before that origin
  only;
* per-window targets (order days, spend) for the ``horizon`` windows after it, with windows
  after ``observed_through`` masked (:data:`training.model.MASKED`): the latest origins before
  a cutoff still teach the model what they can see;
* the churn label (no order in the whole horizon), masked unless the horizon is fully
  observed.

Memory: one origin at a time is cut from the window tensor; ``max_samples`` caps the rows
kept by a seeded uniform draw over (customer, origin) pairs, so a long history of a large shop
cannot outgrow the machine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from features.batch import WindowTensor, sequences_at
from features.summary import PriorSpec, summarize
from features.windows import (
    FEATURE_INDEX,
    Float32Array,
    lifetime_summary,
    population_mask,
)
from training.resources import progress

log = logging.getLogger(__name__)

MASKED = -1.0
I_ORDER_DAYS = FEATURE_INDEX["order_days"]


@dataclass
class OriginSet:
    """Rows of (customer, origin)."""

    user_ids: np.ndarray
    window_index: np.ndarray
    window_end_ms: np.ndarray
    sequences: Float32Array
    """``[N, seq_len, F]`` raw."""
    summary: Float32Array
    """``[N, N_SUMMARY]`` raw."""
    orders: Float32Array
    """``[N, H]`` order days per window, MASKED where not observed."""
    spend: Float32Array
    """``[N, H]`` spend per window (currency), MASKED where not observed."""
    value_scale: np.ndarray
    """``[N]`` the prior's spend per order day at the row's origin."""

    def __len__(self) -> int:
        return int(self.user_ids.shape[0])

    @property
    def complete(self) -> np.ndarray:
        """Rows whose whole horizon is observed."""
        return np.asarray(np.all(self.orders >= 0, axis=1))

    @property
    def orders_total(self) -> np.ndarray:
        """Order days over the horizon (NaN where not fully observed)."""
        return np.where(self.complete, self.orders.sum(axis=1), np.nan)

    @property
    def spend_total(self) -> np.ndarray:
        return np.where(self.complete, self.spend.sum(axis=1), np.nan)

    @property
    def churn(self) -> np.ndarray:
        """1 = no order in the horizon; MASKED when the horizon is not fully observed."""
        return np.where(self.complete, (self.orders.sum(axis=1) == 0).astype(np.float64), MASKED)

    def select(self, mask: np.ndarray) -> OriginSet:
        return OriginSet(*(getattr(self, f)[mask] for f in OriginSet.__dataclass_fields__))

    @staticmethod
    def concat(parts: list[OriginSet]) -> OriginSet:
        return OriginSet(
            *(
                np.concatenate([getattr(p, f) for p in parts])
                for f in OriginSet.__dataclass_fields__
            )
        )


class PriorUnavailable(ValueError):
    """Too few customers with an order at an origin to fit the prior."""


PriorFit = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], PriorSpec]
"""``(x, t_x, T, spend_total, order_days_total)`` of the ordered customers → prior."""


def prior_at(last: np.ndarray, fit: PriorFit) -> PriorSpec:
    """Fit the prior on the customers' last raw vectors ``[N, F]`` at one origin."""
    x, t_x, age, ordered = lifetime_summary(last.astype(np.float64))
    spend = last[:, FEATURE_INDEX["spend_total"]].astype(np.float64)
    days = last[:, FEATURE_INDEX["order_days_total"]].astype(np.float64)
    return fit(x[ordered], t_x[ordered], age[ordered], spend[ordered], days[ordered])


def origin_set(
    tensor: WindowTensor,
    user_ids: np.ndarray,
    windows: list[int],
    observed_through: int,
    fit: PriorFit,
    *,
    prior: PriorSpec | None = None,
    max_samples: int | None = None,
    seed: int = 7,
) -> OriginSet:
    """Rows at each origin in ``windows``; targets after window ``observed_through`` masked.

    ``prior`` fixes one prior for every origin (serving-time behaviour: the model's own
    prior); otherwise each origin gets a prior fitted on what was known at it.
    """
    spec = tensor.spec
    horizon = spec.horizon
    rng = np.random.default_rng(seed)
    keep_fraction = 1.0
    if max_samples is not None:
        counts = [
            int(population_mask(sequences_at(tensor, w), spec.lookback).sum()) for w in windows
        ]
        total = sum(counts)
        if total > max_samples:
            keep_fraction = max_samples / total
            log.info(
                "samples capped: %d (customer, origin) rows over %d origins, keeping %.1f %%",
                total,
                len(windows),
                100 * keep_fraction,
            )
    parts: list[OriginSet] = []
    for w in progress(windows, desc="origins", unit="window"):
        seq = sequences_at(tensor, w)
        mask = population_mask(seq, spec.lookback)
        if keep_fraction < 1.0:
            mask &= rng.random(mask.shape[0]) < keep_fraction
        seq = seq[mask]
        if len(seq) == 0:
            continue
        try:
            origin_prior = prior if prior is not None else prior_at(seq[:, -1, :], fit)
        except PriorUnavailable as exc:
            # The shop's first weeks: too few buyers yet to say anything; no rows from here.
            log.debug("origin %d skipped: %s", w, exc)
            continue
        orders = np.full((len(seq), horizon), MASKED, dtype=np.float32)
        spend = np.full((len(seq), horizon), MASKED, dtype=np.float32)
        lo = tensor.column(w) + 1
        seen = min(horizon, observed_through - w, tensor.n_windows - lo)
        if seen > 0:
            orders[:, :seen] = tensor.features[mask, lo : lo + seen, I_ORDER_DAYS]
            spend[:, :seen] = tensor.spend[mask, lo : lo + seen]
        parts.append(
            OriginSet(
                user_ids[mask],
                np.full(len(seq), w, dtype=np.int64),
                np.full(len(seq), spec.end_ms(w), dtype=np.int64),
                seq,
                summarize(seq, origin_prior, spec),
                orders,
                spend,
                np.full(len(seq), origin_prior.value_per_order_day),
            )
        )
    if not parts:
        raise ValueError("no customer in the population at any origin")
    return OriginSet.concat(parts)
