"""Records of the online evaluation, and how one window end's quality is put together.

Owns the shapes the worker publishes once a prediction's horizon has passed (issue 15):

* :class:`PredictionOutcome` — one window-close prediction against what happened (topic
  ``prediction-outcomes``), with a deterministic id like every signal's;
* :class:`QualityPart` — one clickstream partition's :class:`features.quality.CohortTally` of
  one window end and model version, cut to a bounded size (:func:`quality_parts`); the
  worker sends them to its internal quality topic, keyed by window end;
* :class:`ModelQuality` — the whole cohort's figures (topic ``model-quality``).

And the assembly of a cohort from its parts (:class:`QualityBoard`, after
:mod:`features.parts`, and :func:`publish`): a window end's quality is complete when every
partition has sent all of its parts; parts merge exactly (:func:`features.quality.merge`), so the
figures are those of the whole cohort, whatever the number of partitions or workers.

Which predictions count: those settled *on time* (:func:`features.outcomes.on_time`), whose
realised figures cover exactly the horizon, as the offline evaluation's labels do.

Pure: stdlib and numpy only, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from features.drift import InputReference, drifted, psi
from features.outcomes import Outcome
from features.parts import BOARD_KEY, PartBoard, part_key, receive
from features.quality import CohortTally, merge, quality, split, tally
from features.signals import ms_to_iso, signal_id

MAX_SCORES_PER_PART: Final = 16_384
"""Histogram entries per quality part: ~26 bytes each in JSON, so a part stays well under
Kafka's default 1 MB message limit however many users a partition holds."""


@dataclass(frozen=True, slots=True)
class PredictionOutcome:
    """A window-close prediction and what happened over its horizon."""

    user_id: str
    window_end_ms: int
    """End of the window whose close made the prediction."""
    horizon_windows: int
    model_version: str
    predicted_orders: float
    predicted_spend: float
    churn_probability: float
    actual_orders: float
    actual_spend: float
    settled_through_ms: int
    """End of the window at whose close the outcome was known."""
    on_time: bool
    """Settled at the close of exactly ``horizon_windows`` windows later: the figures cover
    exactly the horizon and the outcome counts in the model's quality."""
    shadow: bool
    """A shadow (candidate) model's prediction: evaluated, never emitted as a signal."""
    outcome_id: str
    emitted_at_ms: int

    @classmethod
    def create(
        cls,
        outcome: Outcome,
        *,
        user_id: str,
        window_end_ms: int,
        settled_through_ms: int,
        horizon_windows: int,
        on_time: bool,
        emitted_at_ms: int,
    ) -> PredictionOutcome:
        p = outcome.prediction
        return cls(
            user_id=user_id,
            window_end_ms=window_end_ms,
            horizon_windows=horizon_windows,
            model_version=p.model_version,
            predicted_orders=p.orders,
            predicted_spend=p.spend,
            churn_probability=p.churn,
            actual_orders=outcome.orders,
            actual_spend=outcome.spend,
            settled_through_ms=settled_through_ms,
            on_time=on_time,
            shadow=p.shadow,
            outcome_id=signal_id(
                "outcome", user_id, window_end_ms, "window_close", p.model_version
            ),
            emitted_at_ms=emitted_at_ms,
        )

    @property
    def churned(self) -> bool:
        return self.actual_orders <= 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome_id": self.outcome_id,
            "user_id": self.user_id,
            "window_end": ms_to_iso(self.window_end_ms),
            "window_end_ms": self.window_end_ms,
            "horizon_windows": self.horizon_windows,
            "model_version": self.model_version,
            "predicted": {
                "orders": self.predicted_orders,
                "spend": self.predicted_spend,
                "churn_probability": self.churn_probability,
            },
            "actual": {
                "orders": self.actual_orders,
                "spend": self.actual_spend,
                "churned": self.churned,
            },
            "settled_through": ms_to_iso(self.settled_through_ms),
            "settled_through_ms": self.settled_through_ms,
            "on_time": self.on_time,
            "shadow": self.shadow,
            "emitted_at": ms_to_iso(self.emitted_at_ms),
            "emitted_at_ms": self.emitted_at_ms,
        }


