"""The user-state codec: a record round-trips exactly, and a record of another version is
refused with a message that says what to do (old records cannot be migrated: they never held
the order days and purchase times of feature definition 2)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from features.events import ClickEvent
from features.outcomes import Pending
from features.state import UserState, add_event, close_through, sequence
from features.windows import DAY_MS, WindowSpec
from stream.codec import (
    CODEC_VERSION,
    StateVersionError,
    UserRecord,
    decode_user,
    encode_user,
    peek_user,
)

WEEK_MS = 7 * DAY_MS
ORIGIN = 1_600_000_000_000 - 1_600_000_000_000 % DAY_MS
SPEC = WindowSpec(WEEK_MS, ORIGIN, seq_len=4, horizon=1, lookback=4)


def _event(t: int, kind: str, order: str | None = None) -> ClickEvent:
    return ClickEvent(
        event_time_ms=t,
        event_type=kind,
        user_id="u",
        product_id="p",
        category=None,
        brand=None,
        price=3.0 if kind == "purchase" else None,
        quantity=1,
        session_id=None,
        order_id=order,
    )


def _state() -> UserState:
    """Purchases in a window that closes and in one still open (two days, two orders)."""
    state = None
    for t, kind, order in [
        (ORIGIN + 1 * DAY_MS, "purchase", "o1"),
        (ORIGIN + 2 * DAY_MS, "view", None),
        (ORIGIN + WEEK_MS + 3 * DAY_MS, "purchase", "o2"),
        (ORIGIN + WEEK_MS + 5 * DAY_MS, "purchase", None),
    ]:
        state = add_event(state, _event(t, kind, order), SPEC)
    assert state is not None
    close_through(state, 0, SPEC)
    return state


def test_a_record_round_trips_with_the_order_day_history() -> None:
    record = UserRecord(_state(), last_fresh_ms=5, last_scores={"demand": 1.5}, seen={0: 7})
    decoded = decode_user(encode_user(record))
    assert decoded.state.order_days_total == record.state.order_days_total == 1.0
    assert decoded.state.first_order_ms == record.state.first_order_ms == ORIGIN + DAY_MS
    assert decoded.state.last_closed_order_ms == ORIGIN + DAY_MS
    assert decoded.state.open[1] == record.state.open[1]
    assert decoded.state.open[1].purchase_days == {
        (ORIGIN + WEEK_MS) // DAY_MS + 3,
        (ORIGIN + WEEK_MS) // DAY_MS + 5,
    }
    # Going on from the decoded state gives the same vectors as going on from the original.
    close_through(record.state, 3, SPEC)
    close_through(decoded.state, 3, SPEC)
    np.testing.assert_array_equal(sequence(decoded.state), sequence(record.state))
    assert (decoded.last_fresh_ms, decoded.last_scores, decoded.seen) == (
        5,
        {"demand": 1.5},
        {0: 7},
    )


def test_a_peek_reads_what_a_full_decode_says_of_candidacy() -> None:
    """A restart reads every stored user's header only: last event, open windows, order
    days, last scores and predictions waiting are those of the full record."""
    waiting = [Pending(3, "m-abc", 1.25, 40.5, 0.3125, 2.0, 57.25)]
    scores = {"trigger": "window_close", "churn_probability": 0.25}
    for record in (
        UserRecord(_state(), last_fresh_ms=5, last_scores=scores, seen={0: 7}, pending=waiting),
        UserRecord(_state()),
    ):
        full = decode_user(encode_user(record))
        peek = peek_user(encode_user(record))
        assert peek.last_event_ms == full.state.last_event_ms
        assert peek.has_open == bool(full.state.open) is True
        assert peek.order_days_total == full.state.order_days_total == 1.0
        assert peek.last_scores == full.last_scores
        assert peek.has_pending == bool(full.pending)


def test_a_record_of_the_previous_version_is_refused_with_what_to_do() -> None:
    data = encode_user(UserRecord(_state()))
    size = int.from_bytes(data[:4], "big")
    header = orjson.loads(data[4 : 4 + size])
    # A version-1 record: no order-day fields, a ring of the old vector length.
    for key in ("odt", "fom", "lcm"):
        del header[key]
    header["v"] = 1
    old = orjson.dumps(header)
    old_record = len(old).to_bytes(4, "big") + old + b"\0" * (4 * 4 * 22)
    with pytest.raises(StateVersionError):
        peek_user(old_record)
    with pytest.raises(StateVersionError) as refused:
        decode_user(old_record)
    message = str(refused.value)
    assert "codec version 1" in message and f"version {CODEC_VERSION}" in message
    assert "new app id" in message and "changelog" in message
    assert isinstance(refused.value, ValueError)


def test_predictions_waiting_for_their_horizon_round_trip_and_older_records_have_none() -> None:
    """The outcome ring (issue 15) is an optional key: a record written before it reads as a
    user with no prediction waiting, and one without predictions does not carry the key."""
    waiting = [
        Pending(3, "m-abc", 1.25, 40.5, 0.3125, 2.0, 57.25),
        Pending(4, "m-def", 0.0, 0.0, 0.96875, 2.0, 57.25),
    ]
    record = UserRecord(_state(), pending=waiting)
    assert decode_user(encode_user(record)).pending == waiting
    plain = encode_user(UserRecord(_state()))
    size = int.from_bytes(plain[:4], "big")
    assert "pn" not in orjson.loads(plain[4 : 4 + size])
    assert decode_user(plain).pending == []


def test_the_waiting_block_keeps_its_stored_layout_and_follows_a_replaced_list() -> None:
    """The block is 36 packed bytes per prediction (int32 window, int16 version index and
    shadow flag, float32 scores, float64 totals): records already in a changelog stay readable.
    A user written at each event reuses the block until their predictions change."""
    waiting = [
        Pending(3, "m-abc", 1.25, 40.5, 0.3125, 2.0, 57.25),
        Pending(3, "m-new", 0.5, 10.0, 0.75, 2.0, 57.25, shadow=True),
        Pending(4, "m-abc", 0.1, 3.3, 0.9, 2.0, 57.25),
    ]
    layout = np.dtype(
        [
            ("window", "<i4"),
            ("version", "<i2"),
            ("shadow", "<i2"),
            ("orders", "<f4"),
            ("spend", "<f4"),
            ("churn", "<f4"),
            ("order_days_before", "<f8"),
            ("spend_before", "<f8"),
        ]
    )
    versions = ["m-abc", "m-new"]
    stored = np.array(
        [
            (
                p.window,
                versions.index(p.model_version),
                p.shadow,
                p.orders,
                p.spend,
                p.churn,
                p.order_days_before,
                p.spend_before,
            )
            for p in waiting
        ],
        dtype=layout,
    ).tobytes()
    record = UserRecord(_state(), pending=waiting)
    data = encode_user(record)
    assert data.endswith(stored) and len(stored) == 36 * len(waiting)
    again = decode_user(data)
    assert [p.model_version for p in again.pending] == [p.model_version for p in waiting]
    assert again.pending[1].shadow and again.pending[2].churn == float(np.float32(0.9))
    assert encode_user(again) == data
    record.pending = waiting[1:]
    assert encode_user(record).endswith(stored[36:])
    assert decode_user(encode_user(record)).pending == decode_user(data).pending[1:]


def test_a_weekly_buyer_s_block_carried_from_close_to_close_is_the_block_encoded_afresh() -> None:
    """Close by close (settle the due predictions, remember the new one), with a model swap
    halfway and a shadow model for a while, the block kept from the previous close and
    extended is byte for byte the one a fresh encoding gives, before and after a restore."""
    from features.outcomes import remember, settle

    horizon = 3
    record = UserRecord(_state())
    for window in range(20):
        version = "m-old" if window < 9 else "m-new"
        _, waiting = settle(record.pending, window, float(window), 2.5 * window, horizon)
        new = Pending(window, version, 0.5, 4.0, 0.25, float(window), 2.5 * window)
        waiting = remember(waiting, new, horizon)
        if 5 <= window < 12:
            shadow = Pending(window, "m-cand", 0.75, 5.0, 0.5, float(window), 2.5 * window, True)
            waiting = remember(waiting, shadow, horizon)
        record.pending = waiting
        data = encode_user(record)
        assert data == encode_user(UserRecord(_state(), pending=list(waiting)))
        restored = decode_user(data)
        assert restored.pending == waiting
        record = restored


def test_a_partition_clock_with_a_close_in_progress_round_trips() -> None:
    """The close in progress and how many slice tallies it has stored are in the clock record;
    what the worker keeps in memory only (the queue of users, the tallies read) is not, and a
    clock with no close in progress stores none of it (records written before read as they
    were)."""
    from stream.codec import PartitionClock, decode_clock, encode_clock

    clock = PartitionClock(10, 4, 1, 5, 3, (), ("a", "b"), 1)
    back = decode_clock(encode_clock(clock))
    assert back == clock and back.slices == 3 and back.closing == 5
    assert back.queue is None and back.queued == 0 and back.cohort is None
    plain = encode_clock(PartitionClock(10, 4, 1))
    assert b'"k"' not in plain and b'"n"' not in plain
    assert decode_clock(b'{"m":10,"c":4,"f":1}') == PartitionClock(10, 4, 1)
