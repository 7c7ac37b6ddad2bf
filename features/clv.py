"""The customer-base models: closed-form per-customer quantities, shared by training and worker.

Owns :class:`BgNbdParams` and the vectorised BG/NBD expressions of Fader, Hardie & Lee (2005),
"Counting Your Customers the Easy Way": P(alive), the conditional expected number of purchases
in ``(T, T + t]``, the probability of no purchase in ``(T, T + t]``; the same three for
Pareto/NBD (:class:`ParetoNbdParams`; Fader & Hardie 2005, "A Note on Deriving the Pareto/NBD
Model and Related Expressions", and P(no purchase) derived in :func:`pareto_nbd_p_zero`); and
:func:`prior_features`, the model inputs derived from either. It also owns the Gauss
hypergeometric :func:`hyp2f1` that the conditional expectations need, because the worker
imports this package and must not pull in scipy. Fitting the parameters lives in
:mod:`training.clv` (scipy is allowed there).

Inputs, per customer, in one time unit (weeks in this project): ``x`` repeat purchases (order
days after the first), ``t_x`` time of the last purchase since the first, ``T`` time from the
first purchase to the origin. Pure: numpy only, no I/O.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
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
"""Series cap for :func:`hyp2f1` called directly with z within ~1e-5 of 1; the partial sum is then
a finite lower bound. The BG/NBD expectation never gets there: it integrates above
:data:`Z_QUADRATURE`."""

Z_QUADRATURE: Final = 0.99
"""Above this z = t/(alpha+T+t) the conditional expectation is integrated numerically: the series
would need thousands of terms per row (and ~1e6 for a tiny alpha at T = 0)."""
C_MIN: Final = 0.5
"""Below this c = a + b + x - 1 (only at x = 0 with a + b < 1.5) the expectation is integrated
too: at c <= 0 the 2F1 series is no longer one of positive terms."""
_QUAD_NODES: Final = 2001

_FIRST_BLOCK: Final = 32
_MAX_BLOCK: Final = 4096
ROWS_AT_ONCE: Final = 2048
"""Rows the series and the quadrature evaluate together. Their work arrays are rows x terms
(up to 4,096) or rows x nodes (2,001) of float64, several at once: for 150,000 customers of a
generated shop, at one origin, whole-batch arrays took the training past 23 GB (issue 18's
scale bench). At 2,048 rows a work array is 16-32 MB. Each row's value depends on its own
inputs only, so the rows give the same bits in any grouping (tested)."""
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
    def from_dict(cls, data: Mapping[str, object]) -> ParetoNbdParams:
        def get(key: str) -> float:
            value = data[key]
            if not isinstance(value, int | float):
                raise ValueError(f"Pareto/NBD parameter {key} must be a number, got {value!r}")
            return float(value)

        return cls(r=get("r"), alpha=get("alpha"), s=get("s"), beta=get("beta"))


CustomerBaseParams = BgNbdParams | ParetoNbdParams
"""Either customer-base model's parameters: :func:`prior_features` reads both."""


# --- Gauss hypergeometric function -------------------------------------------------------------


def _by_rows(fn: Callable[..., FloatArray], *rows: FloatArray) -> FloatArray:
    """``fn`` over :data:`ROWS_AT_ONCE` rows at a time of the 1-D ``rows``, concatenated;
    beyond that many rows, once per distinct row (by its bits), spread back to every row.

    ``fn`` works row by row, so neither changes a bit. Distinct rows matter at scale: every
    user who never ordered enters BG/NBD as (x, t_x, T) = (0, 0, 0), one row repeated for
    millions of browsers, each of which cost the quadrature's 2,001 nodes (a 2.1M-user shop
    spent over 15 minutes there)."""
    n = rows[0].shape[0]
    if n <= ROWS_AT_ONCE:
        return fn(*rows)
    where, spread = _unique_rows(rows)
    firsts = tuple(np.asarray(r)[where] for r in rows)
    values = np.concatenate(
        [fn(*(r[i : i + ROWS_AT_ONCE] for r in firsts)) for i in range(0, len(where), ROWS_AT_ONCE)]
    )
    out: FloatArray = values[spread]
    return out


