"""BG/NBD customer-base model: closed-form per-customer quantities, shared by training and worker.

Owns :class:`BgNbdParams` and the vectorised BG/NBD expressions of Fader, Hardie & Lee (2005),
"Counting Your Customers the Easy Way": P(alive), the conditional expected number of purchases
in ``(T, T + t]``, the probability of no purchase in ``(T, T + t]``, and :func:`prior_features`,
the model inputs derived from them. It also owns the Gauss hypergeometric :func:`hyp2f1` that
the conditional expectation needs, because the worker imports this package and must not pull in
scipy. Fitting the parameters lives in :mod:`training.clv` (scipy is allowed there).

Inputs, per customer, in one time unit (weeks in this project): ``x`` repeat purchases (order
days after the first), ``t_x`` time of the last purchase since the first, ``T`` time from the
first purchase to the origin. Pure: numpy only, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]
ArrayLike = npt.ArrayLike

PRIOR_FEATURE_NAMES: Final[tuple[str, ...]] = (
    "bgnbd_log_expected",
    "bgnbd_logit_p_alive",
    "bgnbd_logit_p_zero",
    "bgnbd_log_rate",
)
"""Columns of :func:`prior_features`, in order."""

LOGIT_CLIP: Final = 15.0
"""Logits are clipped to ±this: P(alive) is exactly 1 for a customer with no repeat purchase,
and a network input must stay finite (15 ≈ a probability of 3e-7 from either end)."""

LOG_EXPECTED_FLOOR: Final = math.log(1e-8)
"""Floor for log(expected purchases); finite for a customer the model has written off."""

HYP2F1_RTOL: Final = 1e-14
HYP2F1_MAX_TERMS: Final = 200_000
"""Series cap. Only reached when z is within ~1e-5 of 1 with a slowly decaying series (a tiny
``alpha`` and ``T`` ≈ 0); the partial sum is then a finite lower bound."""

_BLOCK: Final = 256
_C_FLOOR: Final = 1e-6
"""Below this, 2F1's c = a + b + x - 1 leaves the positive-series domain (x = 0, a + b < 1)."""
_A_NEAR_ONE: Final = 1e-4
"""Within this of a = 1 the expectation's (1 - Q)/(a - 1) is 0/0; it is interpolated between
a = 1 ± this, where the cancellation costs at most eps/1e-4 ≈ 2e-12 relative."""


@dataclass(frozen=True)
class BgNbdParams:
    """BG/NBD parameters: purchase rate λ ~ Gamma(r, alpha), drop-out p ~ Beta(a, b)."""

    r: float
    alpha: float
    a: float
    b: float

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f"BG/NBD parameter {name} must be finite and > 0, got {value!r}")

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> BgNbdParams:
        def get(key: str) -> float:
            value = data[key]
            if not isinstance(value, int | float):
                raise ValueError(f"BG/NBD parameter {key} must be a number, got {value!r}")
            return float(value)

        return cls(r=get("r"), alpha=get("alpha"), a=get("a"), b=get("b"))


# --- Gauss hypergeometric function -------------------------------------------------------------


def _log_series(a: FloatArray, b: FloatArray, c: FloatArray, z: FloatArray) -> FloatArray:
    """log of sum_k (a)_k (b)_k / ((c)_k k!) z^k for a, b, c > 0 and 0 <= z < 1.

    Every term is positive, so summing in log space has no cancellation and no overflow however
    large the value (for x = 1000 repeat purchases the sum exceeds 1e300). Terms are generated in
    blocks with a cumulative sum of log ratios, and only rows not yet converged continue.
    """
    n = z.shape[0]
    log_sum = np.zeros(n)
    log_term = np.zeros(n)
    active = np.flatnonzero(z > 0.0)  # z == 0: the sum is its first term, 1
    steps = np.arange(_BLOCK, dtype=np.float64)
    k0 = 0
    log_tol = math.log(HYP2F1_RTOL)
    while active.size and k0 < HYP2F1_MAX_TERMS:
        aa, bb, cc, zz = a[active, None], b[active, None], c[active, None], z[active]
        k = k0 + steps[None, :]
        log_ratio = (
            np.log(aa + k) + np.log(bb + k) - np.log(cc + k) - np.log1p(k) + np.log(zz)[:, None]
        )
        logs = log_term[active, None] + np.cumsum(log_ratio, axis=1)
        peak = logs.max(axis=1)
        block_sum = peak + np.log(np.exp(logs - peak[:, None]).sum(axis=1))
        log_sum[active] = np.logaddexp(log_sum[active], block_sum)
        last = logs[:, -1]
        log_term[active] = last
        k0 += _BLOCK
        # Ratios tend to z monotonically, so the tail after the last term is at most
        # term * q / (1 - q) with q the larger of the last ratio and z (a geometric bound).
        q = np.maximum(np.exp(log_ratio[:, -1]), zz)
        with np.errstate(divide="ignore"):
            tail = np.where(q < 1.0, last + np.log(q) - np.log1p(-np.minimum(q, 1.0)), np.inf)
        active = active[tail - log_sum[active] >= log_tol]
    return log_sum


