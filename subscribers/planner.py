"""The stock planner's Faust app: category forecasts and stock in, reorder suggestions out.

:func:`create_planner` builds a :class:`Planner`: the Faust app (id
``settings.planner_app_id``), its two input topics, ``category-demand`` (the worker's category
forecasts) and ``stock-levels`` (stock per series, from whatever system counts it), both keyed
by series and so co-partitioned; the output topic ``reorder-suggestions``; the table ``plans``
(one value per series: its newest forecast, its newest stock from the topic, its last
suggestion; changelog-backed); one agent over both topics; the web views.
:mod:`subscribers.planning_app` is the ``faust -A subscribers.planning_app worker`` entry point.

The decisions are :mod:`subscribers.planning`'s pure functions (``on_forecast``, ``on_stock``,
the rule ``p90-lead-time-v1``); the agent parses,
calls them, sends each suggestion, waits for Kafka's acknowledgement and only then writes the
table, as the other subscribers do. A record that cannot be parsed is counted and logged,
never raised. Stock may also come from a CSV file (``CLICKSIGNALS_PLANNER_STOCK_CSV``), read at
start-up: a file that cannot be read stops the planner with the row and the problem.

Web views on ``worker.web_host:subscribers.planner_web_port``:

* ``GET /forecast/{series}`` -- the newest ``category-demand`` record of the series, with the
  stock the planner plans with and its last suggestion's id (routed to the worker holding the
  series); 404 for a series without a forecast;
* ``GET /health`` -- status and counts by outcome; 503 with the reason once the agent stopped;
* ``GET /ready`` -- 503 while rebalancing or stopped.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
import orjson

from settings import Settings
from stream.liveness import Liveness
from subscribers import planning
from subscribers.planning import PlanningConfig, PlanState, StockLevel
from subscribers.records import Rejected
from subscribers.runtime import RAW, TableFocus, config_or_exit, make_app

log = logging.getLogger(__name__)

AGENT_NAME = "subscribers.planning_app.plan_stock"


@dataclass
class Planner:
    """One planner process's parts; :meth:`handle_batch` is the agent's whole work."""

    settings: Settings
    config: PlanningConfig
    file_stock: dict[str, StockLevel]
    app: faust.App
    forecast_topic: Any
    stock_topic: Any
    suggestions_topic: Any
    plans: Any
    liveness: Liveness = field(default_factory=lambda: Liveness("clicksignals planner"))
    counters: Counter[str] = field(default_factory=Counter)
    plan_stock: Any = None

    def __post_init__(self) -> None:
        self._table = TableFocus(self.plans)

    async def handle_batch(self, events: list[Any]) -> None:
        """Forecasts and stock -> suggestions: sent and acknowledged, then the table written."""
        stock_topic = self.settings.topics.stock_levels
        states: dict[str, tuple[Any, PlanState]] = {}
        sent: list[Any] = []
        for event in events:
            value = event.message.value
            is_stock = event.message.topic == stock_topic
            parsed = planning.parse_stock(value) if is_stock else planning.parse_forecast(value)
            if isinstance(parsed, Rejected):
                self.counters["rejected"] += 1
                log.warning(
                    "planner: refused record %s:%d@%d: %s (%s)",
                    event.message.topic,
                    event.message.partition,
                    event.message.offset,
                    parsed.reason,
                    parsed.detail,
                )
                continue
            series = parsed.series
            held = states[series][1] if series in states else self._held(event, series)
            if isinstance(parsed, StockLevel):
                plan, _ = planning.on_stock(held, parsed, self.config)
            else:
                plan = planning.on_forecast(
                    held,
                    parsed,
                    orjson.loads(value),
                    self.file_stock.get(series),
                    self.config,
                )
            self.counters[plan.outcome] += 1
            if plan.state is not None:
                states[series] = (event, plan.state)
            if plan.suggestion is not None:
                sent.append(
                    await self.suggestions_topic.send(
                        key=series.encode("utf-8", "surrogatepass"),
                        value=orjson.dumps(plan.suggestion.to_dict()),
                    )
                )
        await asyncio.gather(*(f for f in sent if inspect.isawaitable(f)))
        self.counters["suggestions"] += len(sent)
        for series, (event, state) in states.items():
            self._table.set(event, series, state.to_json())

    def _held(self, event: Any, series: str) -> PlanState | None:
        raw = self._table.get(event, series)
        return PlanState.from_json(raw) if raw is not None else None


def _file_stock(settings: Settings) -> dict[str, StockLevel]:
    path = settings.subscribers.planner_stock_csv
    if not path:
        return {}
    stock = planning.read_stock_csv(Path(path))
    log.info("planner: stock of %d series read from %s", len(stock), path)
    return stock


def create_planner(settings: Settings) -> Planner:
    """Build the planner for ``settings``; bad planning settings or an unreadable stock file
    end the process with the reason."""
    s = settings.subscribers
    config = config_or_exit(
        lambda _: PlanningConfig(s.planner_lead_time_days, s.planner_review_days),
        settings,
        "planner",
    )
    file_stock = config_or_exit(_file_stock, settings, "planner")
    app = make_app(
        settings, app_id=settings.planner_app_id, web_port=s.planner_web_port, name="planner"
    )
    planner = Planner(
        settings=settings,
        config=config,
        file_stock=file_stock,
        app=app,
        forecast_topic=app.topic(settings.topics.category_demand, **RAW),
        stock_topic=app.topic(settings.topics.stock_levels, **RAW),
        suggestions_topic=app.topic(settings.topics.reorder_suggestions, **RAW),
        plans=app.Table(
            "plans",
            default=None,
            key_type=str,
            value_type=bytes,
            partitions=settings.topics.partitions,
        ),
    )
    _register_agent(planner)
    _register_views(planner)
    return planner


def _register_agent(planner: Planner) -> None:
    s = planner.settings
    channel = planner.app.topic(s.topics.category_demand, s.topics.stock_levels, **RAW)

    async def plan_stock(stream: Any) -> None:
        async for events in stream.take_events(
            s.worker.batch_size, within=s.worker.batch_timeout_s
        ):
            await planner.liveness.run_batch("plan_stock", events, planner.handle_batch)

    planner.plan_stock = planner.app.agent(channel, name=AGENT_NAME)(plan_stock)
    planner.liveness.watch(planner.app, [planner.plan_stock])


def _register_views(planner: Planner) -> None:
    app, plans = planner.app, planner.plans

    @app.page("/forecast/{series}")
    @app.table_route(table=plans, match_info="series")
    async def get_forecast(web: Any, request: Any, series: str) -> Any:
        raw = plans.get(series)
        state = PlanState.from_json(raw) if raw is not None else None
        if state is None or state.forecast is None:
            return web.json({"series": series, "error": "no forecast for this series"}, status=404)
        stock = planning.newest_stock(state.stock, planner.file_stock.get(series))
        return web.json(
            {
                **state.forecast,
                "stock": None
                if stock is None
                else {
                    "on_hand": stock.on_hand,
                    "on_order": stock.on_order,
                    "as_of_ms": stock.as_of_ms,
                },
                "last_suggestion_id": state.last_suggestion_id,
            }
        )

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        body, status = planner.liveness.health(
            {"app_id": planner.settings.planner_app_id, "counts": dict(planner.counters)}
        )
        return web.json(body, status=status)

    @app.page("/ready")
    async def ready(web: Any, request: Any) -> Any:
        body, status = planner.liveness.ready(bool(app.rebalancing))
        return web.json(body, status=status)


__all__ = ["AGENT_NAME", "Planner", "create_planner"]
