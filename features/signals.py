"""Output records of the worker: demand signals, churn-risk signals and dead letters.

This module owns the *shape* of everything the worker publishes (dataclasses plus ``to_dict``
giving JSON-ready dicts) and the deterministic :func:`signal_id` that lets downstream consumers
recognise a re-emitted signal (after a worker restart or rebalance replays a window) as a
duplicate. It is pure: stdlib only, no I/O; the worker serialises the dicts (orjson) itself.

Times are carried as epoch milliseconds (``*_ms``) and rendered in ``to_dict`` both as ms and as
ISO-8601 UTC with millisecond precision and a ``Z`` suffix, so consumers never guess units.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from features.validation import Invalid
from features.windows import DAY_MS

Trigger = Literal["window_close", "activity"]
RiskLevel = Literal["low", "medium", "high"]

TRIGGERS: Final[tuple[Trigger, ...]] = ("window_close", "activity")
RISK_LEVELS: Final[tuple[RiskLevel, ...]] = ("low", "medium", "high")

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
SIGNAL_ID_CHARS: Final = 32
DLQ_PREVIEW_CHARS: Final = 200
DLQ_MAX_RAW_BYTES: Final = 65_536
"""Raw bytes kept in a dead letter. Oversized messages are exactly the ones that reach the DLQ
as ``too_large``; copying them whole could push the dead letter past the broker's message limit."""


