"""ingest.generator: determinism, canonical shape, plausible funnel, churn and seasonality."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from features.events import ClickEvent
from features.validation import ValidationPolicy, validate
from ingest.adapters import CANONICAL_COLUMNS, to_wire_bytes
from ingest.generator import SimulatedClickstream, generate_clickstream, simulate, users_for_events


@pytest.fixture(scope="module")
def sim() -> SimulatedClickstream:
    return simulate(n_users=4_000, start="2024-01-01", days=120, seed=7)


def test_deterministic_for_a_seed() -> None:
    a = generate_clickstream(n_users=300, days=20, seed=11)
    b = generate_clickstream(n_users=300, days=20, seed=11)
    c = generate_clickstream(n_users=300, days=20, seed=12)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


def test_canonical_shape(sim: SimulatedClickstream) -> None:
    df = sim.events
    assert tuple(df.columns) == CANONICAL_COLUMNS
    assert df["event_time_ms"].dtype == np.int64 and df["quantity"].dtype == np.int64
    assert (np.diff(df["event_time_ms"].to_numpy()) >= 0).all()
    start = pd.Timestamp("2024-01-01", tz="UTC").value // 1_000_000
    assert df["event_time_ms"].min() >= start
    assert df["event_time_ms"].max() < start + 120 * 86_400_000
    assert df["price"].gt(0).all() and df["user_id"].notna().all()


def test_funnel_ratios(sim: SimulatedClickstream) -> None:
    df = sim.events
    counts = df["event_type"].value_counts()
    assert counts["view"] > 10 * counts["cart"]
    assert counts["cart"] > counts["purchase"] > 0
    assert 0 < counts["remove_from_cart"] < counts["cart"]
    assert 0 < counts["return"] < counts["purchase"]
    sessions = df["session_id"].nunique()
    buying = df.loc[df["event_type"] == "purchase", "session_id"].nunique()
    assert 0.01 < buying / sessions < 0.05
    views_per_session = counts["view"] / sessions
    assert 2 < views_per_session < 8


def test_orders_group_purchase_lines(sim: SimulatedClickstream) -> None:
    df = sim.events
    buys = df[df["event_type"] == "purchase"]
    assert buys["order_id"].notna().all()
    per_order = buys.groupby("order_id").agg(
        users=("user_id", "nunique"), sessions=("session_id", "nunique"), lines=("user_id", "size")
    )
    assert (per_order["users"] == 1).all() and (per_order["sessions"] == 1).all()
    assert per_order["lines"].max() > 1  # some multi-line orders
    returns = df[df["event_type"] == "return"]
    assert returns["order_id"].isin(buys["order_id"]).all()
    assert df.loc[df["event_type"].isin(["view", "cart"]), "order_id"].isna().all()


def test_activity_is_heavy_tailed(sim: SimulatedClickstream) -> None:
    per_user = sim.events.groupby("user_id").size()
    top = per_user.sort_values(ascending=False)
    assert top.iloc[: len(top) // 10].sum() > 0.3 * top.sum()  # top 10% of users: >30% of events


def test_churners_stop_and_new_users_arrive(sim: SimulatedClickstream) -> None:
    users, df = sim.users, sim.events
    churners = users[users["churn_ms"] >= 0]
    assert 0.2 < len(churners) / len(users) < 0.4
    last = df.groupby("user_id")["event_time_ms"].max()
    first = df.groupby("user_id")["event_time_ms"].min()
    churn_at = churners.set_index("user_id")["churn_ms"]
    joined = pd.concat([last, churn_at], axis=1, join="inner")
    # A churner's sessions stop at the churn time (a session started before it may run on).
    assert (joined["event_time_ms"] <= joined["churn_ms"] + 6 * 3_600_000).all()
    arrival = users.set_index("user_id")["arrival_ms"]
    late = arrival[arrival > arrival.min()]
    assert len(late) > 0.2 * len(users)
    seen = first.index.intersection(late.index)
    assert (first[seen] >= late[seen]).all()


def test_daily_and_weekly_seasonality(sim: SimulatedClickstream) -> None:
    times = pd.to_datetime(sim.events["event_time_ms"], unit="ms", utc=True)
    by_hour = times.dt.hour.value_counts()
    assert by_hour[20] > 3 * by_hour[4]  # evening peak vs night
    by_dow = times.dt.dayofweek.value_counts()
    assert by_dow[6] > by_dow[2]  # Sunday busier than Wednesday


def test_events_pass_validation() -> None:
    df = generate_clickstream(n_users=200, days=14, seed=5)
    policy = ValidationPolicy()
    for _, value in to_wire_bytes(df):
        assert isinstance(validate(value, now_ms=2_000_000_000_000, policy=policy), ClickEvent)


@pytest.mark.slow
def test_a_million_events_quickly() -> None:
    n_users = users_for_events(1_000_000, days=90)
    started = time.perf_counter()
    df = generate_clickstream(n_users=n_users, days=90, seed=1)
    elapsed = time.perf_counter() - started
    assert 700_000 < len(df) < 1_400_000
    assert elapsed < 10.0, f"{len(df)} events took {elapsed:.1f}s"
