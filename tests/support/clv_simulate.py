"""Simulated customer bases for the BG/NBD and Pareto/NBD tests: the models' own stories, sampled.

Each simulator returns the calibration summary (x, t_x, T, weeks) and the holdout truth for the
next ``t`` weeks (number of purchases), so tests can check parameter recovery and compare
predictions with what the simulated customers then did.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Simulated:
    x: FloatArray
    t_x: FloatArray
    T: FloatArray
    future: FloatArray


def _day_granular(t_x: FloatArray, T: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Ages and recencies on whole days, as rfm_from_orders produces them (and so the fit sees
    the repeated summaries real data has)."""
    T_d = np.ceil(T * 7.0) / 7.0
    return np.minimum(np.floor(t_x * 7.0) / 7.0, T_d), T_d


def simulate_bgnbd(
    r: float,
    alpha: float,
    a: float,
    b: float,
    n: int,
    seed: int,
    *,
    T_range: tuple[float, float] = (20.0, 80.0),
    t: float = 39.0,
) -> Simulated:
    """BG/NBD: Poisson purchases at λ ~ Gamma(r, alpha); after each repeat purchase the customer
    drops out with probability p ~ Beta(a, b): right after the J-th repeat, J ~ Geometric(p)."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(r, 1.0 / alpha, n)
    p = rng.beta(a, b, n)
    T = rng.uniform(*T_range, n)
    J = rng.geometric(p)
    N = rng.poisson(lam * T)
    x = np.minimum(N, J)
    # The x-th of N uniform purchase times on (0, T) is T * Beta(x, N - x + 1).
    t_x = np.where(x > 0, T * rng.beta(np.maximum(x, 1), N - x + 1), 0.0)
    alive = N < J
    future = np.where(alive, np.minimum(rng.poisson(lam * t), J - N), 0)
    t_x, T = _day_granular(t_x, T)
    return Simulated(x.astype(np.float64), t_x, T, future.astype(np.float64))


def simulate_pareto_nbd(
    r: float,
    alpha: float,
    s: float,
    beta: float,
    n: int,
    seed: int,
    *,
    T_range: tuple[float, float] = (20.0, 80.0),
    t: float = 39.0,
) -> Simulated:
    """Pareto/NBD: Poisson purchases at λ ~ Gamma(r, alpha) during an Exp(μ) lifetime,
    μ ~ Gamma(s, beta)."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(r, 1.0 / alpha, n)
    mu = rng.gamma(s, 1.0 / beta, n)
    T = rng.uniform(*T_range, n)
    tau = rng.exponential(1.0 / mu)
    seen = np.minimum(tau, T)
    x = rng.poisson(lam * seen)
    t_x = np.where(x > 0, seen * rng.beta(np.maximum(x, 1), 1.0), 0.0)
    future = rng.poisson(lam * np.clip(tau - T, 0.0, t))
    t_x, T = _day_granular(t_x, T)
    return Simulated(x.astype(np.float64), t_x, T, future.astype(np.float64))