def log_hyp2f1(
    a: ArrayLike, b: ArrayLike, c: ArrayLike, z: ArrayLike, log1mz: ArrayLike | None = None
) -> FloatArray:
    """log 2F1(a, b; c; z), elementwise, for a, b, c > 0 and 0 <= z < 1.

    ``log1mz`` (log(1 - z)) may be passed when the caller knows it more precisely than
    ``log1p(-z)`` (z close to 1). When c - a - b < 0 and c - a, c - b > 0, Euler's transformation
    2F1(a, b; c; z) = (1 - z)^(c-a-b) 2F1(c-a, c-b; c; z) is used: its terms decay like
    k^(c-a-b-1) z^k instead of growing like k^(a+b-c-1) z^k, so it converges in far fewer terms
    near z = 1, and its terms stay positive.
    """
    a_, b_, c_, z_ = (np.asarray(v, dtype=np.float64) for v in (a, b, c, z))
    a_, b_, c_, z_ = np.broadcast_arrays(a_, b_, c_, z_)
    shape = z_.shape
    a_, b_, c_, z_ = (np.ravel(v) for v in (a_, b_, c_, z_))
    if np.any((a_ <= 0) | (b_ <= 0) | (c_ <= 0)) or np.any((z_ < 0) | (z_ >= 1) | np.isnan(z_)):
        raise ValueError("log_hyp2f1 needs a, b, c > 0 and 0 <= z < 1")
    l1mz = (
        np.log1p(-z_)
        if log1mz is None
        else np.ravel(np.broadcast_to(np.asarray(log1mz, dtype=np.float64), shape))
    )
    euler = (c_ - a_ - b_ < 0) & (c_ - a_ > 0) & (c_ - b_ > 0)
    a2 = np.where(euler, c_ - a_, a_)
    b2 = np.where(euler, c_ - b_, b_)
    out = _log_series(a2, b2, c_, z_) + np.where(euler, (c_ - a_ - b_) * l1mz, 0.0)
    return out.reshape(shape)


def hyp2f1(a: ArrayLike, b: ArrayLike, c: ArrayLike, z: ArrayLike) -> FloatArray:
    """Gauss hypergeometric 2F1(a, b; c; z), elementwise, for a, b, c > 0 and 0 <= z < 1."""
    return np.exp(log_hyp2f1(a, b, c, z))


# --- BG/NBD expressions ------------------------------------------------------------------------