@functools.lru_cache(maxsize=4096)
def _day_prefix(day: int) -> str:
    """``'2019-10-01T'`` for a day number since the epoch (a stream touches few distinct days)."""
    return (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%dT")


@functools.lru_cache(maxsize=1024)
def ms_to_iso(ms: int) -> str:
    """``1569888000000`` -> ``'2019-10-01T00:00:00.000Z'`` (exact integer arithmetic).

    Cached: every signal of a batch has the same emission time and every window-close
    signal of a close the same window end (half of the worker's calls repeat a recent
    argument)."""
    # Integer divisions instead of a datetime + strftime per call: two of these per signal
    # were ~9 % of the processor's time (bench/results/profile.md).
    day, rest = divmod(ms, DAY_MS)
    seconds, millis = divmod(rest, 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{_day_prefix(day)}{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}Z"


def _plain(text: str) -> bool:
    """True when ``json.dumps(text, ensure_ascii=True)`` is just ``text`` in double quotes
    (so also for any part of it: one check covers the concatenated fields)."""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


def signal_id(kind: str, user_id: str, window_end_ms: int, trigger: str, model_version: str) -> str:
    """Deterministic id: sha256 of a canonical JSON array of the inputs, first 32 hex chars.

    A JSON array (not ``"|".join``) keeps the encoding unambiguous whatever characters the user
    id or model version hold. For ``activity`` signals the worker should pass the event time the
    signal was computed *as of* as ``window_end_ms`` if several may be emitted per window;
    otherwise they share an id and downstream would drop all but the first as duplicates.
    """
    end = int(window_end_ms)
    if _plain(f"{kind}{user_id}{trigger}{model_version}"):
        # The bytes json.dumps would give, without its encoder machinery (the common case:
        # ASCII ids; the equality is hypothesis-tested).
        canonical = f'["{kind}","{user_id}",{end},"{trigger}","{model_version}"]'
    else:
        canonical = json.dumps(
            [kind, user_id, end, trigger, model_version],
            ensure_ascii=True,
            separators=(",", ":"),
        )
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:SIGNAL_ID_CHARS]


@dataclass(frozen=True, slots=True)
class RiskThresholds:
    """Churn probability cut-offs: ``p >= high`` is high, ``p >= medium`` is medium, else low."""

    medium: float
    high: float

    def __post_init__(self) -> None:
        if not (0.0 <= self.medium <= self.high <= 1.0):
            raise ValueError(
                f"thresholds must satisfy 0 <= medium <= high <= 1, got "
                f"medium={self.medium}, high={self.high}"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RiskThresholds:
        """From a manifest-style ``{"medium": .., "high": ..}`` mapping."""
        return cls(medium=float(values["medium"]), high=float(values["high"]))


def risk_level(p: float, thresholds: RiskThresholds) -> RiskLevel:
    """Bucket a churn probability. A NaN probability is a model defect and raises ``ValueError``."""
    if math.isnan(p):
        raise ValueError("churn probability is NaN")
    if p >= thresholds.high:
        return "high"
    if p >= thresholds.medium:
        return "medium"
    return "low"


@dataclass(frozen=True, slots=True)
class DemandSignal:
    """Expected demand of one user over the next ``horizon_windows`` windows (``horizon_days``)."""

    user_id: str
    window_end_ms: int
    horizon_windows: int
    horizon_days: float
    expected_orders: float
    expected_spend: float
    purchase_probability: float
    trigger: Trigger
    model_version: str
    signal_id: str
    emitted_at_ms: int
    mean_orders: float | None = None
    """The model's expected orders; ``expected_orders`` is the served point forecast (a
    quantile, :mod:`features.forecast`). ``None`` from a model that serves its mean."""

    @classmethod
    def create(
        cls,
        *,
        user_id: str,
        window_end_ms: int,
        horizon_windows: int,
        horizon_days: float,
        expected_orders: float,
        expected_spend: float,
        purchase_probability: float,
        trigger: Trigger,
        model_version: str,
        emitted_at_ms: int,
        mean_orders: float | None = None,
    ) -> DemandSignal:
        """Build a signal with its deterministic :func:`signal_id` filled in."""
        sid = signal_id("demand", user_id, window_end_ms, trigger, model_version)
        return cls(
            user_id=user_id,
            window_end_ms=window_end_ms,
            horizon_windows=horizon_windows,
            horizon_days=horizon_days,
            expected_orders=expected_orders,
            expected_spend=expected_spend,
            purchase_probability=purchase_probability,
            trigger=trigger,
            model_version=model_version,
            signal_id=sid,
            emitted_at_ms=emitted_at_ms,
            mean_orders=mean_orders,
        )

    @property
    def window_end(self) -> str:
        return ms_to_iso(self.window_end_ms)

    @property
    def emitted_at(self) -> str:
        return ms_to_iso(self.emitted_at_ms)

    @property
    def orders_rate_basis(self) -> float:
        """The orders a rate should be read from: the mean where the signal carries one."""
        return self.expected_orders if self.mean_orders is None else self.mean_orders

    def to_dict(self) -> dict[str, Any]:
        return {
            "signal_id": self.signal_id,
            "user_id": self.user_id,
            "window_end": self.window_end,
            "window_end_ms": self.window_end_ms,
            "horizon_windows": self.horizon_windows,
            "horizon_days": self.horizon_days,
            "expected_orders": self.expected_orders,
            **({} if self.mean_orders is None else {"mean_orders": self.mean_orders}),
            "expected_spend": self.expected_spend,
            "purchase_probability": self.purchase_probability,
            "trigger": self.trigger,
            "model_version": self.model_version,
            "emitted_at": self.emitted_at,
            "emitted_at_ms": self.emitted_at_ms,
        }


@dataclass(frozen=True, slots=True)
class ChurnSignal:
    """Churn risk of one user as of ``window_end_ms``."""

    user_id: str
    window_end_ms: int
    churn_probability: float
    risk_level: RiskLevel
    days_since_last_order: float | None
    """``None`` when the user has never ordered (in the state the worker holds)."""
    trigger: Trigger
    model_version: str
    signal_id: str
    emitted_at_ms: int

    @classmethod
    def create(
        cls,
        *,
        user_id: str,
        window_end_ms: int,
        churn_probability: float,
        thresholds: RiskThresholds,
        days_since_last_order: float | None,
        trigger: Trigger,
        model_version: str,
        emitted_at_ms: int,
    ) -> ChurnSignal:
        """Build a signal with :func:`risk_level` and :func:`signal_id` filled in."""
        return cls(
            user_id=user_id,
            window_end_ms=window_end_ms,
            churn_probability=churn_probability,
            risk_level=risk_level(churn_probability, thresholds),
            days_since_last_order=days_since_last_order,
            trigger=trigger,
            model_version=model_version,
            signal_id=signal_id("churn", user_id, window_end_ms, trigger, model_version),
            emitted_at_ms=emitted_at_ms,
        )

    @property
    def window_end(self) -> str:
        return ms_to_iso(self.window_end_ms)

    @property
    def emitted_at(self) -> str:
        return ms_to_iso(self.emitted_at_ms)

    def to_dict(self) -> dict[str, Any]:
        return {
            "signal_id": self.signal_id,
            "user_id": self.user_id,
            "window_end": self.window_end,
            "window_end_ms": self.window_end_ms,
            "churn_probability": self.churn_probability,
            "risk_level": self.risk_level,
            "days_since_last_order": self.days_since_last_order,
            "trigger": self.trigger,
            "model_version": self.model_version,
            "emitted_at": self.emitted_at,
            "emitted_at_ms": self.emitted_at_ms,
        }


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A refused message with its coordinates and raw bytes, for the dead-letter topic.

    ``reason``/``field``/``detail`` are those of :class:`features.validation.Invalid`: a
    reason of :data:`features.validation.DEAD_LETTER_REASONS` (the validator's, or the
    worker's own refusals: late events, null values, messages whose processing raised).
    """

    reason: str
    field: str | None
    detail: str
    source_topic: str
    partition: int
    offset: int
    raw: bytes
    received_at_ms: int

    @classmethod
    def from_invalid(
        cls,
        invalid: Invalid,
        raw: bytes | None,
        *,
        source_topic: str,
        partition: int,
        offset: int,
        received_at_ms: int,
    ) -> DeadLetter:
        """The dead letter for a message :func:`features.validation.validate` refused.

        ``raw`` may be ``None``: Kafka delivers a null value (a tombstone) as ``None``, and
        ``bytes(None)`` raises; the dead letter then carries no bytes (``raw_size`` 0) and its
        reason (``null_value``) says why.
        """
        return cls(
            reason=invalid.reason,
            field=invalid.field,
            detail=invalid.detail,
            source_topic=source_topic,
            partition=partition,
            offset=offset,
            raw=b"" if raw is None else bytes(raw),
            received_at_ms=received_at_ms,
        )

    @property
    def raw_size(self) -> int:
        return len(self.raw)

    @property
    def received_at(self) -> str:
        return ms_to_iso(self.received_at_ms)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: raw bytes (at most :data:`DLQ_MAX_RAW_BYTES`) as base64 + preview."""
        kept = self.raw[:DLQ_MAX_RAW_BYTES]
        preview = self.raw[: DLQ_PREVIEW_CHARS * 4].decode("utf-8", errors="replace")
        return {
            "reason": self.reason,
            "field": self.field,
            "detail": self.detail,
            "source_topic": self.source_topic,
            "partition": self.partition,
            "offset": self.offset,
            "raw_b64": base64.b64encode(kept).decode("ascii"),
            "raw_size": len(self.raw),
            "raw_truncated": len(kept) < len(self.raw),
            "preview": preview[:DLQ_PREVIEW_CHARS],
            "received_at": self.received_at,
            "received_at_ms": self.received_at_ms,
        }


__all__ = [
    "DLQ_MAX_RAW_BYTES",
    "DLQ_PREVIEW_CHARS",
    "RISK_LEVELS",
    "SIGNAL_ID_CHARS",
    "TRIGGERS",
    "ChurnSignal",
    "DeadLetter",
    "DemandSignal",
    "RiskLevel",
    "RiskThresholds",
    "Trigger",
    "ms_to_iso",
    "risk_level",
    "signal_id",
]
