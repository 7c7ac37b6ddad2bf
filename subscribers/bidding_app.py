"""The ad-bidding subscriber: ``faust -A subscribers.bidding_app worker`` (``clicksignals bidder``).

Consumes ``settings.topics.demand``, keeps each user's current adjustment in the table ``bids``
(changelog ``<bidder_app_id>-bids-changelog``: compacted, one record per user), publishes every
accepted change to ``settings.topics.bid_adjustments`` keyed by user, and serves

* ``GET /bid/{user_id}`` -- the user's current adjustment (the record last published for them;
  routed to the worker holding the user when several run), or 404 with ``default_multiplier``
  (the neutral multiplier) for a user without a demand signal;
* ``GET /health`` -- status and counters of signals by outcome; 503 with the reason once the
  agent stopped (the process then exits with status 70: :mod:`stream.liveness`);
* ``GET /ready`` -- 503 while rebalancing or stopped.

on ``worker.web_host:subscribers.bidder_web_port`` (settings). The multiplier and the ordering
rules are in :mod:`subscribers.bidding`; this module only wires them to Kafka.
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
from subscribers.bidding import BidConfig, BidState, apply_demand
from subscribers.records import Rejected, parse_demand
from subscribers.runtime import RAW, TableFocus, config_or_exit, make_app, now_ms

log = logging.getLogger(__name__)

settings = load_settings()
config: BidConfig = config_or_exit(BidConfig.from_settings, settings.subscribers, "bidder")

app = make_app(
    settings,
    app_id=settings.bidder_app_id,
    web_port=settings.subscribers.bidder_web_port,
    name="bidder",
)
demand_topic = app.topic(settings.topics.demand, **RAW)
adjustments_topic = app.topic(settings.topics.bid_adjustments, **RAW)
bids = app.Table(
    "bids", default=None, key_type=str, value_type=bytes, partitions=settings.topics.partitions
)
_table = TableFocus(bids)
counters: Counter[str] = Counter()
liveness = Liveness("clicksignals bidder")


@app.agent(demand_topic)
async def bid_on_demand(stream: Any) -> None:
    """Demand signals -> adjustments: sent and acknowledged first, then the table written."""
    async for events in stream.take_events(
        settings.worker.batch_size, within=settings.worker.batch_timeout_s
    ):
        await liveness.run_batch("bid_on_demand", events, handle_batch)


async def handle_batch(events: list[Any]) -> None:
    states: dict[str, BidState] = {}
    owners: dict[str, Any] = {}
    sent: list[Any] = []
    for event in events:
        signal = parse_demand(event.message.value)
        if isinstance(signal, Rejected):
            counters["rejected"] += 1
            log.warning(
                "bidder: refused record %s:%d@%d: %s (%s)",
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
            held = BidState.from_json(raw) if raw is not None else None
        decision = apply_demand(held, signal, config, now_ms())
        counters[decision.outcome] += 1
        if decision.adjustment is None or decision.state is None:
            continue
        states[user], owners[user] = decision.state, event
        sent.append(
            await adjustments_topic.send(
                key=user.encode(), value=orjson.dumps(decision.adjustment.to_dict())
            )
        )
    await asyncio.gather(*(f for f in sent if inspect.isawaitable(f)))
    counters["adjustments"] += len(sent)
    for user, state in states.items():
        _table.set(owners[user], user, state.to_json())


@app.page("/bid/{user_id}")
@app.table_route(table=bids, match_info="user_id")
async def get_bid(web: Any, request: Any, user_id: str) -> Any:
    raw = bids.get(user_id)
    if raw is None:
        return web.json(
            {
                "user_id": user_id,
                "error": "no demand signal for this user",
                "default_multiplier": config.neutral,
            },
            status=404,
        )
    return web.json(BidState.from_json(raw).adjustment.to_dict())


@app.page("/health")
async def health(web: Any, request: Any) -> Any:
    body, status = liveness.health({"app_id": settings.bidder_app_id, "counts": dict(counters)})
    return web.json(body, status=status)


@app.page("/ready")
async def ready(web: Any, request: Any) -> Any:
    body, status = liveness.ready(bool(app.rebalancing))
    return web.json(body, status=status)


# A stopped agent answers 503 on /health and /ready and ends the process (stream.liveness).
liveness.watch(app, [bid_on_demand])
