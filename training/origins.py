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

Memory: one origin at a time, and of it only the rows kept: who is in the population, and in
which activity stratum, is read from the window tensor's columns (:func:`activity_strata`),
and sequences are cut for the drawn rows alone. ``max_samples`` caps the rows by
:data:`SAMPLE_RULE` (:class:`SamplePlan` says what it did), so a long history of a large shop
bounds neither memory nor epoch time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from features.batch import WindowTensor, sequences_at
from features.summary import PriorSpec, summarize
from features.windows import FEATURE_INDEX, Float32Array, lifetime_summary
from training.resources import progress

log = logging.getLogger(__name__)

MASKED = -1.0
I_ORDER_DAYS = FEATURE_INDEX["order_days"]
I_ORDER_DAYS_TOTAL = FEATURE_INDEX["order_days_total"]
I_ACTIVE = FEATURE_INDEX["active"]

STRATA: Final = ("recent_buyers", "dormant_customers", "browsers")
"""The population at an origin by activity: an order day in the lookback; an order day
before, none in the lookback; events in the lookback and no order day ever."""

SAMPLE_RULE: Final = (
    "when the (customer, origin) rows exceed the cap, every origin keeps the same fraction "
    "(cap / rows) of each activity stratum (recent buyers, dormant customers, browsers), "
    "rounded per stratum and origin, drawn without replacement by a seeded generator: the "
    "kept rows have the population's mix of origins and of activity"
)


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


def activity_strata(tensor: WindowTensor, window: int) -> dict[str, np.ndarray]:
    """Masks over the tensor's users of :data:`STRATA` at origin ``window``, from its columns
    (no sequence is cut): together exactly :func:`features.windows.population_mask` of
    ``sequences_at(tensor, window)``."""
    n_users = tensor.features.shape[0]
    col = tensor.column(window)
    if col >= tensor.n_windows:
        raise ValueError(f"window {window} is beyond the tensor")
    if col < 0:
        none = np.zeros(n_users, dtype=bool)
        return {name: none for name in STRATA}
    lo = max(col - tensor.spec.lookback + 1, 0)
    recent = tensor.features[:, lo : col + 1, :]
    ordered = tensor.features[:, col, I_ORDER_DAYS_TOTAL] > 0
    bought = np.any(recent[:, :, I_ORDER_DAYS] > 0, axis=1)
    active = np.any(recent[:, :, I_ACTIVE] > 0, axis=1)
    return {
        "recent_buyers": ordered & bought,
        "dormant_customers": ordered & ~bought,
        "browsers": ~ordered & active,
    }


def population_rows(tensor: WindowTensor, window: int) -> np.ndarray:
    """Indices of the population's users at origin ``window``, in user order."""
    strata = activity_strata(tensor, window)
    return np.flatnonzero(
        strata["recent_buyers"] | strata["dormant_customers"] | strata["browsers"]
    )


@dataclass(frozen=True)
class SamplePlan:
    """What :data:`SAMPLE_RULE` does to the rows of a set of origins."""

    max_rows: int | None
    origins: int
    rows: dict[str, int]
    """(customer, origin) rows per stratum, before the cap."""

    @property
    def total(self) -> int:
        return sum(self.rows.values())

    @property
    def fraction(self) -> float:
        """The share of every stratum and origin kept (1.0: the cap does not bite)."""
        if self.max_rows is None or self.total <= self.max_rows:
            return 1.0
        return self.max_rows / self.total

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": SAMPLE_RULE,
            "cap": self.max_rows,
            "origins": self.origins,
            "rows_before_cap": self.total,
            "rows_by_stratum": dict(self.rows),
            "kept_fraction": self.fraction,
        }


def plan_samples(tensor: WindowTensor, windows: list[int], max_rows: int | None) -> SamplePlan:
    rows = dict.fromkeys(STRATA, 0)
    for w in windows:
        for name, mask in activity_strata(tensor, w).items():
            rows[name] += int(mask.sum())
    return SamplePlan(max_rows, len(windows), rows)


def _draw(mask: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    rows = np.flatnonzero(mask)
    if fraction >= 1.0:
        return rows
    k = round(fraction * len(rows))
    return rows[np.sort(rng.choice(len(rows), size=k, replace=False))]


def origin_set(
    tensor: WindowTensor,
    user_ids: np.ndarray,
    windows: list[int],
    observed_through: int,
    fit: PriorFit,
    *,
    prior: PriorSpec | None = None,
    max_samples: int | None = None,
    plan: SamplePlan | None = None,
    seed: int = 7,
) -> OriginSet:
    """Rows at each origin in ``windows``; targets after window ``observed_through`` masked.

    ``prior`` fixes one prior for every origin (serving-time behaviour: the model's own
    prior); otherwise each origin gets a prior fitted on what was known at it. ``max_samples``
    caps the rows by :data:`SAMPLE_RULE`; ``plan``, that rule's plan for these windows if the
    caller already made it (to report it).
    """
    spec = tensor.spec
    horizon = spec.horizon
    rng = np.random.default_rng(seed)
    if plan is None and max_samples is not None:
        plan = plan_samples(tensor, windows, max_samples)
    fraction = plan.fraction if plan is not None else 1.0
    if plan is not None and fraction < 1.0:
        log.info(
            "samples capped: %d (customer, origin) rows over %d origins, keeping %.1f %% of "
            "each activity stratum at each origin",
            plan.total,
            len(windows),
            100 * fraction,
        )
    parts: list[OriginSet] = []
    for w in progress(windows, desc="origins", unit="window"):
        strata = activity_strata(tensor, w)
        rows = np.sort(np.concatenate([_draw(m, fraction, rng) for m in strata.values()]))
        if len(rows) == 0:
            continue
        seq = sequences_at(tensor, w, rows)
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
            orders[:, :seen] = tensor.features[rows, lo : lo + seen, I_ORDER_DAYS]
            spend[:, :seen] = tensor.spend[rows, lo : lo + seen]
        parts.append(
            OriginSet(
                user_ids[rows],
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
