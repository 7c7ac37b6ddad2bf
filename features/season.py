"""The shop's calendar: how much more (or less) its customers buy in each part of the year.

Owns :class:`SeasonIndex` (a smooth log-multiplier of the order rate over the year, as a
few Fourier harmonics of the window's position in the year) and :func:`horizon_multiplier`,
the factor by which a forecast horizon's expected purchases differ from a year-round rate.

Why: BG/NBD, and any model built on a customer's own history, forecasts a year-round rate.
A horizon that holds the shop's peak (a wholesaler's Christmas quarter) is then under-forecast
by the size of the peak, and no customer's history says so. When the shop's own history shows
last year's season (:func:`training.season.fit_season_index` decides that, on data before the
cutoff only), the index carries it into the forecast: the horizon of ``t`` weeks is read as
``t * m`` weeks of year-round buying (an operational-time deformation of the expected count).
:func:`horizon_season` is the part of ``m`` that is the horizon's alone, the same for every
customer at a close: the probability of no order moves by it (see
:func:`features.summary.summarize`, which says why it does not read the whole ``m``).

Training and the worker's scorer both call these through :func:`features.summary.summarize`,
with the index stored in the manifest's prior.

Pure: stdlib and numpy only, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from features.windows import DAY_MS, FEATURE_INDEX, YEAR_DAYS, FloatArray, WindowSpec

# The year is sampled at this many points to normalise the index (its mean multiplier over
# the year is 1, so a shop without a season keeps BG/NBD's year-round rate).
_YEAR_GRID: Final = 365


def _grid() -> FloatArray:
    return np.linspace(0.0, 2.0 * np.pi, _YEAR_GRID + 1)


def angle_of(time_ms: npt.ArrayLike) -> FloatArray:
    """Position in the year of instants (ms), in radians: the convention of the ``season_*``
    window features (:func:`features.windows.season`)."""
    days = np.asarray(time_ms, dtype=np.float64) / DAY_MS
    out: FloatArray = 2.0 * np.pi * (np.mod(days, YEAR_DAYS) / YEAR_DAYS)
    return out


@dataclass(frozen=True)
class SeasonIndex:
    """``log multiplier(θ) = Σ_k cos_k cos(kθ) + sin_k sin(kθ)`` over the year's angle θ,
    normalised so that the multiplier's mean over the year is 1."""

    cos: tuple[float, ...]
    sin: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.cos) != len(self.sin) or not self.cos:
            raise ValueError("a season index needs as many sine as cosine terms, at least one")
        if not all(np.isfinite(v) for v in (*self.cos, *self.sin)):
            raise ValueError("season index coefficients must be finite")

    @cached_property
    def _cumulative(self) -> FloatArray:
        """∫ multiplier over a grid of one year, scaled so that the year integrates to 2π."""
        shape = np.exp(self.log_shape(_grid()))
        steps = (shape[1:] + shape[:-1]) / 2.0
        cumulative = np.concatenate([[0.0], np.cumsum(steps)])
        out: FloatArray = cumulative * (2.0 * np.pi / cumulative[-1])
        return out

    def log_shape(self, angle: npt.ArrayLike) -> FloatArray:
        """The harmonics' sum at ``angle`` (before normalisation)."""
        a = np.asarray(angle, dtype=np.float64)
        out = np.zeros_like(a)
        for k, (c, s) in enumerate(zip(self.cos, self.sin, strict=True), start=1):
            out += c * np.cos(k * a) + s * np.sin(k * a)
        return out

    def integral(self, angle: npt.ArrayLike) -> FloatArray:
        """∫ multiplier from 0 to ``angle`` (any real angle: each whole year adds 2π)."""
        a = np.asarray(angle, dtype=np.float64)
        turns = np.floor(a / (2.0 * np.pi))
        within = a - turns * 2.0 * np.pi
        out: FloatArray = turns * 2.0 * np.pi + np.interp(within, _grid(), self._cumulative)
        return out

    def mean_over(self, end: npt.ArrayLike, length: npt.ArrayLike) -> FloatArray:
        """Mean multiplier over ``(end - length, end]`` (angles; 1 where ``length`` is 0)."""
        e = np.asarray(end, dtype=np.float64)
        n = np.asarray(length, dtype=np.float64)
        safe = np.where(n > 0.0, n, 1.0)
        out: FloatArray = np.where(n > 0.0, (self.integral(e) - self.integral(e - n)) / safe, 1.0)
        return out

    def scaled(self, factor: float) -> SeasonIndex:
        """The index with every log coefficient times ``factor`` (0: no season, 1: itself)."""
        return SeasonIndex(tuple(c * factor for c in self.cos), tuple(s * factor for s in self.sin))

    def to_dict(self) -> dict[str, Any]:
        return {"cos": list(self.cos), "sin": list(self.sin)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SeasonIndex:
        return cls(tuple(float(v) for v in data["cos"]), tuple(float(s) for s in data["sin"]))


def horizon_multiplier(
    season: SeasonIndex | None,
    last_vectors: npt.ArrayLike,
    age_weeks: npt.ArrayLike,
    alpha: float,
    spec: WindowSpec,
    windows: int | None = None,
) -> FloatArray:
    """``[N]`` factor on BG/NBD's horizon: the horizon's season against the season the
    customer's rate was learnt in.

    BG/NBD's posterior rate is ``(r + x) / (alpha + T)``: ``alpha`` weeks of the population's
    year-round buying and the customer's own ``T`` weeks. In operational time (weeks weighted by
    the season) those ``T`` weeks count ``T * s_T``, with ``s_T`` the mean multiplier over the
    customer's tenure, and the horizon ``t * s_h``; the expected count then changes by
    ``s_h * (alpha + T) / (alpha + T * s_T)``. A customer who joined in the peak has a rate
    inflated by it, one who joined in a lull a deflated one; a long-standing customer's tenure
    averages the year (``s_T`` near 1).

    ``last_vectors`` are raw feature vectors ``[N, N_FEATURES]`` of the scored window, whose
    start is read back from its ``season_*`` features, so rows of different closes can share a
    batch. ``age_weeks`` is BG/NBD's ``T`` (0 for users who never ordered). The horizon is
    ``spec.horizon`` windows unless ``windows`` says otherwise. Without an index, 1.
    """
    s_h = horizon_season(season, last_vectors, spec, windows)
    out: FloatArray = s_h * tenure_factor(season, last_vectors, age_weeks, alpha, spec)
    return out


def tenure_factor(
    season: SeasonIndex | None,
    last_vectors: npt.ArrayLike,
    age_weeks: npt.ArrayLike,
    alpha: float,
    spec: WindowSpec,
) -> FloatArray:
    """``[N]`` the customer's part of :func:`horizon_multiplier`, ``(alpha + T) / (alpha + T *
    s_T)``: how much the season the customer's rate was learnt in under- or overstates their
    year-round rate. Without an index, 1."""
    v = np.asarray(last_vectors, dtype=np.float64)
    if season is None:
        return np.ones(v.shape[0])
    now, _ = _now_and_horizon(v, spec, None)
    age = np.maximum(np.asarray(age_weeks, dtype=np.float64), 0.0)
    s_t = season.mean_over(now, 2.0 * np.pi / YEAR_DAYS * 7.0 * age)
    out: FloatArray = (alpha + age) / (alpha + age * s_t)
    return out


def horizon_season(
    season: SeasonIndex | None,
    last_vectors: npt.ArrayLike,
    spec: WindowSpec,
    windows: int | None = None,
) -> FloatArray:
    """``[N]`` mean multiplier of the horizon that follows each row's window: the first factor
    of :func:`horizon_multiplier`, without the customer's tenure, so every row of one close
    gets the same value. Without an index, 1."""
    v = np.asarray(last_vectors, dtype=np.float64)
    if season is None:
        return np.ones(v.shape[0])
    now, horizon = _now_and_horizon(v, spec, windows)
    out: FloatArray = season.mean_over(now + horizon, horizon)
    return out


def _now_and_horizon(
    v: FloatArray, spec: WindowSpec, windows: int | None
) -> tuple[FloatArray, float]:
    """Angle of each row's window end (read back from its ``season_*`` features) and the
    horizon's length in radians."""
    window_days = spec.length_ms / DAY_MS
    per_day = 2.0 * np.pi / YEAR_DAYS
    start = np.arctan2(v[:, FEATURE_INDEX["season_sin"]], v[:, FEATURE_INDEX["season_cos"]])
    horizon = per_day * window_days * (spec.horizon if windows is None else windows)
    return start + per_day * window_days, horizon
