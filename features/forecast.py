"""The served order-day forecast: one number per customer from the model's mean and P(no order).

Owns :func:`zip_of` (the zero-inflated Poisson with a given mean and probability of no
order), :func:`zinb_of` (the zero-inflated negative binomial of a given shape with them),
:func:`posterior_shape` (that shape for a customer, from the customer-base model's ``r`` and
their repeat order days), :func:`quantile_forecast` (each customer's ``q``-quantile of either)
and :func:`total_level` (the one level ``q`` whose forecasts add up to the means' total).

Why not serve the mean: the product is judged per customer by the absolute error of its order
forecast *and* in aggregate by the bias of the total. On skewed counts (most customers order
0 or 1 times in a horizon, a few order often) the mean is the wrong point for the first: an
expectation of 0.4 for a customer who most likely orders nothing costs 0.4 on every such
customer. The forecast that minimises the summed absolute error under a fixed total is the same
quantile of every customer's predictive distribution (the Lagrange condition: the slope of
``E|X - a|`` is ``2 F(a) - 1``, equal for all at the optimum), and on integer counts that
quantile is an integer. So each customer is served the ``q``-quantile of their predictive
distribution, with ``q`` chosen once, at the cutoff, so that the population's total equals the
model's expected total: the aggregate keeps the mean's bias, and the per-customer error drops.

The distribution: the model has two heads, the mean ``m`` and ``p0 = P(no order)``. A
customer who is alive buys at a Poisson rate that is not known but *estimated*: in both
customer-base models (BG/NBD and Pareto/NBD) the rate's posterior after ``x`` repeat order days
is a gamma of shape ``r + x`` (``r`` the population's gamma shape), so the count over a horizon
is a negative binomial of that shape, and the predictive distribution is a zero-inflated
negative binomial (ZINB): gone with probability ``pi``, else NB. Its mean and ``p0`` are the
heads'; its shape is :func:`posterior_shape`. A customer with few repeat days has a wide,
right-skewed count (the median below the mean), a weekly shopper with a year of history a
nearly Poisson one. The zero-inflated Poisson (ZIP, the shape's limit at infinity) is what
models exported before the shape was served use (manifest ``kind`` ``zip_quantile``); it is
too narrow for short histories, whose quantiles then round to the mean's nearest integer and
lose to the mean itself (measured: README, "The served distribution"). Where ``p0`` is below
the distribution's own zero probability at mean ``m`` (no inflation can lower it), the plain
distribution with mean ``m`` is used.

Training (:mod:`training.pipeline`) chooses ``q`` and writes it to the manifest; the scorer
(:mod:`serving.scorer`) applies it to every score, offline and in the worker, with this code.
Pure: numpy only, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

NEWTON_STEPS: Final = 60
"""Upper bound on Newton steps for the ZIP rate and the ZINB mean; both converge from above
in a few."""
MAX_COUNT: Final = 10_000
"""A bound on the counts tabulated: far above any horizon's order days."""
LEVEL_STEPS: Final = 40
"""Bisection steps for :func:`total_level` (2**-40: finer than any total can tell)."""
LEVEL_SAMPLE: Final = 200_000
"""Customers beyond which :func:`total_level` reads a seeded sample."""
MIN_SHAPE: Final = 1e-3
"""The smallest NB shape used: a customer-base fit on one-off buyers can put ``r`` near 0."""


def _root_from_above(
    start: FloatArray, g_slope: Callable[[FloatArray], tuple[FloatArray, FloatArray]]
) -> FloatArray:
    """The positive root of a convex ``g`` with ``g(0) = 0``, by Newton from ``start`` (where
    ``g >= 0``): from there it falls monotonically onto the root."""
    root = start
    for _ in range(NEWTON_STEPS):
        g, slope = g_slope(root)
        step = np.where(slope > 1e-12, g / np.where(slope > 1e-12, slope, 1.0), 0.0)
        root = np.maximum(root - step, 1e-12)
        if float(np.max(np.abs(step), initial=0.0)) < 1e-12:
            break
    return root