def _unique_rows(rows: tuple[FloatArray, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The first index of each distinct row of the 1-D ``rows`` (by their bits, so -0.0 and
    0.0 differ and no two values that round alike merge), and each row's distinct index."""
    bits = np.stack([np.ascontiguousarray(r, dtype=np.float64).view(np.uint64) for r in rows], 1)
    _, where, inverse = np.unique(bits, axis=0, return_index=True, return_inverse=True)
    return where, inverse.reshape(-1)


def _distinct_rows(
    fn: Callable[..., tuple[FloatArray, ...]], *rows: FloatArray
) -> tuple[FloatArray, ...]:
    """``fn``'s outputs on the distinct rows of the 1-D ``rows`` (by their bits), spread back
    to every row: the same bits as ``fn`` on all rows, since each row's value depends on its
    own inputs only.

    Why: a customer's (x, t_x, T) are whole order days and days of age, so a batch of customers
    repeats them (every one-time buyer of a day shares a row), and the customer-base model's
    series cost up to a few thousand terms per row (Pareto/NBD near its no-drop-out corner):
    computed once per distinct row, a worker's micro-batch pays for fewer rows."""
    n = rows[0].shape[0]
    if n < 2:
        return fn(*rows)
    where, spread = _unique_rows(rows)
    if len(where) == n:
        return fn(*rows)
    return tuple(v[spread] for v in fn(*(r[where] for r in rows)))


def _log_series(a: FloatArray, b: FloatArray, c: FloatArray, z: FloatArray) -> FloatArray:
    """log of sum_k (a)_k (b)_k / ((c)_k k!) z^k for a, b, c > 0 and 0 <= z < 1, by
    :data:`ROWS_AT_ONCE` rows (:func:`_log_series_rows`)."""
    return _by_rows(_log_series_rows, a, b, c, z)


def _log_series_rows(a: FloatArray, b: FloatArray, c: FloatArray, z: FloatArray) -> FloatArray:
    """log of sum_k (a)_k (b)_k / ((c)_k k!) z^k for a, b, c > 0 and 0 <= z < 1.

    Every term is positive, so summing in log space has no cancellation and no overflow however
    large the value (for x = 1000 repeat purchases the sum exceeds 1e300). Terms are generated in
    blocks with a cumulative sum of log ratios, and only rows not yet converged continue.
    """
    n = z.shape[0]
    log_sum = np.zeros(n)
    log_term = np.zeros(n)
    active = np.flatnonzero(z > 0.0)  # z == 0: the sum is its first term, 1
    # Most rows converge in a few dozen terms; the block doubles for the few that do not, so
    # per-row work stays within 2x of the terms needed.
    block = _FIRST_BLOCK
    k0 = 0
    log_tol = math.log(HYP2F1_RTOL)
    while active.size and k0 < HYP2F1_MAX_TERMS:
        aa, bb, cc, zz = a[active, None], b[active, None], c[active, None], z[active]
        k = k0 + np.arange(block, dtype=np.float64)[None, :]
        log_ratio = (
            np.log(aa + k) + np.log(bb + k) - np.log(cc + k) - np.log1p(k) + np.log(zz)[:, None]
        )
        logs = log_term[active, None] + np.cumsum(log_ratio, axis=1)
        peak = logs.max(axis=1)
        block_sum = peak + np.log(np.exp(logs - peak[:, None]).sum(axis=1))
        log_sum[active] = np.logaddexp(log_sum[active], block_sum)
        last = logs[:, -1]
        log_term[active] = last
        k0 += block
        block = min(2 * block, _MAX_BLOCK)
        # Tail bound: every later ratio t_(j+1)/t_j = z (1 + (s j + i)/((c + j)(j + 1))), with
        # s = a + b - c - 1 and i = ab - c, is below q = z (1 + s+/(c + k) + i+/((c + k)(k + 1)))
        # for j >= k, so the tail after the last term is at most term * q / (1 - q).
        a1, b1, c1 = aa[:, 0], bb[:, 0], cc[:, 0]
        slope = np.maximum(a1 + b1 - c1 - 1.0, 0.0)
        icpt = np.maximum(a1 * b1 - c1, 0.0)
        q = zz * (1.0 + slope / (c1 + k0) + icpt / ((c1 + k0) * (k0 + 1.0)))
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


def _horizon(t: ArrayLike, like: FloatArray) -> FloatArray:
    """The horizon ``t`` (weeks; a scalar or one per row) as an array of ``like``'s shape."""
    return np.array(np.broadcast_to(np.asarray(t, dtype=np.float64), like.shape))


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


def _log_h_quadrature(a: float, beta: FloatArray, m: FloatArray, u: FloatArray) -> FloatArray:
    """:func:`_log_h_quadrature_rows` by :data:`ROWS_AT_ONCE` rows."""
    return _by_rows(functools.partial(_log_h_quadrature_rows, a), beta, m, u)


def _log_h_quadrature_rows(a: float, beta: FloatArray, m: FloatArray, u: FloatArray) -> FloatArray:
    """log E_p[(1 - (1 + p u)^-m) / p] for p ~ Beta(a, beta), by quadrature over s = logit(p).

    This is the expectation given alive (u = t/(alpha + T), m = r + x): the 2F1 form integrated
    over the posterior of p. Where z = u/(1 + u) is close to 1 (a tiny alpha + T against t) the
    2F1 series needs ~1/(1 - z) terms, while this integrand stays smooth in s: it decays like
    e^(a s) below and e^(-beta s) above, so the trapezoid rule on a uniform grid converges
    geometrically. It is self-normalised (the same grid integrates the Beta weight), so no log-beta
    function is needed and grid error largely cancels.
    """
    s_peak = math.log(a) - np.log(beta)
    s_lo = np.minimum(s_peak, -np.log(u)) - 40.0 / a - 5.0
    s_hi = s_peak + np.minimum(40.0 / beta, 400.0) + 5.0
    grid = np.linspace(0.0, 1.0, _QUAD_NODES)[None, :]
    s = s_lo[:, None] + (s_hi - s_lo)[:, None] * grid
    log_p = -np.logaddexp(0.0, -s)
    log_1mp = -np.logaddexp(0.0, s)
    log_w = a * log_p + beta[:, None] * log_1mp
    log_pu = log_p + np.log(u)[:, None]
    y = m[:, None] * np.log1p(np.exp(log_pu))  # -log E[exp(-λ p t)], λ ~ its posterior
    # Far below p = 1/u, y underflows; there 1 - e^-y = y (1 - y/2) and log y is taken from logs.
    tiny = y < 1e-8
    log_y = np.where(tiny, np.log(m)[:, None] + log_pu, np.log(np.where(tiny, 1.0, y)))
    with np.errstate(divide="ignore"):
        log_1m_ey = np.log(-np.expm1(-y))
    log_g = np.where(tiny, log_y - 0.5 * y, log_1m_ey) - log_p

    def logsumexp(v: FloatArray) -> FloatArray:
        peak = v.max(axis=1)
        out: FloatArray = peak + np.log(np.exp(v - peak[:, None]).sum(axis=1))
        return out

    return logsumexp(log_g + log_w) - logsumexp(log_w)


def _log_h(p: BgNbdParams, a: float, x: FloatArray, T: FloatArray, t: FloatArray) -> FloatArray:
    """log E[purchases in (T, T + t] | alive at T], with drop-out parameter ``a``.

    FHL (2005), eq. 10 without P(alive): (a + b + x - 1)/(a - 1) (1 - Q) with
    Q = ((alpha+T)/(alpha+T+t))^(r+x) 2F1(r+x, b+x; a+b+x-1; z), z = t/(alpha+T+t). (1 - Q) and
    (a - 1) have the same sign for every a != 1. Rows where that series is slow or not of
    positive terms (z above :data:`Z_QUADRATURE`, or c = a + b + x - 1 below :data:`C_MIN`, which
    happens at x = 0 when a + b < 1) are integrated numerically instead.
    """
    m = p.r + x
    beta = p.b + x
    c = a + beta - 1.0
    log_v = np.log(p.alpha + T) - np.log(p.alpha + T + t)  # log(1 - z), exact near z = 1
    z = t / (p.alpha + T + t)
    quad = (z > Z_QUADRATURE) | (c < C_MIN)
    out = np.empty_like(z)
    ser = ~quad
    if np.any(ser):
        log_q = m[ser] * log_v[ser] + log_hyp2f1(
            m[ser], beta[ser], c[ser], z[ser], log1mz=log_v[ser]
        )
        ratio = -np.expm1(log_q) / (a - 1.0)
        # Rounding can only push the ratio to <= 0 when it is ~eps; the floor keeps the log finite.
        out[ser] = np.log(c[ser]) + np.log(np.maximum(ratio, 1e-300))
    if np.any(quad):
        u = t[quad] / (p.alpha + T[quad])
        out[quad] = _log_h_quadrature(a, beta[quad], m[quad], u)
    return out


def _log_expected(
    p: BgNbdParams, x: FloatArray, t_x: FloatArray, T: FloatArray, t: FloatArray
) -> FloatArray:
    """log E[purchases in (T, T + t]] per row; ``t`` has ``x``'s shape (-inf where t <= 0)."""
    xf, Tf = np.ravel(x), np.ravel(T)
    t_all = np.ravel(t)
    none = t_all <= 0.0
    tf = np.where(none, 1.0, t_all)  # a placeholder horizon, masked below
    if abs(p.a - 1.0) < _A_NEAR_ONE:
        lo, hi = 1.0 - _A_NEAR_ONE, 1.0 + _A_NEAR_ONE
        h_lo, h_hi = np.exp(_log_h(p, lo, xf, Tf, tf)), np.exp(_log_h(p, hi, xf, Tf, tf))
        w = (p.a - lo) / (hi - lo)
        log_h = np.log((1.0 - w) * h_lo + w * h_hi)
    else:
        log_h = _log_h(p, p.a, xf, Tf, tf)
    log_pa = _log_p_alive(_log_alive_odds(p, x, t_x, T))
    out: FloatArray = np.where(none, -np.inf, log_h).reshape(x.shape) + log_pa
    return out


def bgnbd_expected(
    params: BgNbdParams, x: ArrayLike, t_x: ArrayLike, T: ArrayLike, t: ArrayLike
) -> FloatArray:
    """E[purchases in (T, T + t] | x, t_x, T] (FHL 2005, eq. 10); ``t`` a scalar or per row."""
    x_, t_x_, T_ = _rft(x, t_x, T)
    return np.exp(np.minimum(_log_expected(params, x_, t_x_, T_, _horizon(t, x_)), 700.0))


def _log_p_any(
    p: BgNbdParams, x: FloatArray, t_x: FloatArray, T: FloatArray, t: FloatArray
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
    params: BgNbdParams, x: ArrayLike, t_x: ArrayLike, T: ArrayLike, t: ArrayLike
) -> FloatArray:
    """P(no purchase in (T, T + t] | x, t_x, T) = (1 - PA) + PA ((alpha+T)/(alpha+T+t))^(r+x);
    ``t`` a scalar or per row."""
    x_, t_x_, T_ = _rft(x, t_x, T)
    return -np.expm1(_log_p_any(params, x_, t_x_, T_, _horizon(t, x_)))


def _clipped_logit_from_log(log_p: FloatArray, log_1mp: FloatArray) -> FloatArray:
    with np.errstate(invalid="ignore"):
        logit = log_p - log_1mp
    logit = np.where(np.isnan(logit), 0.0, logit)
    return np.clip(logit, -LOGIT_CLIP, LOGIT_CLIP)


# --- Pareto/NBD expressions --------------------------------------------------------------------


def _pareto_log_alive_odds(
    p: ParetoNbdParams, x: FloatArray, t_x: FloatArray, T: FloatArray
) -> FloatArray:
    """log of (1 - P(alive)) / P(alive): the death term over the alive term of the likelihood
    (Fader & Hardie 2005, eq. 22-25), (s/(r+s+x)) A_0 (alpha+T)^(r+x) (beta+T)^s.

    A_0 is a difference of two 2F1 terms (at t_x and at T) that cancel as t_x -> T; it is taken
    as term1 * (1 - term2/term1) in log space, and is exactly 0 (log odds -inf) at t_x = T.
    """
    rsx = p.r + p.s + x
    if p.alpha >= p.beta:
        base, b1, diff = p.alpha, np.full_like(x, p.s + 1.0), p.alpha - p.beta
    else:
        base, b1, diff = p.beta, p.r + x, p.beta - p.alpha

    def term(at: FloatArray) -> FloatArray:
        out: FloatArray = log_hyp2f1(rsx, b1, rsx + 1.0, diff / (base + at)) - rsx * np.log(
            base + at
        )
        return out

    f_tx, f_T = term(t_x), term(T)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_a0 = f_tx + np.log(-np.expm1(np.minimum(f_T - f_tx, 0.0)))
    log_a0 = np.where(np.isnan(log_a0), -np.inf, log_a0)
    death = math.log(p.s) - np.log(rsx) + log_a0
    alive = -(p.r + x) * np.log(p.alpha + T) - p.s * np.log(p.beta + T)
    out: FloatArray = death - alive
    return out


def pareto_nbd_p_alive(
    params: ParetoNbdParams, x: ArrayLike, t_x: ArrayLike, T: ArrayLike
) -> FloatArray:
    """P(alive at T | x, t_x, T) (Fader & Hardie 2005, eq. 25)."""
    x_, t_x_, T_ = (np.atleast_1d(v) for v in _rft(x, t_x, T))
    return np.exp(_log_p_alive(_pareto_log_alive_odds(params, x_, t_x_, T_)))


def _pareto_log_expected(
    p: ParetoNbdParams,
    x: FloatArray,
    t_x: FloatArray,
    T: FloatArray,
    t: FloatArray,
    log_odds: FloatArray,
) -> FloatArray:
    """log E[purchases in (T, T + t]] (eq. 27):
    P(alive) (r + x)(beta + T) / ((alpha + T)(s - 1)) [1 - ((beta + T)/(beta + T + t))^(s - 1)].

    The bracket over (s - 1) is 0/0 at s = 1; it is evaluated as -log(v) expm1(y)/y with
    y = (s - 1) log v, whose limit at s = 1 is -log v. ``log_odds``: the rows' alive odds
    (:func:`_pareto_log_alive_odds`: two 2F1 series per row, so the caller computes them once).
    """
    log_v = np.log(p.beta + T) - np.log(p.beta + T + t)
    y = (p.s - 1.0) * log_v
    with np.errstate(divide="ignore", invalid="ignore"):
        phi = np.where(np.abs(y) > 1e-12, np.expm1(y) / y, 1.0 + 0.5 * y)
    bracket = -log_v * phi  # = [1 - v^(s-1)] / (s - 1)
    with np.errstate(divide="ignore"):
        log_bracket = np.log(np.maximum(bracket, 0.0))
    out: FloatArray = (
        _log_p_alive(log_odds)
        + np.log(p.r + x)
        - np.log(p.alpha + T)
        + np.log(p.beta + T)
        + np.where(t > 0.0, log_bracket, -np.inf)
    )
    return out


def pareto_nbd_expected(
    params: ParetoNbdParams, x: ArrayLike, t_x: ArrayLike, T: ArrayLike, t: ArrayLike
) -> FloatArray:
    """E[purchases in (T, T + t] | x, t_x, T]; ``t`` a scalar or per row."""
    x_, t_x_, T_ = (np.atleast_1d(v) for v in _rft(x, t_x, T))
    log_odds = _pareto_log_alive_odds(params, x_, t_x_, T_)
    log_e = _pareto_log_expected(params, x_, t_x_, T_, _horizon(t, x_), log_odds)
    return np.exp(np.minimum(log_e, 700.0))


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
    share = m1 / (m1 + s1) * hyp2f1(1.0, m1 + 1.0, m1 + s1 + 1.0, 1.0 - 1.0 / k1) / k1
    out: FloatArray = np.where(big, share, 1.0 - share)
    return out


def _pareto_log_p_any(
    p: ParetoNbdParams,
    x: FloatArray,
    t_x: FloatArray,
    T: FloatArray,
    t: FloatArray,
    log_odds: FloatArray,
) -> FloatArray:
    """log P(some purchase in (T, T + t]) = log[P(alive) P(some | alive)], exact.

    Given alive at T the posterior is λ ~ Gamma(r+x, α+T), μ ~ Gamma(s, β+T), independent (the
    likelihood of "alive" is λ^x e^(-λT) e^(-μT)). The remaining lifetime is Exp(μ)
    (memoryless), so a purchase comes in the next t iff the first Poisson arrival beats both
    death and t: P(some | λ, μ) = λ/(λ+μ) (1 - e^(-(λ+μ)t)). Averaging, the e^(-λt-μt) factor
    tilts both gammas to rates α+T+t, β+T+t with weight ((α+T)/(α+T+t))^(r+x)
    ((β+T)/(β+T+t))^s, so P(some | alive) = S(α+T, β+T) - weight S(α+T+t, β+T+t) with
    S = E[λ/(λ+μ)] (:func:`_mean_share`). ``log_odds`` as in :func:`_pareto_log_expected`.
    """
    m = p.r + x
    A, B = p.alpha + T, p.beta + T
    log_w = m * (np.log(A) - np.log(A + t)) + p.s * (np.log(B) - np.log(B + t))
    some = _mean_share(m, A, p.s, B) - np.exp(log_w) * _mean_share(m, A + t, p.s, B + t)
    with np.errstate(divide="ignore"):
        log_some = np.log(np.clip(some, 0.0, 1.0))
    out: FloatArray = _log_p_alive(log_odds) + log_some
    return out


def pareto_nbd_p_zero(
    params: ParetoNbdParams, x: ArrayLike, t_x: ArrayLike, T: ArrayLike, t: ArrayLike
) -> FloatArray:
    """P(no purchase in (T, T + t] | x, t_x, T) = 1 - P(alive) P(some | alive), exact (see
    :func:`_pareto_log_p_any`); ``t`` a scalar or per row."""
    x_, t_x_, T_ = (np.atleast_1d(v) for v in _rft(x, t_x, T))
    log_odds = _pareto_log_alive_odds(params, x_, t_x_, T_)
    return -np.expm1(_pareto_log_p_any(params, x_, t_x_, T_, _horizon(t, x_), log_odds))


def _prior_terms(
    params: CustomerBaseParams,
    x: FloatArray,
    t_x: FloatArray,
    T: FloatArray,
    t: FloatArray,
    t_zero: FloatArray,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(log expected purchases in (T, T + t], log alive odds, log P(some purchase in
    (T, T + t_zero])) under either customer-base model."""
    if isinstance(params, ParetoNbdParams):
        # The alive odds are most of Pareto/NBD's cost (two 2F1 series per row): once, not
        # once per term.
        log_odds = _pareto_log_alive_odds(params, x, t_x, T)
        return (
            _pareto_log_expected(params, x, t_x, T, t, log_odds),
            log_odds,
            _pareto_log_p_any(params, x, t_x, T, t_zero, log_odds),
        )
    return (
        _log_expected(params, x, t_x, T, t),
        _log_alive_odds(params, x, t_x, T),
        _log_p_any(params, x, t_x, T, t_zero),
    )


def prior_features(
    params: CustomerBaseParams,
    x: ArrayLike,
    t_x: ArrayLike,
    T: ArrayLike,
    ordered: ArrayLike,
    t: ArrayLike,
    *,
    zero_horizon: ArrayLike | None = None,
    zero_power: ArrayLike | None = None,
) -> Float32Array:
    """The customer-base model's inputs (BG/NBD or Pareto/NBD, by ``params``' type), float32
    ``[N, len(PRIOR_FEATURE_NAMES)]``.

    Columns (see :data:`PRIOR_FEATURE_NAMES`): log expected purchases in (T, T + t] (floored at
    1e-8), logit P(alive), logit P(no purchase in (T, T + t]) (both clipped to ±LOGIT_CLIP), and
    the log posterior mean purchase rate while alive, log((r + x)/(alpha + T)).

    ``zero_horizon`` (default ``t``) is the horizon of the probability of no purchase, and
    ``zero_power`` (default 1) a positive power it is raised to: P0 ** m is the probability of
    no purchase of a Poisson buyer over ``m`` times the horizon, and a power the same for every
    row keeps the rows' order (:func:`features.summary.summarize` says why that matters).

    Rows with ``ordered`` False are scored as a just-acquired customer (x = t_x = T = 0): a user
    with no order yet has no customer-base history, and the population prior is the honest input.
    """
    x_, t_x_, T_ = (np.ravel(v) for v in _rft(x, t_x, T))
    has = np.ravel(np.broadcast_to(np.asarray(ordered, dtype=bool), x_.shape))
    x_ = np.where(has, x_, 0.0)
    t_x_ = np.where(has, t_x_, 0.0)
    T_ = np.where(has, T_, 0.0)
    t_ = _horizon(t, x_)
    t0 = t_ if zero_horizon is None else _horizon(zero_horizon, x_)

    log_e, log_odds, log_any = _distinct_rows(
        functools.partial(_prior_terms, params), x_, t_x_, T_, t_, t0
    )
    log_e = np.maximum(log_e, LOG_EXPECTED_FLOOR)
    logit_alive = np.clip(-log_odds, -LOGIT_CLIP, LOGIT_CLIP)
    with np.errstate(divide="ignore"):
        log_zero = np.log(-np.expm1(log_any))
        if zero_power is not None:
            log_zero = _horizon(zero_power, x_) * log_zero
            log_any = np.log(-np.expm1(log_zero))
    logit_zero = _clipped_logit_from_log(log_zero, log_any)
    log_rate = np.log(params.r + x_) - np.log(params.alpha + T_)
    out = np.stack([log_e, logit_alive, logit_zero, log_rate], axis=1).astype(np.float32)
    # Any non-finite value would be a bug above; keep the network's input finite regardless.
    return np.nan_to_num(out, nan=0.0, posinf=LOGIT_CLIP, neginf=-LOGIT_CLIP)
