"""The baselines of the demand forecasts: seasonal naive, a moving average, and AutoETS.

Each takes every series' history ``[series, T]`` (windows, oldest first, nothing after the
origin) and returns quantile forecasts ``[series, horizon, 3]`` (P10, P50, P90 of
:data:`training.demand.QUANTILES`), never below zero: what the model is judged against by
:func:`training.demand.score_quantiles`.

* :func:`seasonal_naive`: each window a season ago (a year of weekly windows: 52; a week of
  daily ones: 7, :func:`season_length`); with less than a season of history it is the naive
  forecast (the last window), as it must be. Intervals: normal, from the method's own
  residuals in the history, widening with each season ahead (Hyndman & Athanasopoulos, FPP3
  5.5).
* :func:`moving_average`: the mean of the last ``k`` windows; intervals from its one-step
  residuals in the history.
* :func:`auto_ets`: ETS chosen by AICc among error (additive, multiplicative), trend (none,
  additive, damped) and season (none, additive, multiplicative: with two seasons of history
  or more, of at most 24 windows), as statsforecast's ``AutoETS`` and R's ``ets()`` choose;
  multiplicative parts only for a history above zero. Fitted and forecast by statsmodels'
  ``ETSModel`` (its analytic intervals, or simulated ones under a seeded generator for
  multiplicative models).
  Why not statsforecast itself: its 2.1.1 (the newest) declares pandas < 3 and imports fugue,
  triad and pyarrow at start-up; the project runs pandas 3.1, under which installing pyarrow
  would change every adapter's default string dtype. statsmodels is the maintained library the
  same models come from; the selection rule is the one both follow.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Final

import numpy as np
import pandas as pd

from features.windows import DAY_MS, WindowSpec

Z_80: Final = 1.2815515655446004
"""The standard normal's 0.9 quantile: P10 and P90 of a normal forecast are mean -/+ Z_80 sd."""
MAX_ETS_SEASON: Final = 24
"""The longest season ETS models: R's ``ets()`` and statsforecast's ``AutoETS`` ignore the
season beyond 24 windows (weekly windows' 52 among them), and so does :func:`auto_ets`."""
MOVING_AVERAGE_WINDOWS: Final = 4
"""The moving average's ``k``: four windows (a month of weekly windows)."""


def season_length(spec: WindowSpec) -> int:
    """Windows per season: a year of windows for windows of a week or more, a week of windows
    for shorter ones (daily windows: 7); at least 1."""
    days = spec.length_ms / DAY_MS
    period = 365.25 if days >= 7 else 7.0
    return max(1, round(period / days))


def _quantiles(point: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """``[series, H, 3]`` from point forecasts and standard deviations, floored at zero."""
    out = np.stack([point - Z_80 * sd, point, point + Z_80 * sd], axis=-1)
    return np.asarray(np.maximum(out, 0.0), dtype=np.float64)


def seasonal_naive(history: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """Each horizon window's value one season before it (the naive forecast with less than a
    season of history)."""
    history = np.asarray(history, dtype=np.float64)
    n_series, t = history.shape
    m = season if t >= season else 1
    if t == 0:
        return np.zeros((n_series, horizon, 3))
    steps = np.arange(horizon)
    point = history[:, t - m + steps % m]
    residuals = history[:, m:] - history[:, :-m]
    sigma = np.sqrt(np.mean(residuals**2, axis=1)) if residuals.shape[1] else np.zeros(n_series)
    sd = sigma[:, None] * np.sqrt(steps // m + 1)[None, :]
    return _quantiles(point, sd)


def moving_average(
    history: np.ndarray, horizon: int, k: int = MOVING_AVERAGE_WINDOWS
) -> np.ndarray:
    """The mean of the last ``k`` windows for every horizon window."""
    history = np.asarray(history, dtype=np.float64)
    n_series, t = history.shape
    if t == 0:
        return np.zeros((n_series, horizon, 3))
    k = min(k, t)
    point = np.repeat(history[:, t - k :].mean(axis=1, keepdims=True), horizon, axis=1)
    if t > k:
        sums = np.cumsum(np.pad(history, ((0, 0), (1, 0))), axis=1)
        means = (sums[:, k:t] - sums[:, : t - k]) / k  # forecasts of windows k .. t-1
        sigma = np.sqrt(np.mean((history[:, k:] - means) ** 2, axis=1))
    else:
        sigma = np.zeros(n_series)
    return _quantiles(point, np.repeat(sigma[:, None], horizon, axis=1))


def auto_ets(history: np.ndarray, horizon: int, season: int, seed: int = 0) -> np.ndarray:
    """ETS chosen by AICc per series (see the module's note); a series whose history is all
    zero, or too short for any fit, gets the naive forecast."""
    history = np.asarray(history, dtype=np.float64)
    out = np.empty((history.shape[0], horizon, 3))
    for i, y in enumerate(history):
        got = _ets_one(y, horizon, season, seed + i)
        out[i] = got if got is not None else seasonal_naive(y[None, :], horizon, 1)[0]
    return out


def _ets_one(y: np.ndarray, horizon: int, season: int, seed: int) -> np.ndarray | None:
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    t = len(y)
    if t < 4 or not np.any(y > 0):
        return None
    positive = bool(np.all(y > 0))
    seasonal = 1 < season <= MAX_ETS_SEASON and t >= 2 * season
    errors = ("add", "mul") if positive else ("add",)
    trends: tuple[tuple[str | None, bool], ...] = ((None, False), ("add", False), ("add", True))
    seasons: tuple[str | None, ...] = (None,)
    if seasonal:
        seasons = (None, "add", "mul") if positive else (None, "add")
    series = pd.Series(y)
    best: tuple[float, np.ndarray] | None = None
    for error, (trend, damped), kind in itertools.product(errors, trends, seasons):
        if error == "add" and kind == "mul":
            continue  # unstable (Hyndman et al. 2008), excluded as AutoETS excludes it
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fitted = ETSModel(
                    series,
                    error=error,
                    trend=trend,
                    damped_trend=damped,
                    seasonal=kind,
                    seasonal_periods=season if kind else None,
                ).fit(disp=False)
                aicc = float(fitted.aicc)
                if not np.isfinite(aicc) or (best is not None and aicc >= best[0]):
                    continue
                frame = fitted.get_prediction(
                    start=t, end=t + horizon - 1, rng=np.random.default_rng(seed)
                ).summary_frame(alpha=0.2)
        except (ValueError, np.linalg.LinAlgError, FloatingPointError):
            continue
        got = frame[["pi_lower", "mean", "pi_upper"]].to_numpy(dtype=np.float64)
        if got.shape == (horizon, 3) and np.all(np.isfinite(got)):
            best = (aicc, got)
    if best is None:
        return None
    return np.asarray(np.maximum(np.sort(best[1], axis=1), 0.0), dtype=np.float64)
