"""Batch (training) and event-by-event (worker) feature paths give the same numbers.

Synthetic events cover the corner cases (orders by id, by session and anonymous, missing
prices and keys, silent gaps longer than a sequence, windows aligned on midnight UTC or cutting
days, events arriving out of order within a window); the real-data case replays UCI Online
Retail. Both compare every scored (user, window) sequence, float32 to 1e-6 relative, and check
that the lifetime order-day features are exercised, not all zero.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from features.batch import scored_mask, sequences_at
from features.events import EVENT_TYPES
from features.state import (
    UserState,
    add_event,
    begin_close,
    close_through,
    finish_closes,
    peek_sequence,
    preview,
    sequence,
)
from features.windows import (
    DAY_MS,
    FEATURE_INDEX,
    I_ACTIVE,
    I_DAYS_SINCE_FIRST_ORDER,
    I_DAYS_SINCE_LAST_ORDER,
    I_ORDER_DAYS,
    I_ORDER_DAYS_TOTAL,
    N_FEATURES,
    WindowSpec,
)
from tests.support.events import events_from_frame
from training.dataset import build_tensor, to_event_arrays

WEEK_MS = 7 * 86_400_000


def replay_sequences(
    df: pd.DataFrame, spec: WindowSpec, last_window: int
) -> dict[tuple[str, int], np.ndarray]:
    """Event-by-event path: fold events in order, close every user at each boundary."""
    states: dict[str, UserState] = {}
    out: dict[tuple[str, int], np.ndarray] = {}
    current: int | None = None

    def close(upto: int) -> None:
        for user, state in states.items():
            close_through(state, upto, spec)
            seq = sequence(state)
            if np.any(seq[-spec.lookback :, I_ACTIVE] > 0):
                out[(user, upto)] = seq

    for event in events_from_frame(df):
        window = spec.index(event.event_time_ms)
        if window > last_window:
            break
        if current is not None and window > current:
            for w in range(current, window):
                close(w)
        current = window if current is None else max(current, window)
        states[event.user_id] = add_event(states.get(event.user_id), event, spec)
    assert current is not None
    for w in range(current, last_window + 1):
        close(w)
    return out


def batch_sequences(
    df: pd.DataFrame, spec: WindowSpec, last_window: int
) -> dict[tuple[str, int], np.ndarray]:
    arrays, user_ids = to_event_arrays(df)
    tensor = build_tensor(arrays, spec, last_window)
    out: dict[tuple[str, int], np.ndarray] = {}
    for w in range(tensor.first_index, last_window + 1):
        seq = sequences_at(tensor, w)
        for i in np.flatnonzero(scored_mask(seq, spec.lookback)):
            out[(str(user_ids[i]), w)] = seq[i]
    return out


def assert_same(a: dict[tuple[str, int], np.ndarray], b: dict[tuple[str, int], np.ndarray]) -> None:
    assert a.keys() == b.keys(), (len(a.keys() - b.keys()), len(b.keys() - a.keys()))
    stacked_a = np.stack([a[k] for k in sorted(a)])
    stacked_b = np.stack([b[k] for k in sorted(a)])
    np.testing.assert_allclose(stacked_a, stacked_b, rtol=1e-6, atol=1e-6)


def assert_order_days_exercised(sequences: dict[tuple[str, int], np.ndarray]) -> None:
    """The new features take non-trivial values, so agreeing on them means something."""
    last = np.stack([seq[-1] for seq in sequences.values()])
    orders, order_days = last[:, FEATURE_INDEX["orders"]], last[:, I_ORDER_DAYS]
    assert np.any(order_days > 0)
    # Some window has more orders than order days (several orders on one day).
    assert np.any(order_days < orders)
    assert np.all(order_days <= last[:, FEATURE_INDEX["n_purchase"]])
    assert np.any(last[:, I_ORDER_DAYS_TOTAL] > 1)
    first, since_last = last[:, I_DAYS_SINCE_FIRST_ORDER], last[:, I_DAYS_SINCE_LAST_ORDER]
    assert np.any(since_last > 7)
    assert np.any(first > since_last)
    assert np.all(first >= since_last - 1e-3)


def synthetic_frame(seed: int, n: int = 3000, users: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    times = np.sort(rng.integers(0, 30 * WEEK_MS, n)) + 1_600_000_000_000
    types = rng.choice(EVENT_TYPES, n, p=[0.6, 0.15, 0.05, 0.05, 0.12, 0.03])

    def maybe(prefix: str, k: int, p_missing: float) -> list[str | None]:
        vals = rng.integers(0, k, n)
        miss = rng.random(n) < p_missing
        return [None if m else f"{prefix}{v}" for v, m in zip(vals, miss, strict=True)]

    price = rng.lognormal(2, 1, n).round(2)
    price[rng.random(n) < 0.1] = np.nan
    # Users go quiet for long stretches so that silent windows and gaps > seq_len occur.
    user = rng.integers(0, users, n)
    return pd.DataFrame(
        {
            "event_time_ms": times,
            "event_type": types,
            "user_id": [f"u{u}" for u in user],
            "product_id": maybe("p", 50, 0.1),
            "category": maybe("c", 8, 0.2),
            "brand": None,
            "price": price,
            "quantity": rng.integers(1, 5, n),
            "session_id": maybe("s", 400, 0.3),
            "order_id": maybe("o", 200, 0.5),
        }
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("midnight", [False, True], ids=["cut_days", "midnight_utc"])
def test_batch_and_event_paths_agree_on_synthetic_events(seed: int, midnight: bool) -> None:
    df = synthetic_frame(seed)
    origin = 1_600_000_000_000 - 3 * DAY_MS
    if midnight:
        origin -= origin % DAY_MS
    else:
        # Boundaries at 02:40 UTC: days cut by a boundary count in both windows, on both paths.
        assert origin % DAY_MS != 0
    spec = WindowSpec(WEEK_MS, origin, seq_len=5, horizon=2, lookback=3)
    last = spec.index(int(df.event_time_ms.max())) + 2
    batch = batch_sequences(df, spec, last)
    stream = replay_sequences(df, spec, last)
    assert len(batch) > 100
    assert_same(batch, stream)
    assert_order_days_exercised(batch)


def test_events_out_of_order_within_a_window_give_the_same_vectors() -> None:
    """The worker folds events as they arrive (within the allowed lateness, before a close):
    first/last purchase times are min/max, not first/last seen."""
    df = synthetic_frame(4)
    spec = WindowSpec(WEEK_MS, 1_600_000_000_000, seq_len=5, horizon=2, lookback=3)
    window = (df.event_time_ms - spec.origin_ms) // spec.length_ms
    shuffled = (
        df.assign(_w=window, _r=np.random.default_rng(0).random(len(df)))
        .sort_values(["_w", "_r"])
        .drop(columns=["_w", "_r"])
    )
    assert not shuffled.event_time_ms.is_monotonic_increasing
    last = spec.index(int(df.event_time_ms.max())) + 2
    assert_same(batch_sequences(df, spec, last), replay_sequences(shuffled, spec, last))


def test_sparse_user_with_gap_longer_than_sequence() -> None:
    base = 1_600_000_000_000
    df = pd.DataFrame(
        {
            "event_time_ms": [base, base + 1, base + 20 * WEEK_MS, base + 20 * WEEK_MS + 5],
            "event_type": ["purchase", "view", "purchase", "return"],
            "user_id": ["a", "a", "a", "a"],
            "product_id": ["p1", "p1", "p2", "p2"],
            "category": [None, None, "c", "c"],
            "brand": None,
            "price": [10.0, np.nan, 2.5, 2.5],
            "quantity": [2, 1, 4, 1],
            "session_id": [None, None, None, None],
            "order_id": ["o1", None, None, "o2"],
        }
    )
    spec = WindowSpec(WEEK_MS, base, seq_len=4, horizon=1, lookback=4)
    last = spec.index(base + 20 * WEEK_MS) + 6
    assert_same(batch_sequences(df, spec, last), replay_sequences(df, spec, last))


def test_peek_sequence_equals_the_sequence_at_close_and_leaves_state_alone() -> None:
    df = synthetic_frame(5, n=400, users=3)
    spec = WindowSpec(WEEK_MS, 1_600_000_000_000, seq_len=4, horizon=1, lookback=2)
    state = None
    for event in events_from_frame(df[df.user_id == "u1"]):
        state = add_event(state, event, spec)
    assert state is not None
    open_window = max(state.open)
    before = sequence(state)
    peeked = peek_sequence(state, open_window, spec)
    np.testing.assert_array_equal(sequence(state), before)
    close_through(state, open_window, spec)
    np.testing.assert_array_equal(peeked, sequence(state))
    assert peeked.shape == (4, N_FEATURES)


def test_a_batch_of_closes_and_previews_assembled_in_one_call_equals_each_alone() -> None:
    """The worker assembles a micro-batch's closes and activity previews in one call: a shop
    of 40 users, some months apart, some catching up several windows, some never silent."""
    df = synthetic_frame(11, n=3_000, users=40)
    spec = WindowSpec(WEEK_MS, 1_600_000_000_000, seq_len=6, horizon=2, lookback=3)
    states: dict[str, UserState] = {}
    for event in events_from_frame(df):
        states[event.user_id] = add_event(states.get(event.user_id), event, spec)
    alone = copy.deepcopy(states)
    together = copy.deepcopy(states)
    users = sorted(states)
    # Half the users close through a window before their last (some have nothing to close
    # yet: it is before their first), the other half are previewed at their open window.
    closing, previewed = users[::2], users[1::2]
    through = {u: max(states[u].open) - 1 for u in closing}
    expected = {u: (close_through(alone[u], through[u], spec), sequence(alone[u])) for u in closing}
    peeks = {u: peek_sequence(alone[u], max(alone[u].open), spec) for u in previewed}

    pending = []
    closed: dict[str, int] = {}
    for u in closing:
        begun = begin_close(together[u], through[u], spec)
        if begun is not None:
            pending.append(begun[0])
        closed[u] = 0 if begun is None else begun[1]
    previews = {u: preview(together[u], max(together[u].open), spec) for u in previewed}
    finish_closes([*pending, *previews.values()], spec)

    assert sum(n > 1 for n, _ in expected.values()) > 0  # catch-ups of several windows
    for u in closing:
        assert closed[u] == expected[u][0]
        np.testing.assert_array_equal(sequence(together[u]), expected[u][1])
    for u in previewed:
        np.testing.assert_array_equal(previews[u].ring, peeks[u])
        np.testing.assert_array_equal(sequence(together[u]), sequence(states[u]))


@pytest.mark.realdata
def test_batch_and_event_paths_agree_on_uci_online_retail(shared_data) -> None:  # type: ignore[no-untyped-def]
    """Every scored (user, week) sequence of a year of real order lines, both paths."""
    from ingest.adapters import read_events

    df = read_events(shared_data / "online_retail.csv.gz", "transactions").events
    # Weekly windows laid on the shipped model's cutoff (a Monday), as training lays them.
    cutoff = int(pd.Timestamp("2011-09-05", tz="UTC").value // 1_000_000)
    spec = WindowSpec(WEEK_MS, cutoff, seq_len=12, horizon=4, lookback=12)
    last = spec.index(int(df.event_time_ms.max()))
    batch = batch_sequences(df, spec, last)
    assert len(batch) > 90_000
    assert_same(batch, replay_sequences(df, spec, last))
    assert_order_days_exercised(batch)


@pytest.mark.realdata
def test_order_days_are_the_distinct_purchase_days_of_uci_online_retail(shared_data) -> None:  # type: ignore[no-untyped-def]
    """With windows on a midnight-UTC grid the features are exact: at the last window, each
    customer's order_days_total is their number of distinct purchase days, and the day
    features are measured from their first and last purchase to the window end."""
    from ingest.adapters import read_events

    df = read_events(shared_data / "online_retail.csv.gz", "transactions").events
    cutoff = int(pd.Timestamp("2011-09-05", tz="UTC").value // 1_000_000)
    spec = WindowSpec(WEEK_MS, cutoff, seq_len=12, horizon=4, lookback=12)
    last = spec.index(int(df.event_time_ms.max()))
    arrays, user_ids = to_event_arrays(df)
    vectors = build_tensor(arrays, spec, last).features[:, -1, :].astype(np.float64)
    purchases = df[df.event_type == "purchase"]
    per_user = purchases.assign(day=purchases.event_time_ms // DAY_MS).groupby("user_id")
    expected = pd.DataFrame(
        {
            "days": per_user.day.nunique(),
            "first": per_user.event_time_ms.min(),
            "last": per_user.event_time_ms.max(),
        }
    )
    row = {str(u): i for i, u in enumerate(user_ids)}
    idx = np.array([row[str(u)] for u in expected.index])
    assert len(idx) > 4000
    got = vectors[idx]
    np.testing.assert_array_equal(got[:, I_ORDER_DAYS_TOTAL], expected.days.to_numpy())
    end = spec.end_ms(last)
    for col, feature in (("first", I_DAYS_SINCE_FIRST_ORDER), ("last", I_DAYS_SINCE_LAST_ORDER)):
        days = (end - expected[col].to_numpy()) / DAY_MS
        np.testing.assert_allclose(got[:, feature], days, rtol=1e-6)
    never = np.setdiff1d(np.arange(len(user_ids)), idx)
    assert np.all(vectors[never][:, [I_ORDER_DAYS_TOTAL, I_DAYS_SINCE_FIRST_ORDER]] == 0)


def test_the_tensor_built_a_block_of_users_at_a_time_is_the_tensor_built_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A generated shop of 2,000 users: blocks of 7 users (odd, so blocks end mid-shop and
    the last is short) give every cell bit for bit, labels included."""
    import features.batch as batch
    from ingest.generator import generate_clickstream

    frame = generate_clickstream(n_users=2000, start="2024-01-01", days=120, seed=13)
    arrays, _ = to_event_arrays(frame)
    last_ms = int(frame.event_time_ms.max())
    spec = WindowSpec(WEEK_MS, last_ms // DAY_MS * DAY_MS - 3 * WEEK_MS, 12, 4, 12)
    last = spec.index(last_ms) - 1
    monkeypatch.setattr(batch, "USERS_AT_ONCE", 10**9)
    whole = build_tensor(arrays, spec, last)
    monkeypatch.setattr(batch, "USERS_AT_ONCE", 7)
    blocks = build_tensor(arrays, spec, last)
    assert whole.features.shape[0] > 7 * 100
    np.testing.assert_array_equal(blocks.features, whole.features)
    np.testing.assert_array_equal(blocks.orders, whole.orders)
    np.testing.assert_array_equal(blocks.spend, whole.spend)
    assert whole.features[..., I_ORDER_DAYS_TOTAL].max() > 1
