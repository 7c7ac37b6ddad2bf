"""The naive pattern, as a team would write it from the Faust examples: ``faust -A bench.naive_app
worker``.

Owns one deliberately straightforward Faust app used only by :mod:`bench.worker` as the
"without us" baseline. Per event (``async for value in stream``, Faust's own offset
acknowledgement): validate, read the user's state from a table, fold the event in, score the
user's open window with **one ONNX Runtime call of batch size 1**, await the send of a demand
and a churn signal, write the state back to the table (one changelog record per event).

It uses the same pure pieces as the worker (validation, :mod:`features.state`, the state codec,
:class:`serving.scorer.Scorer`, the signal records) so the comparison is about the streaming
pattern, not the feature code. It does *less* than the worker — no partition watermarks, no
window closes (silent users are never scored), no redelivery bookkeeping, no re-keying — so the
worker / naive ratio flatters the naive app, if anything.

Settings come from the same ``CLICKSIGNALS_*`` environment as the worker (app id, topics,
store, web port); ``/health``, ``/ready`` and ``/metrics`` (the worker's metric names: events
in, batch size 1, ORT calls and seconds) let the bench drive it like the worker.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from features.signals import ChurnSignal, DemandSignal, RiskThresholds
from features.state import add_event, is_late, peek_sequence
from features.validation import Invalid, ValidationPolicy, validate
from features.windows import DAY_MS
from serving.scorer import load_model
from settings import load_settings
from stream import metrics
from stream.codec import UserRecord, decode_user, encode_user
from stream.faust_app import RAW, faust_app

settings = load_settings()

app = faust_app(
    settings,
    app_id=settings.worker.app_id,
    web_port=settings.worker.web_port,
    datadir=settings.worker.data_dir,
    # Faust's default, as a team writing from Faust's examples would leave it (the project's
    # apps linger 5 ms; the naive app awaits every send, so that would slow it, not us).
    producer_linger_ms=0,
)


def _raw_topic(name: str) -> Any:
    return app.topic(name, **RAW)


clickstream = _raw_topic(settings.topics.clickstream)
demand_topic = _raw_topic(settings.topics.demand)
churn_topic = _raw_topic(settings.topics.churn)
state_table = app.Table(
    "naive-state",
    default=None,
    key_type=str,
    value_type=bytes,
    partitions=settings.topics.partitions,
)

scorer = load_model(settings.worker.model_dir, settings.worker.ort_intra_op_threads)
spec = scorer.manifest.spec
policy = ValidationPolicy.from_settings(settings.worker)
thresholds = RiskThresholds(
    medium=scorer.manifest.thresholds.medium, high=scorer.manifest.thresholds.high
)
horizon_days = spec.horizon * spec.length_ms / DAY_MS


@app.agent(clickstream)
async def naive(stream: Any) -> None:
    async for value in stream:
        started = time.perf_counter()
        now = int(time.time() * 1000)
        event = validate(value, now_ms=now, policy=policy)
        if isinstance(event, Invalid):
            continue
        raw = state_table.get(event.user_id)
        record = decode_user(raw) if raw else None
        window = spec.index(event.event_time_ms)
        if record is not None and is_late(record.state, window):
            continue
        state = add_event(record.state if record else None, event, spec)
        record = record or UserRecord(state)
        sequence = peek_sequence(state, max(state.open), spec)
        t0, in_session = time.perf_counter(), scorer.session_seconds
        scores = scorer.score(sequence[None])  # batch size 1
        scoring_s, ort_s = time.perf_counter() - t0, scorer.session_seconds - in_session
        churn = float(scores.churn_probability[0])
        demand = DemandSignal.create(
            user_id=event.user_id,
            window_end_ms=event.event_time_ms,
            horizon_windows=spec.horizon,
            horizon_days=horizon_days,
            expected_orders=float(scores.expected_orders[0]),
            expected_spend=float(scores.expected_spend[0]),
            purchase_probability=1.0 - churn,
            trigger="activity",
            model_version=scorer.version,
            emitted_at_ms=now,
        )
        risk = ChurnSignal.create(
            user_id=event.user_id,
            window_end_ms=event.event_time_ms,
            churn_probability=churn,
            thresholds=thresholds,
            days_since_last_order=None,
            trigger="activity",
            model_version=scorer.version,
            emitted_at_ms=now,
        )
        key = event.user_id.encode()
        await demand_topic.send(key=key, value=orjson.dumps(demand.to_dict()))
        await churn_topic.send(key=key, value=orjson.dumps(risk.to_dict()))
        state_table[event.user_id] = encode_user(record)
        metrics.EVENTS_IN.inc()
        metrics.BATCH_SIZE.observe(1)
        metrics.SCORED.observe(1)
        metrics.INFERENCE.observe(ort_s)
        metrics.SCORING.observe(scoring_s)
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)


@app.page("/health")
async def health(web: Any, request: Any) -> Any:
    return web.json({"status": "ok", "model_version": scorer.version})


@app.page("/ready")
async def ready(web: Any, request: Any) -> Any:
    ok = not app.rebalancing
    return web.json({"ready": ok}, status=200 if ok else 503)


@app.page("/metrics")
async def metrics_view(web: Any, request: Any) -> Any:
    body, content_type = metrics.render()
    return web.bytes(body, content_type=content_type)
