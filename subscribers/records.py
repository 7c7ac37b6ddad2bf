"""Signals off the wire, and the order in which one user's signals supersede each other.

Pure (stdlib + :mod:`features.signals`), shared by the bidder and the alerter.

Parsing
    :func:`parse_demand` / :func:`parse_churn` turn the JSON the worker publishes
    (:meth:`features.signals.DemandSignal.to_dict`, :meth:`~features.signals.ChurnSignal.to_dict`)
    back into those dataclasses. They never raise: anything else -- not JSON, a missing field,
    a wrong type, a non-finite number, a probability outside [0, 1] -- comes back as
    :class:`Rejected` with a reason, which the apps log and count and then skip. Unknown extra
    keys are ignored (the producer may add fields first). ``signal_id`` is taken as sent.

Ordering (:func:`compare`)
    Each user's state remembers the :class:`Position` of the signal it was last built from and
    the ids of the last :data:`RECENT_IDS` accepted signals. An incoming signal is

    * ``duplicate`` when its ``signal_id`` is the held one or one of the recent ones (the worker
      re-emits a window with the same id after a restart or rebalance);
    * ``newer`` when its position key ``(window_end_ms, emitted_at_ms, trigger rank,
      signal_id)`` is greater than the held one's -- a later window end wins; at the *same*
      window end the later-emitted signal wins, which is how a re-score of that window by a
      newly deployed model version arrives and replaces the old model's value;
    * ``stale`` otherwise (an older window end, or an earlier emission of the same window).

    The key is a strict total order, so for any arrival order a user's accepted signals form a
    strictly increasing chain: replaying a topic (or any part of it) can never make a subscriber
    accept a signal twice or go back to an older one. A newer model's signal for an *older*
    window end is stale: the held value describes a later point in time.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from features.signals import RISK_LEVELS, TRIGGERS, ChurnSignal, DemandSignal

MAX_RECORD_BYTES: Final = 65_536
MAX_ID_CHARS: Final = 256
RECENT_IDS: Final = 8
"""Signal ids remembered per user besides the held one (duplicates of recent signals)."""
TRIGGER_RANK: Final[dict[str, int]] = {"activity": 0, "window_close": 1}

Order = Literal["newer", "duplicate", "stale"]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record a subscriber cannot use: machine ``reason`` and human ``detail``."""

    reason: Literal["too_large", "not_json", "not_object", "missing_field", "bad_value"]
    detail: str


class _Bad(Exception):
    def __init__(self, reason: Any, detail: str) -> None:
        super().__init__(detail)
        self.rejected = Rejected(reason, detail)


def derived_id(kind: str, *parts: str) -> str:
    """Deterministic 32-hex id of a derived record (sha256 of a canonical JSON array)."""
    canonical = json.dumps([kind, *parts], ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:32]


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def _load(raw: bytes | str | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(raw, Mapping):
        return raw
    if len(raw) > MAX_RECORD_BYTES:
        raise _Bad("too_large", f"record is {len(raw)} bytes (max {MAX_RECORD_BYTES})")
    try:
        obj = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise _Bad("not_json", str(exc)[:200]) from None
    if not isinstance(obj, dict):
        raise _Bad("not_object", f"top-level JSON {type(obj).__name__}, expected object")
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"non-finite literal {name}")


def _get(obj: Mapping[str, Any], name: str) -> Any:
    if name not in obj or obj[name] is None:
        raise _Bad("missing_field", f"{name} is missing or null")
    return obj[name]


def _str(obj: Mapping[str, Any], name: str) -> str:
    value = _get(obj, name)
    if not isinstance(value, str) or not value.strip():
        raise _Bad("bad_value", f"{name} must be a non-empty string")
    if len(value) > MAX_ID_CHARS:
        raise _Bad("bad_value", f"{name} has {len(value)} chars (max {MAX_ID_CHARS})")
    return value


def _int(obj: Mapping[str, Any], name: str, minimum: int = 0) -> int:
    value = _get(obj, name)
    if type(value) is not int or value < minimum:
        raise _Bad("bad_value", f"{name} must be an integer >= {minimum}")
    return value


