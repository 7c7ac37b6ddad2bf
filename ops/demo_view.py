"""What the demo shows: the tally of everything the system emits, and its console rendering.

Pure (no Kafka, no clock, no terminal): :class:`Tally` takes the raw records of the seven output
topics -- demand signals, churn-risk signals, dead letters, bid adjustments, churn alerts, the
online evaluation's model quality and the category demand forecasts -- and keeps counts, each
user's current churn probability and bid multiplier, the model-quality records, each series'
newest category forecast, and a timeline of cumulative counts. :func:`render_live` turns it
into the lines of the live console view, :func:`summary_record` into ``summary.json``.
:mod:`ops.demo` feeds it and draws the lines; :mod:`ops.dashboard` draws the same numbers as
HTML.

"Current" follows the subscribers' rule (README, *Which signal counts*): per user the record
with the later ``window_end_ms`` wins, and at the same window end the later-emitted one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

KINDS: Final = ("demand", "churn", "dlq", "bids", "alerts", "quality", "categories")
"""Output kinds, in display order; each is one topic and one ``<kind>.jsonl`` file."""
LABELS: Final = {
    "demand": "demand",
    "churn": "churn",
    "dlq": "dead letters",
    "bids": "bid-adjustments",
    "alerts": "churn-alerts",
    "quality": "model-quality",
    "categories": "category-demand",
}
FILES: Final = {kind: f"{kind}.jsonl" for kind in KINDS}
BID_CLASSES: Final = ("floor", "below", "neutral", "above", "cap")
"""Where a multiplier sits: at the floor, between floor and neutral, neutral, ..., at the cap."""
_EPS: Final = 1e-9


@dataclass(frozen=True, slots=True)
class Sample:
    """Cumulative numbers at ``t`` seconds after the replay started."""

    t: float
    events: int
    counts: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class BidBounds:
    floor: float
    cap: float

    @property
    def neutral(self) -> float:
        """The multiplier of an average user: ``clip(1, floor, cap)`` (bidding's formula)."""
        return min(max(1.0, self.floor), self.cap)

    def classify(self, multiplier: float) -> str:
        """One of :data:`BID_CLASSES` (floor and cap win over neutral when they coincide)."""
        if abs(multiplier - self.floor) <= _EPS:
            return "floor"
        if abs(multiplier - self.cap) <= _EPS:
            return "cap"
        if abs(multiplier - self.neutral) <= _EPS:
            return "neutral"
        return "below" if multiplier < self.neutral else "above"


def _position(record: Mapping[str, Any]) -> tuple[int, int]:
    """Ordering key of a record for its user: (window end, emission time)."""
    emitted = record.get("emitted_at_ms", record.get("raised_at_ms", 0))
    return int(record.get("window_end_ms") or 0), int(emitted or 0)


@dataclass
class Tally:
    """Counts and per-user current values of the demo's outputs (module doc)."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    malformed: int = 0
    churn: dict[str, tuple[tuple[int, int], float]] = field(default_factory=dict)
    bids: dict[str, tuple[tuple[int, int], float]] = field(default_factory=dict)
    bounds: BidBounds | None = None
    alerted: set[str] = field(default_factory=set)
    dlq_reasons: dict[str, int] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    quality: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict)
    """(window end, model version) -> the online evaluation's record (a re-send replaces it)."""
    categories: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Series -> its newest ``category-demand`` record (later window end, then later emitted)."""

    def add(self, kind: str, value: bytes) -> None:
        """Count one record of ``kind`` (its raw bytes); malformed ones are counted apart."""
        self.counts[kind] += 1
        try:
            record = orjson.loads(value)
            if not isinstance(record, dict):
                raise TypeError(type(record).__name__)
            if kind == "churn":
                self._keep(self.churn, record, float(record["churn_probability"]))
            elif kind == "bids":
                self._keep(self.bids, record, float(record["multiplier"]))
                self.bounds = BidBounds(float(record["floor"]), float(record["cap"]))
            elif kind == "alerts":
                self.alerted.add(str(record["user_id"]))
            elif kind == "dlq":
                reason = str(record.get("reason", "?"))
                self.dlq_reasons[reason] = self.dlq_reasons.get(reason, 0) + 1
            elif kind == "quality":
                key = (int(record["window_end_ms"]), str(record["model_version"]))
                self.quality[key] = record
            elif kind == "categories":
                series = str(record["series"])
                held = self.categories.get(series)
                if held is None or _position(record) >= _position(held):
                    self.categories[series] = record
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            # The demo shows what arrived; a record it cannot read is counted, not fatal.
            self.malformed += 1

    @staticmethod
    def _keep(
        held: dict[str, tuple[tuple[int, int], float]], record: Mapping[str, Any], value: float
    ) -> None:
        user, position = str(record["user_id"]), _position(record)
        current = held.get(user)
        if current is None or position >= current[0]:
            held[user] = (position, value)

    def sample(self, t: float, events: int) -> None:
        """Record the cumulative counts at ``t`` s (the timeline of the dashboard)."""
        self.samples.append(Sample(t, events, dict(self.counts)))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def churn_values(self) -> list[float]:
        return [p for _, p in self.churn.values()]

    def bid_values(self) -> list[float]:
        return [m for _, m in self.bids.values()]

    def top_churn(self, n: int = 5) -> list[tuple[str, float]]:
        """The ``n`` users with the highest current churn probability (ties by user id)."""
        return _top(((u, p) for u, (_, p) in self.churn.items()), n)

    def top_bids(self, n: int = 5) -> list[tuple[str, float]]:
        """The ``n`` users with the highest current bid multiplier (ties by user id)."""
        return _top(((u, m) for u, (_, m) in self.bids.items()), n)

    def bid_distribution(self) -> dict[str, int]:
        """Users per :data:`BID_CLASSES` entry (all zero before the first adjustment)."""
        out = dict.fromkeys(BID_CLASSES, 0)
        if self.bounds is not None:
            for m in self.bid_values():
                out[self.bounds.classify(m)] += 1
        return out


def _top(items: Iterable[tuple[str, float]], n: int) -> list[tuple[str, float]]:
    return sorted(items, key=lambda kv: (-kv[1], kv[0]))[:n]


def histogram(values: Iterable[float], lo: float, hi: float, bins: int) -> list[int]:
    """Counts of ``values`` in ``bins`` equal bins over ``[lo, hi]``; outside values clip in.

    ``hi`` itself falls in the last bin; non-finite values are left out.
    """
    counts = [0] * bins
    span = hi - lo
    for v in values:
        if not math.isfinite(v):
            continue
        i = 0 if span <= 0 else int((v - lo) / span * bins)
        counts[min(max(i, 0), bins - 1)] += 1
    return counts


def rate(samples: Sequence[Sample], window_s: float = 2.0, *, outputs: bool = False) -> float:
    """Per second over the last ``window_s`` seconds of ``samples``: events replayed, or
    records out (all kinds) with ``outputs``; 0 when fewer than two samples."""
    if len(samples) < 2:
        return 0.0
    last = samples[-1]
    first = next((s for s in samples if s.t >= last.t - window_s), samples[0])
    if first is last:
        first = samples[-2]
    dt = last.t - first.t
    if dt <= 0:
        return 0.0
    if outputs:
        return (sum(last.counts.values()) - sum(first.counts.values())) / dt
    return (last.events - first.events) / dt


def progress_bar(done: int, total: int, width: int = 30) -> str:
    """``[#####-----]  50%``-style bar (``total`` 0 counts as complete)."""
    fraction = 1.0 if total <= 0 else min(max(done / total, 0.0), 1.0)
    filled = round(fraction * width)
    return f"[{'█' * filled}{'░' * (width - filled)}] {fraction * 100:3.0f}%"


@dataclass(frozen=True, slots=True)
class LiveStatus:
    """The replay's side of the live view (the tally holds the outputs' side)."""

    phase: str
    """``replaying``, ``processing`` (replay done, outputs still arriving) or ``done``."""
    elapsed_s: float
    events_sent: int
    events_total: int
    events_per_s: float
    """Replay rate: recent while replaying, the whole replay's average once it is done."""
    outputs_per_s: float
    """Records arriving on the output topics per second, recently."""
    churn_auc: float | None = None
    """ROC-AUC of the current churn scores against the generator's truth (generated traffic)."""


def render_live(status: LiveStatus, tally: Tally, *, top: int = 5) -> list[str]:
    """The live console view as lines (no terminal control codes; see :func:`redraw`)."""
    c = tally.counts
    lines = [
        f"clicksignals demo · {status.phase} · {status.elapsed_s:5.1f}s",
        f"  replay  {progress_bar(status.events_sent, status.events_total)}  "
        f"{status.events_sent:,}/{status.events_total:,} events  "
        f"{status.events_per_s:,.0f} ev/s",
        "  signals "
        + "  ".join(f"{LABELS[k]} {c[k]:,}" for k in KINDS)
        + f"  ({status.outputs_per_s:,.0f}/s)",
    ]
    risks = tally.top_churn(top)
    lines.append(
        "  top churn risk  "
        + ("  ".join(f"{u} {p:.3f}" for u, p in risks) if risks else "(none yet)")
    )
    if status.churn_auc is not None:
        lines.append(
            f"  vs truth        churn ROC-AUC {status.churn_auc:.3f} over {len(tally.churn):,} "
            "users (the generator's churners)"
        )
    bids = tally.top_bids(top)
    dist = tally.bid_distribution()
    bounds = tally.bounds
    lines.append(
        "  top bids        "
        + ("  ".join(f"{u} ×{m:.2f}" for u, m in bids) if bids else "(none yet)")
    )
    if bounds is not None:
        lines.append(
            f"  bid multipliers {len(tally.bids):,} users: floor ×{bounds.floor:g} "
            f"{dist['floor']:,} · below {dist['below']:,} · neutral ×{bounds.neutral:g} "
            f"{dist['neutral']:,} · above {dist['above']:,} · cap ×{bounds.cap:g} {dist['cap']:,}"
        )
    else:
        lines.append("  bid multipliers (none yet)")
    return lines


def redraw(previous_lines: int, lines: Sequence[str]) -> str:
    """Terminal text that replaces the last ``previous_lines`` lines drawn with ``lines``."""
    up = f"\x1b[{previous_lines}F" if previous_lines else ""
    return up + "".join(f"\x1b[2K{line}\n" for line in lines)


def summary_record(
    tally: Tally,
    *,
    events: int,
    events_sent: int,
    replay_seconds: float | None,
    wall_seconds: float,
    interrupted: bool,
    outputs: Mapping[str, str],
    truth: Mapping[str, Any] | None = None,
    consumer_lag: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """``summary.json``: the run's numbers (JSON-serialisable); ``truth``: the scores against
    the generator's truth (:func:`ops.demo_truth.evaluate`), generated traffic only;
    ``consumer_lag``: per process, the records it had not consumed at the end (None: the run
    ended before the replay did)."""
    bounds = tally.bounds
    return {
        "events": events,
        "events_sent": events_sent,
        "replay_seconds": None if replay_seconds is None else round(replay_seconds, 2),
        "events_per_second": (round(events_sent / replay_seconds, 1) if replay_seconds else None),
        "wall_seconds": round(wall_seconds, 1),
        "interrupted": interrupted,
        "consumer_lag": None if consumer_lag is None else dict(consumer_lag),
        "signals": {
            "demand": tally.counts["demand"],
            "churn": tally.counts["churn"],
            "dlq": tally.counts["dlq"],
            "bid_adjustments": tally.counts["bids"],
            "churn_alerts": tally.counts["alerts"],
        },
        "malformed_records": tally.malformed,
        "dlq_reasons": dict(sorted(tally.dlq_reasons.items())),
        "users": {
            "with_churn_signal": len(tally.churn),
            "with_bid": len(tally.bids),
            "alerted": len(tally.alerted),
        },
        "top_churn_risks": [[u, p] for u, p in tally.top_churn(10)],
        "top_bid_multipliers": [[u, m] for u, m in tally.top_bids(10)],
        "bid_bounds": (
            None
            if bounds is None
            else {"floor": bounds.floor, "neutral": bounds.neutral, "cap": bounds.cap}
        ),
        "bid_distribution": tally.bid_distribution(),
        "truth": None if truth is None else dict(truth),
        "outputs": dict(outputs),
    }


__all__ = [
    "BID_CLASSES",
    "FILES",
    "KINDS",
    "LABELS",
    "BidBounds",
    "LiveStatus",
    "Sample",
    "Tally",
    "histogram",
    "progress_bar",
    "rate",
    "redraw",
    "render_live",
    "summary_record",
]
