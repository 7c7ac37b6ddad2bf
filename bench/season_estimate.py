"""How well the calendar's estimate sizes a 13-week horizon, on simulated shops.

Owns one diagnostic for the calendar (:mod:`training.season`): ``python -m
bench.season_estimate [--shops N] [--seed S]`` simulates a year and a quarter of one-step
ratios (Poisson order days against a known expectation, on a customer base that grows 20 %),
for shops without a season and with a peak of two harmonics (log amplitude 0.1 and 0.2), at 20,
100 and 1,000 order days a week, and prints the mean error of the 13-week horizon multiplier
(``|estimate / truth - 1|``, averaged over the 52 start weeks of a year and over the shops)
for three rules, the same fits read three ways:

* the F-test at 1 % alone (the rule before the shrinkage);
* the F-test at 5 % alone;
* the F-test at 5 % and the positive-part James-Stein shrinkage (the rule shipped:
  :data:`training.season.SIGNIFICANCE`, :func:`training.season.shrinkage`).

It measures the estimate of :func:`training.season.fit_season_index` on the ratios directly:
the refinements that :func:`training.season.season_at` runs on a real history (re-reading the
ratios in the calendar's operational time) are not simulated here.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

import numpy as np

from features.season import SeasonIndex, angle_of
from features.windows import DAY_MS, YEAR_DAYS
from training.season import HARMONICS, SeasonRatios, fit_season_index

log = logging.getLogger("bench.season_estimate")

WEEKS = 52 + 13
"""A year of ratios after a horizon of customers (the least :func:`fit_season_index` takes)."""
START_MS = 1_600_041_600_000  # 2020-09-14
HORIZON_WEEKS = 13
LEVELS = (20.0, 100.0, 1000.0)
AMPLITUDES = (0.0, 0.1, 0.2)

Rule = Callable[[SeasonIndex, float, float], SeasonIndex | None]
"""(the unshrunk fit, its James-Stein factor, its p-value) -> the index the rule keeps."""


RULES: dict[str, Rule] = {
    "test at 1 %": lambda index, shrink, p: index if p < 0.01 else None,
    "test at 5 %": lambda index, shrink, p: index if p < 0.05 else None,
    "test at 5 % + James-Stein (shipped)": lambda index, shrink, p: (
        index.scaled(shrink) if p < 0.05 else None
    ),
}


def horizon_multipliers(index: SeasonIndex | None) -> np.ndarray:
    """The mean multiplier over a 13-week horizon ending at each of 52 weeks of the year."""
    if index is None:
        return np.ones(52)
    ends = np.linspace(0.0, 2.0 * np.pi, 53)[1:]
    length = np.full(52, 2.0 * np.pi * HORIZON_WEEKS * 7 / YEAR_DAYS)
    return np.asarray(index.mean_over(ends, length), dtype=np.float64)


def errors(amplitude: float, level: float, shops: int, seed: int) -> dict[str, float]:
    """Each rule's mean horizon error over ``shops`` simulated shops of one kind."""
    rng = np.random.default_rng(seed)
    middle = START_MS + 7 * DAY_MS * np.arange(WEEKS) + 7 * DAY_MS // 2
    truth = SeasonIndex((amplitude, amplitude / 2, 0.0, 0.0), (0.0,) * HARMONICS)
    multiplier = np.exp(truth.log_shape(angle_of(middle))) if amplitude > 0 else np.ones(WEEKS)
    true_horizon = horizon_multipliers(truth if amplitude > 0 else None)
    expected = level * np.exp(np.linspace(0.0, 0.2, WEEKS))
    out = {name: 0.0 for name in RULES}
    for _ in range(shops):
        actual = rng.poisson(expected * multiplier).astype(float)
        fit = fit_season_index(SeasonRatios(actual, expected, middle), 7.0, 13, base=None)
        if fit.season is None or fit.p_value is None:  # beyond any rule's level, or no fit
            for name in RULES:
                out[name] += float(np.mean(np.abs(1.0 / true_horizon - 1.0)))
            continue
        for name, rule in RULES.items():
            estimate = horizon_multipliers(rule(fit.season, fit.shrink, fit.p_value))
            out[name] += float(np.mean(np.abs(estimate / true_horizon - 1.0)))
    return {name: total / shops for name, total in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.season_estimate", description=__doc__)
    parser.add_argument("--shops", type=int, default=600, help="simulated shops per kind")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = list(RULES)
    log.info("| season (log amplitude) | order days a week | %s |", " | ".join(names))
    log.info("|---|---:|%s", "---:|" * len(names))
    for amplitude in AMPLITUDES:
        for level in LEVELS:
            found = errors(amplitude, level, args.shops, args.seed)
            log.info(
                "| %s | %g | %s |",
                "none" if amplitude == 0 else f"peak, {amplitude:g}",
                level,
                " | ".join(f"{100 * found[name]:.2f} %" for name in names),
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
