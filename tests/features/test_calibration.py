"""The served churn's recalibration (features.calibration): a blend of the churn head's logit
and the log expected orders, identity when it weights only the head."""

from __future__ import annotations

import numpy as np
import pytest

from features.calibration import ChurnCalibration


def test_weighting_only_the_churn_head_serves_it_unchanged() -> None:
    churn = np.array([0.01, 0.3, 0.5, 0.97])
    mean = np.array([3.0, 0.8, 0.5, 0.01])
    np.testing.assert_allclose(ChurnCalibration(1.0, 0.0, 0.0).apply(churn, mean), churn)


def test_fewer_expected_orders_raise_the_served_churn_when_the_blend_says_so() -> None:
    cal = ChurnCalibration(0.3, -1.4, -0.4)  # the weights real CDNOW's pseudo-cutoff gave
    churn = np.full(3, 0.6)
    served = cal.apply(churn, np.array([2.0, 0.5, 0.05]))
    assert np.all(np.diff(served) > 0) and np.all((served > 0) & (served < 1))


def test_it_round_trips_and_refuses_coefficients_that_cannot_serve() -> None:
    cal = ChurnCalibration(0.3, -1.4, -0.4)
    assert ChurnCalibration.from_dict(cal.to_dict()) == cal
    with pytest.raises(ValueError, match="finite"):
        ChurnCalibration(float("nan"), 0.0, 0.0)
