"""Fits the served churn's recalibration (:class:`features.calibration.ChurnCalibration`).

Owns :func:`fit_churn_calibration`: a logistic regression of "no order in the horizon" on the
model's churn logit and log mean orders, over the latest origin whose horizon is fully known
(the pseudo-cutoff one horizon before the cutoff), kept only when it ranks customers better
out of sample.

The check (where the issue was silent): the origin's customers are split in two seeded
halves; each half's AUC is measured with the calibration fitted on the other. The calibration
is kept only if it raises the AUC on *both* halves by :data:`MIN_AUC_GAIN`; it is then refitted
on all of them. A
shop where the model's churn already ranks as well as it can (a BG/NBD world, where P(no
order) is the right score) keeps its churn head as it is: two fitted weights would only add
noise there.

Where the history holds an origin one horizon earlier (its horizon ends where the latest
one's begins), the calibration must also hold *in time*: fitted on that origin's customers,
it must raise the latest origin's AUC by :data:`MIN_AUC_GAIN` too. The halves share one
horizon's weather; a blend is served on the next horizon. Measured where this came from: the
generated wholesale shop at the origin 2023-06-05 kept a blend on half gains of 7.8e-4 and
6.2e-4 and lost 6.6e-5 of AUC against the prior's own ranking over its horizon.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from features.calibration import ChurnCalibration, calibration_inputs
from training.evaluate import roc_auc

log = logging.getLogger(__name__)

NEWTON_STEPS: Final = 50
RIDGE: Final = 1e-6
MIN_AUC_GAIN: Final = 5e-4
"""The held-out AUC gain each half must show: smaller gains are within the noise between two
scores of the same few thousand customers (the grocery shape kept a blend on gains of that
size and lost 2e-4 of AUC at the cutoff), and a shop that gains, gains more (real CDNOW:
0.002-0.004 on each half)."""
Labelled = tuple[npt.ArrayLike, npt.ArrayLike, npt.ArrayLike]
"""One origin's customers: the churn head, the mean orders, and 1 where no order came."""
MIN_ROWS: Final = 200
"""Fewer labelled customers than this (or one class only) keep the churn head as it is."""


def _logistic(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    w = np.zeros(x.shape[1])
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -50.0, 50.0)))
        grad = x.T @ (p - y)
        hess = (x * (p * (1.0 - p))[:, None]).T @ x + RIDGE * np.eye(x.shape[1])
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.max(np.abs(step))) < 1e-10:
            break
    return w


def _fit(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> ChurnCalibration:
    a, b, c = (float(v) for v in _logistic(x, y))
    return ChurnCalibration(a, b, c)


def fit_churn_calibration(
    churn: npt.ArrayLike,
    mean_orders: npt.ArrayLike,
    no_order: npt.ArrayLike,
    seed: int = 0,
    *,
    earlier: Callable[[], Labelled | None] | None = None,
) -> tuple[ChurnCalibration | None, dict[str, Any]]:
    """The calibration to serve (None: keep the churn head) and what the check found.

    ``earlier`` gives ``(churn, mean_orders, no_order)`` at the origin one horizon before, for
    the out-of-time check; it is called only once the halves pass (scoring an origin is not
    free, and most shops stop at the halves). Without it, or with too few of its customers,
    only the halves are checked, and the report says so."""
    p = np.asarray(churn, dtype=np.float64)
    y = np.asarray(no_order, dtype=np.float64)
    x = calibration_inputs(p, mean_orders)
    info: dict[str, Any] = {"rows": len(y)}
    if len(y) < MIN_ROWS or y.min() == y.max():
        info["kept"] = False
        info["why"] = f"{len(y)} labelled customers, {int(y.sum())} without an order"
        return None, info
    order = np.random.default_rng(seed).permutation(len(y))
    halves = (order[: len(y) // 2], order[len(y) // 2 :])
    gains = []
    for held, fit_on in (halves, halves[::-1]):
        cal = _fit(x[fit_on], y[fit_on])
        after = roc_auc(cal.apply(p[held], np.exp(x[held, 1])), y[held])
        gains.append(after - roc_auc(p[held], y[held]))
    info["held_out_auc_gain"] = [float(g) for g in gains]
    if min(gains) < MIN_AUC_GAIN:
        info["kept"] = False
        info["why"] = f"does not rank better by {MIN_AUC_GAIN:g} on both held-out halves"
        log.info("churn calibration not kept: held-out AUC gains %s", gains)
        return None, info
    in_time = _out_of_time_gain(None if earlier is None else earlier(), p, x, y)
    if in_time is None:
        info["out_of_time"] = "no earlier origin with enough labelled customers: halves only"
    else:
        info["out_of_time_auc_gain"] = in_time
        if in_time < MIN_AUC_GAIN:
            info["kept"] = False
            info["why"] = (
                f"fitted one horizon earlier, it does not rank the latest origin better by "
                f"{MIN_AUC_GAIN:g} ({in_time:+.2e})"
            )
            log.info("churn calibration not kept: out-of-time AUC gain %+.2e", in_time)
            return None, info
    cal = _fit(x, y)
    info["kept"] = True
    info["coefficients"] = cal.to_dict()
    log.info("churn calibration kept: held-out AUC gains %s, %s", gains, cal)
    return cal, info


def _out_of_time_gain(
    earlier: Labelled | None,
    p: npt.NDArray[np.float64],
    x: npt.NDArray[np.float64],
    y: npt.NDArray[np.float64],
) -> float | None:
    """AUC gain on the latest origin (``p``, inputs ``x``, labels ``y``) of the calibration
    fitted on ``earlier``; None when there is no usable earlier origin."""
    if earlier is None:
        return None
    p_e = np.asarray(earlier[0], dtype=np.float64)
    y_e = np.asarray(earlier[2], dtype=np.float64)
    if len(y_e) < MIN_ROWS or y_e.min() == y_e.max():
        return None
    cal = _fit(calibration_inputs(p_e, earlier[1]), y_e)
    return float(roc_auc(cal.apply(p, np.exp(x[:, 1])), y) - roc_auc(p, y))


__all__ = ["fit_churn_calibration"]
