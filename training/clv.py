"""Fitting the classical customer-base models: BG/NBD and Pareto/NBD, plus their RFM input.

Owns maximum-likelihood fitting of BG/NBD (:func:`fit_bgnbd`) and Pareto/NBD
(:func:`fit_pareto_nbd`, its likelihood with scipy's 2F1 for speed). The per-customer
expressions the fits feed (P(alive), conditional expected purchases, P(no purchase)) live in
:mod:`features.clv`, numpy-only, so the worker computes them too; they are re-exported here for
the training side. Also owns :func:`rfm_from_orders`, the (x, t_x, T) summary both models take,
in weeks.

Likelihoods: BG/NBD from Fader, Hardie & Lee (2005), "Counting Your Customers the Easy Way";
Pareto/NBD from Fader & Hardie (2005), "A Note on Deriving the Pareto/NBD Model and Related
Expressions".

Both fits maximise the log-likelihood over log-parameters with L-BFGS-B plus a weak Gaussian
prior on each log-parameter (mean 0, sd :data:`LOG_PRIOR_SD`): on degenerate data (everyone a
one-time buyer) the likelihood keeps improving as r -> 0 or a -> inf and an unpenalised fit runs
to the bounds; the prior is worth a fraction of one customer's log-likelihood, so it decides only
what the data leave undecided.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Final

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize
from scipy.special import betaln, gammaln
from scipy.special import hyp2f1 as sp_hyp2f1

from features.clv import (
    BgNbdParams,
    ParetoNbdParams,
    log_hyp2f1,
    pareto_nbd_expected,
    pareto_nbd_p_alive,
    pareto_nbd_p_zero,
)
from features.windows import DAY_MS

__all__ = [
    "BgNbdParams",
    "ParetoNbdParams",
    "bgnbd_log_likelihood",
    "fit_bgnbd",
    "fit_pareto_nbd",
    "pareto_nbd_expected",
    "pareto_nbd_log_likelihood",
    "pareto_nbd_p_alive",
    "pareto_nbd_p_zero",
    "rfm_from_orders",
]

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

LOG_PRIOR_SD: Final = 10.0
"""sd of the Gaussian prior on each log-parameter: e^±10 spans any plausible scale of weeks."""
LOG_BOUNDS: Final = (math.log(1e-6), math.log(1e6))
DAYS_PER_WEEK: Final = 7.0


# --- RFM summary -------------------------------------------------------------------------------


def rfm_from_orders(
    user: npt.ArrayLike,
    time_: npt.ArrayLike,
    origin: float,
    *,
    day: float = float(DAY_MS),
) -> tuple[npt.NDArray[np.generic], FloatArray, FloatArray, FloatArray]:
    """(users, x, t_x, T) in weeks from order (user, time) pairs, using orders before ``origin``.

    ``time_`` and ``origin`` are in one unit, ``day`` is a day in that unit (default: epoch ms).
    An order day is floor(time / day); several orders on one day count once, as in the BG/NBD
    literature (and issue 14's "orders = distinct order days"). x = distinct order days - 1,
    t_x = last - first order day, T = origin - first order day, all / 7. Users come back sorted;
    a user whose orders are all at or after ``origin`` does not appear.
    """
    u = np.asarray(user)
    tm = np.asarray(time_, dtype=np.float64)
    keep = tm < origin
    u, od = u[keep], np.floor(tm[keep] / day)
    users, uid = np.unique(u, return_inverse=True)
    n = users.shape[0]
    if n == 0:
        empty = np.zeros(0)
        return users, empty, empty.copy(), empty.copy()
    # Distinct (user, day) pairs: sort by user then day, drop repeats.
    order = np.lexsort((od, uid))
    uid_s, od_s = uid[order], od[order]
    new = np.ones(uid_s.shape[0], dtype=bool)
    new[1:] = (uid_s[1:] != uid_s[:-1]) | (od_s[1:] != od_s[:-1])
    uid_s, od_s = uid_s[new], od_s[new]
    days = np.bincount(uid_s, minlength=n).astype(np.float64)
    first = np.full(n, np.inf)
    last = np.full(n, -np.inf)
    np.minimum.at(first, uid_s, od_s)
    np.maximum.at(last, uid_s, od_s)
    origin_day = origin / day
    x = days - 1.0
    t_x = (last - first) / DAYS_PER_WEEK
    T = np.maximum(origin_day - first, 0.0) / DAYS_PER_WEEK
    return users, x, t_x, T


# --- shared fitting machinery ------------------------------------------------------------------


def _compress(
    x: npt.ArrayLike, t_x: npt.ArrayLike, T: npt.ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Unique (x, t_x, T) rows and their counts: customers share summaries (same first and last
    day), so the likelihood is evaluated once per distinct summary."""
    xa, ta, Ta = (np.asarray(v, dtype=np.float64).ravel() for v in (x, t_x, T))
    if not (xa.shape == ta.shape == Ta.shape) or xa.size == 0:
        raise ValueError("x, t_x, T must be non-empty and of one length")
    if np.any(~np.isfinite(xa) | ~np.isfinite(ta) | ~np.isfinite(Ta)) or np.any(xa < 0):
        raise ValueError("x, t_x, T must be finite and x >= 0")
    Ta = np.maximum(Ta, 0.0)
    ta = np.clip(ta, 0.0, Ta)
    rows, counts = np.unique(np.stack([xa, ta, Ta], axis=1), axis=0, return_counts=True)
    return rows[:, 0], rows[:, 1], rows[:, 2], counts.astype(np.float64)


def _fit(
    neg_ll: object,
    theta0: FloatArray,
    n_customers: float,
    name: str,
) -> FloatArray:
    assert callable(neg_ll)

    def objective(theta: FloatArray) -> float:
        value = float(neg_ll(theta)) + 0.5 * float(np.sum((theta / LOG_PRIOR_SD) ** 2))
        # Per customer, so L-BFGS-B's tolerances mean the same at any population size.
        return value / n_customers if math.isfinite(value) else 1e300

    started = time.perf_counter()
    res = minimize(
        objective,
        theta0,
        method="L-BFGS-B",
        bounds=[LOG_BOUNDS] * theta0.shape[0],
        options={"maxiter": 500, "ftol": 1e-12, "gtol": 1e-7},
    )
    log.info(
        "%s fit: %s after %d evaluations in %.2f s (mean -LL %.5f): %s",
        name,
        "converged" if res.success else "NOT converged",
        res.nfev,
        time.perf_counter() - started,
        res.fun,
        np.exp(res.x).round(4).tolist(),
    )
    return np.asarray(res.x, dtype=np.float64)


# --- BG/NBD ------------------------------------------------------------------------------------


def bgnbd_log_likelihood(
    params: BgNbdParams, x: npt.ArrayLike, t_x: npt.ArrayLike, T: npt.ArrayLike
) -> FloatArray:
    """Per-customer BG/NBD log-likelihood (FHL 2005, eq. 6)."""
    xa, ta, Ta = (np.asarray(v, dtype=np.float64) for v in (x, t_x, T))
    return _bgnbd_ll(np.log([params.r, params.alpha, params.a, params.b]), xa, ta, Ta)


def _bgnbd_ll(
    theta: FloatArray,
    x: FloatArray,
    t_x: FloatArray,
    T: FloatArray,
    distinct: tuple[FloatArray, npt.NDArray[np.intp]] | None = None,
) -> FloatArray:
    # The gamma/beta-function terms depend on x alone, and a population has few distinct x
    # (repeat counts): evaluating them once per distinct x makes a 25k-customer fit ~10x faster.
    r, alpha, a, b = np.exp(theta)
    ux, inv = np.unique(x, return_inverse=True) if distinct is None else distinct
    repeat_u = ux > 0
    xr = np.where(repeat_u, ux, 1.0)
    common_u = gammaln(r + ux) - gammaln(r) + r * np.log(alpha)
    alive_u = common_u + betaln(a, b + ux) - betaln(a, b)
    dead_u = np.where(repeat_u, common_u + betaln(a + 1.0, b + xr - 1.0) - betaln(a, b), -np.inf)
    rx = r + x
    alive = alive_u[inv] - rx * np.log(alpha + T)
    dead = dead_u[inv] - rx * np.log(alpha + t_x)
    out: FloatArray = np.logaddexp(alive, dead)
    return out


def fit_bgnbd(x: npt.ArrayLike, t_x: npt.ArrayLike, T: npt.ArrayLike) -> BgNbdParams:
    """BG/NBD parameters by penalised maximum likelihood (see the module docstring)."""
    xu, tu, Tu, w = _compress(x, t_x, T)
    n = float(w.sum())
    scale = max(float(np.average(Tu, weights=w)), 1e-3)

    distinct = np.unique(xu, return_inverse=True)

    def neg_ll(theta: FloatArray) -> float:
        return -float((w * _bgnbd_ll(theta, xu, tu, Tu, distinct)).sum())

    theta = _fit(neg_ll, np.log([1.0, scale, 1.0, 1.0]), n, "BG/NBD")
    r, alpha, a, b = (float(v) for v in np.exp(theta))
    return BgNbdParams(r=r, alpha=alpha, a=a, b=b)


# --- Pareto/NBD --------------------------------------------------------------------------------


def _log_hyp2f1(a: FloatArray, b: FloatArray, c: FloatArray, z: FloatArray) -> FloatArray:
    """log 2F1 via scipy (fast, C) with the positive-series implementation from features.clv
    for any row scipy returns non-finite or non-positive (it has inaccurate corners)."""
    a, b, c, z = np.broadcast_arrays(a, b, c, z)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(sp_hyp2f1(a, b, c, z))
    bad = ~np.isfinite(out)
    if np.any(bad):
        out = np.array(out, dtype=np.float64)
        out[bad] = log_hyp2f1(a[bad], b[bad], c[bad], z[bad])
    return np.asarray(out, dtype=np.float64)


Pairs = tuple[FloatArray, FloatArray, npt.NDArray[np.intp], npt.NDArray[np.intp]]


def _pairs(x: FloatArray, t_x: FloatArray, T: FloatArray) -> Pairs:
    """Distinct (x, time) pairs over both t_x and T, with each row's index into them for t_x and
    for T: the 2F1 terms depend on nothing else, and day-granular histories repeat them a lot."""
    both = np.stack([np.concatenate([x, x]), np.concatenate([t_x, T])], axis=1)
    uniq, inv = np.unique(both, axis=0, return_inverse=True)
    inv = inv.ravel()
    n = x.shape[0]
    return uniq[:, 0], uniq[:, 1], inv[:n], inv[n:]


def _pareto_terms(
    theta: FloatArray, x: FloatArray, t_x: FloatArray, T: FloatArray, pairs: Pairs | None = None
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(log of the common factor Γ(r+x) α^r β^s / Γ(r), log of the alive-at-T term
    1/((α+T)^(r+x) (β+T)^s), log of (s/(r+s+x)) A_0): Fader & Hardie (2005), eq. 22-24.

    A_0 is a difference of two 2F1 terms (at t_x and at T) that cancel as t_x -> T; it is taken
    as term1 * (1 - term2/term1) in log space, and is exactly 0 (log -inf) at t_x = T.
    """
    r, alpha, s, beta = np.exp(theta)
    px, pt, i_tx, i_T = _pairs(x, t_x, T) if pairs is None else pairs
    rsx = r + s + px
    if alpha >= beta:
        base, b1, diff = alpha, s + 1.0 + 0.0 * px, alpha - beta
    else:
        base, b1, diff = beta, r + px, beta - alpha
    f = _log_hyp2f1(rsx, b1, rsx + 1.0, diff / (base + pt)) - rsx * np.log(base + pt)
    f_tx, f_T = f[i_tx], f[i_T]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_a0 = f_tx + np.log(-np.expm1(np.minimum(f_T - f_tx, 0.0)))
    log_a0 = np.where(np.isnan(log_a0), -np.inf, log_a0)
    common = gammaln(r + x) - gammaln(r) + r * np.log(alpha) + s * np.log(beta)
    alive = -(r + x) * np.log(alpha + T) - s * np.log(beta + T)
    death = np.log(s) - np.log(r + s + x) + log_a0
    return common, alive, death


def pareto_nbd_log_likelihood(
    params: ParetoNbdParams, x: npt.ArrayLike, t_x: npt.ArrayLike, T: npt.ArrayLike
) -> FloatArray:
    xa, ta, Ta = _arrays(x, t_x, T)
    common, alive, death = _pareto_terms(_theta(params), xa, ta, Ta)
    out: FloatArray = common + np.logaddexp(alive, death)
    return out


def _theta(p: ParetoNbdParams) -> FloatArray:
    return np.log(np.array([p.r, p.alpha, p.s, p.beta], dtype=np.float64))


def _arrays(
    x: npt.ArrayLike, t_x: npt.ArrayLike, T: npt.ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    xa, ta, Ta = (np.asarray(v, dtype=np.float64) for v in (x, t_x, T))
    xa, ta, Ta = (np.atleast_1d(v) for v in np.broadcast_arrays(xa, ta, Ta))
    Ta = np.maximum(Ta, 0.0)
    return np.maximum(xa, 0.0), np.clip(ta, 0.0, Ta), Ta


def fit_pareto_nbd(x: npt.ArrayLike, t_x: npt.ArrayLike, T: npt.ArrayLike) -> ParetoNbdParams:
    """Pareto/NBD parameters by penalised maximum likelihood (see the module docstring)."""
    xu, tu, Tu, w = _compress(x, t_x, T)
    n = float(w.sum())
    scale = max(float(np.average(Tu, weights=w)), 1e-3)

    pairs = _pairs(xu, tu, Tu)

    def neg_ll(theta: FloatArray) -> float:
        common, alive, death = _pareto_terms(theta, xu, tu, Tu, pairs)
        return -float((w * (common + np.logaddexp(alive, death))).sum())

    # The purchase-rate gamma (r, alpha) means much the same in both models, and BG/NBD fits in
    # a fraction of the time (no 2F1 in its likelihood): starting from it roughly halves the
    # Pareto/NBD evaluations on frequent buyers.
    bg = fit_bgnbd(x, t_x, T)
    theta = _fit(neg_ll, np.log([bg.r, bg.alpha, 1.0, scale]), n, "Pareto/NBD")
    r, alpha, s, beta = (float(v) for v in np.exp(theta))
    return ParetoNbdParams(r=r, alpha=alpha, s=s, beta=beta)