def _num(
    obj: Mapping[str, Any], name: str, lo: float | None = None, hi: float | None = None
) -> float:
    value = _get(obj, name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad("bad_value", f"{name} must be a number")
    number = float(value)
    if not math.isfinite(number):
        raise _Bad("bad_value", f"{name} must be finite")
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        raise _Bad("bad_value", f"{name}={number} outside [{lo}, {hi}]")
    return number


def _choice(obj: Mapping[str, Any], name: str, allowed: Sequence[str]) -> Any:
    value = _get(obj, name)
    if value not in allowed:
        raise _Bad("bad_value", f"{name}={value!r} not one of {list(allowed)}")
    return value


def parse_demand(raw: bytes | str | Mapping[str, Any]) -> DemandSignal | Rejected:
    """A :class:`DemandSignal` from its wire JSON, or :class:`Rejected`. Never raises."""
    try:
        obj = _load(raw)
        return DemandSignal(
            user_id=_str(obj, "user_id"),
            window_end_ms=_int(obj, "window_end_ms"),
            horizon_windows=_int(obj, "horizon_windows", minimum=1),
            horizon_days=_positive(_num(obj, "horizon_days"), "horizon_days"),
            expected_orders=_num(obj, "expected_orders"),
            expected_spend=_num(obj, "expected_spend"),
            purchase_probability=_num(obj, "purchase_probability", 0.0, 1.0),
            trigger=_choice(obj, "trigger", TRIGGERS),
            model_version=_str(obj, "model_version"),
            signal_id=_str(obj, "signal_id"),
            emitted_at_ms=_int(obj, "emitted_at_ms"),
            mean_orders=None if obj.get("mean_orders") is None else _num(obj, "mean_orders", 0.0),
        )
    except _Bad as bad:
        return bad.rejected


def parse_churn(raw: bytes | str | Mapping[str, Any]) -> ChurnSignal | Rejected:
    """A :class:`ChurnSignal` from its wire JSON, or :class:`Rejected`. Never raises."""
    try:
        obj = _load(raw)
        days = obj.get("days_since_last_order")
        return ChurnSignal(
            user_id=_str(obj, "user_id"),
            window_end_ms=_int(obj, "window_end_ms"),
            churn_probability=_num(obj, "churn_probability", 0.0, 1.0),
            risk_level=_choice(obj, "risk_level", RISK_LEVELS),
            days_since_last_order=None if days is None else _num(obj, "days_since_last_order", 0.0),
            trigger=_choice(obj, "trigger", TRIGGERS),
            model_version=_str(obj, "model_version"),
            signal_id=_str(obj, "signal_id"),
            emitted_at_ms=_int(obj, "emitted_at_ms"),
        )
    except _Bad as bad:
        return bad.rejected


def _positive(value: float, name: str) -> float:
    if value <= 0:
        raise _Bad("bad_value", f"{name} must be > 0")
    return value


# --------------------------------------------------------------------------------------------
# Ordering
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Position:
    """Where a signal stands in its user's sequence (see the module doc)."""

    signal_id: str
    window_end_ms: int
    emitted_at_ms: int
    trigger: str

    def key(self) -> tuple[int, int, int, str]:
        rank = TRIGGER_RANK.get(self.trigger, -1)
        return (self.window_end_ms, self.emitted_at_ms, rank, self.signal_id)

    @classmethod
    def of(cls, signal: DemandSignal | ChurnSignal) -> Position:
        return cls(signal.signal_id, signal.window_end_ms, signal.emitted_at_ms, signal.trigger)

    def to_dict(self) -> dict[str, Any]:
        return {
            "signal_id": self.signal_id,
            "window_end_ms": self.window_end_ms,
            "emitted_at_ms": self.emitted_at_ms,
            "trigger": self.trigger,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Position:
        return cls(
            str(d["signal_id"]),
            int(d["window_end_ms"]),
            int(d["emitted_at_ms"]),
            str(d["trigger"]),
        )


def compare(new: Position, held: Position | None, recent_ids: Sequence[str] = ()) -> Order:
    """Is ``new`` a newer signal than ``held``, a duplicate, or stale? (module doc)"""
    if held is None:
        return "newer"
    if new.signal_id == held.signal_id or new.signal_id in recent_ids:
        return "duplicate"
    return "newer" if new.key() > held.key() else "stale"


def remember(recent_ids: Sequence[str], signal_id: str) -> tuple[str, ...]:
    """``recent_ids`` with ``signal_id`` appended, keeping the last :data:`RECENT_IDS`."""
    return (*recent_ids, signal_id)[-RECENT_IDS:]


__all__ = [
    "MAX_RECORD_BYTES",
    "RECENT_IDS",
    "TRIGGER_RANK",
    "Order",
    "Position",
    "Rejected",
    "compare",
    "derived_id",
    "parse_churn",
    "parse_demand",
    "remember",
]
