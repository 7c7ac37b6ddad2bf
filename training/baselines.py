"""Honest baselines, computed from the same raw sequences the model sees.

Orders here are order days (the model's target, see :mod:`training.pipeline`). BG/NBD and
Pareto/NBD, the stronger references, are in :mod:`training.clv` and
:func:`training.pipeline.baseline_predictions`.

Owns the three simple reference predictors the report sets beside the model: historical rate
(orders so far / tenure × horizon), last window (× horizon) and a moving average of the last
``ma_windows`` windows (× horizon). Each gives expected orders, expected spend and a churn
probability; the churn probability is the Poisson chance of zero orders at the predicted
rate, ``exp(-expected_orders)``, so the baselines are scored on the same footing as the model.
"""

from __future__ import annotations

import numpy as np

from features.windows import FEATURE_INDEX, Float32Array

MA_WINDOWS = 4


def _predictions(
    orders_rate: np.ndarray, spend_rate: np.ndarray, horizon: int
) -> dict[str, np.ndarray]:
    orders = np.maximum(orders_rate, 0.0) * horizon
    spend = np.maximum(spend_rate, 0.0) * horizon
    return {
        "expected_orders": orders,
        "expected_spend": spend,
        "churn_probability": np.exp(-orders),
    }


def baselines(
    raw: Float32Array, horizon: int, ma_windows: int = MA_WINDOWS
) -> dict[str, dict[str, np.ndarray]]:
    """Baseline predictions for raw (un-normalised) sequences ``[N, seq_len, F]``."""
    last = raw[:, -1, :].astype(np.float64)
    tenure = np.maximum(last[:, FEATURE_INDEX["tenure_windows"]], 1.0)
    orders = raw[:, :, FEATURE_INDEX["order_days"]].astype(np.float64)
    spend = raw[:, :, FEATURE_INDEX["spend"]].astype(np.float64)
    k = min(ma_windows, raw.shape[1])
    return {
        "historical_rate": _predictions(
            last[:, FEATURE_INDEX["order_days_total"]] / tenure,
            last[:, FEATURE_INDEX["spend_total"]] / tenure,
            horizon,
        ),
        "last_window": _predictions(orders[:, -1], spend[:, -1], horizon),
        f"moving_average_{k}": _predictions(
            orders[:, -k:].mean(axis=1), spend[:, -k:].mean(axis=1), horizon
        ),
    }
