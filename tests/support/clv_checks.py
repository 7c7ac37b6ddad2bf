"""One check for both customer-base models: odd customers give finite, bounded outputs.

The worker computes the prior's summary for every customer it scores, whatever their history;
BG/NBD's and Pareto/NBD's expressions must both stay finite on the same odd customers.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from features.clv import CustomerBaseParams, prior_features

# just acquired, long-dormant one-time buyer, a thousand purchases today, a thousand over 600
# weeks, last purchase right now, recency past age (clipped), all at T = 0.
ODD_X = np.array([0.0, 0.0, 1000.0, 1000.0, 5.0, 3.0, 1.0])
ODD_T_X = np.array([0.0, 0.0, 0.0, 600.0, 600.0, 12.0, 0.0])
ODD_T = np.array([0.0, 600.0, 0.0, 600.0, 600.0, 10.0, 0.0])

Expression = Callable[..., np.ndarray]


def assert_odd_customers_are_finite(
    name: str,
    params: CustomerBaseParams,
    expected: Expression,
    p_alive: Expression,
    p_zero: Expression,
) -> None:
    """``expected``, ``p_alive``, ``p_zero`` of one model at horizons 0, 1, 13 and 39 weeks."""
    x, t_x, T = ODD_X, ODD_T_X, ODD_T
    for t in (0.0, 1.0, 13.0, 39.0):
        e = expected(params, x, t_x, T, t)
        pa = p_alive(params, x, t_x, T)
        p0 = p_zero(params, x, t_x, T, t)
        f = prior_features(params, x, t_x, T, np.ones(len(x), dtype=bool), t)
        assert np.all(np.isfinite(e)) and np.all(e >= 0.0), (name, t)
        assert np.all((pa >= 0.0) & (pa <= 1.0)), (name, t)
        assert np.all((p0 >= 0.0) & (p0 <= 1.0)), (name, t)
        assert np.all(np.isfinite(f)), (name, t)
        if t == 0.0:
            assert np.all(e == 0.0) and np.all(p0 == 1.0)
