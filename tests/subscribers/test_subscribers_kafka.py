"""The subscribers as real Faust worker subprocesses against a real Kafka broker.

* bidder (started as ``clicksignals bidder``): demand signals in -> bid adjustments out, latest
  per user (duplicates, older windows and a malformed record change nothing; a newer model's
  re-score of a window replaces), ``GET /bid/{user_id}``; after a restart the table comes back
  from its compacted changelog, so a re-emitted signal is still recognised as a duplicate;
* alerter (started as ``faust -A subscribers.alerting_app worker``): churn signals in -> one
  alert per crossing into high risk (hysteresis), on the topic, in the log and POSTed to a
  webhook whose first answer is an HTTP 500 (logged, not fatal);
* planner (started as ``clicksignals planner``): category forecasts and stock (a file, then the
  ``stock-levels`` topic) in -> reorder suggestions out, ``GET /forecast/{series}``.

Topics and app ids are unique to each test (``isolated_kafka_settings``); every output record
is validated against docs/schemas. Processes are always stopped; waits are bounded.
"""

from __future__ import annotations

import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from features.signals import ChurnSignal, DemandSignal
from ops import kafka_local
from settings import Settings
from tests.support.factories import T0, WEEK_MS, category_forecast, churn, demand
from tests.support.schemas import assert_valid
from tests.support.subscriber_harness import (
    Record,
    SubscriberProcess,
    produce,
    topic_config,
    wait_for_records,
    wait_until,
    webhook_receiver,
)

pytestmark = pytest.mark.kafka

BIN = Path(sys.executable).parent
Factory = Callable[..., SubscriberProcess]


def records_of(signals: list[DemandSignal] | list[ChurnSignal]) -> list[tuple[bytes, bytes]]:
    return [(s.user_id.encode(), orjson.dumps(s.to_dict())) for s in signals]