@dataclass(frozen=True, slots=True)
class InputCounts:
    """A partition's live input histogram of one window end, binned by one model's reference."""

    window_end_ms: int
    model_version: str
    counts: tuple[tuple[int, ...], ...]
    """``[drift feature, bin]``: :func:`features.drift.bin_counts`."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "window_end_ms": self.window_end_ms,
            "model_version": self.model_version,
            "counts": [list(c) for c in self.counts],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputCounts:
        return cls(
            int(d["window_end_ms"]),
            str(d["model_version"]),
            tuple(tuple(int(x) for x in row) for row in d["counts"]),
        )


def merge_inputs(parts: Iterable[QualityPart]) -> InputCounts | None:
    """The input histogram of a window end over every partition's part, or ``None`` when no
    part has one or they were binned by different models (a swap in between: no drift then)."""
    found = [p.inputs for p in parts if p.inputs is not None]
    if not found or len({(i.window_end_ms, i.model_version) for i in found}) != 1:
        return None
    total = np.sum([np.asarray(i.counts, dtype=np.int64) for i in found], axis=0)
    return InputCounts(
        found[0].window_end_ms,
        found[0].model_version,
        tuple(tuple(int(x) for x in row) for row in total),
    )


@dataclass(frozen=True, slots=True, eq=False)
class CohortProgress:
    """What a window close done in slices has tallied so far on one partition: the tallies of
    the cohort it settles and the input histogram of the window it closes.

    A close of many users is spread over several runs of the worker (latency: see
    :data:`stream.processor.CLOSE_SLICE`), and a partition sends its quality parts of a cohort
    once, when the close is complete. What each earlier slice settled is stored as one of
    these (its own table record, written once), so that a restart in the middle of a close
    loses none of it; :func:`merge_progress` puts them together at the end.
    """

    window: int
    """The window being closed (an index of the window grid)."""
    tallies: Mapping[str, CohortTally]
    counts: tuple[tuple[int, ...], ...] | None = None
    """``[drift feature, bin]`` counts so far (``None``: the model has no input reference)."""

    def __eq__(self, other: object) -> bool:
        # By value; the tallies' arrays have no truth value of their own.
        return isinstance(other, CohortProgress) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "tallies": {v: t.to_dict() for v, t in self.tallies.items()},
            "counts": [list(c) for c in self.counts] if self.counts is not None else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CohortProgress:
        counts = d.get("counts")
        return cls(
            int(d["window"]),
            {str(v): CohortTally.from_dict(t) for v, t in d["tallies"].items()},
            tuple(tuple(int(x) for x in row) for row in counts) if counts is not None else None,
        )


def merge_progress(pieces: Iterable[CohortProgress]) -> CohortProgress:
    """The slices of one close (disjoint users) as one: tallies merged per model version,
    input counts summed. Merged once, at the end of the close: merging at every slice would
    cost the size of the cohort so far each time."""
    items = list(pieces)
    if not items:
        raise ValueError("no slice to merge")
    by_version: dict[str, list[CohortTally]] = {}
    for piece in items:
        for version, t in piece.tallies.items():
            by_version.setdefault(version, []).append(t)
    counted = [np.asarray(piece.counts, dtype=np.int64) for piece in items if piece.counts]
    counts = None
    if counted:
        counts = tuple(tuple(int(x) for x in row) for row in np.sum(counted, axis=0))
    return CohortProgress(items[0].window, {v: merge(ts) for v, ts in by_version.items()}, counts)


def input_drift(inputs: InputCounts, reference: InputReference, threshold: float) -> dict[str, Any]:
    """The drift record of a window end: PSI per feature, the features over ``threshold``."""
    index = psi(reference, inputs.counts)
    return {
        "window_end": ms_to_iso(inputs.window_end_ms),
        "window_end_ms": inputs.window_end_ms,
        "model_version": inputs.model_version,
        "rows": int(np.asarray(inputs.counts[0]).sum()) if inputs.counts else 0,
        "psi": index,
        "threshold": threshold,
        "drifted": drifted(index, threshold),
    }


@dataclass(frozen=True, slots=True)
class QualityPart:
    """Part ``index`` of ``count`` of one partition's tallies for one window end."""

    window_end_ms: int
    horizon_windows: int
    partition: int
    partitions: int
    index: int
    count: int
    tallies: Mapping[str, CohortTally]
    """Model version -> tally (empty: the partition had no prediction to settle)."""
    inputs: InputCounts | None = None
    """On part 0: the input histogram of the window the partition just closed (its end is
    ``window_end_ms`` plus the horizon), for drift (:mod:`features.drift`)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "window_end_ms": self.window_end_ms,
            "horizon_windows": self.horizon_windows,
            "partition": self.partition,
            "partitions": self.partitions,
            "index": self.index,
            "count": self.count,
            "tallies": {v: t.to_dict() for v, t in self.tallies.items()},
            **({"inputs": self.inputs.to_dict()} if self.inputs is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QualityPart:
        part = cls(
            window_end_ms=int(d["window_end_ms"]),
            horizon_windows=int(d["horizon_windows"]),
            partition=int(d["partition"]),
            partitions=int(d["partitions"]),
            index=int(d["index"]),
            count=int(d["count"]),
            tallies={str(v): CohortTally.from_dict(t) for v, t in d["tallies"].items()},
            inputs=InputCounts.from_dict(d["inputs"]) if d.get("inputs") else None,
        )
        if not (0 <= part.partition < part.partitions and 0 <= part.index < part.count):
            raise ValueError(
                f"quality part {part.index}/{part.count} of partition "
                f"{part.partition}/{part.partitions} is out of range"
            )
        return part


def quality_parts(
    outcomes: Iterable[PredictionOutcome],
    *,
    window_end_ms: int,
    horizon_windows: int,
    partition: int,
    partitions: int,
    max_scores: int = MAX_SCORES_PER_PART,
    inputs: InputCounts | None = None,
) -> list[QualityPart]:
    """One partition's parts for the cohort of ``window_end_ms``: its on-time outcomes
    tallied per model version and cut to at most ``max_scores`` histogram entries per part.
    Always at least one part, so that a partition without predictions still says so."""
    return parts_of(
        cohort_tallies(outcomes, window_end_ms),
        window_end_ms=window_end_ms,
        horizon_windows=horizon_windows,
        partition=partition,
        partitions=partitions,
        max_scores=max_scores,
        inputs=inputs,
    )


def cohort_tallies(
    outcomes: Iterable[PredictionOutcome], window_end_ms: int
) -> dict[str, CohortTally]:
    """Model version -> tally of the on-time outcomes of the cohort of ``window_end_ms``."""
    by_version: dict[str, list[PredictionOutcome]] = {}
    for o in outcomes:
        if o.on_time and o.window_end_ms == window_end_ms:
            by_version.setdefault(o.model_version, []).append(o)
    return {
        version: tally(
            [o.predicted_orders for o in rows],
            [o.actual_orders for o in rows],
            [o.predicted_spend for o in rows],
            [o.actual_spend for o in rows],
            [o.churn_probability for o in rows],
            [1.0 if o.churned else 0.0 for o in rows],
        )
        for version, rows in by_version.items()
    }


def parts_of(
    tallies: Mapping[str, CohortTally],
    *,
    window_end_ms: int,
    horizon_windows: int,
    partition: int,
    partitions: int,
    max_scores: int = MAX_SCORES_PER_PART,
    inputs: InputCounts | None = None,
) -> list[QualityPart]:
    """One partition's parts for the cohort of ``window_end_ms`` from its tallies (see
    :func:`quality_parts`)."""
    pieces: list[tuple[str, CohortTally]] = []
    for version in sorted(tallies):
        pieces += [(version, piece) for piece in split(tallies[version], max_scores)]
    count = max(1, len(pieces))
    return [
        QualityPart(
            window_end_ms,
            horizon_windows,
            partition,
            partitions,
            i,
            count,
            {pieces[i][0]: pieces[i][1]} if pieces else {},
            inputs if i == 0 else None,
        )
        for i in range(count)
    ]


@dataclass(frozen=True, slots=True)
class ModelQuality:
    """One model version's quality over the cohort of one window end."""

    window_end_ms: int
    horizon_windows: int
    model_version: str
    partitions: int
    figures: Mapping[str, Any]
    """:func:`features.quality.quality` of the merged tally (``n``, ``orders``, ``spend``,
    ``churn``), keyed as the offline report keys them."""
    quality_id: str
    emitted_at_ms: int
    input_drift: Mapping[str, Any] | None = None
    """The drift of the inputs this cohort was scored on (:func:`input_drift`), when the
    serving model has an input reference."""
    promotion: Mapping[str, Any] | None = None
    """On a shadow model's record: its evidence against the serving model (:func:`judge`)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "quality_id": self.quality_id,
            "window_end": ms_to_iso(self.window_end_ms),
            "window_end_ms": self.window_end_ms,
            "horizon_windows": self.horizon_windows,
            "model_version": self.model_version,
            "partitions": self.partitions,
            "population": self.figures["n"],
            "orders": self.figures["orders"],
            "spend": self.figures["spend"],
            "churn": self.figures["churn"],
            "input_drift": dict(self.input_drift) if self.input_drift is not None else None,
            "promotion": dict(self.promotion) if self.promotion is not None else None,
            "emitted_at": ms_to_iso(self.emitted_at_ms),
            "emitted_at_ms": self.emitted_at_ms,
        }


@dataclass
class QualityBoard(PartBoard):
    """The quality aggregator's :class:`features.parts.PartBoard`: which tally parts arrived
    per window end, and what the aggregator keeps beside them."""

    drift: dict[int, dict[str, Any]] = field(default_factory=dict)
    """Window end -> its input drift, kept until that window end's own quality goes out (one
    horizon later) with it."""
    wins: dict[str, list[int]] = field(default_factory=dict)
    """Shadow version -> the consecutive latest window ends where it beat the serving model."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "drift": {str(e): d for e, d in self.drift.items()},
            "wins": self.wins,
            **super().to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QualityBoard:
        return cls(
            **cls.fields_from_dict(d),
            drift={int(e): dict(v) for e, v in d.get("drift", {}).items()},
            wins={str(v): [int(e) for e in ends] for v, ends in d.get("wins", {}).items()},
        )