def _rft(x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    x_, t_x_, T_ = (np.asarray(v, dtype=np.float64) for v in (x, t_x, T))
    x_, t_x_, T_ = np.broadcast_arrays(x_, t_x_, T_)
    x_ = np.maximum(x_, 0.0)
    T_ = np.maximum(T_, 0.0)
    # Recency past age is a rounding artefact of the caller's clock (e.g. a last order stamped
    # after the origin by a time zone); the model is only defined for 0 <= t_x <= T.
    t_x_ = np.clip(t_x_, 0.0, T_)
    return x_, t_x_, T_


def _log_alive_odds(p: BgNbdParams, x: FloatArray, t_x: FloatArray, T: FloatArray) -> FloatArray:
    """log of (1 - P(alive)) / P(alive) = log[a / (b + x - 1) ((alpha + T)/(alpha + t_x))^(r + x)].

    -inf for x = 0: in BG/NBD a customer can only drop out right after a repeat purchase.
    """
    repeat = x > 0
    xr = np.where(repeat, x, 1.0)  # keeps b + x - 1 > 0 on the rows masked out below
    odds = (
        math.log(p.a)
        - np.log(p.b + xr - 1.0)
        + (p.r + xr) * (np.log(p.alpha + T) - np.log(p.alpha + t_x))
    )
    return np.where(repeat, odds, -np.inf)


def _log_p_alive(log_odds: FloatArray) -> FloatArray:
    return -np.logaddexp(0.0, log_odds)


def bgnbd_p_alive(params: BgNbdParams, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> FloatArray:
    """P(alive at T | x, t_x, T) (FHL 2005, eq. 11); exactly 1 when x = 0."""
    x_, t_x_, T_ = _rft(x, t_x, T)
    return np.exp(_log_p_alive(_log_alive_odds(params, x_, t_x_, T_)))


def _log_k(p: BgNbdParams, a: float, x: FloatArray, T: FloatArray, t: float) -> FloatArray:
    """log of (1 - Q) / (a - 1), Q = ((alpha+T)/(alpha+T+t))^(r+x) 2F1(r+x, b+x; a+b+x-1; z).

    This is the conditional expectation given alive, divided by (a + b + x - 1). (1 - Q) and
    (a - 1) have the same sign for every a != 1, so the ratio is positive.
    """
    m = p.r + x
    beta = p.b + x
    c = a + beta - 1.0
    log_v = np.log(p.alpha + T) - np.log(p.alpha + T + t)  # log(1 - z), exact near z = 1
    z = t / (p.alpha + T + t)
    log_q = m * log_v + log_hyp2f1(m, beta, c, z, log1mz=log_v)
    ratio = -np.expm1(log_q) / (a - 1.0)
    # A series stopped at the cap (z within ~1e-5 of 1) could round the ratio to <= 0; the
    # floor keeps the log finite there.
    out: FloatArray = np.log(np.maximum(ratio, 1e-300))
    return out


def _log_expected(
    p: BgNbdParams, x: FloatArray, t_x: FloatArray, T: FloatArray, t: float
) -> FloatArray:
    if t <= 0.0:
        return np.full(x.shape, -np.inf)
    xf, Tf = np.ravel(x), np.ravel(T)
    if p.a + p.b + xf.min(initial=1.0) - 1.0 <= _C_FLOOR:
        return _log_expected_low_c(p, x, t_x, T, t)
    if abs(p.a - 1.0) < _A_NEAR_ONE:
        lo, hi = 1.0 - _A_NEAR_ONE, 1.0 + _A_NEAR_ONE
        k_lo, k_hi = np.exp(_log_k(p, lo, xf, Tf, t)), np.exp(_log_k(p, hi, xf, Tf, t))
        w = (p.a - lo) / (hi - lo)
        log_k = np.log((1.0 - w) * k_lo + w * k_hi)
    else:
        log_k = _log_k(p, p.a, xf, Tf, t)
    log_pa = _log_p_alive(_log_alive_odds(p, x, t_x, T))
    return (np.log(p.a + p.b + x - 1.0) + log_k.reshape(x.shape)) + log_pa


def _hyp2f1_linear(a: FloatArray, b: FloatArray, c: FloatArray, z: FloatArray) -> FloatArray:
    """2F1 summed in linear space, for the rows whose c is at or below zero (see below).

    With -1 < c < 0 every term after the first is negative (``(c)_k < 0`` for k >= 1) and
    they decay like ``k^(a+b-c-1) z^k``, so plain summation converges for z < 1.
    """
    total = np.ones_like(z)
    term = np.ones_like(z)
    for k in range(HYP2F1_MAX_TERMS):
        term = term * (a + k) * (b + k) / ((c + k) * (k + 1.0)) * z
        total = total + term
        if k > 8 and np.all(np.abs(term) <= HYP2F1_RTOL * np.maximum(np.abs(total), 1e-300)):
            break
    return total


def _log_expected_low_c(
    p: BgNbdParams, x: FloatArray, t_x: FloatArray, T: FloatArray, t: float
) -> FloatArray:
    """The expectation when a + b < 1: for customers without a repeat purchase (x = 0) the
    hypergeometric's c = a + b - 1 is negative, outside the positive series above. Those rows
    are summed in linear space (c nudged off 0, where the expression has a finite limit);
    rows with x >= 1 have c > 0 and take the log-space path."""
    xf, tf, Tf = np.ravel(x), np.ravel(t_x), np.ravel(T)
    out = np.empty(xf.shape)
    c_all = p.a + p.b + xf - 1.0
    low = c_all <= _C_FLOOR
    if np.any(~low):
        out[~low] = _log_expected(p, xf[~low], tf[~low], Tf[~low], t)
    if np.any(low):
        xl, Tl = xf[low], Tf[low]
        c = c_all[low]
        c = np.where(np.abs(c) < 1e-9, -1e-9, c)
        m = p.r + xl
        log_v = np.log(p.alpha + Tl) - np.log(p.alpha + Tl + t)
        z = t / (p.alpha + Tl + t)
        q = np.exp(m * log_v) * _hyp2f1_linear(m, p.b + xl, c, z)
        expected = c * (1.0 - q) / (p.a - 1.0) if abs(p.a - 1.0) > 1e-12 else c * (1.0 - q) / 1e-12
        # P(alive) is 1 for these rows (x = 0), so the expectation is the bracket alone.
        out[low] = np.log(np.maximum(expected, 1e-300))
    return out.reshape(x.shape)


def bgnbd_expected(
    params: BgNbdParams, x: ArrayLike, t_x: ArrayLike, T: ArrayLike, t: float
) -> FloatArray:
    """E[purchases in (T, T + t] | x, t_x, T] (FHL 2005, eq. 10)."""
    x_, t_x_, T_ = _rft(x, t_x, T)
    return np.exp(np.minimum(_log_expected(params, x_, t_x_, T_, float(t)), 700.0))


def _log_p_any(
    p: BgNbdParams, x: FloatArray, t_x: FloatArray, T: FloatArray, t: float
) -> FloatArray:
    """log P(some purchase in (T, T+t]) = log[P(alive) (1 - ((alpha+T)/(alpha+T+t))^(r+x))].

    Exact: a BG/NBD customer alive at T stays alive until their next purchase (drop-out only
    happens right after one), so "no purchase" is "dead, or alive with a Poisson gap > t", and
    the gamma posterior of λ given x and T turns the latter into the NBD zero term.
    """
    log_v = np.log(p.alpha + T) - np.log(p.alpha + T + t)
    log_none_if_alive = (p.r + x) * log_v
    with np.errstate(divide="ignore"):
        log_some_if_alive: FloatArray = np.log(-np.expm1(log_none_if_alive))
    return _log_p_alive(_log_alive_odds(p, x, t_x, T)) + log_some_if_alive


def bgnbd_p_zero(
    params: BgNbdParams, x: ArrayLike, t_x: ArrayLike, T: ArrayLike, t: float
) -> FloatArray:
    """P(no purchase in (T, T + t] | x, t_x, T) = (1 - PA) + PA ((alpha+T)/(alpha+T+t))^(r+x)."""
    x_, t_x_, T_ = _rft(x, t_x, T)
    return -np.expm1(_log_p_any(params, x_, t_x_, T_, float(t)))


def _clipped_logit_from_log(log_p: FloatArray, log_1mp: FloatArray) -> FloatArray:
    with np.errstate(invalid="ignore"):
        logit = log_p - log_1mp
    logit = np.where(np.isnan(logit), 0.0, logit)
    return np.clip(logit, -LOGIT_CLIP, LOGIT_CLIP)


def prior_features(
    params: BgNbdParams,
    x: ArrayLike,
    t_x: ArrayLike,
    T: ArrayLike,
    ordered: ArrayLike,
    t: float,
) -> Float32Array:
    """BG/NBD model inputs, float32 ``[N, len(PRIOR_FEATURE_NAMES)]``.

    Columns (see :data:`PRIOR_FEATURE_NAMES`): log expected purchases in (T, T + t] (floored at
    1e-8), logit P(alive), logit P(no purchase in (T, T + t]) (both clipped to ±LOGIT_CLIP), and
    the log posterior mean purchase rate while alive, log((r + x)/(alpha + T)).

    Rows with ``ordered`` False are scored as a just-acquired customer (x = t_x = T = 0): a user
    with no order yet has no BG/NBD history, and the population prior is the honest input.
    """
    x_, t_x_, T_ = (np.ravel(v) for v in _rft(x, t_x, T))
    has = np.ravel(np.broadcast_to(np.asarray(ordered, dtype=bool), x_.shape))
    x_ = np.where(has, x_, 0.0)
    t_x_ = np.where(has, t_x_, 0.0)
    T_ = np.where(has, T_, 0.0)
    t = float(t)

    log_e = np.maximum(_log_expected(params, x_, t_x_, T_, t), LOG_EXPECTED_FLOOR)
    log_odds = _log_alive_odds(params, x_, t_x_, T_)
    logit_alive = np.clip(-log_odds, -LOGIT_CLIP, LOGIT_CLIP)
    log_any = _log_p_any(params, x_, t_x_, T_, t)
    with np.errstate(divide="ignore"):
        log_zero = np.log(-np.expm1(log_any))
    logit_zero = _clipped_logit_from_log(log_zero, log_any)
    log_rate = np.log(params.r + x_) - np.log(params.alpha + T_)
    out = np.stack([log_e, logit_alive, logit_zero, log_rate], axis=1).astype(np.float32)
    # Any non-finite value would be a bug above; keep the network's input finite regardless.
    return np.nan_to_num(out, nan=0.0, posinf=LOGIT_CLIP, neginf=-LOGIT_CLIP)
