"""Which customer-base model a shop's prior is: BG/NBD or Pareto/NBD, chosen before the cutoff.

Owns :func:`compare_priors` (both models fitted at one pseudo-cutoff, scored on its observed
horizon) and :func:`choose_prior` (the rule over several). The model's residual network starts
from the prior's expected orders and P(no order) (:mod:`features.summary`), so the prior sets
the level the correction works from, and on shops where the network keeps the prior (0 epochs)
it is the forecast.

The two models differ in one assumption: BG/NBD lets a customer drop out only right after a
purchase, Pareto/NBD at any time. Which fits a shop is an empirical question, and the field
answers it on a holdout; so does this module, on the pseudo-cutoffs the epoch count is chosen
on (horizons that end at or before the cutoff: no test outcome is read). Measured on real
CDNOW (23,570 customers), Pareto/NBD had the lower per-customer MAE and the higher churn
ROC-AUC at every pseudo-cutoff and at the cutoff; on the generated wholesale shop and the real
grocery panel BG/NBD was as good or better.

The rule reads the product's own targets, not a likelihood: the per-customer absolute error of
the expected orders, pooled over the pseudo-cutoffs (a paired difference, so its standard
error is honest), and the churn ROC-AUC. Pareto/NBD is chosen only when it lowers the MAE by
more than :data:`MIN_SE` standard errors and :data:`MIN_RELATIVE_GAIN` of BG/NBD's MAE, *and*
raises the AUC on average by more than :data:`MIN_AUC_GAIN`; otherwise BG/NBD stays, the
default a retail analyst would run. (On CDNOW the two proper scores, Poisson
deviance and churn log loss, favour BG/NBD by a hair while both targets favour Pareto/NBD.)

Both models are fitted by :mod:`training.clv` on the customers with an order before the
pseudo-cutoff; every row of the population is scored (a user without an order as a just-acquired
customer, as the summary does). The horizon is the plain one: the shop's calendar stretches
both models alike.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from features.clv import bgnbd_expected, bgnbd_p_zero, pareto_nbd_expected, pareto_nbd_p_zero
from features.windows import lifetime_summary
from training.calibration import MIN_AUC_GAIN
from training.evaluate import roc_auc

log = logging.getLogger(__name__)

MIN_SE: Final = 2.0
"""Pareto/NBD must lower the pooled per-customer MAE by more than this many standard errors of
the paired differences (the epoch count's rule, :func:`training.model.choose_epochs`)..."""
MIN_RELATIVE_GAIN: Final = 0.003
"""...and by at least this share of BG/NBD's MAE (the epoch count's floor too). Where both fits
reach the same corner (no drop-out: Online Retail, whose Pareto/NBD fit has s -> 0 and whose
BG/NBD fit has a -> 0), the two forecasts differ by rounding, and so does their standard
error.

The AUC half of the rule needs a gain above :data:`training.calibration.MIN_AUC_GAIN` (5e-4),
the floor a churn recalibration must clear too: the product's target is an AUC at least
BG/NBD's, and a ranking model is not swapped on a gain within the noise of a pseudo-cutoff
(real CDNOW at 1997-04-15, 15 weeks of history: one pseudo-cutoff two weeks into the data,
Pareto/NBD's AUC "gain" 1.2e-5 there, a loss of 1.0e-4 at the cutoff). Every shape of the
model-quality bench that chose Pareto/NBD gained 1.2e-3 or more."""


@dataclass(frozen=True)
class Comparison:
    """Both models at one pseudo-cutoff, on its customers with a fully observed horizon."""

    cutoff: str
    abs_error_bgnbd: np.ndarray
    abs_error_pareto: np.ndarray
    auc_bgnbd: float
    auc_pareto: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "cutoff": self.cutoff,
            "rows": int(self.abs_error_bgnbd.shape[0]),
            "mae_bgnbd": float(self.abs_error_bgnbd.mean()),
            "mae_pareto_nbd": float(self.abs_error_pareto.mean()),
            "auc_bgnbd": self.auc_bgnbd,
            "auc_pareto_nbd": self.auc_pareto,
        }


