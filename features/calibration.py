"""The served churn probability: the model's P(no order) recalibrated on the latest labelled origin.

Owns :class:`ChurnCalibration`, ``logit p = a * logit(churn) + b * log(mean orders) + c``,
applied by the scorer (:mod:`serving.scorer`) to every score, offline and in the worker, before
the order forecast (:mod:`features.forecast`) reads it. Training fits it
(:func:`training.calibration.fit_churn_calibration`) and the manifest pins it; a model without
one serves its churn head as it is.

Why two inputs: BG/NBD's probability of no order ranks customers by how likely they are to be
gone *and* how rarely they buy; on real shops (CDNOW, Online Retail) the expected count
ranks who will not order better than that probability does, and a blend of the two better
than either. The blend's weights are what the latest origin whose horizon is known says.

Pure: numpy only, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

EPS: Final = 1e-6
"""Probabilities and counts are kept this far from 0 and 1 before their logs."""


def calibration_inputs(churn: npt.ArrayLike, mean_orders: npt.ArrayLike) -> FloatArray:
    """``[N, 3]``: logit of the churn head, log of the mean orders, and 1."""
    p = np.clip(np.asarray(churn, dtype=np.float64), EPS, 1.0 - EPS)
    m = np.maximum(np.asarray(mean_orders, dtype=np.float64), EPS)
    return np.column_stack([np.log(p / (1.0 - p)), np.log(m), np.ones(len(p))])


@dataclass(frozen=True)
class ChurnCalibration:
    """``logit p = a * logit(churn) + b * log(mean orders) + c``."""

    a: float
    b: float
    c: float

    def __post_init__(self) -> None:
        if not all(np.isfinite(v) for v in (self.a, self.b, self.c)):
            raise ValueError("churn calibration coefficients must be finite")

    def apply(self, churn: npt.ArrayLike, mean_orders: npt.ArrayLike) -> FloatArray:
        z = calibration_inputs(churn, mean_orders) @ np.array([self.a, self.b, self.c])
        out: FloatArray = 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "c": self.c}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChurnCalibration:
        return cls(float(data["a"]), float(data["b"]), float(data["c"]))


__all__ = ["ChurnCalibration", "calibration_inputs"]
