"""features.validation: every class of bad input gets its reason code, and nothing raises."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.events import EVENT_TYPES, ClickEvent
from features.validation import (
    _UNDECODED,
    MIN_EVENT_TIME_MS_DEFAULT,
    NUMBER_TIME_MIN_MS,
    REASONS,
    Invalid,
    ValidationPolicy,
    _decode,
    _fast_decode,
    _validate_object,
    parse_event_time,
    validate,
)
from features.windows import DAY_MS
from settings import Settings

NOW = 1_700_000_000_000  # 2023-11-14T22:13:20Z
POLICY = ValidationPolicy()
BASE: dict[str, Any] = {"event_time": NOW - 1000, "event_type": "view", "user_id": "u1"}


def check(obj: Any, *, now_ms: int = NOW, policy: ValidationPolicy = POLICY) -> Any:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return validate(raw, now_ms=now_ms, policy=policy)


def invalid(obj: Any, reason: str, field: str | None = None, **kw: Any) -> Invalid:
    result = check(obj, **kw)
    assert isinstance(result, Invalid), result
    assert result.reason == reason, result
    assert result.field == field, result
    assert result.reason in REASONS
    assert result.detail
    if field is not None:
        assert field in result.detail  # the human text names the field at fault
    return result


def with_(**changes: Any) -> dict[str, Any]:
    out = {**BASE, **changes}
    return {k: v for k, v in out.items() if v is not _DROP}


_DROP = object()


# --- valid events --------------------------------------------------------------------------------


def test_minimal_event() -> None:
    assert check(BASE) == ClickEvent(NOW - 1000, "view", "u1")


def test_full_event_round_trips_through_to_wire() -> None:
    ev = ClickEvent(
        event_time_ms=NOW - 5,
        event_type="purchase",
        user_id="17850",
        product_id="85123A",
        category="home.decor",
        brand="acme",
        price=2.55,
        quantity=6,
        session_id="s1",
        order_id="536365",
    )
    assert check(ev.to_wire()) == ev


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_every_event_type_accepted(event_type: str) -> None:
    assert isinstance(check(with_(event_type=event_type)), ClickEvent)


def test_iso_times_with_zone() -> None:
    z = check(with_(event_time="2023-11-14T22:13:19Z"))
    off = check(with_(event_time="2023-11-15T00:13:19+02:00"))
    frac = check(with_(event_time="2023-11-14T22:13:19.1239Z"))
    assert isinstance(z, ClickEvent) and isinstance(off, ClickEvent)
    assert z.event_time_ms == off.event_time_ms == NOW - 1000
    assert isinstance(frac, ClickEvent) and frac.event_time_ms == NOW - 1000 + 123  # floored


def test_int_ids_are_stringified() -> None:
    ev = check(with_(user_id=17850, product_id=44600062, session_id=0))
    assert isinstance(ev, ClickEvent)
    assert (ev.user_id, ev.product_id, ev.session_id) == ("17850", "44600062", "0")


def test_empty_optional_strings_and_nulls_mean_absent() -> None:
    ev = check(with_(product_id="", brand=None, price=None, quantity=None))
    assert ev == ClickEvent(NOW - 1000, "view", "u1")


def test_integral_float_quantity_and_int_price_accepted() -> None:
    ev = check(with_(quantity=2.0, price=3))
    assert isinstance(ev, ClickEvent)
    assert ev.quantity == 2 and type(ev.quantity) is int
    assert ev.price == 3.0 and type(ev.price) is float


def test_price_zero_is_valid() -> None:
    ev = check(with_(price=0.0))
    assert isinstance(ev, ClickEvent) and ev.price == 0.0


def test_unknown_keys_ignored_and_user_id_kept_verbatim() -> None:
    ev = check(with_(user_id=" u1 ", extra={"nested": [1, 2]}, schema=3))
    assert isinstance(ev, ClickEvent) and ev.user_id == " u1 "


def test_bytearray_and_memoryview_accepted() -> None:
    raw = json.dumps(BASE).encode()
    assert isinstance(validate(bytearray(raw), now_ms=NOW, policy=POLICY), ClickEvent)
    assert isinstance(validate(memoryview(raw), now_ms=NOW, policy=POLICY), ClickEvent)  # type: ignore[arg-type]


def test_non_ascii_strings_accepted() -> None:
    ev = check(with_(user_id="użytkownik-7", brand="日本"))
    assert isinstance(ev, ClickEvent) and ev.brand == "日本"


# --- envelope ------------------------------------------------------------------------------------


def test_too_large_checked_before_parsing() -> None:
    small = ValidationPolicy(max_bytes=10)
    invalid(b"\xff" * 11, "too_large", policy=small)  # not even UTF-8: size is checked first
    assert isinstance(check(b'{"a":1}', policy=small), Invalid)  # within size: parsed


@pytest.mark.parametrize("raw", [b"\xff\xfe{}", b'{"user_id":"\xc3"}', b"\xed\xa0\x80"])
def test_not_utf8(raw: bytes) -> None:
    invalid(raw, "not_utf8")


@pytest.mark.parametrize(
    "raw",
    [b"", b"   ", b"{", b"{'a': 1}", b"{}{}", b'{"a":1} x', b"\xef\xbb\xbf{}", b"nul"],
)
def test_not_json(raw: bytes) -> None:
    invalid(raw, "not_json")


def test_deep_nesting_is_not_json_not_a_crash() -> None:
    depth = 30_000
    invalid(b"[" * depth + b"]" * depth, "not_json")
    invalid(b'{"event_time":' + b"[" * depth + b"]" * depth + b"}", "not_json")


def test_giant_int_literal_is_not_json() -> None:
    invalid(b'{"event_time":' + b"9" * 5000 + b"}", "not_json")


@pytest.mark.parametrize("raw", [b"[]", b"[1,2]", b'"x"', b"1", b"null", b"true"])
def test_not_object(raw: bytes) -> None:
    invalid(raw, "not_object")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_literals_rejected(literal: str) -> None:
    raw = f'{{"event_time": {NOW}, "event_type": "view", "user_id": "u", "price": {literal}}}'
    result = invalid(raw.encode(), "bad_value")
    assert literal in result.detail


def test_overflowing_float_price_rejected() -> None:
    raw = f'{{"event_time": {NOW}, "event_type": "view", "user_id": "u", "price": 1e999}}'
    invalid(raw.encode(), "bad_value", "price")


# --- required fields -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["event_time", "event_type", "user_id"])
def test_missing_or_null_required(name: str) -> None:
    invalid(with_(**{name: _DROP}), "missing_field", name)
    invalid(with_(**{name: None}), "missing_field", name)


@pytest.mark.parametrize("value", [1, True, ["view"], {"t": "view"}])
def test_event_type_wrong_type(value: Any) -> None:
    invalid(with_(event_type=value), "wrong_type", "event_type")


@pytest.mark.parametrize("value", ["click", "VIEW", " view", "", "purchase\x00"])
def test_unknown_event_type(value: str) -> None:
    invalid(with_(event_type=value), "unknown_event_type", "event_type")


@pytest.mark.parametrize("value", [True, False, 1.5, 17850.0, [1], {"id": 1}])
def test_user_id_wrong_type(value: Any) -> None:
    invalid(with_(user_id=value), "wrong_type", "user_id")


@pytest.mark.parametrize("value", ["", " ", "\t\n"])
def test_user_id_blank(value: str) -> None:
    invalid(with_(user_id=value), "bad_value", "user_id")


@pytest.mark.parametrize(
    "value", ["\x00clock/0/0", "\x00", "u\x00", "a\tb", "line\nbreak", "\x1f", "del\x7f"]
)
def test_user_id_with_control_characters(value: str) -> None:
    # The worker's internal table keys start with U+0000: no accepted user id may contain it.
    invalid(with_(user_id=value), "bad_value", "user_id")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_no_accepted_user_id_is_in_the_internal_key_namespace(user_id: str) -> None:
    result = check(with_(user_id=user_id))
    if isinstance(result, ClickEvent):
        assert not result.user_id.startswith("\x00")
        assert not any(c < " " or c == "\x7f" for c in result.user_id)


def test_user_id_too_long() -> None:
    invalid(with_(user_id="u" * 257), "bad_value", "user_id")


def test_lone_surrogate_rejected() -> None:
    raw = b'{"event_time": %d, "event_type": "view", "user_id": "u\\ud800"}' % NOW
    invalid(raw, "bad_value", "user_id")
    raw = b'{"event_time": %d, "event_type": "view", "user_id": "u", "brand": "\\udfff"}' % NOW
    invalid(raw, "bad_value", "brand")


# --- event_time ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, 1.7e12, float(NOW), [NOW], {"ms": NOW}])
def test_event_time_wrong_type(value: Any) -> None:
    invalid(with_(event_time=value), "wrong_type", "event_time")


@pytest.mark.parametrize(
    "value",
    [
        "2023-11-14T22:13:19",  # naive
        "2023-11-14T22",  # naive, to the hour
        "2023-02-29",  # a date that does not exist
        "1700000000000",  # digits in a string
        "yesterday",
        "2023-13-40T00:00:00Z",
        "x" * 100,
    ],
)
def test_event_time_bad_value(value: str) -> None:
    invalid(with_(event_time=value), "bad_value", "event_time")


def test_time_too_old_with_seconds_hint() -> None:
    result = invalid(with_(event_time=NOW // 1000), "time_too_old", "event_time")
    assert "seconds" in result.detail
    invalid(with_(event_time=MIN_EVENT_TIME_MS_DEFAULT - 1), "time_too_old", "event_time")
    invalid(with_(event_time=-1), "time_too_old", "event_time")
    invalid(with_(event_time="1999-12-31T23:59:59Z"), "time_too_old", "event_time")
    assert isinstance(check(with_(event_time=MIN_EVENT_TIME_MS_DEFAULT)), ClickEvent)


def test_a_plain_date_is_the_start_of_its_utc_day() -> None:
    """An order export's date names a day, not an instant: no zone is guessed, its order day
    is the date as written."""
    event = check(with_(event_time="2023-11-14"))
    assert isinstance(event, ClickEvent)
    assert event.event_time_ms == NOW - NOW % DAY_MS


def test_under_a_history_floor_a_1970_number_is_refused_as_seconds_or_a_date() -> None:
    """History files are read with a 1900 floor, where epoch seconds and YYYYMMDD numbers read
    as milliseconds would pass as January 1970: refused whatever the floor (the worker's 2000
    floor says time_too_old first, as above)."""
    history = ValidationPolicy(min_event_time_ms=-2_208_988_800_000)
    for number in (NOW // 1000, 19_970_101, 0, NUMBER_TIME_MIN_MS - 1):
        result = invalid(with_(event_time=number), "bad_value", "event_time", policy=history)
        assert "YYYYMMDD" in result.detail
    for ms in (NUMBER_TIME_MIN_MS, -1, NOW):  # 1973 on, and before 1970, are milliseconds
        assert isinstance(check(with_(event_time=ms), policy=history), ClickEvent)
    assert isinstance(check(with_(event_time="1970-01-02T00:00:00Z"), policy=history), ClickEvent)


def test_time_in_future() -> None:
    day = DAY_MS
    assert isinstance(check(with_(event_time=NOW + day)), ClickEvent)  # at the skew limit
    invalid(with_(event_time=NOW + day + 1), "time_in_future", "event_time")
    invalid(with_(event_time=10**30), "time_in_future", "event_time")


# --- price and quantity --------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["3.5", True, [1.0], {"v": 1}])
def test_price_wrong_type(value: Any) -> None:
    invalid(with_(price=value), "wrong_type", "price")


@pytest.mark.parametrize("value", [-0.01, -1, 10**400])
def test_price_bad_value(value: Any) -> None:
    invalid(with_(price=value), "bad_value", "price")


@pytest.mark.parametrize("value", ["2", True, [2]])
def test_quantity_wrong_type(value: Any) -> None:
    invalid(with_(quantity=value), "wrong_type", "quantity")


@pytest.mark.parametrize("value", [0, -1, 2.5, 10_000_001, 1e300])
def test_quantity_bad_value(value: Any) -> None:
    invalid(with_(quantity=value), "bad_value", "quantity")


@pytest.mark.parametrize("name", ["product_id", "category", "brand", "session_id", "order_id"])
def test_optional_id_wrong_type(name: str) -> None:
    invalid(with_(**{name: 1.5}), "wrong_type", name)
    invalid(with_(**{name: True}), "wrong_type", name)


# --- helpers -------------------------------------------------------------------------------------


def test_parse_event_time() -> None:
    assert parse_event_time(0) == 0
    assert parse_event_time("1970-01-01T00:00:00.001Z") == 1
    assert parse_event_time("2019-10-01T00:00:00+00:00") == 1_569_888_000_000
    for bad in (True, 1.0, "2019-10-01T00:00:00", None, b"1"):
        assert isinstance(parse_event_time(bad), str)


def test_policy_from_settings_matches_defaults() -> None:
    assert ValidationPolicy.from_settings(Settings().worker) == ValidationPolicy()
    custom = Settings.from_flat(
        max_event_bytes=100, max_future_skew_s=1.5, min_event_time="2010-01-01T00:00:00Z"
    )
    policy = ValidationPolicy.from_settings(custom.worker)
    assert (policy.max_bytes, policy.max_future_skew_ms) == (100, 1500)
    assert policy.min_event_time_ms == 1_262_304_000_000
    with pytest.raises(ValueError, match="min_event_time"):
        ValidationPolicy.from_settings(Settings.from_flat(min_event_time="not a time").worker)


# --- property tests: never raises ----------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    ["event_time", "event_type", "user_id", "product_id", "category", "brand", "price",
     "quantity", "session_id", "order_id", "other"]
)  # fmt: skip
field_values = (
    json_values
    | st.sampled_from(EVENT_TYPES)
    | st.integers(min_value=NOW - 10**12, max_value=NOW + 10**9)
    | st.sampled_from(["2023-11-14T22:13:19Z", "2023-11-14T22:13:19", "", " ", "NaN"])
)


def _assert_outcome(result: object) -> None:
    assert isinstance(result, ClickEvent | Invalid)
    if isinstance(result, Invalid):
        assert result.reason in REASONS
    else:  # anything accepted must survive a second pass unchanged (to_wire is the contract)
        again = validate(json.dumps(result.to_wire()).encode(), now_ms=NOW, policy=POLICY)
        assert again == result


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_junk_bytes_never_raise(raw: bytes) -> None:
    _assert_outcome(validate(raw, now_ms=NOW, policy=POLICY))


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_junk_json_never_raises(value: Any) -> None:
    _assert_outcome(check(value))


@settings(max_examples=600, deadline=None)
@given(st.dictionaries(field_names, field_values, max_size=11))
def test_junk_event_objects_never_raise(obj: dict[str, Any]) -> None:
    _assert_outcome(check(obj))


@settings(max_examples=300, deadline=None)
@given(
    st.builds(
        ClickEvent,
        event_time_ms=st.integers(min_value=MIN_EVENT_TIME_MS_DEFAULT, max_value=NOW),
        event_type=st.sampled_from(EVENT_TYPES),
        # Control characters in user ids are refused (test_user_id_with_control_characters).
        user_id=st.text(min_size=1, max_size=30).filter(
            lambda s: s.strip() != "" and not any(c < " " or c == "\x7f" for c in s)
        ),
        product_id=st.none() | st.text(min_size=1, max_size=10).filter(str.strip),
        category=st.none() | st.text(min_size=1, max_size=10).filter(str.strip),
        brand=st.none() | st.text(min_size=1, max_size=10).filter(str.strip),
        price=st.none() | st.floats(min_value=0, max_value=1e9, allow_nan=False),
        quantity=st.integers(min_value=1, max_value=10_000),
        session_id=st.none() | st.text(min_size=1, max_size=10).filter(str.strip),
        order_id=st.none() | st.text(min_size=1, max_size=10).filter(str.strip),
    )
)
def test_valid_events_round_trip(ev: ClickEvent) -> None:
    # Surrogates cannot be encoded by json.dumps(ensure_ascii=False); the default escapes them,
    # and the validator then refuses them, so only generate encodable text.
    texts = [ev.user_id, ev.product_id, ev.category, ev.brand, ev.session_id, ev.order_id]
    if any(t is not None and not _encodable(t) for t in texts):
        return
    result = validate(json.dumps(ev.to_wire()).encode(), now_ms=NOW, policy=POLICY)
    assert result == ev


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def test_nan_never_accepted_as_price() -> None:
    for value in (math.nan, math.inf):
        raw = json.dumps(with_(price=value)).encode()  # json.dumps writes NaN / Infinity
        assert isinstance(validate(raw, now_ms=NOW, policy=POLICY), Invalid)


# --- the fast decoder (orjson) against the reference (json) --------------------------------------
# validate() decodes with orjson where that gives json's object and falls back to json otherwise;
# the contract (what is accepted, every refusal's reason and detail) stays json's.


def _reference(raw: bytes) -> ClickEvent | Invalid:
    """validate() on the reference decoder alone: what it returned before the fast path."""
    decoded = _decode(raw)
    if isinstance(decoded, Invalid):
        return decoded
    if type(decoded) is not dict:
        return validate(raw, now_ms=NOW, policy=POLICY)  # not_object: no decode-dependent text
    return _validate_object(decoded, NOW, POLICY)


def _as_orjson(value: Any) -> Any:
    """json's object with orjson's one known difference: integers outside [-2**63, 2**64) as
    floats. The fast path only takes objects where no such float is read (the top level)."""
    if type(value) is int and not -(2**63) <= value < 2**64:
        return float(value)
    if isinstance(value, list):
        return [_as_orjson(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_orjson(v) for k, v in value.items()}
    return value


def _assert_same_decode(raw: bytes) -> None:
    fast = _fast_decode(raw)
    if fast is _UNDECODED:
        return
    # repr, not ==: 1 == 1.0 == True and 0.0 == -0.0, but a decoder that changed a number's
    # type or sign would change what the validator reads.
    assert repr(fast) == repr(_as_orjson(_decode(raw)))


@pytest.mark.parametrize(
    ("raw", "fast_path"),
    [
        (b'{"user_id": 123456789012345678}', True),  # 18 digits: exact in orjson
        (b'{"user_id": 18446744073709551616}', False),  # 2**64: orjson would give a float
        (b'{"user_id": -9223372036854775809}', False),  # below -2**63: a float too
        (b'{"product_id": "1234567890123456789012"}', True),  # digits in a string: exact
        (b'{"other": [18446744073709551616]}', True),  # nested, never read: orjson's float
        (b'{"price": 1e19}', False),  # may have been an integer literal: json decides
        (b'{"price": 1e999}', False),  # json: inf (then bad_value); orjson refuses
        (b'{"price": NaN}', False),
        (b'{"user_id": "\\ud800"}', False),  # a lone surrogate: json decodes, we refuse
        (b'{"a": 1, "a": 2}', True),  # the last duplicate wins in both
        (b' {"price": -0.0} ', True),
        (b'\xef\xbb\xbf{"a": 1}', False),  # a UTF-8 BOM: not JSON to either
        (b"[" * 5000 + b"]" * 5000, False),  # deep nesting
    ],
)
def test_fast_decoder_named_cases(raw: bytes, fast_path: bool) -> None:
    assert (_fast_decode(raw) is not _UNDECODED) == fast_path
    _assert_same_decode(raw)
    assert validate(raw, now_ms=NOW, policy=POLICY) == _reference(raw)


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=300))
def test_fast_decoder_agrees_on_junk_bytes(raw: bytes) -> None:
    _assert_same_decode(raw)
    assert validate(raw, now_ms=NOW, policy=POLICY) == _reference(raw)


@settings(max_examples=600, deadline=None)
@given(json_values, st.booleans())
def test_fast_decoder_agrees_on_json_values(value: Any, ascii_only: bool) -> None:
    raw = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    _assert_same_decode(raw)
    assert validate(raw, now_ms=NOW, policy=POLICY) == _reference(raw)


@settings(max_examples=600, deadline=None)
@given(st.dictionaries(field_names, field_values, max_size=11))
def test_fast_decoder_agrees_on_event_objects(obj: dict[str, Any]) -> None:
    raw = json.dumps(obj).encode()
    assert validate(raw, now_ms=NOW, policy=POLICY) == _reference(raw)


def test_fast_decoder_agrees_on_generator_clickstreams() -> None:
    """The population the worker reads: a generated shop's events, as the producer sends them."""
    from ingest.adapters import to_wire_bytes
    from ingest.generator import generate_clickstream

    frame = generate_clickstream(300, days=20, seed=7)
    now = int(frame["event_time_ms"].max()) + DAY_MS
    records = to_wire_bytes(frame)
    assert len(records) > 1000
    for _key, raw in records:
        assert _fast_decode(raw) is not _UNDECODED
        result = validate(raw, now_ms=now, policy=POLICY)
        assert isinstance(result, ClickEvent)
        decoded = _decode(raw)
        assert isinstance(decoded, dict)
        assert result == _validate_object(decoded, now, POLICY)
