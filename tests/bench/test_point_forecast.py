"""``bench.point_forecast``: the MAE-optimal forecast under an unbiased total, on a population
whose predictive distributions are known (customers who are alive or not, Poisson if alive)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.point_forecast import evaluate, quantile_point, unbiased_quantile, zip_cdf


def _population(n: int = 4000, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    alive = rng.uniform(0.1, 0.95, n)
    rate = rng.gamma(1.5, 1.2, n)
    mean = alive * rate
    p0 = 1 - alive + alive * np.exp(-rate)
    actual = np.where(rng.uniform(size=n) < alive, rng.poisson(rate), 0)
    return pd.DataFrame(
        {"expected_orders": mean, "churn_probability": p0, "actual_orders": actual.astype(float)}
    )


def test_the_zero_inflated_family_recovers_each_customers_mean_and_p_zero() -> None:
    frame = _population(200)
    mean = frame["expected_orders"].to_numpy()
    cdf = zip_cdf(mean, frame["churn_probability"].to_numpy())
    pmf = np.diff(cdf, axis=1, prepend=0.0)
    assert np.allclose(pmf @ np.arange(cdf.shape[1]), mean, rtol=1e-6)
    assert np.allclose(cdf[:, 0], frame["churn_probability"], atol=1e-6)


def test_the_common_quantile_keeps_the_total_and_beats_the_mean_on_mae() -> None:
    frame = _population()
    rows = {name.split(",")[-1].strip(): (mae, bias) for name, mae, bias in evaluate(frame)}
    mean_mae, mean_bias = rows["mean"]
    zip_mae, zip_bias = rows["zero-inflated Poisson"]
    assert abs(zip_bias - mean_bias) < 0.01  # the same total as the mean, to a count or so
    assert zip_mae < mean_mae  # the true family: per customer closer, in total as right


def test_quantiles_are_counts_that_rise_with_q() -> None:
    frame = _population(300)
    cdf = zip_cdf(frame["expected_orders"].to_numpy(), frame["churn_probability"].to_numpy())
    low, high = quantile_point(cdf, 0.3), quantile_point(cdf, 0.8)
    assert (low >= 0).all() and (high >= low).all()
    assert np.array_equal(high, np.round(high))
    q, point = unbiased_quantile(cdf, float(frame["expected_orders"].sum()))
    assert 0 < q < 1 and abs(point.sum() - frame["expected_orders"].sum()) <= 2.0
