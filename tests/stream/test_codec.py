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
from stream.codec import CODEC_VERSION, StateVersionError, UserRecord, decode_user, encode_user

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
