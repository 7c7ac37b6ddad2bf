"""The lifetime order-day features on named customer shapes, on both feature paths.

Each shape is one user's events; the batch tensor and the event-by-event state (closing one
window at a time) must give the same vectors, and those vectors the values worked out by hand:
order_days, order_days_total, days_since_first_order, days_since_last_order (to the window
END), and what :func:`features.windows.lifetime_summary` makes of them for BG/NBD.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.state import add_event, close_through, new_state, peek_sequence, sequence
from features.windows import (
    DAY_MS,
    FEATURE_INDEX,
    HISTORY_CAP_DAYS,
    I_DAYS_SINCE_FIRST_ORDER,
    I_DAYS_SINCE_LAST_ORDER,
    I_ORDER_DAYS,
    I_ORDER_DAYS_TOTAL,
    N_FEATURES,
    WindowSpec,
    lifetime_summary,
)
from tests.support.events import events_from_frame
from training.dataset import build_tensor, to_event_arrays

WEEK_MS = 7 * DAY_MS
HOUR_MS = 3_600_000
# Midnight UTC, as training lays its cutoff: order days are exact on this grid.
ORIGIN = 1_600_041_600_000
assert ORIGIN % DAY_MS == 0
SPEC = WindowSpec(WEEK_MS, ORIGIN, seq_len=3, horizon=1, lookback=3)
NEW = [I_ORDER_DAYS, I_ORDER_DAYS_TOTAL, I_DAYS_SINCE_FIRST_ORDER, I_DAYS_SINCE_LAST_ORDER]


def frame(rows: list[tuple[int, str, str | None]]) -> pd.DataFrame:
    """One user's events as (time, event type, order id)."""
    n = len(rows)
    return pd.DataFrame(
        {
            "event_time_ms": [r[0] for r in rows],
            "event_type": [r[1] for r in rows],
            "user_id": ["u"] * n,
            "product_id": ["p"] * n,
            "category": [None] * n,
            "brand": None,
            "price": [2.0] * n,
            "quantity": [1] * n,
            "session_id": [None] * n,
            "order_id": [r[2] for r in rows],
        }
    )


def both_paths(df: pd.DataFrame, spec: WindowSpec, last: int) -> np.ndarray:
    """``[windows, N_FEATURES]`` from the user's first window through ``last``, checked equal
    on both paths; the event path closes one window at a time, as the worker does."""
    arrays, _ = to_event_arrays(df)
    batch = build_tensor(arrays, spec, last).features[0]
    state = None
    vectors: list[np.ndarray] = []
    closed = None
    for event in events_from_frame(df):
        window = spec.index(event.event_time_ms)
        if state is not None and closed is not None:
            for w in range(closed + 1, window):
                close_through(state, w, spec)
                vectors.append(sequence(state)[-1])
                closed = w
        state = add_event(state, event, spec)
        closed = state.first_window - 1 if closed is None else closed
    assert state is not None and closed is not None
    for w in range(closed + 1, last + 1):
        close_through(state, w, spec)
        vectors.append(sequence(state)[-1])
    stream = np.stack(vectors)
    assert stream.shape == batch.shape
    np.testing.assert_allclose(stream, batch, rtol=1e-6, atol=1e-6)
    return batch.astype(np.float64)


def new_features(vectors: np.ndarray) -> np.ndarray:
    return vectors[:, NEW]


def test_first_order_mid_window() -> None:
    """Views in window 0; the first purchase on day 3 of window 1 at noon; then silence."""
    first = ORIGIN + WEEK_MS + 3 * DAY_MS + 12 * HOUR_MS
    df = frame([(ORIGIN + DAY_MS, "view", None), (first, "purchase", "o1")])
    vectors = both_paths(df, SPEC, 3)
    np.testing.assert_allclose(
        new_features(vectors),
        [
            [0, 0, 0.0, 0.0],  # no purchase yet: zeros, not "days since nothing"
            [1, 1, 3.5, 3.5],  # to the END of window 1: 7 - 3.5 days
            [0, 1, 10.5, 10.5],
            [0, 1, 17.5, 17.5],
        ],
        rtol=1e-6,
    )
    assert vectors.shape == (4, N_FEATURES)
    x, t_x, big_t, ordered = lifetime_summary(vectors)
    assert ordered.tolist() == [False, True, True, True]
    assert x.tolist() == [0, 0, 0, 0]
    assert t_x.tolist() == [0, 0, 0, 0]
    np.testing.assert_allclose(big_t, [0, 0.5, 1.5, 2.5], rtol=1e-6)


