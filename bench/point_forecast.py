"""Which point forecast of order days scores best per customer when the total must be right?

Owns one diagnostic for issue 14's targets (per-customer MAE ≤ BG/NBD's *and* |aggregate bias|
≤ 5 %): ``python -m bench.point_forecast MODEL_DIR [...]`` reads a ``train-and-export`` output's
``predictions.csv`` (``expected_orders``, ``churn_probability``, ``actual_orders``) and prints
the MAE and bias of

* the mean (``mean_orders``; ``expected_orders`` for a model that serves its mean),
* what the model serves (``expected_orders``, when it serves a quantile), and
* the MAE-optimal forecast under an unbiased total: minimising ``sum E|X_i - a_i|`` subject to
  ``sum a_i = sum mean_i`` gives ``F_i(a_i) = q`` for one common ``q`` (the Lagrange condition:
  the slope of ``E|X - a|`` is ``2F(a) - 1``), so each customer gets the ``q``-quantile of their
  predictive distribution, with ``q`` found so that the total equals the mean's. On integer
  counts that quantile is an integer. (An earlier version spread each count's mass over
  ``[k - 1/2, k + 1/2]``; that smoothing costs most of the gain, and it hid it.)

Each customer's predictive distribution is pinned by the model's two heads (mean ``m`` and
P(no order) ``p0``) under three families: zero-inflated Poisson (BG/NBD's alive-or-not story),
negative binomial and Poisson (``p0`` ignored). Models exported before 2026-12-08 serve the
first; since then :mod:`features.forecast` serves a zero-inflated negative binomial whose
shape is each customer's posterior ``r + x``, a third parameter that ``predictions.csv`` does
not carry: :mod:`bench.served_distribution` compares that one with the first.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats

from features.forecast import zip_of

log = logging.getLogger("bench.point_forecast")

FloatArray = npt.NDArray[np.float64]
MAX_COUNT = 120
"""Largest count tabulated (13 weekly windows hold at most 91 order days)."""


def zip_cdf(mean: FloatArray, p0: FloatArray, kmax: int = MAX_COUNT) -> FloatArray:
    """``[N, kmax + 1]`` CDFs of zero-inflated Poissons with these means and P(0): the served
    family (:func:`features.forecast.zip_of`, tabulated)."""
    lam, inflation = zip_of(mean, p0)
    k = np.arange(kmax + 1)
    poisson = stats.poisson.cdf(k[None, :], lam[:, None])
    return np.asarray(inflation[:, None] + (1 - inflation[:, None]) * poisson, dtype=np.float64)


def nb_cdf(mean: FloatArray, p0: FloatArray, kmax: int = MAX_COUNT) -> FloatArray:
    """Negative binomials with these means and P(0) (Poisson's P(0) is the least they reach)."""
    p0 = np.clip(p0, np.exp(-mean) + 1e-9, 1 - 1e-9)
    lo, hi = np.full_like(mean, -12.0), np.full_like(mean, 12.0)
    for _ in range(60):  # bisection on log r: P(0) = (r / (r + m))^r falls as r grows
        mid = (lo + hi) / 2
        r = np.exp(mid)
        too_small = r * (np.log(r) - np.log(r + mean)) > np.log(p0)
        lo, hi = np.where(too_small, mid, lo), np.where(too_small, hi, mid)
    r = np.exp((lo + hi) / 2)
    k = np.arange(kmax + 1)
    return np.asarray(stats.nbinom.cdf(k[None, :], r[:, None], (r / (r + mean))[:, None]))


def poisson_cdf(mean: FloatArray, p0: FloatArray, kmax: int = MAX_COUNT) -> FloatArray:
    k = np.arange(kmax + 1)
    return np.asarray(stats.poisson.cdf(k[None, :], mean[:, None]), dtype=np.float64)


FAMILIES: dict[str, Callable[[FloatArray, FloatArray], FloatArray]] = {
    "zero-inflated Poisson": zip_cdf,
    "negative binomial": nb_cdf,
    "Poisson": poisson_cdf,
}


def quantile_point(cdf: FloatArray, q: float) -> FloatArray:
    """Each row's ``q``-quantile: the smallest count ``k`` with ``F(k) >= q`` (an integer: the
    summed absolute error is linear between integers, so the optimum sits on them)."""
    k = np.minimum((cdf < q).sum(axis=1), cdf.shape[1] - 1)
    return np.asarray(k, dtype=np.float64)


def unbiased_quantile(cdf: FloatArray, total: float, steps: int = 40) -> tuple[float, FloatArray]:
    """The common ``q`` whose quantile forecasts sum closest to ``total``, and those forecasts
    (bisection: the sum is a step function of ``q``)."""
    lo, hi = 0.0, 1.0
    best = (0.5, quantile_point(cdf, 0.5))
    for _ in range(steps):
        q = (lo + hi) / 2
        point = quantile_point(cdf, q)
        if abs(point.sum() - total) < abs(best[1].sum() - total):
            best = (q, point)
        lo, hi = (q, hi) if point.sum() < total else (lo, q)
    return best


def evaluate(predictions: pd.DataFrame) -> list[tuple[str, float, float]]:
    """``(forecast, MAE, bias)`` rows over the customers with an observed outcome."""
    done = predictions[predictions["actual_orders"].notna()]
    # A model serving a quantile writes its mean as mean_orders; an older one serves the mean.
    column = "mean_orders" if "mean_orders" in done.columns else "expected_orders"
    mean = done[column].to_numpy(np.float64)
    p0 = done["churn_probability"].to_numpy(np.float64)
    actual = done["actual_orders"].to_numpy(np.float64)

    def row(name: str, forecast: FloatArray) -> tuple[str, float, float]:
        return (
            name,
            float(np.abs(forecast - actual).mean()),
            float(forecast.sum() / actual.sum() - 1),
        )

    rows = [row("mean", mean)]
    if column == "mean_orders":
        rows.append(row("served (expected_orders)", done["expected_orders"].to_numpy(np.float64)))
    for family, cdf_of in FAMILIES.items():
        q, point = unbiased_quantile(cdf_of(mean, p0), float(mean.sum()))
        rows.append(row(f"common quantile q={q:.3f}, {family}", point))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.point_forecast", description=__doc__)
    parser.add_argument("model_dirs", nargs="+", type=Path, help="train-and-export outputs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for model_dir in args.model_dirs:
        predictions = pd.read_csv(model_dir / "predictions.csv")
        log.info(
            "%s (%d customers with an outcome)",
            model_dir,
            predictions["actual_orders"].notna().sum(),
        )
        for name, mae, bias in evaluate(predictions):
            log.info("  %-48s MAE %.4f  bias %+.1f %%", name, mae, 100 * bias)
    return 0


if __name__ == "__main__":
    sys.exit(main())
