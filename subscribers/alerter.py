"""The churn-alerting subscriber, built by :func:`create_alerter` (nothing happens at import).

:func:`create_alerter` builds an :class:`Alerter`: the Faust app, the churn input topic, the
alerts output topic, the table ``alert-state`` (changelog
``<alerter_app_id>-alert-state-changelog``), the optional webhook task, the agent and the web
views. :mod:`subscribers.alerting_app` is the ``faust -A subscribers.alerting_app worker``
entry point that calls it.

For every alert raised (:mod:`subscribers.alerting`: hysteresis and de-duplication) the alerter
sends it to ``settings.topics.churn_alerts`` keyed by user, then -- once Kafka has it -- to the
log sink and, when ``settings.subscribers.alert_webhook_url`` is set, to the webhook
(:mod:`subscribers.sinks`); the table is written last. Web views on
``worker.web_host:subscribers.alerter_web_port`` (settings): ``GET /health`` (counters; 503 with
the reason once the agent stopped, and the process exits with status 70: :mod:`stream.liveness`),
``GET /ready`` (503 while rebalancing or stopped) and ``GET /alerts/{user_id}`` (the user's alert
state).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import faust

from settings import Settings
from stream.liveness import Liveness
from subscribers import alerting
from subscribers.alerting import AlertConfig, AlertState, ChurnAlert
from subscribers.records import parse_churn
from subscribers.runtime import RAW, TableFocus, UserBatch, config_or_exit, make_app, now_ms
from subscribers.sinks import WebhookSink, log_alert

log = logging.getLogger(__name__)

# The agent keeps the name it had when the app was built at import (see subscribers.bidder).
AGENT_NAME = "subscribers.alerting_app.alert_on_churn"


@dataclass
class Alerter:
    """One alerter process's parts; :meth:`handle_batch` is the agent's whole work."""

    settings: Settings
    config: AlertConfig
    app: faust.App
    churn_topic: Any
    alerts_topic: Any
    alert_state: Any
    webhook: WebhookSink | None = None
    liveness: Liveness = field(default_factory=lambda: Liveness("clicksignals alerter"))
    counters: Counter[str] = field(default_factory=Counter)
    alert_on_churn: Any = None

    def __post_init__(self) -> None:
        self._table = TableFocus(self.alert_state)

    async def handle_batch(self, events: list[Any]) -> None:
        """Churn signals -> alerts: sent and acknowledged, then the sinks, then the table."""
        batch = UserBatch("alerter", self._table, parse_churn, AlertState.from_json, self.counters)
        raised: list[ChurnAlert] = []
        for event, signal, held in batch.signals(events):
            # Looked up on the module at each call: the liveness test replaces it.
            decision = alerting.apply_churn(held, signal, self.config, now_ms())
            self.counters[decision.outcome] += 1
            if decision.outcome != "newer" or decision.state is None:
                continue
            batch.keep(event, signal.user_id, decision.state)
            if decision.transition == "recovered":
                self.counters["recovered"] += 1
                log.info(
                    "churn alert cleared: user %s recovered (p=%.3f)",
                    signal.user_id,
                    signal.churn_probability,
                )
            if decision.alert is not None:
                raised.append(decision.alert)
                await batch.send(self.alerts_topic, signal.user_id, decision.alert.to_dict())
        self.counters["alerts"] += await batch.delivered()
        for alert in raised:
            log_alert(alert)
            if self.webhook is not None:
                self.webhook.submit(alert.to_dict())
        batch.write_states()


def create_alerter(settings: Settings) -> Alerter:
    """Build the alerter for ``settings``; bad alerting settings end the process with the
    reason."""
    config = config_or_exit(AlertConfig.from_settings, settings.subscribers, "alerter")
    app = make_app(
        settings,
        app_id=settings.alerter_app_id,
        web_port=settings.subscribers.alerter_web_port,
        name="alerter",
    )
    sub = settings.subscribers
    alerter = Alerter(
        settings=settings,
        config=config,
        app=app,
        churn_topic=app.topic(settings.topics.churn, **RAW),
        alerts_topic=app.topic(settings.topics.churn_alerts, **RAW),
        alert_state=app.Table(
            "alert-state",
            default=None,
            key_type=str,
            value_type=bytes,
            partitions=settings.topics.partitions,
        ),
        webhook=(
            WebhookSink(sub.alert_webhook_url.reveal(), timeout_s=sub.alert_webhook_timeout_s)
            if sub.alert_webhook_url
            else None
        ),
    )
    _register_agent(alerter)
    _register_views(alerter)
    return alerter


def _register_agent(alerter: Alerter) -> None:
    app, s, webhook = alerter.app, alerter.settings, alerter.webhook
    if webhook is not None:

        @app.task
        async def post_alerts() -> None:
            """Background webhook poster (failures are logged by the sink, never raised)."""
            await webhook.run()

    async def alert_on_churn(stream: Any) -> None:
        async for events in stream.take_events(
            s.worker.batch_size, within=s.worker.batch_timeout_s
        ):
            await alerter.liveness.run_batch("alert_on_churn", events, alerter.handle_batch)

    alerter.alert_on_churn = app.agent(alerter.churn_topic, name=AGENT_NAME)(alert_on_churn)
    # A stopped agent answers 503 on /health and /ready and ends the process (stream.liveness).
    alerter.liveness.watch(app, [alerter.alert_on_churn])


def _register_views(alerter: Alerter) -> None:
    app, table = alerter.app, alerter.alert_state

    @app.page("/alerts/{user_id}")
    @app.table_route(table=table, match_info="user_id")
    async def get_alert_state(web: Any, request: Any, user_id: str) -> Any:
        raw = table.get(user_id)
        if raw is None:
            return web.json(
                {"user_id": user_id, "error": "no churn signal for this user"}, status=404
            )
        return web.json(AlertState.from_json(raw).to_dict())

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        counts = dict(alerter.counters)
        if alerter.webhook is not None:
            counts.update(
                webhook_sent=alerter.webhook.sent,
                webhook_failed=alerter.webhook.failed,
                webhook_dropped=alerter.webhook.dropped,
            )
        body, status = alerter.liveness.health(
            {"app_id": alerter.settings.alerter_app_id, "counts": counts}
        )
        return web.json(body, status=status)

    @app.page("/ready")
    async def ready(web: Any, request: Any) -> Any:
        body, status = alerter.liveness.ready(bool(app.rebalancing))
        return web.json(body, status=status)


__all__ = ["AGENT_NAME", "Alerter", "create_alerter"]
