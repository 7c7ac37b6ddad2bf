"""Prometheus metrics of the worker, rendered by the ``/metrics`` web view.

Owns the metric objects and :func:`observe_batch`, which records one micro-batch's outcome
(events in, invalid by reason, late, signals out, batch size, inference time, messages whose
processing raised and the batches bisected to find them);
:func:`observe_timer_error` (timer ticks that raised);
:func:`observe_model_reload` (model hot swaps and rejected candidates, the serving version);
:func:`observe_quality` (the online evaluation's latest figures per model version, from the
``model-quality`` records the worker publishes); and :func:`consumer_lag` /
:func:`set_consumer_lag`, which the worker's lag timer feeds with
the consumer's highwater and the processed position (:func:`note_processed`) of each source
partition it holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from features.feedback import ModelQuality
    from stream.processor import BatchOutput

REGISTRY = CollectorRegistry()
EVENTS_IN = Counter("clicksignals_events_in_total", "Raw messages consumed", registry=REGISTRY)
INVALID = Counter(
    "clicksignals_invalid_total", "Messages sent to the DLQ", ["reason"], registry=REGISTRY
)
SIGNALS = Counter("clicksignals_signals_total", "Signals emitted", ["topic"], registry=REGISTRY)
REROUTED = Counter("clicksignals_rerouted_total", "Messages re-keyed by user", registry=REGISTRY)
WATERMARKS = Counter(
    "clicksignals_watermark_records_total",
    "Watermark records sent to the re-keying topic (source event time announcements)",
    registry=REGISTRY,
)
WATERMARKS_READ = Counter(
    "clicksignals_watermark_records_read_total",
    "Watermark records read from the re-keying topic (not counted as events in)",
    registry=REGISTRY,
)
IDLE_SOURCES = Gauge(
    "clicksignals_idle_source_partitions",
    "Held clickstream partitions announced idle at the last announcement",
    registry=REGISTRY,
)
CLOSES_IN_PROGRESS = Gauge(
    "clicksignals_closes_in_progress",
    "Held partitions with a window close in progress, taken a slice at a time between batches",
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "clicksignals_batch_size",
    "Messages per micro-batch",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
    registry=REGISTRY,
)
SCORED = Histogram(
    "clicksignals_scored_per_batch",
    "Sequences scored per ONNX Runtime call",
    buckets=(1, 4, 16, 64, 256, 1024, 4096, 16384),
    registry=REGISTRY,
)
INFERENCE = Histogram(
    "clicksignals_inference_seconds",
    "ONNX Runtime time per batch (session.run alone)",
    registry=REGISTRY,
)
SCORING = Histogram(
    "clicksignals_scoring_seconds",
    "Model scoring time per batch: the inputs' features (normalisation, the BG/NBD summary), "
    "ONNX Runtime and the served forecast",
    registry=REGISTRY,
)
BATCH_SECONDS = Histogram(
    "clicksignals_batch_seconds", "Processing time per micro-batch", registry=REGISTRY
)
CONSUMER_LAG = Gauge(
    "clicksignals_consumer_lag",
    "Messages behind the log end (highwater - processed position) per source partition held",
    ["topic", "partition"],
    registry=REGISTRY,
)
MODEL_RELOADS = Counter(
    "clicksignals_model_reloads_total",
    "Model directory changes acted on, by outcome (swapped, failed, same_version)",
    ["outcome"],
    registry=REGISTRY,
)
SERIES_OVERFLOW = Counter(
    "clicksignals_series_overflow_total",
    "Events of a category beyond the series a partition keeps per window (totals only)",
    registry=REGISTRY,
)
PROCESSING_ERRORS = Counter(
    "clicksignals_processing_errors_total",
    "Messages whose processing raised, dead-lettered as processing_error, by exception type",
    ["exception"],
    registry=REGISTRY,
)
ISOLATED_BATCHES = Counter(
    "clicksignals_isolated_batches_total",
    "Micro-batches that raised and were bisected to find the messages at fault",
    registry=REGISTRY,
)
ISOLATION_RUNS = Counter(
    "clicksignals_isolation_runs_total",
    "Extra processor runs over parts of batches that raised (the cost of isolation)",
    registry=REGISTRY,
)
TIMER_ERRORS = Counter(
    "clicksignals_timer_errors_total",
    "Timer ticks that raised, by timer (an essential timer's error also ends the process)",
    ["timer"],
    registry=REGISTRY,
)
MODEL_INFO = Gauge(
    "clicksignals_model_info", "1 for the model version serving", ["version"], registry=REGISTRY
)

OUTCOMES = Counter(
    "clicksignals_prediction_outcomes_total",
    "Window-close predictions settled once their horizon passed (on_time: counted in quality)",
    ["on_time"],
    registry=REGISTRY,
)
QUALITY = Gauge(
    "clicksignals_model_quality",
    "The online evaluation of the latest complete window end, per model version and figure",
    ["model_version", "figure"],
    registry=REGISTRY,
)
QUALITY_WINDOW_END = Gauge(
    "clicksignals_model_quality_window_end_seconds",
    "Window end (epoch seconds) of the cohort the model quality gauges describe",
    ["model_version"],
    registry=REGISTRY,
)
QUALITY_FIGURES: tuple[tuple[str, str], ...] = (
    ("orders", "mae"),
    ("orders", "rmse"),
    ("orders", "bias"),
    ("spend", "mae"),
    ("spend", "rmse"),
    ("spend", "bias"),
    ("churn", "roc_auc"),
    ("churn", "pr_auc"),
    ("churn", "log_loss"),
    ("churn", "brier"),
    ("churn", "ece"),
)
"""The figures of a ``model-quality`` record exported as gauges (``figure`` = group_key)."""
INPUT_PSI = Gauge(
    "clicksignals_input_psi",
    "Population stability index of a window feature at the latest window end, against the "
    "serving model's training distribution",
    ["feature"],
    registry=REGISTRY,
)
INPUT_DRIFT = Gauge(
    "clicksignals_input_drift",
    "1 while some window feature's PSI exceeds the drift threshold at the latest window end",
    registry=REGISTRY,
)
_lag_labels: set[tuple[str, str]] = set()
_processed: dict[tuple[str, int], int] = {}
"""(topic, partition) -> offset after the last message whose batch was delivered and stored."""
_served: set[str] = set()


def observe_batch(n_events: int, out: BatchOutput, seconds: float) -> None:
    # Watermark records ride the re-keying topic but are not events.
    EVENTS_IN.inc(n_events - out.announcements)
    if out.announcements:
        WATERMARKS_READ.inc(out.announcements)
    BATCH_SIZE.observe(n_events)
    BATCH_SECONDS.observe(seconds)
    for reason, count in out.invalid_by_reason.items():
        INVALID.labels(reason=reason).inc(count)
    if out.reroute:
        REROUTED.inc(len(out.reroute))
    if out.isolation_runs:
        ISOLATED_BATCHES.inc()
        ISOLATION_RUNS.inc(out.isolation_runs)
    for exception, count in out.processing_errors.items():
        PROCESSING_ERRORS.labels(exception=exception).inc(count)
    observe_close_slice(out)


def observe_outcomes(out: BatchOutput) -> None:
    if out.outcomes:
        on_time = sum(o.on_time for o in out.outcomes)
        OUTCOMES.labels(on_time="true").inc(on_time)
        if on_time < len(out.outcomes):
            OUTCOMES.labels(on_time="false").inc(len(out.outcomes) - on_time)


def observe_drift(drift: Mapping[str, Any]) -> None:
    """The gauges of one window end's input drift (:func:`features.feedback.input_drift`)."""
    for feature, value in drift["psi"].items():
        INPUT_PSI.labels(feature=feature).set(float(value))
    INPUT_DRIFT.set(1.0 if drift["drifted"] else 0.0)


