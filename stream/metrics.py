"""Prometheus metrics of the worker, rendered by the ``/metrics`` web view.

Owns the metric objects and :func:`observe_batch`, which records one micro-batch's outcome
(events in, invalid by reason, late, signals out, batch size, inference time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from stream.processor import BatchOutput

REGISTRY = CollectorRegistry()
EVENTS_IN = Counter("clicksignals_events_in_total", "Raw messages consumed", registry=REGISTRY)
INVALID = Counter(
    "clicksignals_invalid_total", "Messages sent to the DLQ", ["reason"], registry=REGISTRY
)
SIGNALS = Counter("clicksignals_signals_total", "Signals emitted", ["topic"], registry=REGISTRY)
REROUTED = Counter("clicksignals_rerouted_total", "Messages re-keyed by user", registry=REGISTRY)
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
    "clicksignals_inference_seconds", "ONNX Runtime time per batch", registry=REGISTRY
)
BATCH_SECONDS = Histogram(
    "clicksignals_batch_seconds", "Processing time per micro-batch", registry=REGISTRY
)
CONSUMER_LAG = Gauge(
    "clicksignals_consumer_lag", "Messages behind the log end", ["partition"], registry=REGISTRY
)


def observe_batch(n_events: int, out: BatchOutput, seconds: float) -> None:
    EVENTS_IN.inc(n_events)
    BATCH_SIZE.observe(n_events)
    BATCH_SECONDS.observe(seconds)
    for reason, count in out.invalid_by_reason.items():
        INVALID.labels(reason=reason).inc(count)
    if out.demand:
        SIGNALS.labels(topic="demand").inc(len(out.demand))
    if out.churn:
        SIGNALS.labels(topic="churn").inc(len(out.churn))
    if out.reroute:
        REROUTED.inc(len(out.reroute))
    if out.scored:
        SCORED.observe(out.scored)
        INFERENCE.observe(out.inference_seconds)


def render() -> tuple[bytes, str]:
    """Exposition bytes and their media type (aiohttp takes the charset separately)."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST.split(";")[0]
