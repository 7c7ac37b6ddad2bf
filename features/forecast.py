"""The served order-day forecast: one number per customer from the model's mean and P(no order).

Owns :func:`zip_of` (the zero-inflated Poisson with a given mean and probability of no
order), :func:`quantile_forecast` (each customer's ``q``-quantile of it) and
:func:`total_level` (the one level ``q`` whose forecasts add up to the means' total).

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

The distribution: the model has two heads, the mean ``m`` and ``p0 = P(no order)``, and a
zero-inflated Poisson is the two-parameter family they pin (BG/NBD's own story: a customer is
gone, or buys at a Poisson rate). Where ``p0`` is below Poisson's own ``exp(-m)`` the Poisson
with mean ``m`` is used.

Training (:mod:`training.pipeline`) chooses ``q`` and writes it to the manifest; the scorer
(:mod:`serving.scorer`) applies it to every score, offline and in the worker, with this code.
Pure: numpy only, no I/O.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

NEWTON_STEPS: Final = 60
"""Upper bound on Newton steps for the ZIP rate; it converges from above in a few."""
MAX_COUNT: Final = 10_000
"""A bound on the counts tabulated: far above any horizon's order days."""
LEVEL_STEPS: Final = 40
"""Bisection steps for :func:`total_level` (2**-40: finer than any total can tell)."""
LEVEL_SAMPLE: Final = 200_000
"""Customers beyond which :func:`total_level` reads a seeded sample."""


def zip_of(mean: npt.ArrayLike, p0: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """The Poisson rate ``lam`` and zero inflation ``pi`` with mean ``(1 - pi) lam = mean`` and
    ``pi + (1 - pi) exp(-lam) = p0`` (``pi = 0``, ``lam = mean`` where ``p0 <= exp(-mean)``)."""
    m = np.maximum(np.asarray(mean, dtype=np.float64), 1e-12)
    p = np.clip(np.asarray(p0, dtype=np.float64), 0.0, 1.0 - 1e-9)
    # g(lam) = lam (1 - p0) - m (1 - exp(-lam)) is convex with g(0) = 0; its positive root is
    # below m / (1 - p0), where g > 0, so Newton from there falls monotonically onto it.
    lam = m / (1.0 - p)
    for _ in range(NEWTON_STEPS):
        g = lam * (1.0 - p) - m * (1.0 - np.exp(-lam))
        slope = (1.0 - p) - m * np.exp(-lam)
        step = np.where(slope > 1e-12, g / np.where(slope > 1e-12, slope, 1.0), 0.0)
        lam = np.maximum(lam - step, 1e-12)
        if float(np.max(np.abs(step), initial=0.0)) < 1e-12:
            break
    poisson = p <= np.exp(-m)
    lam = np.where(poisson, m, lam)
    pi = np.where(poisson, 0.0, np.clip(1.0 - m / lam, 0.0, 1.0))
    return lam, pi


def quantile_forecast(mean: npt.ArrayLike, p0: npt.ArrayLike, level: float) -> FloatArray:
    """Each customer's ``level``-quantile of the ZIP with this mean and P(0): the smallest
    integer ``k`` with ``P(X <= k) >= level``."""
    lam, pi = zip_of(mean, p0)
    return _quantiles(lam, pi, level)


def _quantiles(lam: FloatArray, pi: FloatArray, level: float) -> FloatArray:
    pmf = np.exp(-lam)
    cdf = pi + (1.0 - pi) * pmf
    out = np.zeros(lam.shape, dtype=np.float64)
    short = cdf < level
    k = 0
    while k < MAX_COUNT and bool(short.any()):
        k += 1
        pmf = pmf * lam / k
        cdf = cdf + (1.0 - pi) * pmf
        out[short] = k
        # Rounding can leave a tail's cdf a hair under a level near 1: pmf reaching 0 ends it.
        short &= (cdf < level) & (pmf > 0.0)
    return out


def total_level(mean: npt.ArrayLike, p0: npt.ArrayLike, seed: int = 0, scale: float = 1.0) -> float:
    """The level ``q`` in (0, 1) whose quantile forecasts sum closest to ``scale * sum(mean)``
    (``scale`` other than 1 when the total is set by another model than the means'; see
    :func:`training.model.level_source`).

    The level is a property of the population's mix, so beyond :data:`LEVEL_SAMPLE` customers
    a seeded sample of them stands for it (the bisection then costs the same at any size)."""
    m = np.asarray(mean, dtype=np.float64).reshape(-1)
    p = np.asarray(p0, dtype=np.float64).reshape(-1)
    if len(m) > LEVEL_SAMPLE:
        pick = np.random.default_rng(seed).choice(len(m), LEVEL_SAMPLE, replace=False)
        m, p = m[pick], p[pick]
    lam, pi = zip_of(m, p)
    target = float(m.sum()) * scale
    lo, hi = 0.0, 1.0
    best_level, best_gap = 0.5, float("inf")
    for _ in range(LEVEL_STEPS):
        level = (lo + hi) / 2.0
        total = float(_quantiles(lam, pi, level).sum())
        if abs(total - target) < best_gap:
            best_level, best_gap = level, abs(total - target)
        if total < target:
            lo = level
        else:
            hi = level
    return best_level


__all__ = ["quantile_forecast", "total_level", "zip_of"]