def test_two_purchases_on_the_same_day_are_two_orders_and_one_order_day() -> None:
    morning = ORIGIN + 2 * DAY_MS + 8 * HOUR_MS
    evening = ORIGIN + 2 * DAY_MS + 20 * HOUR_MS
    df = frame([(morning, "purchase", "o1"), (evening, "purchase", "o2")])
    vectors = both_paths(df, SPEC, 0)
    assert vectors[0, FEATURE_INDEX["orders"]] == 2
    assert vectors[0, FEATURE_INDEX["orders_total"]] == 2
    end = ORIGIN + WEEK_MS
    np.testing.assert_allclose(
        new_features(vectors)[0],
        [1, 1, (end - morning) / DAY_MS, (end - evening) / DAY_MS],
        rtol=1e-6,
    )
    x, t_x, _, ordered = lifetime_summary(vectors[0])
    # One order day: no repeat for BG/NBD, and no recency from the hours between the two.
    assert (float(x), float(t_x), bool(ordered)) == (0.0, 0.0, True)


def test_purchases_on_two_days_in_one_window() -> None:
    """Two days of the same order (one order id spanning midnight) and a second order later."""
    day1 = ORIGIN + 1 * DAY_MS + 23 * HOUR_MS
    day2 = ORIGIN + 2 * DAY_MS + 1 * HOUR_MS
    day5 = ORIGIN + 5 * DAY_MS
    df = frame([(day1, "purchase", "o1"), (day2, "purchase", "o1"), (day5, "purchase", "o2")])
    vectors = both_paths(df, SPEC, 1)
    assert vectors[:, FEATURE_INDEX["orders"]].tolist() == [2, 0]
    np.testing.assert_allclose(
        new_features(vectors),
        [[3, 3, 6 - 23 / 24, 2.0], [0, 3, 13 - 23 / 24, 9.0]],
        rtol=1e-6,
    )
    x, t_x, big_t, _ = lifetime_summary(vectors[-1])
    assert float(x) == 2.0
    np.testing.assert_allclose([t_x, big_t], [(4 - 23 / 24) / 7, (13 - 23 / 24) / 7], rtol=1e-6)


def test_a_view_only_user_has_all_lifetime_features_zero() -> None:
    df = frame([(ORIGIN + DAY_MS, "view", None), (ORIGIN + WEEK_MS + DAY_MS, "cart", None)])
    vectors = both_paths(df, SPEC, 4)
    assert np.all(new_features(vectors) == 0)
    assert np.any(vectors[:, FEATURE_INDEX["active"]] > 0)
    x, t_x, big_t, ordered = lifetime_summary(vectors)
    assert not ordered.any()
    assert np.all(x == 0) and np.all(t_x == 0) and np.all(big_t == 0)


def test_a_long_dormant_customer_ages_until_the_cap() -> None:
    """One purchase, then silence: both day features grow by a window per window and stop at
    HISTORY_CAP_DAYS (ten years), on 1,000-day windows so the cap is reached in a few."""
    spec = WindowSpec(1000 * DAY_MS, ORIGIN, seq_len=3, horizon=1, lookback=3)
    df = frame([(ORIGIN, "purchase", "o1")])
    got = new_features(both_paths(df, spec, 5))
    assert got[:, 0].tolist() == [1, 0, 0, 0, 0, 0]
    assert got[:, 1].tolist() == [1] * 6
    expected_days = [1000, 2000, 3000, HISTORY_CAP_DAYS, HISTORY_CAP_DAYS, HISTORY_CAP_DAYS]
    np.testing.assert_allclose(got[:, 2], expected_days)
    np.testing.assert_allclose(got[:, 3], expected_days)


def test_weekly_dormancy_grows_by_seven_days_per_silent_window() -> None:
    df = frame([(ORIGIN, "purchase", "o1"), (ORIGIN + 2 * DAY_MS, "view", None)])
    got = new_features(both_paths(df, SPEC, 9))
    np.testing.assert_allclose(np.diff(got[:, 3]), 7.0)
    np.testing.assert_allclose(got[:, 2], got[:, 3])


def test_an_open_window_ahead_does_not_leak_into_the_closing_one() -> None:
    """The worker may fold an event of window 1 before window 0 closes (within the lateness):
    window 0's vector must not see that purchase; a peek at window 1 must."""
    state = new_state(SPEC, 0)
    for t, kind in [(ORIGIN + DAY_MS, "view"), (ORIGIN + WEEK_MS + DAY_MS, "purchase")]:
        (event,) = events_from_frame(frame([(t, kind, "o1" if kind == "purchase" else None)]))
        state = add_event(state, event, SPEC)
    peeked = peek_sequence(state, 1, SPEC)
    close_through(state, 0, SPEC)
    assert np.all(sequence(state)[-1, NEW] == 0)
    assert state.last_order_ms == ORIGIN + WEEK_MS + DAY_MS  # the signals' view: updated
    assert state.first_order_ms is None and state.order_days_total == 0
    np.testing.assert_allclose(peeked[-1, NEW], [1, 1, 6.0, 6.0])
    close_through(state, 1, SPEC)
    np.testing.assert_array_equal(sequence(state), peeked)
