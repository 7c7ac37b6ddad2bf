"""Estimates the shop's calendar (:class:`features.season.SeasonIndex`) from its history.

Owns :func:`season_ratios` (each window's order days against what BG/NBD expected of the
customers known by the window before: one step ahead, with the prior fitted at the cutoff)
and :func:`fit_season_index` (a weighted regression of the log ratios of the last year,
:data:`YEARS`, on a trend and a few harmonics of the year, kept only when the harmonics
explain the ratios significantly better than the trend alone).

Why the ratio to BG/NBD and not the raw order count: the count also moves with acquisition
and churn; the ratio is what the customer-base model does *not* explain, so a shop that grows
or shrinks shows no season unless its customers really buy more in some weeks.

Choices (where the issue was silent):

* A season needs a year of ratios plus a horizon before them (customers acquired before the
  year starts). Shorter histories (Online Retail's first year) get no index: one season of
  history cannot tell a peak from a one-off, and two years are what most shops keep anyway.
* The trend is fitted and dropped: a customer-base model that drifts over the year must not
  read as a season.
* Only the last year of ratios is read (:data:`YEARS`). Reading every ratio up to three
  years was measured and not shipped: on simulated shops, a stable season plus a linear
  trend, it halves the horizon's error (over one year the trend and the first harmonic are
  nearly collinear; ``python -m bench.season_estimate``, its third table), but end to end on
  the generated shops it lost: see :data:`YEARS`.
* The F-test at :data:`SIGNIFICANCE` keeps noise (small shops, shops without a season) from
  moving every forecast: they keep BG/NBD's year-round rate.
* What the test lets through is shrunk towards no season by the positive-part James-Stein
  factor ``1 - (p - 2) / (p F)`` of its ``p`` harmonic coefficients (the shrinkage estimator
  of seasonal factors of Miller & Williams, 2003): a season the test barely admits is mostly
  noise-sized and moves forecasts by a fraction of its fit, a clear one (F of 7 and more) keeps
  nine tenths and more. The two together are :func:`season_at`'s estimate;
  ``python -m bench.season_estimate`` measures them against the test alone on simulated shops.
* Data leakage: at each cutoff the index reads only windows before it. Training origins
  before that cutoff use the cutoff's index (their own year is inside it); the pseudo-cutoffs
  that choose the epoch count each estimate their own, from data before them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, NamedTuple

import numpy as np
from scipy import stats

from features.batch import WindowTensor
from features.clv import BgNbdParams, bgnbd_expected
from features.season import SeasonIndex, angle_of, horizon_multiplier
from features.windows import DAY_MS, FEATURE_INDEX, YEAR_DAYS, lifetime_summary

log = logging.getLogger(__name__)

HARMONICS: Final = 4
"""Harmonics of the year: the shortest swing the index can show is a quarter of a year."""
SIGNIFICANCE: Final = 0.05
"""The F-test's level for the harmonics against a trend alone. It was 0.01 without the
shrinkage, which missed a generated marketplace's November peak at p = 0.02 (bias -7.8 %) and,
at 0.05, overshot it unshrunk (+8.5 %); shrunk: +3.6 %."""
MAX_CUSTOMERS: Final = 50_000
"""A seeded draw of customers beyond this: the ratio is an aggregate, and each window costs
one BG/NBD evaluation per customer."""
REFINEMENTS: Final = 2
"""Passes that re-read the ratios in the calendar's operational time (see :func:`season_at`)."""
YEARS: Final = 1
"""The most years of ratios the fit reads. Three were measured (2026-12-07, ``python -m
bench.model_quality``): the generated marketplace's bias over seeds 1-5 went from +3.6, +4.0,
-3.2, -9.4, +7.9 % to -7.8, +1.9, -6.7, -9.4, +0.6 % (three seeds within 5 % to two; its
horizon read x1.05 on average where one year read x1.10 and about x1.10 was needed), and the
wholesale shop's (seed 1) from -1.6 to -4.6 %. Both histories hold one peak, and the older
ratios of a young customer base are not a stable season plus a linear trend: they widened
the residuals and the F-test shrank the season more."""
MIN_POINTS: Final = 2 * HARMONICS + 12
"""Windows per year below which (windows longer than about 18 days) no index is fitted."""

