"""Validation of untrusted clickstream bytes: one message in, a ``ClickEvent`` or ``Invalid`` out.

This module owns the wire contract's *acceptance rules* (what a producer may send and how it is
normalised); :mod:`features.events` owns the shape of a valid event. It is pure (stdlib and
orjson, no I/O, no environment): the worker builds a :class:`ValidationPolicy` from settings once
and calls :func:`validate` for every message, so it must never raise and must stay cheap.

Decoding: the contract is the standard library's :mod:`json` (what it accepts, and the reasons
and details of what it refuses). orjson decodes the common case four times faster and, where
it succeeds, to the same object, with two exceptions that are kept off its path: integers beyond
64 bits become floats (a message with a float of 2**63 or more at the top level is decoded again
by :mod:`json`; nested values are never read), and it refuses what :mod:`json` accepts or
refuses differently (``NaN``, ``1e999``, lone surrogates, invalid UTF-8, deep nesting), so any
orjson error decodes the message again with :mod:`json`. The tests compare both decoders and
both validations on hostile and generated input.

Decisions where the brief left room (each one is tested):

* Required: ``event_time``, ``event_type``, ``user_id``. A JSON ``null`` for a required field is
  ``missing_field``; ``null`` for an optional field means "absent". Unknown extra keys are ignored
  (forward compatibility: a producer may add fields before the worker knows them).
* ``event_time``: an ``int`` of epoch **milliseconds**, or an ISO-8601 string **with** a zone
  (``Z`` or ``±hh:mm``), or a plain date (``2023-11-14``), read as the start of that UTC day: it
  names no instant, so no zone is guessed, and its order day (the unit the model counts) is the
  date as written; order exports often carry nothing finer. Rejected: naive ISO date-times
  (the zone would be a guess), floats (seconds
  vs milliseconds is ambiguous and fractions of a millisecond mean a confused producer) and
  strings of digits (a number belongs in a JSON number). Epoch *seconds* sent as an int fall
  below ``min_event_time_ms`` and are rejected as ``time_too_old`` with a hint in ``detail``;
  under a floor before 1973 (history files) an int under :data:`NUMBER_TIME_MIN_MS` is
  ``bad_value`` with the same hint.
  Sub-millisecond precision of ISO strings is floored to the millisecond.
* ``event_type``: exactly one of :data:`features.events.EVENT_TYPES` (case-sensitive, no trimming).
* ``user_id``: a non-blank string, or an ``int`` (numeric ids are common) which is stringified.
  ``bool`` is not an int here, floats are rejected (``17850.0`` vs ``17850`` would split a user).
  The value is kept as sent (not trimmed) because it is also the Kafka key that partitions the
  user's state; trimming here would let one user's events land in two partitions.
* Optional id fields (``product_id``, ``category``, ``brand``, ``session_id``, ``order_id``):
  string or int (stringified); an empty string means absent.
* ``price``: a finite number >= 0 (ints become floats). ``quantity``: an int >= 1; an integral
  float such as ``2.0`` is accepted (numpy-backed producers emit them) and becomes ``2``.
* Strings holding lone surrogates (``"\\ud800"`` escapes) are ``bad_value``: they could not be
  re-encoded as UTF-8 when the event reappears in a signal or dead letter.
* ``NaN``/``Infinity`` literals (which :mod:`json` accepts by default) are ``bad_value``; a number
  too large for a float (``1e999``) parses to infinity and is rejected by the finiteness checks.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, Protocol

import orjson

from features.events import EVENT_TYPES, ClickEvent
from features.windows import DAY_MS

Reason = Literal[
    "too_large",
    "not_utf8",
    "not_json",
    "not_object",
    "missing_field",
    "wrong_type",
    "bad_value",
    "time_too_old",
    "time_in_future",
    "unknown_event_type",
]
REASONS: Final[tuple[Reason, ...]] = (
    "too_large",
    "not_utf8",
    "not_json",
    "not_object",
    "missing_field",
    "wrong_type",
    "bad_value",
    "time_too_old",
    "time_in_future",
    "unknown_event_type",
)
"""Why the validator refuses a message."""

WorkerReason = Literal["late", "null_value", "processing_error"]
WORKER_REASONS: Final[tuple[WorkerReason, ...]] = ("late", "null_value", "processing_error")
"""Why the worker refuses a message the validator accepted (or never saw): ``late`` (the
event's window already closed for its partition), ``null_value`` (a record without a value,
e.g. a tombstone) and ``processing_error`` (processing the message raised; ``detail`` holds
the exception's type and message)."""

DeadLetterReason = Reason | WorkerReason
DEAD_LETTER_REASONS: Final[tuple[DeadLetterReason, ...]] = (*REASONS, *WORKER_REASONS)
"""Every ``reason`` a dead letter can carry: one vocabulary, the validator's and the worker's."""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS: Final = timedelta(milliseconds=1)
_EVENT_TYPE_SET: Final = frozenset(EVENT_TYPES)
_OPTIONAL_IDS: Final = ("product_id", "category", "brand", "session_id", "order_id")
# Longest ISO-8601 timestamp worth parsing ("2019-10-01T00:00:00.123456+05:30" is 32 chars);
# anything much longer is junk and is refused before reaching the parser.
_MAX_ISO_CHARS: Final = 64
# C0 controls and DEL. U+0000 starts every internal key of the worker's table: refusing these in
# user ids is what keeps user state and internal state in disjoint key spaces.
_CONTROL_CHARS: Final = re.compile(r"[\x00-\x1f\x7f]")

PLAIN_DATE_PATTERN: Final = r"\d{4}-\d{2}-\d{2}"
"""A calendar date without a time, as a full match (the same text in Python's ``re`` with
ASCII digits and in DuckDB's RE2): read as the start of that UTC day (see the module
docstring). The file readers use this pattern too."""
_PLAIN_DATE: Final = re.compile(PLAIN_DATE_PATTERN, re.ASCII)

MIN_EVENT_TIME_MS_DEFAULT: Final = 946_684_800_000  # 2000-01-01T00:00:00Z

NUMBER_TIME_MIN_MS: Final = 100_000_000_000
"""1973-03-03T09:46:40Z: an integer time in ``[0, this)`` is refused as ``bad_value`` whatever
the time floor. Epoch *seconds* of any date up to 5138 and ``YYYYMMDD`` dates written as a
number (an order export's usual time column) land there when read as milliseconds, a few days
into January 1970. The worker's floor (2000) already refuses them as ``time_too_old``; history
files are read with a floor of 1900, where they would otherwise pass as a history of
seconds. A real time before 1973 can still be sent as ISO-8601, or as negative
milliseconds before 1970."""


class _SettingsLike(Protocol):
    """The slice of :class:`settings.WorkerSettings` a policy needs (structural, so no import)."""

    @property
    def max_event_bytes(self) -> int: ...
    @property
    def max_future_skew_s(self) -> float: ...
    @property
    def min_event_time(self) -> str: ...


@dataclass(frozen=True, slots=True)
class ValidationPolicy:
    """Limits applied by :func:`validate`; the worker builds one from settings at start-up."""

    max_bytes: int = 65_536
    min_event_time_ms: int = MIN_EVENT_TIME_MS_DEFAULT
    max_future_skew_ms: int = DAY_MS
    max_id_chars: int = 256
    """Longest accepted id/category/brand string: longer values are junk, not ids."""
    max_quantity: int = 1_000_000
    """Largest accepted quantity (UCI Online Retail's largest real line is 80,995)."""

    @classmethod
    def from_settings(cls, settings: _SettingsLike) -> ValidationPolicy:
        """Policy from the settings object (``max_event_bytes``, skew, ``min_event_time``)."""
        min_ms = parse_event_time(settings.min_event_time)
        if isinstance(min_ms, str):
            raise ValueError(f"min_event_time={settings.min_event_time!r}: {min_ms}")
        return cls(
            max_bytes=int(settings.max_event_bytes),
            min_event_time_ms=min_ms,
            max_future_skew_ms=round(settings.max_future_skew_s * 1000),
        )


DEFAULT_POLICY: Final = ValidationPolicy()


@dataclass(frozen=True, slots=True)
class Invalid:
    """Why a message was refused: a machine ``reason``, the ``field`` at fault, human ``detail``."""

    reason: DeadLetterReason
    field: str | None
    detail: str


class _NonFiniteLiteral(ValueError):
    """Raised from the JSON decoder on ``NaN``/``Infinity``/``-Infinity`` literals."""


def _reject_constant(name: str) -> Any:
    raise _NonFiniteLiteral(name)


# One decoder for all calls: ``json.loads(..., parse_constant=...)`` would build a new one each
# time. ``decode`` also refuses trailing data after the object.
_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)


