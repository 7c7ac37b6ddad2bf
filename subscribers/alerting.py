"""Churn alerting: raise one alert when a user becomes high-risk, not one per signal (pure logic).

Per user the alerter keeps a two-state machine, fed by that user's churn signals in the order of
:mod:`subscribers.records` (duplicate ``signal_id`` and older ``window_end`` ignored)::

            high (alert raised)
    ARMED ──────────────────────▶ ALERTING
      ▲                              │
      └──────────────────────────────┘
            recovered (no alert)

* **high**: the signal's ``risk_level`` is ``"high"`` (the worker's threshold, the manifest's or
  ``CLICKSIGNALS_CHURN_HIGH_THRESHOLD``), or ``churn_probability >= high_threshold`` when the
  alerter has its own (``CLICKSIGNALS_ALERT_HIGH_THRESHOLD``).
* **recovered**: the signal is not high *and* ``churn_probability < recovery_threshold``
  (``CLICKSIGNALS_ALERT_RECOVERY_THRESHOLD``, default 0.5).

An ARMED user whose signal is high gets an alert and becomes ALERTING; further high signals --
and signals in the band between the two thresholds -- raise nothing (no alert storm for a user
who stays high or hovers around the cut). Only a recovered signal re-arms the user, so two
alerts of one user always have a recovery between them. A user first seen high is alerted.

Each alert has a deterministic ``alert_id`` (the user and the signal that raised it): should a
crash make Kafka redeliver that signal before the state was stored, the repeated alert carries
the same id and downstream can drop it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, Literal, Protocol

import orjson

from features.signals import ChurnSignal, ms_to_iso
from subscribers.records import Order, Position, compare, derived_id, remember

ALERT_KIND: Final = "churn_high_risk"

Reason = Literal["risk_level_high", "probability_threshold"]
Transition = Literal["raised", "recovered"]


class _AlertSettings(Protocol):
    @property
    def alert_high_threshold(self) -> float | None: ...
    @property
    def alert_recovery_threshold(self) -> float: ...


@dataclass(frozen=True, slots=True)
class AlertConfig:
    """Thresholds of the hysteresis (module doc); invalid values raise ``ValueError``."""

    recovery_threshold: float = 0.5
    high_threshold: float | None = None

    def __post_init__(self) -> None:
        r, h = self.recovery_threshold, self.high_threshold
        if not (math.isfinite(r) and 0.0 <= r <= 1.0):
            raise ValueError(f"alert recovery threshold must be in [0, 1], got {r}")
        if h is not None and not (math.isfinite(h) and r <= h <= 1.0):
            raise ValueError(
                f"alert high threshold must be in [recovery threshold, 1] = [{r}, 1], got {h}"
            )

    @classmethod
    def from_settings(cls, settings: _AlertSettings) -> AlertConfig:
        return cls(settings.alert_recovery_threshold, settings.alert_high_threshold)

    def high_reason(self, signal: ChurnSignal) -> Reason | None:
        """Why ``signal`` counts as high risk, or ``None`` when it does not."""
        if signal.risk_level == "high":
            return "risk_level_high"
        if self.high_threshold is not None and signal.churn_probability >= self.high_threshold:
            return "probability_threshold"
        return None

    def recovered(self, signal: ChurnSignal) -> bool:
        return (
            self.high_reason(signal) is None and signal.churn_probability < self.recovery_threshold
        )


@dataclass(frozen=True, slots=True)
class ChurnAlert:
    """One record on the churn-alerts topic (and the payload of the log and webhook sinks)."""

    alert_id: str
    user_id: str
    reason: Reason
    churn_probability: float
    risk_level: str
    high_threshold: float | None
    recovery_threshold: float
    alert_seq: int
    """1 for a user's first alert, 2 for the next one after a recovery, ..."""
    days_since_last_order: float | None
    source_signal_id: str
    model_version: str
    trigger: str
    window_end_ms: int
    raised_at_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "alert": ALERT_KIND,
            "user_id": self.user_id,
            "reason": self.reason,
            "churn_probability": self.churn_probability,
            "risk_level": self.risk_level,
            "high_threshold": self.high_threshold,
            "recovery_threshold": self.recovery_threshold,
            "alert_seq": self.alert_seq,
            "days_since_last_order": self.days_since_last_order,
            "source_signal_id": self.source_signal_id,
            "model_version": self.model_version,
            "trigger": self.trigger,
            "window_end": ms_to_iso(self.window_end_ms),
            "window_end_ms": self.window_end_ms,
            "raised_at": ms_to_iso(self.raised_at_ms),
            "raised_at_ms": self.raised_at_ms,
        }


