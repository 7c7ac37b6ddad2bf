"""The ad-bidding subscriber, built by :func:`create_bidder` (nothing happens at import).

:func:`create_bidder` builds a :class:`Bidder`: the Faust app, the demand input topic, the
adjustments output topic, the table ``bids`` (changelog ``<bidder_app_id>-bids-changelog``:
compacted, one record per user), the agent and the web views. :mod:`subscribers.bidding_app`
is the ``faust -A subscribers.bidding_app worker`` entry point that calls it.

Each demand signal is turned into a bid adjustment by :func:`subscribers.bidding.apply_demand`
(the multiplier and the ordering rules live there); every accepted change is sent to
``settings.topics.bid_adjustments`` keyed by user, acknowledged by Kafka, and only then written
to the table. Web views on ``worker.web_host:subscribers.bidder_web_port`` (settings):

* ``GET /bid/{user_id}`` -- the user's current adjustment (the record last published for them;
  routed to the worker holding the user when several run), or 404 with ``default_multiplier``
  (the neutral multiplier) for a user without a demand signal;
* ``GET /health`` -- status and counters of signals by outcome; 503 with the reason once the
  agent stopped (the process then exits with status 70: :mod:`stream.liveness`);
* ``GET /ready`` -- 503 while rebalancing or stopped.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import faust

from settings import Settings
from stream.liveness import Liveness
from subscribers import bidding
from subscribers.bidding import BidConfig, BidState
from subscribers.records import parse_demand
from subscribers.runtime import RAW, TableFocus, UserBatch, config_or_exit, make_app, now_ms

log = logging.getLogger(__name__)

# The agent keeps the name it had when the app was built at import, so that logs, the
# liveness reason and Faust's agent registry read as before.
AGENT_NAME = "subscribers.bidding_app.bid_on_demand"


@dataclass
class Bidder:
    """One bidder process's parts; :meth:`handle_batch` is the agent's whole work."""

    settings: Settings
    config: BidConfig
    app: faust.App
    demand_topic: Any
    adjustments_topic: Any
    bids: Any
    liveness: Liveness = field(default_factory=lambda: Liveness("clicksignals bidder"))
    counters: Counter[str] = field(default_factory=Counter)
    bid_on_demand: Any = None

    def __post_init__(self) -> None:
        self._table = TableFocus(self.bids)

    async def handle_batch(self, events: list[Any]) -> None:
        """Demand signals -> adjustments: sent and acknowledged first, then the table written."""
        batch = UserBatch("bidder", self._table, parse_demand, BidState.from_json, self.counters)
        for event, signal, held in batch.signals(events):
            # Looked up on the module at each call: the liveness test replaces it.
            decision = bidding.apply_demand(held, signal, self.config, now_ms())
            self.counters[decision.outcome] += 1
            if decision.adjustment is None or decision.state is None:
                continue
            batch.keep(event, signal.user_id, decision.state)
            await batch.send(self.adjustments_topic, signal.user_id, decision.adjustment.to_dict())
        self.counters["adjustments"] += await batch.delivered()
        batch.write_states()


def create_bidder(settings: Settings) -> Bidder:
    """Build the bidder for ``settings``; bad bidding settings end the process with the reason."""
    config = config_or_exit(BidConfig.from_settings, settings.subscribers, "bidder")
    app = make_app(
        settings,
        app_id=settings.bidder_app_id,
        web_port=settings.subscribers.bidder_web_port,
        name="bidder",
    )
    bidder = Bidder(
        settings=settings,
        config=config,
        app=app,
        demand_topic=app.topic(settings.topics.demand, **RAW),
        adjustments_topic=app.topic(settings.topics.bid_adjustments, **RAW),
        bids=app.Table(
            "bids",
            default=None,
            key_type=str,
            value_type=bytes,
            partitions=settings.topics.partitions,
        ),
    )
    _register_agent(bidder)
    _register_views(bidder)
    return bidder


def _register_agent(bidder: Bidder) -> None:
    s = bidder.settings

    async def bid_on_demand(stream: Any) -> None:
        async for events in stream.take_events(
            s.worker.batch_size, within=s.worker.batch_timeout_s
        ):
            await bidder.liveness.run_batch("bid_on_demand", events, bidder.handle_batch)

    bidder.bid_on_demand = bidder.app.agent(bidder.demand_topic, name=AGENT_NAME)(bid_on_demand)
    # A stopped agent answers 503 on /health and /ready and ends the process (stream.liveness).
    bidder.liveness.watch(bidder.app, [bidder.bid_on_demand])


def _register_views(bidder: Bidder) -> None:
    app, bids = bidder.app, bidder.bids

    @app.page("/bid/{user_id}")
    @app.table_route(table=bids, match_info="user_id")
    async def get_bid(web: Any, request: Any, user_id: str) -> Any:
        raw = bids.get(user_id)
        if raw is None:
            return web.json(
                {
                    "user_id": user_id,
                    "error": "no demand signal for this user",
                    "default_multiplier": bidder.config.neutral,
                },
                status=404,
            )
        return web.json(BidState.from_json(raw).adjustment.to_dict())

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        body, status = bidder.liveness.health(
            {"app_id": bidder.settings.bidder_app_id, "counts": dict(bidder.counters)}
        )
        return web.json(body, status=status)

    @app.page("/ready")
    async def ready(web: Any, request: Any) -> Any:
        body, status = bidder.liveness.ready(bool(app.rebalancing))
        return web.json(body, status=status)


__all__ = ["AGENT_NAME", "Bidder", "create_bidder"]