I_ORDER_DAYS: Final = FEATURE_INDEX["order_days"]


class SeasonFit(NamedTuple):
    """What :func:`fit_season_index` found: the index (None: no season), why, the
    James-Stein factor that :func:`season_at` applies once the index is refined, and the
    harmonics' p-value (None when no test ran)."""

    season: SeasonIndex | None
    why: str
    shrink: float = 1.0
    p_value: float | None = None


def shrinkage(f_stat: float, harmonics: int = 2 * HARMONICS) -> float:
    """The positive-part James-Stein factor towards no season for an F statistic of the
    harmonics' ``harmonics`` coefficients: ``max(0, 1 - (harmonics - 2) / (harmonics F))``."""
    return max(0.0, 1.0 - (harmonics - 2) / (harmonics * f_stat))


@dataclass(frozen=True)
class SeasonRatios:
    """Per window: order days of the customers known one window before, BG/NBD's expectation
    of them, and the window's middle (ms)."""

    actual: np.ndarray
    expected: np.ndarray
    middle_ms: np.ndarray


def season_ratios(
    tensor: WindowTensor,
    first: int,
    cut: int,
    params: BgNbdParams,
    season: SeasonIndex | None = None,
    seed: int = 7,
) -> SeasonRatios:
    """Windows ``first + 1 .. cut`` (nothing after window ``cut``'s end is read); with
    ``season``, BG/NBD's expectation is read in that calendar's operational time."""
    spec = tensor.spec
    weeks = spec.length_ms / (7 * DAY_MS)
    n_users = tensor.features.shape[0]
    users = np.arange(n_users)
    if n_users > MAX_CUSTOMERS:
        users = np.sort(np.random.default_rng(seed).choice(n_users, MAX_CUSTOMERS, replace=False))
    actual, expected, middle = [], [], []
    for w in range(max(first, tensor.first_index), cut):
        col = tensor.column(w)
        last = tensor.features[users, col, :].astype(np.float64)
        x, t_x, age, ordered = lifetime_summary(last)
        known = users[ordered]
        factor = horizon_multiplier(season, last[ordered], age[ordered], params.alpha, spec, 1)
        e = float(
            bgnbd_expected(params, x[ordered], t_x[ordered], age[ordered], weeks * factor).sum()
        )
        actual.append(float(tensor.features[known, col + 1, I_ORDER_DAYS].sum()))
        expected.append(e)
        middle.append(spec.start_ms(w + 1) + spec.length_ms // 2)
    return SeasonRatios(np.asarray(actual), np.asarray(expected), np.asarray(middle))


def year_observed(history_windows: int, window_days: float, burn_in: int) -> tuple[bool, str]:
    """Whether ``history_windows`` windows before a cutoff hold a year of windows after
    ``burn_in`` windows of customers, and a sentence saying so.

    The one rule for "the history has seen the whole year": the calendar index is fitted only
    then, and the model reads the calendar only then. With less, the cutoff's horizon lies at
    a time of year that no observed target covered, and anything learnt along the season
    coordinate (a drift through the months seen) is extrapolated into it: the Complete
    Journey grocery panel's 38 weeks before October gave a +6.8 % bias with the calendar
    inputs and -2.1 % without them."""
    per_year = round(YEAR_DAYS / window_days)
    if history_windows < per_year + burn_in:
        return False, (
            f"{history_windows} windows of history, a season needs a year ({per_year}) "
            f"after {burn_in} windows of customers"
        )
    return True, f"{history_windows} windows of history hold a year after {burn_in}"


def fit_season_index(
    ratios: SeasonRatios,
    window_days: float,
    burn_in: int,
    base: SeasonIndex | None = None,
    significance: float = SIGNIFICANCE,
    years: int = YEARS,
) -> SeasonFit:
    """The index from the last ``years`` years of ``ratios`` (unshrunk; the burn-in windows
    never), or None; why; its shrinkage.

    With ``base`` (ratios read in ``base``'s operational time) the harmonics found are added
    to ``base``'s, without a test: a refinement of a calendar already shown to exist.
    ``significance``: the test's level (1.0 returns every fit with its p-value, for
    :mod:`bench.season_estimate` to read several rules off the same fits); ``years``: the
    most years of ratios read (the bench compares one)."""
    per_year = round(YEAR_DAYS / window_days)
    if per_year < MIN_POINTS:
        return SeasonFit(
            None, f"windows of {window_days:g} days: {per_year} per year, need {MIN_POINTS}"
        )
    enough, why = year_observed(len(ratios.expected), window_days, burn_in)
    if not enough:
        return SeasonFit(None, why)
    if int(np.sum(ratios.expected > 0)) < len(ratios.expected):
        return SeasonFit(None, "a window of the history has no customer to expect orders of")
    # The first burn_in windows are the shop's first customers, whose one-step ratios say
    # more about a young base than about the calendar.
    n = min(len(ratios.expected) - burn_in, years * per_year)
    a = ratios.actual[-n:]
    e = ratios.expected[-n:]
    theta = angle_of(ratios.middle_ms[-n:])
    y = np.log((a + 0.5) / (e + 0.5))
    weight = np.sqrt(a + 0.5)  # Poisson: the log ratio's variance is about 1 / count
    trend = np.column_stack([np.ones(n), np.arange(n) / per_year])
    harmonics = np.column_stack(
        [np.cos(k * theta) for k in range(1, HARMONICS + 1)]
        + [np.sin(k * theta) for k in range(1, HARMONICS + 1)]
    )
    full = np.column_stack([trend, harmonics])

    def rss(x: np.ndarray) -> tuple[float, np.ndarray]:
        beta, *_ = np.linalg.lstsq(x * weight[:, None], y * weight, rcond=None)
        return float(np.sum((weight * (y - x @ beta)) ** 2)), beta

    rss0, _ = rss(trend)
    rss1, beta = rss(full)
    df1, df2 = 2 * HARMONICS, n - full.shape[1]
    if rss1 <= 0.0:
        return SeasonFit(None, "the ratios are fitted exactly: too few orders to tell")
    f_stat = ((rss0 - rss1) / df1) / (rss1 / df2)
    p_value = float(stats.f.sf(f_stat, df1, df2))
    if base is None and p_value >= significance:
        return SeasonFit(
            None, f"no season: harmonics F = {f_stat:.2f}, p = {p_value:.2g}", p_value=p_value
        )
    coef = beta[2:]
    cos, sin = coef[:HARMONICS], coef[HARMONICS:]
    if base is not None:
        cos, sin = cos + np.asarray(base.cos), sin + np.asarray(base.sin)
    index = SeasonIndex(tuple(float(c) for c in cos), tuple(float(s) for s in sin))
    factor = shrinkage(f_stat, df1)
    return SeasonFit(
        index,
        f"season: harmonics F = {f_stat:.2f}, p = {p_value:.2g}, kept x{factor:.2f}",
        factor,
        p_value,
    )


def season_at(
    tensor: WindowTensor, first: int, cut: int, params: BgNbdParams
) -> tuple[SeasonIndex | None, str]:
    """The index as known at the end of window ``cut`` (-1: the cutoff): found, refined,
    then shrunk by the first fit's James-Stein factor."""
    spec = tensor.spec
    days = spec.length_ms / DAY_MS
    found = fit_season_index(season_ratios(tensor, first, cut, params), days, spec.horizon)
    index, why = found.season, found.why
    for _ in range(REFINEMENTS if index is not None else 0):
        # BG/NBD's one-step expectation read in calendar time has last year's peak inside the
        # older customers' rates, which shrinks the peak the ratios show; reading it in the
        # calendar's own operational time and fitting what remains converges on the full size.
        ratios = season_ratios(tensor, first, cut, params, season=index)
        index = fit_season_index(ratios, days, spec.horizon, base=index).season or index
    if index is not None:
        # After the refinements: they converge on the full size, shrinking before them would
        # be undone by them.
        index = index.scaled(found.shrink)
    at = datetime.fromtimestamp(spec.end_ms(cut) / 1000, tz=UTC).date().isoformat()
    log.info("calendar at %s: %s", at, why)
    return index, why