@dataclass(frozen=True, slots=True)
class AlertState:
    """What the alerter's table holds per user."""

    user_id: str
    alerting: bool
    position: Position
    """The last accepted signal."""
    churn_probability: float
    risk_level: str
    alerts_raised: int = 0
    last_alert_id: str | None = None
    last_alert_at_ms: int | None = None
    recovered_at_ms: int | None = None
    recent_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "state": "alerting" if self.alerting else "armed",
            "last_signal": self.position.to_dict(),
            "churn_probability": self.churn_probability,
            "risk_level": self.risk_level,
            "alerts_raised": self.alerts_raised,
            "last_alert_id": self.last_alert_id,
            "last_alert_at_ms": self.last_alert_at_ms,
            "recovered_at_ms": self.recovered_at_ms,
            "recent_ids": list(self.recent_ids),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AlertState:
        return cls(
            user_id=str(d["user_id"]),
            alerting=d["state"] == "alerting",
            position=Position.from_dict(d["last_signal"]),
            churn_probability=float(d["churn_probability"]),
            risk_level=str(d["risk_level"]),
            alerts_raised=int(d["alerts_raised"]),
            last_alert_id=d.get("last_alert_id"),
            last_alert_at_ms=d.get("last_alert_at_ms"),
            recovered_at_ms=d.get("recovered_at_ms"),
            recent_ids=tuple(d.get("recent_ids", ())),
        )

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_json(cls, raw: bytes | str) -> AlertState:
        return cls.from_dict(orjson.loads(raw))


@dataclass(frozen=True, slots=True)
class AlertDecision:
    """What one signal did: ``outcome`` (ordering), ``transition`` and the alert if raised."""

    outcome: Order
    state: AlertState | None
    transition: Transition | None = None
    alert: ChurnAlert | None = None


def apply_churn(
    held: AlertState | None, signal: ChurnSignal, config: AlertConfig, now_ms: int
) -> AlertDecision:
    """Apply one churn signal to a user's state (``held``: ``None`` for a new user)."""
    recent = held.recent_ids if held is not None else ()
    outcome = compare(Position.of(signal), held.position if held else None, recent)
    if outcome != "newer":
        return AlertDecision(outcome, held)
    base = held or AlertState(
        user_id=signal.user_id,
        alerting=False,
        position=Position.of(signal),
        churn_probability=signal.churn_probability,
        risk_level=signal.risk_level,
    )
    common: dict[str, Any] = {
        "position": Position.of(signal),
        "churn_probability": signal.churn_probability,
        "risk_level": signal.risk_level,
        "recent_ids": remember(recent, signal.signal_id),
    }
    reason = config.high_reason(signal)
    if not base.alerting and reason is not None:
        alert = ChurnAlert(
            alert_id=derived_id("churn_alert", signal.user_id, signal.signal_id),
            user_id=signal.user_id,
            reason=reason,
            churn_probability=signal.churn_probability,
            risk_level=signal.risk_level,
            high_threshold=config.high_threshold,
            recovery_threshold=config.recovery_threshold,
            alert_seq=base.alerts_raised + 1,
            days_since_last_order=signal.days_since_last_order,
            source_signal_id=signal.signal_id,
            model_version=signal.model_version,
            trigger=signal.trigger,
            window_end_ms=signal.window_end_ms,
            raised_at_ms=now_ms,
        )
        state = replace(
            base,
            alerting=True,
            alerts_raised=alert.alert_seq,
            last_alert_id=alert.alert_id,
            last_alert_at_ms=now_ms,
            **common,
        )
        return AlertDecision(outcome, state, "raised", alert)
    if base.alerting and config.recovered(signal):
        state = replace(base, alerting=False, recovered_at_ms=now_ms, **common)
        return AlertDecision(outcome, state, "recovered")
    return AlertDecision(outcome, replace(base, **common))


__all__ = [
    "ALERT_KIND",
    "AlertConfig",
    "AlertDecision",
    "AlertState",
    "ChurnAlert",
    "apply_churn",
]
