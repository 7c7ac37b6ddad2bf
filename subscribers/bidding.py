"""Ad bidding: a user's latest demand signal -> a bounded bid multiplier (pure logic).

The bidder keeps, per user, the adjustment built from the newest demand signal (ordering and
de-duplication as in :mod:`subscribers.records`: a later window end wins, a re-score of the same
window by a newer model version replaces, a repeated ``signal_id`` is ignored) and publishes
every accepted change to the bid-adjustments topic.

The multiplier (formula ``linear-lift-v1``)
-------------------------------------------

::

    rate       = max(mean_orders, 0) / horizon_days              # orders per day, this user
    baseline   = model_baselines.get(model_version, baseline_orders_per_day)
    lift       = min(rate / baseline, MAX_LIFT)                   # 1.0 = an average user
    multiplier = clip(1 + k * (lift - 1), floor, cap)

* **Bounds.** ``floor <= multiplier <= cap`` for every input, including non-finite ones (an
  input that gives no number -- NaN, or ``k = 0`` against an infinite lift -- gets the neutral
  ``clip(1, floor, cap)``). The result is rounded to 6 decimals and clipped again, so rounding
  cannot leave the range either. Configuration requires ``0 < floor <= cap`` and ``k >= 0``.
* **Shape.** Linear in the user's expected order rate and non-decreasing in
  ``expected_orders``: an average user (``lift = 1``) gets ``clip(1)`` (1.0 when
  ``floor <= 1 <= cap``), a user expected to order at twice the average rate gets ``1 + k``, one
  expected not to order gets ``max(1 - k, floor)``. With the defaults (``k = 0.5``, floor 0.5,
  cap 2.0) lift 0 -> 0.5, lift 1 -> 1.0, lift 2 -> 1.5, lift >= 3 -> 2.0.
* **The mean, not the served point.** ``mean_orders`` is the signal's expectation; a signal
  without it (a model that serves its mean) is read through ``expected_orders``. The served
  point forecast is a quantile of the customer's distribution (:mod:`features.forecast`): 0 for
  most customers of a shop where most do not order in a horizon, which is right for its error
  and wrong for a price.
* **Model-version aware.** The orders are divided by the signal's own ``horizon_days``,
  so models with different horizons are put on one per-day scale; and each model version may
  carry its own baseline (``CLICKSIGNALS_BID_MODEL_BASELINES="m-abc=0.019;m-def=0.03"``), since
  a retrained model's mean prediction -- which is what "an average user" means to it -- moves.
  The adjustment records the model version and the baseline it was computed with.
* ``purchase_probability`` (the model's ``1 - churn_probability``) is carried along in the
  adjustment for the ad server, but does not enter the multiplier: expected orders already
  include it, and counting it twice would only make the bid more extreme.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import orjson

from features.signals import DemandSignal, ms_to_iso
from subscribers.records import Order, Position, compare, derived_id, remember

FORMULA: Final = "linear-lift-v1"
MAX_LIFT: Final = 1e6
"""Lifts above this are treated as this (keeps the record finite; the cap binds long before)."""
DECIMALS: Final = 6


class _BidSettings(Protocol):
    @property
    def bid_floor(self) -> float: ...
    @property
    def bid_cap(self) -> float: ...
    @property
    def bid_sensitivity(self) -> float: ...
    @property
    def bid_baseline_orders_per_day(self) -> float: ...
    @property
    def bid_model_baselines(self) -> str: ...


def parse_model_baselines(text: str) -> dict[str, float]:
    """``"m-abc=0.019; m-def=0.03"`` -> ``{"m-abc": 0.019, "m-def": 0.03}`` (ValueError if bad)."""
    out: dict[str, float] = {}
    for item in text.replace(",", ";").split(";"):
        if not item.strip():
            continue
        version, sep, value = item.partition("=")
        if not sep or not version.strip():
            raise ValueError(f"bid model baseline {item.strip()!r} is not model_version=rate")
        out[version.strip()] = float(value)
    return out


@dataclass(frozen=True, slots=True)
class BidConfig:
    """The multiplier's parameters (module doc). Invalid combinations raise ``ValueError``."""

    floor: float = 0.5
    cap: float = 2.0
    sensitivity: float = 0.5
    baseline_orders_per_day: float = 0.02
    model_baselines: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        values = (self.floor, self.cap, self.sensitivity, self.baseline_orders_per_day)
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"bid parameters must be finite: {values}")
        if not 0 < self.floor <= self.cap:
            raise ValueError(f"need 0 < bid floor <= bid cap, got {self.floor}, {self.cap}")
        if self.sensitivity < 0:
            raise ValueError(f"bid sensitivity must be >= 0, got {self.sensitivity}")
        for version, rate in {
            "(default)": self.baseline_orders_per_day,
            **self.model_baselines,
        }.items():
            if not (math.isfinite(rate) and rate > 0):
                raise ValueError(f"baseline orders/day of {version} must be > 0, got {rate}")

    @classmethod
    def from_settings(cls, settings: _BidSettings) -> BidConfig:
        return cls(
            floor=settings.bid_floor,
            cap=settings.bid_cap,
            sensitivity=settings.bid_sensitivity,
            baseline_orders_per_day=settings.bid_baseline_orders_per_day,
            model_baselines=parse_model_baselines(settings.bid_model_baselines),
        )

    def baseline_for(self, model_version: str) -> float:
        return self.model_baselines.get(model_version, self.baseline_orders_per_day)

    def clip(self, value: float) -> float:
        return min(max(value, self.floor), self.cap)

    @property
    def neutral(self) -> float:
        """The multiplier of an average user (and of an input that gives no number)."""
        return self.clip(1.0)