def observe_quality(record: ModelQuality) -> None:
    """The gauges of one published cohort (NaN, e.g. an AUC without churners, stays NaN)."""
    version = record.model_version
    for group, key in QUALITY_FIGURES:
        value = record.figures[group][key]
        QUALITY.labels(model_version=version, figure=f"{group}_{key}").set(float(value))
    QUALITY.labels(model_version=version, figure="population").set(float(record.figures["n"]))
    QUALITY_WINDOW_END.labels(model_version=version).set(record.window_end_ms / 1000)


def observe_category_forecasts(forecasts: int, overflow: int) -> None:
    """A window end's category forecasts, and events of series beyond a partition's cap."""
    SIGNALS.labels(topic="category_demand").inc(forecasts)
    if overflow:
        SERIES_OVERFLOW.inc(overflow)


def observe_announcement(out: BatchOutput, idle_sources: int) -> None:
    """A watermark announcement: its records, and the window closes idleness allowed."""
    WATERMARKS.inc(len(out.watermarks))
    IDLE_SOURCES.set(idle_sources)
    observe_close_slice(out)


def set_closes_in_progress(partitions: int) -> None:
    CLOSES_IN_PROGRESS.set(partitions)


def observe_close_slice(out: BatchOutput) -> None:
    """Signals, outcomes and scoring of any run: a window close's slice taken between
    batches, an announcement (which may take one), a batch (:func:`observe_batch`)."""
    observe_outcomes(out)
    if out.demand:
        SIGNALS.labels(topic="demand").inc(len(out.demand))
    if out.churn:
        SIGNALS.labels(topic="churn").inc(len(out.churn))
    if out.scored:
        SCORED.observe(out.scored)
        INFERENCE.observe(out.ort_seconds)
        SCORING.observe(out.inference_seconds)


