"""The close population rule (features.windows.close_population): who is scored at a window
close, as the worker and offline prediction both apply it."""

from __future__ import annotations

import numpy as np

from features.windows import (
    I_ACTIVE,
    I_ORDER_DAYS_TOTAL,
    N_FEATURES,
    close_population,
    is_scored_at_close,
    population_mask,
)

SEQ, LOOKBACK, FLOOR = 6, 3, 0.8
NAN = float("nan")


def sequence(active_windows: list[int], order_days: float) -> np.ndarray:
    """A raw sequence with activity in ``active_windows`` (0 = oldest) and an order-day total."""
    seq = np.zeros((SEQ, N_FEATURES), dtype=np.float32)
    seq[active_windows, I_ACTIVE] = 1.0
    seq[:, I_ORDER_DAYS_TOTAL] = order_days
    return seq


def test_users_in_the_lookback_are_scored_whatever_their_risk() -> None:
    seqs = np.stack([sequence([5], 0.0), sequence([3], 2.0), sequence([4], 1.0)])
    churn = np.array([NAN, 0.99, NAN])
    assert close_population(seqs, LOOKBACK, churn, FLOOR).tolist() == [True, True, True]


def test_a_dormant_customer_is_scored_while_their_latest_close_churn_is_under_the_floor() -> None:
    seqs = np.stack([sequence([0], 1.0)] * 4)
    churn = np.array([0.5, 0.79, 0.8, NAN])  # NaN: never scored at a close
    assert close_population(seqs, LOOKBACK, churn, FLOOR).tolist() == [True, True, False, False]


def test_a_user_who_never_ordered_leaves_with_the_lookback() -> None:
    assert not is_scored_at_close(sequence([2], 0.0), LOOKBACK, 0.1, FLOOR)
    assert is_scored_at_close(sequence([3], 0.0), LOOKBACK, None, FLOOR)


def test_the_close_population_is_trainings_population_less_customers_past_the_floor() -> None:
    seqs = np.stack(
        [sequence([0], 1.0), sequence([0], 1.0), sequence([1], 0.0), sequence([5], 0.0)]
    )
    churn = np.array([0.3, 0.9, 0.3, NAN])
    close = close_population(seqs, LOOKBACK, churn, FLOOR)
    trained = population_mask(seqs, LOOKBACK)
    assert trained.tolist() == [True, True, False, True]
    assert close.tolist() == [True, False, False, True]
    assert not (close & ~trained).any()