@dataclass(frozen=True)
class PriorChoice:
    """The shop's prior model and why."""

    model: str
    """"bgnbd" or "pareto_nbd"."""
    why: str
    compared: list[Comparison] = field(default_factory=list)

    @property
    def pareto(self) -> bool:
        return self.model == "pareto_nbd"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "why": self.why,
            "pseudo_cutoffs": [c.to_dict() for c in self.compared],
        }


def compare_priors(
    cutoff: str, last: np.ndarray, orders_total: np.ndarray, horizon_weeks: float
) -> Comparison | None:
    """Fit both models on the customers' raw last vectors ``[N, F]`` at one pseudo-cutoff and
    score them against ``orders_total`` (order days over its horizon; NaN where not fully
    observed). None when there are too few customers or outcomes to compare, or a fit fails."""
    from training.clv import fit_bgnbd, fit_pareto_nbd

    x, t_x, age, ordered = lifetime_summary(last.astype(np.float64))
    seen = np.isfinite(orders_total)
    if int(ordered.sum()) < 10 or int(seen.sum()) < 10:
        return None
    try:
        bg = fit_bgnbd(x[ordered], t_x[ordered], age[ordered])
        pn = fit_pareto_nbd(x[ordered], t_x[ordered], age[ordered])
    except (ValueError, FloatingPointError) as exc:
        log.info("prior comparison at %s skipped: %s", cutoff, exc)
        return None
    x, t_x, age = (np.where(ordered, v, 0.0)[seen] for v in (x, t_x, age))
    y = orders_total[seen]
    churn = (y == 0).astype(np.float64)
    e_bg = bgnbd_expected(bg, x, t_x, age, horizon_weeks)
    e_pn = pareto_nbd_expected(pn, x, t_x, age, horizon_weeks)
    return Comparison(
        cutoff,
        np.abs(e_bg - y),
        np.abs(e_pn - y),
        roc_auc(bgnbd_p_zero(bg, x, t_x, age, horizon_weeks), churn),
        roc_auc(pareto_nbd_p_zero(pn, x, t_x, age, horizon_weeks), churn),
    )


def choose_prior(compared: list[Comparison]) -> PriorChoice:
    """Pareto/NBD when, pooled over the pseudo-cutoffs, it lowers the per-customer MAE by more
    than :data:`MIN_SE` standard errors and :data:`MIN_RELATIVE_GAIN` of BG/NBD's MAE, and
    raises the churn ROC-AUC on average by more than :data:`MIN_AUC_GAIN`; else BG/NBD."""
    if not compared:
        return PriorChoice("bgnbd", "no pseudo-cutoff to compare the models on")
    diff = np.concatenate([c.abs_error_bgnbd - c.abs_error_pareto for c in compared])
    gain = float(diff.mean())
    se = float(diff.std(ddof=1) / math.sqrt(diff.shape[0])) if diff.shape[0] > 1 else math.inf
    aucs = [c.auc_pareto - c.auc_bgnbd for c in compared]
    auc_gain = float(np.mean(aucs)) if all(math.isfinite(a) for a in aucs) else math.nan
    floor = max(
        MIN_SE * se,
        MIN_RELATIVE_GAIN * float(np.concatenate([c.abs_error_bgnbd for c in compared]).mean()),
    )
    facts = (
        f"over {len(compared)} pseudo-cutoff(s), Pareto/NBD's MAE gain {gain:+.4f} "
        f"(needs > {floor:.4f}: {MIN_SE:g} se or {MIN_RELATIVE_GAIN:.1%} of BG/NBD's), "
        f"AUC gain {auc_gain:+.5f} (needs > {MIN_AUC_GAIN:g})"
    )
    if gain > floor and auc_gain > MIN_AUC_GAIN:
        return PriorChoice("pareto_nbd", facts, compared)
    return PriorChoice("bgnbd", facts, compared)