class _Coordinates(Protocol):
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


def note_processed(batch: Iterable[_Coordinates]) -> None:
    """Record the messages of a finished micro-batch (outputs delivered, state stored)."""
    for m in batch:
        key = (m.topic, m.partition)
        if m.offset >= _processed.get(key, -1):
            _processed[key] = m.offset + 1


def processed_position(topic: str, partition: int) -> int | None:
    """The offset after the last processed message of the partition, if any was processed."""
    return _processed.get((topic, partition))


def forget_processed(partitions: Iterable[tuple[str, int]]) -> None:
    """Drop revoked partitions: another worker moves them on from now."""
    for key in partitions:
        _processed.pop(key, None)


def consumer_lag(
    highwaters: Mapping[tuple[str, int], int | None],
    positions: Mapping[tuple[str, int], int | None],
) -> dict[tuple[str, int], int]:
    """Messages behind the log end per (topic, partition): highwater minus position.

    Partitions whose highwater or position the consumer does not know yet (nothing fetched
    since the assignment) are left out rather than reported as 0, which would read as
    "caught up". A position past the highwater (the highwater is from the last fetch
    response) counts as 0.
    """
    lags: dict[tuple[str, int], int] = {}
    for tp, high in highwaters.items():
        pos = positions.get(tp)
        if high is None or pos is None:
            continue
        lags[tp] = max(int(high) - int(pos), 0)
    return lags


def set_consumer_lag(lags: Mapping[tuple[str, int], int]) -> None:
    """Publish ``lags``; partitions no longer held (revoked) disappear from the gauge."""
    labels = {(topic, str(partition)) for topic, partition in lags}
    for stale in _lag_labels - labels:
        CONSUMER_LAG.remove(*stale)
    _lag_labels.clear()
    _lag_labels.update(labels)
    for (topic, partition), lag in lags.items():
        CONSUMER_LAG.labels(topic=topic, partition=str(partition)).set(lag)


def observe_model_reload(outcome: str, serving: str) -> None:
    """Count a model reload outcome (``unchanged`` is not counted) and mark the serving version."""
    if outcome != "unchanged":
        MODEL_RELOADS.labels(outcome=outcome).inc()
    for old in _served - {serving}:
        MODEL_INFO.remove(old)
    _served.clear()
    _served.add(serving)
    MODEL_INFO.labels(version=serving).set(1)


def observe_timer_error(timer: str) -> None:
    """Count one tick of ``timer`` that raised."""
    TIMER_ERRORS.labels(timer=timer).inc()


def render() -> tuple[bytes, str]:
    """Exposition bytes and their media type (aiohttp takes the charset separately)."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST.split(";")[0]