def zip_of(mean: npt.ArrayLike, p0: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """The Poisson rate ``lam`` and zero inflation ``pi`` with mean ``(1 - pi) lam = mean`` and
    ``pi + (1 - pi) exp(-lam) = p0`` (``pi = 0``, ``lam = mean`` where ``p0 <= exp(-mean)``)."""
    m = np.maximum(np.asarray(mean, dtype=np.float64), 1e-12)
    p = np.clip(np.asarray(p0, dtype=np.float64), 0.0, 1.0 - 1e-9)
    poisson = p <= np.exp(-m)
    lam = m.copy()
    # Only the inflated rows have a root to find: the others' Newton would run down to the
    # floor and never settle, and every call would pay all its steps.
    inflated = np.flatnonzero(~poisson)
    mi, pi_ = m[inflated], p[inflated]
    # g(lam) = lam (1 - p0) - m (1 - exp(-lam)) is convex with g(0) = 0; its positive root is
    # below m / (1 - p0), where g > 0.

    def g_slope(lam: FloatArray) -> tuple[FloatArray, FloatArray]:
        zero = np.exp(-lam)
        return lam * (1.0 - pi_) - mi * (1.0 - zero), (1.0 - pi_) - mi * zero

    lam[inflated] = _root_from_above(mi / (1.0 - pi_), g_slope)
    pi = np.where(poisson, 0.0, np.clip(1.0 - m / lam, 0.0, 1.0))
    return lam, pi


def _nb_zero(mu: FloatArray, k: FloatArray) -> FloatArray:
    """P(0) of the negative binomial with mean ``mu`` and shape ``k``: ``(k / (k + mu))^k``."""
    return np.asarray(np.exp(-k * np.log1p(mu / k)), dtype=np.float64)


def zinb_of(
    mean: npt.ArrayLike, p0: npt.ArrayLike, shape: npt.ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """The NB mean ``mu`` and zero inflation ``pi`` of the ZINB of shape ``shape`` with mean
    ``(1 - pi) mu = mean`` and ``pi + (1 - pi) P_NB(0) = p0`` (``pi = 0``, ``mu = mean`` where
    ``p0`` is at most the NB's own P(0) at that mean)."""
    mu, pi, _ = _zinb(mean, p0, shape)
    return mu, pi


def _zinb(
    mean: npt.ArrayLike, p0: npt.ArrayLike, shape: npt.ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """:func:`zinb_of` and the shape it used (at least :data:`MIN_SHAPE`)."""
    m = np.maximum(np.asarray(mean, dtype=np.float64), 1e-12)
    p = np.clip(np.asarray(p0, dtype=np.float64), 0.0, 1.0 - 1e-9)
    k = np.maximum(np.broadcast_to(np.asarray(shape, dtype=np.float64), m.shape), MIN_SHAPE)
    plain = p <= _nb_zero(m, k)
    mu = m.copy()
    inflated = np.flatnonzero(~plain)
    mi, pi_, ki = m[inflated], p[inflated], k[inflated]
    # g(mu) = mu (1 - p0) - m (1 - P_NB(0; mu)) is convex with g(0) = 0 (1 - P_NB(0) is
    # concave in mu), and g(m / (1 - p0)) >= 0, as for the ZIP (and, as there, only the
    # inflated rows have a root).

    def g_slope(mu: FloatArray) -> tuple[FloatArray, FloatArray]:
        zero = _nb_zero(mu, ki)
        return mu * (1.0 - pi_) - mi * (1.0 - zero), (1.0 - pi_) - mi * zero * ki / (ki + mu)

    mu[inflated] = _root_from_above(mi / (1.0 - pi_), g_slope)
    pi = np.where(plain, 0.0, np.clip(1.0 - m / mu, 0.0, 1.0))
    return mu, pi, k


def posterior_shape(r: float, repeat_days: npt.ArrayLike) -> FloatArray:
    """The NB shape of a customer's horizon count: ``r + x``, the shape of the gamma posterior
    of their rate after ``x`` repeat order days (BG/NBD's and Pareto/NBD's ``r``)."""
    x = np.maximum(np.asarray(repeat_days, dtype=np.float64), 0.0)
    return np.maximum(float(r) + x, MIN_SHAPE)


def quantile_forecast(
    mean: npt.ArrayLike, p0: npt.ArrayLike, level: float, shape: npt.ArrayLike | None = None
) -> FloatArray:
    """Each customer's ``level``-quantile of the ZINB of ``shape`` (the ZIP where ``shape`` is
    ``None``) with this mean and P(0): the smallest integer ``k`` with ``P(X <= k) >= level``."""
    if shape is None:
        lam, pi = zip_of(mean, p0)
        return _quantiles(lam, pi, None, level)
    return _quantiles(*_zinb(mean, p0, shape), level)


def _quantiles(mu: FloatArray, pi: FloatArray, k: FloatArray | None, level: float) -> FloatArray:
    # Poisson: pmf(j + 1) = pmf(j) mu / (j + 1); NB: pmf(j) (k + j) / (j + 1) mu / (k + mu).
    pmf = np.exp(-mu) if k is None else _nb_zero(mu, k)
    ratio = mu if k is None else mu / (k + mu)
    cdf = pi + (1.0 - pi) * pmf
    out = np.zeros(mu.shape, dtype=np.float64)
    short = cdf < level
    j = 0
    while j < MAX_COUNT and bool(short.any()):
        pmf = pmf * ratio * (1.0 if k is None else k + j) / (j + 1)
        j += 1
        cdf = cdf + (1.0 - pi) * pmf
        out[short] = j
        # Rounding can leave a tail's cdf a hair under a level near 1: pmf reaching 0 ends it.
        short &= (cdf < level) & (pmf > 0.0)
    return out


def total_level(
    mean: npt.ArrayLike,
    p0: npt.ArrayLike,
    seed: int = 0,
    scale: float = 1.0,
    shape: npt.ArrayLike | None = None,
) -> float:
    """The level ``q`` in (0, 1) whose quantile forecasts (of the ZINB of ``shape``, or the ZIP)
    sum closest to ``scale * sum(mean)`` (``scale`` other than 1 when the total is set by
    another model than the means'; see :func:`training.model.level_source`).

    The level is a property of the population's mix, so beyond :data:`LEVEL_SAMPLE` customers
    a seeded sample of them stands for it (the bisection then costs the same at any size)."""
    m = np.asarray(mean, dtype=np.float64).reshape(-1)
    p = np.asarray(p0, dtype=np.float64).reshape(-1)
    k = None if shape is None else np.broadcast_to(np.asarray(shape, np.float64), m.shape)
    if len(m) > LEVEL_SAMPLE:
        pick = np.random.default_rng(seed).choice(len(m), LEVEL_SAMPLE, replace=False)
        m, p = m[pick], p[pick]
        k = None if k is None else k[pick]
    if k is None:
        mu, pi = zip_of(m, p)
    else:
        mu, pi, k = _zinb(m, p, k)
    target = float(m.sum()) * scale
    lo, hi = 0.0, 1.0
    best_level, best_gap = 0.5, float("inf")
    for _ in range(LEVEL_STEPS):
        level = (lo + hi) / 2.0
        total = float(_quantiles(mu, pi, k, level).sum())
        if abs(total - target) < best_gap:
            best_level, best_gap = level, abs(total - target)
        if total < target:
            lo = level
        else:
            hi = level
    return best_level


__all__ = ["posterior_shape", "quantile_forecast", "total_level", "zinb_of", "zip_of"]