def by_user(records: list[Record]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        value = r.json()
        assert r.key == value["user_id"].encode()
        out.setdefault(value["user_id"], []).append(value)
    return out


def subscriber_settings(base: Settings, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "store_url": "memory://",
        "web_host": "127.0.0.1",
        "log_level": "INFO",
        "batch_timeout_s": 0.05,
    }
    values.update(overrides)
    return base.with_overrides(**values)


def test_bidder_keeps_the_latest_signal_per_user_and_serves_bids(
    isolated_kafka_settings: Settings, subscriber_factory: Factory, tmp_path: Path
) -> None:
    port = kafka_local.free_port()
    settings = subscriber_settings(isolated_kafka_settings, tmp_path, bidder_web_port=port)
    odd_user = "ü 7"
    u1_w1, u1_w2 = demand("u1", window=1, orders=1.12), demand("u1", window=2, orders=0.0)
    u2_old = demand("u2", window=1, model="m-old", orders=0.0, emitted=T0 + 10)
    u2_new = demand("u2", window=1, model="m-new", orders=1.68, emitted=T0 + 20)
    odd = demand(odd_user, window=1, orders=0.56, trigger="activity")
    first = [
        u1_w1,
        u1_w1,  # duplicate
        demand("u1", window=0, orders=9.0),  # older window: stale
        u1_w2,
        u2_old,
        u2_new,  # the same window re-scored by a newer model
        odd,
    ]
    # Produced before the worker starts: a new group reads its input from the beginning.
    produce(settings, settings.topics.demand, [(b"u9", b"{not json"), *records_of(first)])

    bidder = subscriber_factory("bidder", [str(BIN / "clicksignals"), "bidder"], settings, port)
    bidder.start().wait_ready()
    records = wait_for_records(
        bidder,
        group=settings.bidder_app_id,
        source=settings.topics.demand,
        output=settings.topics.bid_adjustments,
        expected=5,
    )
    assert len(records) == 5, [r.json() for r in records]
    for r in records:
        assert_valid("bid-adjustment", r.json())
    out = by_user(records)
    assert [a["source_signal_id"] for a in out["u1"]] == [u1_w1.signal_id, u1_w2.signal_id]
    assert [a["multiplier"] for a in out["u1"]] == [1.5, 0.5]
    assert [(a["model_version"], a["multiplier"]) for a in out["u2"]] == [
        ("m-old", 0.5),
        ("m-new", 2.0),
    ]
    assert out[odd_user][0]["multiplier"] == 1.0 and out[odd_user][0]["trigger"] == "activity"

    status, bid = bidder.get("/bid/u1")
    assert status == 200 and bid == out["u1"][-1]
    assert_valid("bid-adjustment", bid)
    assert bidder.get("/bid/u2")[1]["model_version"] == "m-new"
    status, bid = bidder.get("/bid/" + urllib.parse.quote(odd_user))
    assert status == 200 and bid["user_id"] == odd_user
    status, missing = bidder.get("/bid/nobody")
    assert status == 404 and missing["default_multiplier"] == 1.0
    status, health = bidder.get("/health")
    assert status == 200
    assert health["counts"] == {
        "rejected": 1,
        "newer": 5,
        "duplicate": 1,
        "stale": 1,
        "adjustments": 5,
    }
    changelog = f"{settings.bidder_app_id}-bids-changelog"
    assert topic_config(settings, changelog).get("cleanup.policy") == "compact"
    assert "refused record" in bidder.log_text()

    # Restart: the table is restored from the changelog (memory store, nothing on disk).
    bidder.stop()
    bidder.start().wait_ready()
    wait_until(lambda: bidder.get("/bid/u1")[0] == 200, 60, "u1's bid after the restart")
    assert bidder.get("/bid/u1")[1] == out["u1"][-1]
    re_emitted = demand("u1", window=2, orders=0.0, emitted=T0 + 10**9)  # same id, later
    assert re_emitted.signal_id == u1_w2.signal_id
    u1_w3 = demand("u1", window=3, orders=2.24)
    produce(settings, settings.topics.demand, records_of([re_emitted, u1_w3]))
    records = wait_for_records(
        bidder,
        group=settings.bidder_app_id,
        source=settings.topics.demand,
        output=settings.topics.bid_adjustments,
        expected=6,
    )
    assert len(records) == 6
    latest = by_user(records)["u1"][-1]
    assert latest["source_signal_id"] == u1_w3.signal_id and latest["multiplier"] == 2.0
    assert bidder.get("/bid/u1")[1] == latest
    assert bidder.exit_codes == [0]


def test_alerter_raises_once_per_crossing_to_topic_log_and_webhook(
    isolated_kafka_settings: Settings, subscriber_factory: Factory, tmp_path: Path
) -> None:
    with webhook_receiver(fail_first=1) as hook:
        port = kafka_local.free_port()
        settings = subscriber_settings(
            isolated_kafka_settings,
            tmp_path,
            alerter_web_port=port,
            alert_high_threshold=0.8,
            alert_recovery_threshold=0.5,
            alert_webhook_url=hook.url,
        )
        alerter = subscriber_factory(
            "alerter",
            [
                sys.executable,
                "-m",
                "faust",
                "-A",
                "subscribers.alerting_app",
                "worker",
                "-l",
                "info",
            ],
            settings,
            port,
        )
        alerter.start().wait_ready()

        u1 = [churn("u1", window=w, p=p) for w, p in enumerate([0.2, 0.9, 0.95, 0.6])]
        signals = [
            *u1,
            u1[1],  # duplicate of the high signal
            churn("u1", window=4, p=0.3),  # recovered
            churn("u1", window=5, p=0.9),  # alert 2
            churn("u1", window=-1, p=0.99),  # older window: stale
            churn("u2", window=0, p=0.82),  # risk level medium, but >= 0.8
            churn("u3", window=0, p=0.3),
            churn("u3", window=1, p=0.6),
        ]
        produce(settings, settings.topics.churn, [*records_of(signals), (b"u1", b"[]")])
        records = wait_for_records(
            alerter,
            group=settings.alerter_app_id,
            source=settings.topics.churn,
            output=settings.topics.churn_alerts,
            expected=3,
        )
        assert len(records) == 3, [r.json() for r in records]
        for r in records:
            assert_valid("churn-alert", r.json())
        out = by_user(records)
        assert sorted(out) == ["u1", "u2"]
        assert [(a["alert_seq"], a["reason"]) for a in out["u1"]] == [
            (1, "risk_level_high"),
            (2, "risk_level_high"),
        ]
        assert [a["source_signal_id"] for a in out["u1"]] == [
            u1[1].signal_id,
            churn("u1", window=5, p=0.9).signal_id,
        ]
        assert out["u2"][0]["reason"] == "probability_threshold"

        # Webhook: every alert POSTed as JSON; the first answer was a 500, logged, not fatal.
        wait_until(lambda: len(hook.received) >= 3, 30, "3 webhook POSTs")
        alerts = {r.json()["alert_id"]: r.json() for r in records}
        assert {p["body"]["alert_id"]: p["body"] for p in hook.received} == alerts
        assert {p["content_type"] for p in hook.received} == {"application/json"}
        assert alerter.alive()
        log = alerter.log_text()
        assert "alert webhook http://127.0.0.1" in log and "HTTP 500" in log
        assert "secret-token" not in log
        assert sum(f'"alert_id":"{a}"' in log for a in alerts) == 3  # the log sink

        status, state = alerter.get("/alerts/u1")
        assert status == 200 and state["state"] == "alerting" and state["alerts_raised"] == 2
        assert alerter.get("/alerts/u3")[1]["state"] == "armed"
        status, health = alerter.get("/health")
        counts = health["counts"]
        assert (counts["alerts"], counts["recovered"], counts["rejected"]) == (3, 1, 1)
        assert (counts["duplicate"], counts["stale"]) == (1, 1)
        assert (counts["webhook_sent"], counts["webhook_failed"]) == (2, 1)


def test_planner_suggests_reorders_from_category_forecasts_and_stock(
    isolated_kafka_settings: Settings, subscriber_factory: Factory, tmp_path: Path
) -> None:
    """Series: one low on stock (from the file), one with plenty, one with no stock known, an
    odd name; a duplicate forecast, an older one and a malformed record; then stock on the
    topic that runs one series low."""
    port = kafka_local.free_port()
    stock_file = tmp_path / "stock.csv"
    stock_file.write_text("series,on_hand,on_order,as_of_ms\n851,10,0,0\n222,1000,0,0\nü 7,0,0,0\n")
    settings = subscriber_settings(
        isolated_kafka_settings,
        tmp_path,
        planner_web_port=port,
        planner_stock_csv=str(stock_file),
    )
    low, plenty, unknown, odd, older = (
        f.to_dict()
        for f in (
            category_forecast("851"),
            category_forecast("222"),
            category_forecast("999"),
            category_forecast("ü 7", p90=1.0),
            category_forecast("851", end_ms=T0 - WEEK_MS, version="d-0"),
        )
    )
    records = [low, low, older, plenty, unknown, odd]
    produce(
        settings,
        settings.topics.category_demand,
        [(b"851", b"{not json"), *((r["series"].encode(), orjson.dumps(r)) for r in records)],
    )
    planner = subscriber_factory("planner", [str(BIN / "clicksignals"), "planner"], settings, port)
    planner.start().wait_ready()
    out = wait_for_records(
        planner,
        group=settings.planner_app_id,
        source=settings.topics.category_demand,
        output=settings.topics.reorder_suggestions,
        expected=2,
    )
    suggestions = {r.key: r.json() for r in out}
    assert len(out) == 2 and set(suggestions) == {b"851", "ü 7".encode()}
    for s in suggestions.values():
        assert_valid("reorder-suggestion", s)
    # Three weeks of cover at a P90 of 20 a week, 10 on hand; and 3 x 1 against none.
    assert suggestions[b"851"]["quantity"] == 50
    assert suggestions["ü 7".encode()]["quantity"] == 3

    status, body = planner.get("/forecast/851")
    assert status == 200 and body["forecast_id"] == low["forecast_id"]
    assert body["stock"]["on_hand"] == 10.0
    assert body["last_suggestion_id"] == suggestions[b"851"]["suggestion_id"]
    assert planner.get("/forecast/" + urllib.parse.quote("ü 7"))[0] == 200
    assert planner.get("/forecast/nothing")[0] == 404

    # Stock on the topic: 222 runs low (a suggestion), 851 is restocked (none).
    produce(
        settings,
        settings.topics.stock_levels,
        [
            (b"222", orjson.dumps({"series": "222", "on_hand": 5, "as_of_ms": T0 + 1})),
            (b"851", orjson.dumps({"series": "851", "on_hand": 500, "as_of_ms": T0 + 1})),
        ],
    )
    out = wait_for_records(
        planner,
        group=settings.planner_app_id,
        source=settings.topics.stock_levels,
        output=settings.topics.reorder_suggestions,
        expected=3,
    )
    assert len(out) == 3
    (restock,) = [r.json() for r in out if r.key == b"222"]
    assert restock["quantity"] == 55  # 60 over the cover against 5 on hand
    status, health = planner.get("/health")
    assert status == 200
    counts = health["counts"]
    assert counts["rejected"] == 1 and counts["duplicate"] == 1 and counts["stale"] == 1
    assert counts["no_stock"] == 1 and counts["suggestions"] == 3
    assert planner.get("/forecast/851")[1]["stock"]["on_hand"] == 500.0
