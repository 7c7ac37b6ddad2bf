"""The churn-alerting subscriber: ``faust -A subscribers.alerting_app worker`` (or
``clicksignals alerter``).

Consumes ``settings.topics.churn``, keeps each user's alert state in the table ``alert-state``
(changelog ``<alerter_app_id>-alert-state-changelog``), and for every alert raised
(:mod:`subscribers.alerting`: hysteresis and de-duplication) sends it to
``settings.topics.churn_alerts`` keyed by user, then -- once Kafka has it -- to the log sink and,
when ``settings.subscribers.alert_webhook_url`` is set, to the webhook (:mod:`subscribers.sinks`).

Web views on ``worker.web_host:subscribers.alerter_web_port`` (settings): ``GET /health``
(counters; 503 with the reason once the agent stopped, and the process exits with status 70:
:mod:`stream.liveness`), ``GET /ready`` (503 while rebalancing or stopped) and
``GET /alerts/{user_id}`` (the user's alert state).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import Counter
from typing import Any

import orjson

from settings import load_settings
from stream.liveness import Liveness
from subscribers.alerting import AlertConfig, AlertState, ChurnAlert, apply_churn
from subscribers.records import Rejected, parse_churn
from subscribers.runtime import RAW, TableFocus, config_or_exit, make_app, now_ms
from subscribers.sinks import WebhookSink, log_alert

log = logging.getLogger(__name__)

settings = load_settings()
config: AlertConfig = config_or_exit(AlertConfig.from_settings, settings.subscribers, "alerter")

app = make_app(
    settings,
    app_id=settings.alerter_app_id,
    web_port=settings.subscribers.alerter_web_port,
    name="alerter",
)
churn_topic = app.topic(settings.topics.churn, **RAW)
alerts_topic = app.topic(settings.topics.churn_alerts, **RAW)
alert_state = app.Table(
    "alert-state",
    default=None,
    key_type=str,
    value_type=bytes,
    partitions=settings.topics.partitions,
)
_table = TableFocus(alert_state)
counters: Counter[str] = Counter()
liveness = Liveness("clicksignals alerter")
webhook = (
    WebhookSink(
        settings.subscribers.alert_webhook_url.reveal(),
        timeout_s=settings.subscribers.alert_webhook_timeout_s,
    )
    if settings.subscribers.alert_webhook_url
    else None
)


if webhook is not None:

    @app.task
    async def post_alerts() -> None:
        """Background webhook poster (failures are logged by the sink, never raised)."""
        assert webhook is not None
        await webhook.run()


@app.agent(churn_topic)
async def alert_on_churn(stream: Any) -> None:
    """Churn signals -> alerts: sent and acknowledged, then the sinks, then the table."""
    async for events in stream.take_events(
        settings.worker.batch_size, within=settings.worker.batch_timeout_s
    ):
        await liveness.run_batch("alert_on_churn", events, handle_batch)


async def handle_batch(events: list[Any]) -> None:
    states: dict[str, AlertState] = {}
    owners: dict[str, Any] = {}
    raised: list[ChurnAlert] = []
    sent: list[Any] = []
    for event in events:
        signal = parse_churn(event.message.value)
        if isinstance(signal, Rejected):
            counters["rejected"] += 1
            log.warning(
                "alerter: refused record %s:%d@%d: %s (%s)",
                event.message.topic,
                event.message.partition,
                event.message.offset,
                signal.reason,
                signal.detail,
            )
            continue
        user = signal.user_id
        held = states.get(user)
        if held is None:
            raw = _table.get(event, user)
            held = AlertState.from_json(raw) if raw is not None else None
        decision = apply_churn(held, signal, config, now_ms())
        counters[decision.outcome] += 1
        if decision.outcome != "newer" or decision.state is None:
            continue
        states[user], owners[user] = decision.state, event
        if decision.transition == "recovered":
            counters["recovered"] += 1
            log.info(
                "churn alert cleared: user %s recovered (p=%.3f)",
                user,
                signal.churn_probability,
            )
        if decision.alert is not None:
            raised.append(decision.alert)
            sent.append(
                await alerts_topic.send(
                    key=user.encode(), value=orjson.dumps(decision.alert.to_dict())
                )
            )
    await asyncio.gather(*(f for f in sent if inspect.isawaitable(f)))
    counters["alerts"] += len(raised)
    for alert in raised:
        log_alert(alert)
        if webhook is not None:
            webhook.submit(alert.to_dict())
    for user, state in states.items():
        _table.set(owners[user], user, state.to_json())


@app.page("/alerts/{user_id}")
@app.table_route(table=alert_state, match_info="user_id")
async def get_alert_state(web: Any, request: Any, user_id: str) -> Any:
    raw = alert_state.get(user_id)
    if raw is None:
        return web.json({"user_id": user_id, "error": "no churn signal for this user"}, status=404)
    return web.json(AlertState.from_json(raw).to_dict())


@app.page("/health")
async def health(web: Any, request: Any) -> Any:
    counts = dict(counters)
    if webhook is not None:
        counts.update(
            webhook_sent=webhook.sent,
            webhook_failed=webhook.failed,
            webhook_dropped=webhook.dropped,
        )
    body, status = liveness.health({"app_id": settings.alerter_app_id, "counts": counts})
    return web.json(body, status=status)


@app.page("/ready")
async def ready(web: Any, request: Any) -> Any:
    body, status = liveness.ready(bool(app.rebalancing))
    return web.json(body, status=status)


# A stopped agent answers 503 on /health and /ready and ends the process (stream.liveness).
liveness.watch(app, [alert_on_churn])