@dataclass(frozen=True, slots=True)
class Multiplier:
    multiplier: float
    lift: float
    rate_per_day: float
    baseline_per_day: float


def _finite_or(value: float, fallback: float) -> float:
    return value if math.isfinite(value) else fallback


def bid_multiplier(
    expected_orders: float, horizon_days: float, model_version: str, config: BidConfig
) -> Multiplier:
    """The multiplier for one demand estimate (formula in the module doc). Total: any floats."""
    baseline = config.baseline_for(model_version)
    if math.isnan(expected_orders) or math.isnan(horizon_days) or not horizon_days > 0:
        return Multiplier(config.neutral, 1.0, 0.0, baseline)
    rate = max(expected_orders, 0.0) / horizon_days  # may be inf (huge orders, tiny horizon)
    lift = min(rate / baseline, MAX_LIFT) if not math.isnan(rate) else 1.0
    raw = 1.0 + config.sensitivity * (lift - 1.0)
    value = config.neutral if math.isnan(raw) else config.clip(raw)
    value = config.clip(round(value, DECIMALS))
    return Multiplier(value, lift, _finite_or(rate, float(MAX_LIFT) * baseline), baseline)


@dataclass(frozen=True, slots=True)
class BidAdjustment:
    """One record on the bid-adjustments topic (and the answer of ``GET /bid/{user_id}``)."""

    adjustment_id: str
    user_id: str
    multiplier: float
    demand_lift: float
    expected_orders_per_day: float
    baseline_orders_per_day: float
    floor: float
    cap: float
    sensitivity: float
    expected_orders: float
    expected_spend: float
    purchase_probability: float
    horizon_days: float
    source_signal_id: str
    model_version: str
    trigger: str
    window_end_ms: int
    signal_emitted_at_ms: int
    emitted_at_ms: int
    formula: str = FORMULA

    def to_dict(self) -> dict[str, Any]:
        return {
            "adjustment_id": self.adjustment_id,
            "user_id": self.user_id,
            "multiplier": self.multiplier,
            "demand_lift": self.demand_lift,
            "expected_orders_per_day": self.expected_orders_per_day,
            "baseline_orders_per_day": self.baseline_orders_per_day,
            "floor": self.floor,
            "cap": self.cap,
            "sensitivity": self.sensitivity,
            "formula": self.formula,
            "expected_orders": self.expected_orders,
            "expected_spend": self.expected_spend,
            "purchase_probability": self.purchase_probability,
            "horizon_days": self.horizon_days,
            "source_signal_id": self.source_signal_id,
            "model_version": self.model_version,
            "trigger": self.trigger,
            "window_end": ms_to_iso(self.window_end_ms),
            "window_end_ms": self.window_end_ms,
            "signal_emitted_at_ms": self.signal_emitted_at_ms,
            "emitted_at": ms_to_iso(self.emitted_at_ms),
            "emitted_at_ms": self.emitted_at_ms,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BidAdjustment:
        names = cls.__dataclass_fields__
        return cls(**{k: d[k] for k in names if k in d})


@dataclass(frozen=True, slots=True)
class BidState:
    """What the bidder's table holds per user: the current adjustment and recent signal ids."""

    adjustment: BidAdjustment
    recent_ids: tuple[str, ...] = ()

    @property
    def position(self) -> Position:
        a = self.adjustment
        return Position(a.source_signal_id, a.window_end_ms, a.signal_emitted_at_ms, a.trigger)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {"adjustment": self.adjustment.to_dict(), "recent_ids": list(self.recent_ids)}
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> BidState:
        d = orjson.loads(raw)
        return cls(BidAdjustment.from_dict(d["adjustment"]), tuple(d.get("recent_ids", ())))


@dataclass(frozen=True, slots=True)
class BidDecision:
    """What one signal did: ``outcome``; when accepted, the new ``state`` and its adjustment."""

    outcome: Order
    state: BidState | None
    adjustment: BidAdjustment | None = None

    @property
    def accepted(self) -> bool:
        return self.adjustment is not None


def adjustment_for(signal: DemandSignal, config: BidConfig, now_ms: int) -> BidAdjustment:
    """The adjustment a demand signal gives under ``config`` (no state involved)."""
    # A rate is a mean's job: the served point forecast is a quantile, 0 for most customers.
    m = bid_multiplier(signal.orders_rate_basis, signal.horizon_days, signal.model_version, config)
    return BidAdjustment(
        adjustment_id=derived_id("bid", signal.user_id, signal.signal_id, FORMULA),
        user_id=signal.user_id,
        multiplier=m.multiplier,
        demand_lift=round(m.lift, DECIMALS),
        expected_orders_per_day=m.rate_per_day,
        baseline_orders_per_day=m.baseline_per_day,
        floor=config.floor,
        cap=config.cap,
        sensitivity=config.sensitivity,
        expected_orders=signal.expected_orders,
        expected_spend=signal.expected_spend,
        purchase_probability=signal.purchase_probability,
        horizon_days=signal.horizon_days,
        source_signal_id=signal.signal_id,
        model_version=signal.model_version,
        trigger=signal.trigger,
        window_end_ms=signal.window_end_ms,
        signal_emitted_at_ms=signal.emitted_at_ms,
        emitted_at_ms=now_ms,
    )


def apply_demand(
    held: BidState | None, signal: DemandSignal, config: BidConfig, now_ms: int
) -> BidDecision:
    """Apply one demand signal to a user's state (``held``: ``None`` for a new user)."""
    recent: Sequence[str] = held.recent_ids if held is not None else ()
    outcome = compare(Position.of(signal), held.position if held else None, recent)
    if outcome != "newer":
        return BidDecision(outcome, held)
    adjustment = adjustment_for(signal, config, now_ms)
    return BidDecision(
        outcome, BidState(adjustment, remember(recent, signal.signal_id)), adjustment
    )


__all__ = [
    "FORMULA",
    "MAX_LIFT",
    "BidAdjustment",
    "BidConfig",
    "BidDecision",
    "BidState",
    "Multiplier",
    "adjustment_for",
    "apply_demand",
    "bid_multiplier",
    "parse_model_baselines",
]