def publish(
    parts: Iterable[QualityPart], now_ms: int, drift: Mapping[str, Any] | None = None
) -> list[ModelQuality]:
    """A complete cohort's quality per model version (versions without a settled prediction
    give none); ``drift``: the cohort's input drift, attached to the record of the model that
    binned it."""
    parts = list(parts)
    by_version: dict[str, list[CohortTally]] = {}
    for p in parts:
        for version, t in p.tallies.items():
            by_version.setdefault(version, []).append(t)
    records = []
    for version in sorted(by_version):
        merged = merge(by_version[version])
        if merged.n == 0:
            continue
        first = parts[0]
        records.append(
            ModelQuality(
                window_end_ms=first.window_end_ms,
                horizon_windows=first.horizon_windows,
                model_version=version,
                partitions=first.partitions,
                figures=quality(merged),
                quality_id=signal_id("quality", "", first.window_end_ms, "window_close", version),
                emitted_at_ms=now_ms,
                input_drift=(
                    drift if drift is not None and drift["model_version"] == version else None
                ),
            )
        )
    return records


def beats(candidate: Mapping[str, Any], serving: Mapping[str, Any]) -> bool:
    """Whether a shadow model's figures beat the serving model's on the same cohort: a lower
    per-user orders MAE *and* a lower churn log loss (the demand and the churn head each
    better, neither traded for the other)."""
    try:
        return bool(
            candidate["orders"]["mae"] < serving["orders"]["mae"]
            and candidate["churn"]["log_loss"] < serving["churn"]["log_loss"]
        )
    except (KeyError, TypeError):
        return False


