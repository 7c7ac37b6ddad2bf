"""Fitting the classical customer-base models: BG/NBD and Pareto/NBD, plus their RFM input.

Owns maximum-likelihood fitting of BG/NBD (:func:`fit_bgnbd`; the per-customer expressions it
feeds live in :mod:`features.clv`, numpy-only, so the worker computes them too) and the whole of
Pareto/NBD (:class:`ParetoNbdParams`, :func:`fit_pareto_nbd`, P(alive), conditional expected
purchases, P(no purchase)), which is a training-side baseline only and may use scipy. Also owns
:func:`rfm_from_orders`, the (x, t_x, T) summary both models take, in weeks.

Expressions: BG/NBD from Fader, Hardie & Lee (2005), "Counting Your Customers the Easy Way";
Pareto/NBD from Fader & Hardie (2005), "A Note on Deriving the Pareto/NBD Model and Related
Expressions" (likelihood, P(alive), conditional expectation). P(no purchase) for Pareto/NBD is
derived here (see :func:`pareto_nbd_p_zero`).

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
from dataclasses import asdict, dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize
from scipy.special import betaln, gammaln
from scipy.special import hyp2f1 as sp_hyp2f1

from features.clv import BgNbdParams, log_hyp2f1
from features.windows import DAY_MS

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


@dataclass(frozen=True)
class ParetoNbdParams:
    """Pareto/NBD parameters: purchase rate λ ~ Gamma(r, alpha), death rate μ ~ Gamma(s, beta)."""

    r: float
    alpha: float
    s: float
    beta: float

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f"Pareto/NBD parameter {name} must be finite and > 0: {value!r}")

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> ParetoNbdParams:
        return cls(
            r=float(data["r"]),
            alpha=float(data["alpha"]),
            s=float(data["s"]),
            beta=float(data["beta"]),
        )


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


def _pareto_log_p_alive(
    params: ParetoNbdParams, x: FloatArray, t_x: FloatArray, T: FloatArray
) -> FloatArray:
    _, alive, death = _pareto_terms(_theta(params), x, t_x, T)
    out: FloatArray = -np.logaddexp(0.0, death - alive)
    return out


def pareto_nbd_p_alive(
    params: ParetoNbdParams, x: npt.ArrayLike, t_x: npt.ArrayLike, T: npt.ArrayLike
) -> FloatArray:
    """P(alive at T | x, t_x, T) (Fader & Hardie 2005, eq. 25)."""
    xa, ta, Ta = _arrays(x, t_x, T)
    return np.exp(_pareto_log_p_alive(params, xa, ta, Ta))


def pareto_nbd_expected(
    params: ParetoNbdParams, x: npt.ArrayLike, t_x: npt.ArrayLike, T: npt.ArrayLike, t: float
) -> FloatArray:
    """E[purchases in (T, T + t] | x, t_x, T] (Fader & Hardie 2005, eq. 27):

    P(alive) (r + x)(beta + T) / ((alpha + T)(s - 1)) [1 - ((beta + T)/(beta + T + t))^(s - 1)].
    The bracket over (s - 1) is 0/0 at s = 1; it is evaluated as -log(v) expm1(y)/y with
    y = (s - 1) log v, whose limit at s = 1 is -log v.
    """
    xa, ta, Ta = _arrays(x, t_x, T)
    p = params
    log_v = np.log(p.beta + Ta) - np.log(p.beta + Ta + t)
    y = (p.s - 1.0) * log_v
    with np.errstate(divide="ignore", invalid="ignore"):
        phi = np.where(np.abs(y) > 1e-12, np.expm1(y) / y, 1.0 + 0.5 * y)
    bracket = -log_v * phi  # = [1 - v^(s-1)] / (s - 1)
    log_e = (
        _pareto_log_p_alive(p, xa, ta, Ta)
        + np.log(p.r + xa)
        - np.log(p.alpha + Ta)
        + np.log(p.beta + Ta)
        + np.log(np.maximum(bracket, 1e-300))
    )
    out: FloatArray = np.exp(np.minimum(log_e, 700.0))
    return out


def _mean_share(m: FloatArray, A: FloatArray, s: float, B: FloatArray) -> FloatArray:
    """E[λ/(λ+μ)] for independent λ ~ Gamma(m, rate A), μ ~ Gamma(s, rate B).

    With W = λA/(λA + μB) ~ Beta(m, s) and κ = A/B, λ/(λ+μ) = W/(κ - (κ-1)W), whose mean is
    (m/(m+s)) 2F1(1, m+1; m+s+1; 1 - 1/κ) / κ. The argument is in [0, 1) for κ >= 1; for κ < 1
    the same formula gives E[μ/(λ+μ)] with the roles swapped, and the share is one minus that.
    """
    kappa = A / B
    big = kappa >= 1.0
    k1 = np.where(big, kappa, 1.0 / kappa)
    m1 = np.where(big, m, s)
    s1 = np.where(big, s, m)
    share = m1 / (m1 + s1) * sp_hyp2f1(1.0, m1 + 1.0, m1 + s1 + 1.0, 1.0 - 1.0 / k1) / k1
    out: FloatArray = np.where(big, share, 1.0 - share)
    return out


def pareto_nbd_p_zero(
    params: ParetoNbdParams, x: npt.ArrayLike, t_x: npt.ArrayLike, T: npt.ArrayLike, t: float
) -> FloatArray:
    """P(no purchase in (T, T + t] | x, t_x, T), exact.

    Derivation: given alive at T the posterior is λ ~ Gamma(r+x, α+T), μ ~ Gamma(s, β+T),
    independent (the likelihood of "alive" is λ^x e^(-λT) e^(-μT)). The remaining lifetime is
    Exp(μ) (memoryless), so a purchase comes in the next t iff the first Poisson arrival beats
    both death and t: P(some | λ, μ) = λ/(λ+μ) (1 - e^(-(λ+μ)t)). Averaging, the e^(-λt-μt)
    factor tilts both gammas to rates α+T+t, β+T+t with weight ((α+T)/(α+T+t))^(r+x)
    ((β+T)/(β+T+t))^s, so P(some | alive) = S(α+T, β+T) - weight S(α+T+t, β+T+t) with
    S = E[λ/(λ+μ)] (:func:`_mean_share`), and P(zero) = 1 - P(alive) P(some | alive).
    """
    xa, ta, Ta = _arrays(x, t_x, T)
    p = params
    m = p.r + xa
    A, B = p.alpha + Ta, p.beta + Ta
    log_w = m * (np.log(A) - np.log(A + t)) + p.s * (np.log(B) - np.log(B + t))
    some_alive = _mean_share(m, A, p.s, B) - np.exp(log_w) * _mean_share(m, A + t, p.s, B + t)
    some_alive = np.clip(some_alive, 0.0, 1.0)
    pa = np.exp(_pareto_log_p_alive(p, xa, ta, Ta))
    out: FloatArray = 1.0 - pa * some_alive
    return out