def parse_event_time(value: object) -> int | str:
    """Epoch milliseconds from an ``int`` (ms) or zoned ISO-8601 string; else an error string.

    Returns ``str`` (the problem, for ``Invalid.detail``) instead of raising so that callers on
    the hot path pay no exception cost. Range checks (too old / in the future) are the caller's.
    """
    if type(value) is int:  # exact type check: bool is an int subclass and must not pass
        return value
    if isinstance(value, str):
        if len(value) > _MAX_ISO_CHARS:
            return f"string of {len(value)} chars is not an ISO-8601 timestamp"
        if value.isdigit():
            return "digits in a string; send epoch milliseconds as a JSON integer"
        try:
            dt = datetime.fromisoformat(value)
        except (ValueError, OverflowError):
            return f"{value!r} is not an ISO-8601 timestamp"
        if dt.tzinfo is None or dt.utcoffset() is None:
            if not _PLAIN_DATE.fullmatch(value):
                return f"{value!r} has no time zone (add 'Z' or an offset such as '+00:00')"
            dt = dt.replace(tzinfo=UTC)
        try:
            return (dt - _EPOCH) // _ONE_MS
        except OverflowError:  # e.g. year 1 with a positive offset
            return f"{value!r} is out of range"
    if isinstance(value, bool):
        return "boolean; expected epoch milliseconds (int) or an ISO-8601 string"
    if isinstance(value, float):
        return "float; send epoch milliseconds as an integer"
    return f"{type(value).__name__}; expected epoch milliseconds (int) or an ISO-8601 string"