def judge(
    board: QualityBoard,
    records: Iterable[ModelQuality],
    serving: str,
    shadow: str | None,
    promote_after: int,
) -> dict[str, Any] | None:
    """The shadow model's evidence at one published window end: whether it beat the serving
    model there, and the run of consecutive window ends it has (a loss, or a window end
    without both, starts it again). ``promote``: the run reached ``promote_after`` (0: never)."""
    by_version = {r.model_version: r for r in records}
    if shadow is None or shadow not in by_version or serving not in by_version:
        return None
    end = by_version[shadow].window_end_ms
    won = beats(by_version[shadow].figures, by_version[serving].figures)
    run = [*board.wins.get(shadow, []), end] if won else []
    board.wins = {shadow: run} if run else {}
    return {
        "shadow": shadow,
        "serving": serving,
        "window_end_ms": end,
        "beat_serving": won,
        "rule": "lower orders MAE and lower churn log loss on the same cohort",
        "consecutive_window_ends": run,
        "promote_after": promote_after,
        "promote": promote_after > 0 and len(run) >= promote_after,
    }


def forget(board: QualityBoard, window_end_ms: int) -> None:
    """Drop a published window end from the board (after its parts were merged), and its
    input drift (it went out with its quality)."""
    board.received.pop(window_end_ms, None)
    board.drift.pop(window_end_ms, None)


__all__ = [
    "BOARD_KEY",
    "MAX_SCORES_PER_PART",
    "InputCounts",
    "ModelQuality",
    "PredictionOutcome",
    "QualityBoard",
    "QualityPart",
    "beats",
    "forget",
    "input_drift",
    "judge",
    "merge_inputs",
    "part_key",
    "publish",
    "quality_parts",
    "receive",
]
