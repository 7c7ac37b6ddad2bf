"""subscribers.records: signals parsed off the wire (never raising) and their ordering."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from subscribers.records import (
    MAX_RECORD_BYTES,
    RECENT_IDS,
    Position,
    Rejected,
    compare,
    derived_id,
    parse_churn,
    parse_demand,
    remember,
)
from tests.support.factories import T0, churn, demand


@pytest.mark.parametrize("mean", [None, 0.8])
def test_demand_round_trips_from_its_wire_form(mean: float | None) -> None:
    signal = demand("u1", window=3, orders=1.0, trigger="activity", mean=mean)
    assert parse_demand(orjson.dumps(signal.to_dict())) == signal
    assert parse_demand(signal.to_dict()) == signal


@pytest.mark.parametrize("days", [None, 0.0, 12.5])
def test_churn_round_trips_from_its_wire_form(days: float | None) -> None:
    signal = churn("ü 7", window=2, p=0.9, days=days)
    assert parse_churn(orjson.dumps(signal.to_dict())) == signal


def test_unknown_extra_keys_are_ignored() -> None:
    d = demand().to_dict() | {"new_field": [1, 2]}
    assert parse_demand(json.dumps(d)) == demand()


def _with(base: dict[str, object], **changes: object) -> bytes:
    d = dict(base)
    for key, value in changes.items():
        if value is ...:
            d.pop(key)
        else:
            d[key] = value
    return json.dumps(d).encode()


D = demand().to_dict()
C = churn().to_dict()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not_json"),
        (b"\xff\xfe", "not_json"),
        (b"[1, 2]", "not_object"),
        (b'{"user_id": NaN}', "not_json"),
        (b" " * (MAX_RECORD_BYTES + 1), "too_large"),
        (_with(D, user_id=...), "missing_field"),
        (_with(D, user_id=None), "missing_field"),
        (_with(D, user_id=""), "bad_value"),
        (_with(D, user_id="   "), "bad_value"),
        (_with(D, user_id=17), "bad_value"),
        (_with(D, window_end_ms=1.5), "bad_value"),
        (_with(D, window_end_ms=True), "bad_value"),
        (_with(D, window_end_ms=-1), "bad_value"),
        (_with(D, horizon_windows=0), "bad_value"),
        (_with(D, horizon_days=0), "bad_value"),
        (_with(D, expected_orders="1"), "bad_value"),
        (_with(D, expected_orders=False), "bad_value"),
        (_with(D, expected_orders=float("inf")), "not_json"),  # json writes Infinity
        (_with(D, expected_orders=0.5).replace(b"0.5", b"1e999"), "bad_value"),
        (_with(D, purchase_probability=1.5), "bad_value"),
        (_with(D, trigger="later"), "bad_value"),
        (_with(D, signal_id=...), "missing_field"),
        (_with(D, model_version="x" * 300), "bad_value"),
    ],
)
def test_bad_demand_records_are_rejected_with_a_reason(raw: bytes, reason: str) -> None:
    result = parse_demand(raw)
    assert isinstance(result, Rejected), result
    assert result.reason == reason
    assert result.detail


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (_with(C, churn_probability=-0.1), "bad_value"),
        (_with(C, churn_probability=1.01), "bad_value"),
        (_with(C, risk_level="severe"), "bad_value"),
        (_with(C, risk_level=...), "missing_field"),
        (_with(C, days_since_last_order=-1), "bad_value"),
        (_with(C, days_since_last_order="3"), "bad_value"),
        (_with(C, emitted_at_ms=...), "missing_field"),
    ],
)
def test_bad_churn_records_are_rejected_with_a_reason(raw: bytes, reason: str) -> None:
    result = parse_churn(raw)
    assert isinstance(result, Rejected), result
    assert result.reason == reason


@given(st.binary(max_size=300))
def test_parsers_never_raise_on_arbitrary_bytes(raw: bytes) -> None:
    assert isinstance(parse_demand(raw), Rejected)
    assert isinstance(parse_churn(raw), Rejected)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)


@given(st.dictionaries(st.sampled_from(sorted(D) + sorted(C)), _json))
def test_parsers_never_raise_on_arbitrary_objects(obj: dict[str, object]) -> None:
    for parse, base in ((parse_demand, D), (parse_churn, C)):
        result = parse({**base, **obj})
        assert isinstance(result, Rejected) or result.user_id


def test_derived_id_is_deterministic_and_unambiguous() -> None:
    assert derived_id("bid", "u", "s") == derived_id("bid", "u", "s")
    assert len(derived_id("bid", "u", "s")) == 32
    assert derived_id("bid", "a|b", "c") != derived_id("bid", "a", "b|c")


# --------------------------------------------------------------------------------------------
# Ordering
# --------------------------------------------------------------------------------------------


def pos(window_end: int, emitted: int, trigger: str = "window_close", sid: str = "") -> Position:
    return Position(sid or f"{window_end}-{emitted}-{trigger}", window_end, emitted, trigger)


def test_first_signal_is_newer() -> None:
    assert compare(pos(T0, T0), None) == "newer"


def test_later_window_end_wins_whatever_its_emission_time() -> None:
    held = pos(T0, T0 + 10_000)
    assert compare(pos(T0 + 1, T0 + 1), held) == "newer"
    assert compare(pos(T0 - 1, T0 + 99_999), held) == "stale"


def test_same_window_end_later_emission_wins() -> None:
    held = pos(T0, T0 + 10)
    assert compare(pos(T0, T0 + 11, sid="new-model"), held) == "newer"
    assert compare(pos(T0, T0 + 9, sid="old-model"), held) == "stale"


def test_same_window_and_emission_window_close_beats_activity() -> None:
    assert compare(pos(T0, T0, "window_close"), pos(T0, T0, "activity")) == "newer"
    assert compare(pos(T0, T0, "activity"), pos(T0, T0, "window_close")) == "stale"


def test_duplicates_of_the_held_or_a_recent_signal() -> None:
    held = pos(T0, T0, sid="held")
    assert compare(pos(T0 + 5, T0 + 5, sid="held"), held) == "duplicate"
    assert compare(pos(T0 + 5, T0 + 5, sid="earlier"), held, ("earlier", "held")) == "duplicate"


def test_remember_keeps_the_last_few_ids() -> None:
    ids: tuple[str, ...] = ()
    for i in range(RECENT_IDS + 3):
        ids = remember(ids, str(i))
    assert ids == tuple(str(i) for i in range(3, RECENT_IDS + 3))


def test_position_round_trips() -> None:
    p = Position.of(demand(window=2, trigger="activity"))
    assert Position.from_dict(p.to_dict()) == p
