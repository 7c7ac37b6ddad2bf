"""Input drift: a reference fitted on training vectors, live counts that add up across
partitions, and a PSI that stays low for the same shop and passes the threshold when buying
changes."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from features.drift import (
    DEFAULT_PSI_THRESHOLD,
    DRIFT_FEATURES,
    InputReference,
    bin_counts,
    drifted,
    fit_reference,
    psi,
)
from features.windows import FEATURE_INDEX, N_FEATURES


def window_vectors(n: int, seed: int, purchase_rate: float = 0.3) -> np.ndarray:
    """Vectors of users active in a week: views heavy-tailed, carts from views, purchases
    (and orders, units, spend, order days) from carts at ``purchase_rate``."""
    rng = np.random.default_rng(seed)
    v = np.zeros((n, N_FEATURES))
    views = rng.negative_binomial(2, 0.25, n) + 1
    carts = rng.binomial(views, 0.1)
    buys = rng.binomial(carts + 1, purchase_rate)
    v[:, FEATURE_INDEX["n_view"]] = views
    v[:, FEATURE_INDEX["n_cart"]] = carts
    for name in ("n_purchase", "orders", "order_days"):
        v[:, FEATURE_INDEX[name]] = buys
    v[:, FEATURE_INDEX["units"]] = buys * rng.integers(1, 4, n)
    v[:, FEATURE_INDEX["spend"]] = buys * rng.gamma(2.0, 20.0, n)
    v[:, FEATURE_INDEX["sessions"]] = rng.integers(1, 5, n)
    v[:, FEATURE_INDEX["distinct_products"]] = views
    v[:, FEATURE_INDEX["cart_conversion"]] = np.where(carts > 0, buys / np.maximum(carts, 1), 0)
    return v


def test_the_same_shop_is_stable_and_a_third_of_the_buying_is_flagged_on_the_buying_features() -> (
    None
):
    reference = fit_reference(window_vectors(20_000, seed=1))
    same = psi(reference, bin_counts(reference, window_vectors(5_000, seed=2)))
    assert max(v for v in same.values() if not np.isnan(v)) < 0.05
    assert drifted(same, DEFAULT_PSI_THRESHOLD) == []
    third = psi(reference, bin_counts(reference, window_vectors(5_000, 3, purchase_rate=0.1)))
    flagged = drifted(third, DEFAULT_PSI_THRESHOLD)
    assert {"n_purchase", "orders", "order_days"} <= set(flagged)
    assert not {"n_view", "n_cart", "sessions", "distinct_products"} & set(flagged)


def test_partitions_counts_add_up_to_the_whole_and_the_reference_round_trips() -> None:
    reference = fit_reference(window_vectors(10_000, seed=4))
    assert reference.features == DRIFT_FEATURES
    live = window_vectors(3_000, seed=5)
    parts = sum(bin_counts(reference, live[i::4]) for i in range(4))
    np.testing.assert_array_equal(parts, bin_counts(reference, live))
    again = InputReference.from_dict(orjson.loads(orjson.dumps(reference.to_dict())))
    assert again == reference
    # A feature that never varies in training (always 0 here) has one edge and two bins.
    assert len(reference.edges[DRIFT_FEATURES.index("n_return")]) == 1


def test_a_window_without_live_rows_gives_no_index_and_a_bad_reference_is_refused() -> None:
    reference = fit_reference(window_vectors(1_000, seed=6))
    empty = psi(reference, bin_counts(reference, np.zeros((0, N_FEATURES))))
    assert all(np.isnan(v) for v in empty.values()) and drifted(empty, 0.25) == []
    bad = reference.to_dict()
    bad["features"]["n_view"]["expected"] = [1.0]
    with pytest.raises(ValueError, match="n_view"):
        InputReference.from_dict(bad)
    with pytest.raises(ValueError, match="no vectors"):
        fit_reference(np.zeros((0, N_FEATURES)))