def _number_time_problem(value: int) -> str:
    """Why an integer time under :data:`NUMBER_TIME_MIN_MS` is refused, in an ``Invalid``'s
    detail (the CSV readers' refusal says the same in ``ingest.adapters``' rule text)."""
    return (
        f"event_time {value} as epoch milliseconds is in 1970-73: it looks like epoch seconds "
        "or a YYYYMMDD date; send epoch milliseconds or ISO-8601 with a zone"
    )


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _encodable(text: str) -> bool:
    # isascii() is the cheap common case; only non-ASCII text pays for the encode round trip.
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _id_field(name: str, value: object, max_chars: int, required: bool) -> str | Invalid | None:
    """A string id (ints stringified); ``None`` when absent and optional."""
    if type(value) is str:
        if not value or (not value.strip()):
            if required:
                return Invalid("bad_value", name, f"{name} is empty or whitespace")
            return None
        if len(value) > max_chars:
            return Invalid("bad_value", name, f"{name} has {len(value)} chars (max {max_chars})")
        if not value.isascii() and not _encodable(value):  # inline: five ids per event
            return Invalid("bad_value", name, f"{name} contains an unpaired surrogate")
        return value
    if type(value) is int:
        return str(value)
    if value is None and not required:
        return None
    return Invalid("wrong_type", name, f"{name} is a {_json_type(value)}; expected a string")


def validate(raw: bytes, *, now_ms: int, policy: ValidationPolicy) -> ClickEvent | Invalid:
    """Turn one message's bytes into a :class:`ClickEvent`, or say why not. Never raises."""
    try:
        return _validate(raw, now_ms, policy)
    except Exception as exc:  # pragma: no cover - a defect guard: the contract is "never raises"
        return Invalid("bad_value", None, f"unexpected {type(exc).__name__}: {exc}"[:200])


def _validate(raw: bytes, now_ms: int, policy: ValidationPolicy) -> ClickEvent | Invalid:
    size = len(raw)
    # Size first: nothing else may look at an oversized message.
    if size > policy.max_bytes:
        return Invalid("too_large", None, f"message is {size} bytes (max {policy.max_bytes})")
    obj = _fast_decode(raw)
    if obj is _UNDECODED:
        decoded = _decode(raw)
        if isinstance(decoded, Invalid):
            return decoded
        obj = decoded
    if type(obj) is not dict:
        return Invalid("not_object", None, f"top-level JSON {_json_type(obj)}, expected object")
    return _validate_object(obj, now_ms, policy)


_UNDECODED: Final = object()
_INT64: Final = float(2**63)


def _fast_decode(raw: bytes) -> Any:
    """orjson's object for ``raw`` where the validator reads what :mod:`json` gives, else
    :data:`_UNDECODED`."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _UNDECODED
    if type(obj) is dict:
        # orjson reads integers in [-2**63, 2**64) exactly and any other as a float, which
        # json keeps an int: such a float at the top level (nested values are never read) may
        # have been an integer literal, so json decides.
        for value in obj.values():
            if type(value) is float and not -_INT64 < value < _INT64:
                return _UNDECODED
    return obj


def _decode(raw: bytes) -> Any:
    """The reference decode (:mod:`json`), its refusals as :class:`Invalid`."""
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        return Invalid("not_utf8", None, f"invalid UTF-8 at byte {exc.start}")
    try:
        return _DECODER.decode(text)
    except _NonFiniteLiteral as exc:
        return Invalid("bad_value", None, f"non-finite literal {exc} is not valid JSON")
    except RecursionError:
        return Invalid("not_json", None, "JSON nested too deeply")
    except ValueError as exc:  # JSONDecodeError, or an int literal over the digit limit
        return Invalid("not_json", None, str(exc)[:200])


def _validate_object(
    obj: dict[str, Any], now_ms: int, policy: ValidationPolicy
) -> ClickEvent | Invalid:
    # --- required fields --------------------------------------------------------------------
    get = obj.get
    raw_time = get("event_time")
    if raw_time is None:
        return Invalid("missing_field", "event_time", "event_time is missing or null")
    raw_type = get("event_type")
    if raw_type is None:
        return Invalid("missing_field", "event_type", "event_type is missing or null")
    raw_user = get("user_id")
    if raw_user is None:
        return Invalid("missing_field", "user_id", "user_id is missing or null")

    if type(raw_type) is not str:
        t = _json_type(raw_type)
        return Invalid("wrong_type", "event_type", f"event_type is a {t}; expected a string")
    if raw_type not in _EVENT_TYPE_SET:
        return Invalid(
            "unknown_event_type",
            "event_type",
            f"event_type {raw_type[:40]!r} is not one of {', '.join(EVENT_TYPES)}",
        )

    user_id = _id_field("user_id", raw_user, policy.max_id_chars, required=True)
    if user_id is None:  # unreachable (required=True never yields None); narrows the type
        return Invalid("missing_field", "user_id", "user_id is missing")
    if isinstance(user_id, Invalid):
        return user_id
    if _CONTROL_CHARS.search(user_id) is not None:
        return Invalid(
            "bad_value", "user_id", "user_id contains a control character (U+0000-U+001F, U+007F)"
        )

    time_ms = parse_event_time(raw_time)
    if isinstance(time_ms, str):
        wrong = not isinstance(raw_time, str | int) or isinstance(raw_time, bool)
        return Invalid(
            "wrong_type" if wrong else "bad_value", "event_time", "event_time: " + time_ms
        )
    if time_ms < policy.min_event_time_ms:
        hint = ""
        if 0 < time_ms < policy.min_event_time_ms // 100:
            hint = " (looks like epoch seconds; send milliseconds)"
        return Invalid(
            "time_too_old",
            "event_time",
            f"event_time {time_ms} ms is before {policy.min_event_time_ms} ms{hint}",
        )
    if 0 <= time_ms < NUMBER_TIME_MIN_MS and type(raw_time) is int:
        return Invalid("bad_value", "event_time", _number_time_problem(time_ms))
    if time_ms > now_ms + policy.max_future_skew_ms:
        return Invalid(
            "time_in_future",
            "event_time",
            f"event_time {time_ms} ms is {time_ms - now_ms} ms ahead of now "
            f"(max skew {policy.max_future_skew_ms} ms)",
        )

    # --- optional fields --------------------------------------------------------------------
    ids: list[str | None] = []
    for name in _OPTIONAL_IDS:
        value = get(name)
        if value is None:  # the common case: skip the call
            ids.append(None)
            continue
        value = _id_field(name, value, policy.max_id_chars, required=False)
        if isinstance(value, Invalid):
            return value
        ids.append(value)

    price: float | None = None
    raw_price = get("price")
    if raw_price is not None:
        if type(raw_price) is float:
            price = raw_price
        elif type(raw_price) is int:
            price = float(raw_price) if abs(raw_price) < 2**63 else math.inf
        else:
            t = _json_type(raw_price)
            return Invalid("wrong_type", "price", f"price is a {t}; expected a number")
        if not math.isfinite(price) or price < 0.0:
            return Invalid("bad_value", "price", f"price {raw_price!r} is not a finite number >= 0")

    quantity = 1
    raw_qty = get("quantity")
    if raw_qty is not None:
        if type(raw_qty) is int:
            quantity = raw_qty
        elif type(raw_qty) is float:
            if not (math.isfinite(raw_qty) and raw_qty.is_integer()):
                return Invalid(
                    "bad_value", "quantity", f"quantity {raw_qty!r} is not a whole number"
                )
            quantity = int(raw_qty)
        else:
            t = _json_type(raw_qty)
            return Invalid("wrong_type", "quantity", f"quantity is a {t}; expected an integer")
        if not 1 <= quantity <= policy.max_quantity:
            return Invalid(
                "bad_value",
                "quantity",
                f"quantity {quantity} is outside 1..{policy.max_quantity}",
            )

    return ClickEvent(
        event_time_ms=time_ms,
        event_type=raw_type,
        user_id=user_id,
        product_id=ids[0],
        category=ids[1],
        brand=ids[2],
        price=price,
        quantity=quantity,
        session_id=ids[3],
        order_id=ids[4],
    )


__all__ = [
    "DEAD_LETTER_REASONS",
    "DEFAULT_POLICY",
    "MIN_EVENT_TIME_MS_DEFAULT",
    "NUMBER_TIME_MIN_MS",
    "PLAIN_DATE_PATTERN",
    "REASONS",
    "WORKER_REASONS",
    "DeadLetterReason",
    "Invalid",
    "Reason",
    "ValidationPolicy",
    "WorkerReason",
    "parse_event_time",
    "validate",
]
