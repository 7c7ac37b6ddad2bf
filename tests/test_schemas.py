"""docs/schemas: one JSON Schema (draft 2020-12) per topic, checked against real records.

Records come from the code that writes them: ``features.signals`` (demand, churn, dead letters),
``ingest.adapters.to_wire_bytes`` (the clickstream's wire form) and the subscribers' pure modules
(bid adjustments, churn alerts). Every output schema lists exactly the keys ``to_dict`` writes,
so neither can change without the other. The Kafka tier (tests/subscribers) validates what the
running subscribers publish against the same files.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
import pytest
from jsonschema import Draft202012Validator

from features.events import EVENT_TYPES, ClickEvent
from features.signals import DLQ_MAX_RAW_BYTES, DeadLetter, Invalid
from features.validation import DEFAULT_POLICY, validate
from ingest.adapters import events_to_frame, to_wire_bytes
from ingest.generator import generate_clickstream
from subscribers.alerting import AlertConfig, apply_churn
from subscribers.bidding import BidConfig, adjustment_for
from subscribers.planning import (
    PlanningConfig,
    StockLevel,
    on_forecast,
    parse_forecast,
    parse_stock,
)
from subscribers.records import Rejected
from tests.support.factories import T0, category_forecast, churn, demand
from tests.support.schemas import SCHEMA_DIR, assert_invalid, assert_valid, load_schema

NAMES = (
    "clickstream-event",
    "demand-signal",
    "churn-signal",
    "dead-letter",
    "bid-adjustment",
    "churn-alert",
    "prediction-outcome",
    "model-quality",
    "category-demand",
    "reorder-suggestion",
    "stock-level",
)
NOW = T0 + 10**9


def wire(record: dict[str, Any]) -> Any:
    """The record as a consumer sees it: through orjson, as the apps publish it."""
    return json.loads(orjson.dumps(record))


def test_the_directory_holds_exactly_the_topic_schemas() -> None:
    assert sorted(p.name for p in SCHEMA_DIR.glob("*.json")) == sorted(
        f"{n}.schema.json" for n in NAMES
    )


@pytest.mark.parametrize("name", NAMES)
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    schema = load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    assert schema["title"] and schema["description"]
    for example in schema.get("examples", []):
        assert_valid(name, example)


# --------------------------------------------------------------------------------------------
# Clickstream events
# --------------------------------------------------------------------------------------------


def test_wire_events_of_a_generated_frame_validate() -> None:
    frame = generate_clickstream(n_users=30, days=10, seed=3)
    records = to_wire_bytes(frame)
    assert len(records) > 50
    seen_types = set()
    for key, value in records:
        event = orjson.loads(value)
        assert_valid("clickstream-event", event)
        assert key == str(event["user_id"]).encode()
        seen_types.add(event["event_type"])
    assert len(seen_types) >= 3


def test_wire_events_with_every_optional_field_validate() -> None:
    events = [
        ClickEvent(T0, t, "u1", "p1", "cat.sub", "brand", 9.99, 3, "s1", "o1") for t in EVENT_TYPES
    ] + [ClickEvent(T0 + 1, "view", "u2")]
    for _, value in to_wire_bytes(events_to_frame(events)):
        assert_valid("clickstream-event", orjson.loads(value))


def test_clickstream_schema_states_the_validator_contract() -> None:
    schema = load_schema("clickstream-event")
    assert schema["properties"]["event_type"]["enum"] == list(EVENT_TYPES)
    assert schema["required"] == ["event_time", "event_type", "user_id"]
    accepted = [
        {"event_time": "2019-10-01T00:00:00Z", "event_type": "view", "user_id": 17},
        {"event_time": "2019-10-01T02:00:00.5+02:00", "event_type": "cart", "user_id": "a"},
        {"event_time": "2019-10-01", "event_type": "purchase", "user_id": "a"},
        {"event_time": T0, "event_type": "purchase", "user_id": "u", "quantity": 2.0},
        {"event_time": T0, "event_type": "view", "user_id": "u", "price": None, "extra": 1},
    ]
    for event in accepted:
        assert_valid("clickstream-event", event)
        assert not isinstance(
            validate(json.dumps(event).encode(), now_ms=NOW, policy=DEFAULT_POLICY), Invalid
        )
    refused = [
        {"event_type": "view", "user_id": "u"},
        {"event_time": T0, "event_type": "click", "user_id": "u"},
        {"event_time": T0, "event_type": "view", "user_id": "  "},
        {"event_time": T0, "event_type": "view", "user_id": 1.5},
        {"event_time": "2019-10-01T00:00:00", "event_type": "view", "user_id": "u"},
        {"event_time": "2019-10-01T00", "event_type": "view", "user_id": "u"},
        {"event_time": T0 + 0.5, "event_type": "view", "user_id": "u"},
        {"event_time": T0, "event_type": "view", "user_id": "u", "price": -1},
        {"event_time": T0, "event_type": "view", "user_id": "u", "quantity": 0},
        {"event_time": T0, "event_type": "view", "user_id": "u", "product_id": "x" * 300},
    ]
    for event in refused:
        assert_invalid("clickstream-event", event)
        assert isinstance(
            validate(json.dumps(event).encode(), now_ms=NOW, policy=DEFAULT_POLICY), Invalid
        )


# --------------------------------------------------------------------------------------------
# Worker outputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("trigger", ["window_close", "activity"])
def test_demand_signals_validate(trigger: str) -> None:
    for orders in (0.0, 0.56, 12.3):
        record = wire(demand("u-1", orders=orders, trigger=trigger, window=2).to_dict())
        assert_valid("demand-signal", record)


@pytest.mark.parametrize("days", [None, 0.0, 41.5])
def test_churn_signals_validate(days: float | None) -> None:
    for p in (0.0, 0.5, 0.9, 1.0):
        assert_valid("churn-signal", wire(churn("u-1", p=p, days=days).to_dict()))


def dead_letters() -> list[dict[str, Any]]:
    raws = [b"not json", b"\xff\xfe", b"[1]", b'{"event_type": "view"}', b"x" * 70_000]
    out = []
    for i, raw in enumerate(raws):
        policy = DEFAULT_POLICY if len(raw) < 70_000 else type(DEFAULT_POLICY)(max_bytes=100_000)
        invalid = validate(raw, now_ms=NOW, policy=policy)
        assert isinstance(invalid, Invalid)
        out.append(
            DeadLetter.from_invalid(
                invalid, raw, source_topic="clickstream", partition=1, offset=i, received_at_ms=NOW
            ).to_dict()
        )
    late = DeadLetter("late", "event_time", "window closed", "clickstream", 0, 9, b"{}", NOW)
    return [*out, late.to_dict()]


def test_dead_letters_validate() -> None:
    records = dead_letters()
    assert any(r["raw_truncated"] for r in records)
    assert any(r["field"] is None for r in records) and any(r["field"] for r in records)
    assert max(r["raw_size"] for r in records) > DLQ_MAX_RAW_BYTES
    for record in records:
        assert_valid("dead-letter", wire(record))


# --------------------------------------------------------------------------------------------
# Subscriber outputs
# --------------------------------------------------------------------------------------------


def adjustments() -> list[dict[str, Any]]:
    configs = [BidConfig(), BidConfig(floor=0.1, cap=10.0, sensitivity=3.0)]
    return [
        adjustment_for(demand("u-1", orders=o, trigger=t), c, NOW).to_dict()
        for c in configs
        for o in (0.0, 0.3, 1e9)
        for t in ("window_close", "activity")
    ]


def test_bid_adjustments_validate_and_stay_within_their_bounds() -> None:
    for record in adjustments():
        assert_valid("bid-adjustment", wire(record))
        assert record["floor"] <= record["multiplier"] <= record["cap"]


def alerts() -> list[dict[str, Any]]:
    out = []
    for config, p, days in [
        (AlertConfig(), 0.9, 4.0),
        (AlertConfig(0.3, 0.7), 0.75, None),
    ]:
        alert = apply_churn(None, churn("u-1", p=p, days=days), config, NOW).alert
        assert alert is not None
        out.append(alert.to_dict())
    return out


def test_churn_alerts_validate() -> None:
    records = alerts()
    assert {r["reason"] for r in records} == {"risk_level_high", "probability_threshold"}
    for record in records:
        assert_valid("churn-alert", wire(record))


OPTIONAL_KEYS = {"demand-signal": {"mean_orders"}}
"""Keys a record carries only sometimes: a demand signal's mean, from a model serving a quantile."""


@pytest.mark.parametrize(
    ("name", "record"),
    [
        ("demand-signal", demand(orders=1.0, mean=0.56).to_dict()),
        ("churn-signal", churn().to_dict()),
        ("dead-letter", dead_letters()[0]),
        ("bid-adjustment", adjustments()[0]),
        ("churn-alert", alerts()[0]),
    ],
)
def test_output_schemas_list_exactly_the_written_keys(name: str, record: dict[str, Any]) -> None:
    schema = load_schema(name)
    assert set(schema["properties"]) == set(record)
    assert set(schema["required"]) == set(record) - OPTIONAL_KEYS.get(name, set())
    assert schema["additionalProperties"] is False


def test_a_demand_signal_from_a_model_serving_its_mean_leaves_the_mean_out_and_validates() -> None:
    record = demand(orders=0.56).to_dict()
    assert "mean_orders" not in record
    assert_valid("demand-signal", wire(record))
    assert_valid("demand-signal", wire(demand(orders=1.0, mean=0.56).to_dict()))


@pytest.mark.parametrize(
    ("name", "record", "change"),
    [
        ("demand-signal", demand().to_dict(), {"signal_id": "XYZ"}),
        ("demand-signal", demand().to_dict(), {"purchase_probability": 1.5}),
        ("demand-signal", demand().to_dict(), {"window_end": "2019-10-01 00:00"}),
        ("demand-signal", demand().to_dict(), {"surprise": 1}),
        ("churn-signal", churn().to_dict(), {"risk_level": "severe"}),
        ("churn-signal", churn().to_dict(), {"window_end_ms": -5}),
        ("dead-letter", dead_letters()[0], {"raw_b64": "not base64!"}),
        ("bid-adjustment", adjustments()[0], {"multiplier": 0}),
        ("bid-adjustment", adjustments()[0], {"formula": "other"}),
        ("churn-alert", alerts()[0], {"alert_seq": 0}),
        ("churn-alert", alerts()[0], {"reason": "because"}),
    ],
)
def test_schemas_refuse_broken_records(
    name: str, record: dict[str, Any], change: dict[str, Any]
) -> None:
    assert_valid(name, wire(record))
    assert_invalid(name, wire({**record, **change}))
    missing = dict(record)
    missing.pop(next(iter(record)))
    assert_invalid(name, wire(missing))


# --------------------------------------------------------------------------------------------
# Online evaluation
# --------------------------------------------------------------------------------------------


def test_prediction_outcomes_and_model_quality_validate() -> None:
    """A cohort with churners, stayers and a late-settled outcome; and a cohort where nobody
    churned (AUCs undefined: null on the wire)."""

    from features.feedback import (
        InputCounts,
        QualityBoard,
        input_drift,
        publish,
        quality_parts,
        receive,
    )
    from serving.scorer import load_model
    from tests.support.cohorts import END, close_cohort, outcomes_of
    from tests.support.processor import MODEL_DIR

    outcomes = outcomes_of(close_cohort())
    for o in outcomes[:50]:
        assert_valid("prediction-outcome", wire(o.to_dict()))
    for stayers_only in (False, True):
        chosen = [o for o in outcomes if not (stayers_only and o.churned)]
        parts = quality_parts(
            chosen, window_end_ms=END, horizon_windows=13, partition=0, partitions=1
        )
        _, done = receive(QualityBoard(), parts[0])
        assert done == [END]
        drift = None
        if stayers_only:  # with its cohort's input drift, one feature without live rows
            reference = load_model(MODEL_DIR.parent / "generated").manifest.input_reference
            assert reference is not None
            counts = np.ones((len(reference.features), reference.n_bins), dtype=int)
            counts[0] = 0
            live = InputCounts(END, "m-1", tuple(tuple(int(x) for x in c) for c in counts))
            drift = input_drift(live, reference, 0.25)
        (record,) = publish(parts, NOW, drift)
        body = wire(record.to_dict())
        assert_valid("model-quality", body)
        assert (body["churn"]["roc_auc"] is None) == stayers_only
        assert (body["input_drift"] is None) != stayers_only


# --------------------------------------------------------------------------------------------
# Category demand
# --------------------------------------------------------------------------------------------


def category_record(series: str = "Electronics/Phones", p90: float = 12.5) -> dict[str, Any]:
    return category_forecast(series, level="category", p90=p90).to_dict()


@pytest.mark.parametrize(
    "series", ["Electronics/Phones", "851", "électroménager 🍳", "x" * 256, "a\x00b"]
)
def test_category_forecasts_validate(series: str) -> None:
    record = category_record(series)
    assert_valid("category-demand", wire(record))
    assert_valid("category-demand", wire(category_record(series, p90=0.0)))
    schema = load_schema("category-demand")
    assert set(schema["properties"]) == set(record) == set(schema["required"])
    assert schema["additionalProperties"] is False
    assert len(record["horizon"]) == 13
    assert record["horizon"][0]["window_start_ms"] == record["window_end_ms"]


@pytest.mark.parametrize(
    "change",
    [
        {"forecast_id": "XYZ"},
        {"level": "brand"},
        {"series": ""},
        {"horizon": []},
        {"window_end": "2019-10-01 00:00"},
        {"surprise": 1},
    ],
)
def test_the_category_schema_refuses_broken_records(change: dict[str, Any]) -> None:
    record = category_record()
    assert_invalid("category-demand", wire({**record, **change}))
    negative = wire(record)
    negative["horizon"][0]["units"]["p10"] = -1.0
    assert_invalid("category-demand", negative)


# --------------------------------------------------------------------------------------------
# The planner
# --------------------------------------------------------------------------------------------


def suggestion(series: str = "851") -> dict[str, Any]:
    record = category_record(series)
    forecast = parse_forecast(wire(record))
    assert not isinstance(forecast, Rejected)
    plan = on_forecast(
        None, forecast, record, StockLevel(series, 1.0, 0.0, 0), PlanningConfig(14.0, 7.0)
    )
    assert plan.suggestion is not None
    return plan.suggestion.to_dict()


@pytest.mark.parametrize("series", ["851", "électroménager 🍳", "x" * 256])
def test_reorder_suggestions_validate(series: str) -> None:
    record = suggestion(series)
    assert_valid("reorder-suggestion", wire(record))
    schema = load_schema("reorder-suggestion")
    assert set(schema["properties"]) == set(record) == set(schema["required"])
    assert schema["additionalProperties"] is False
    for change in ({"quantity": 0}, {"rule": "other"}, {"from": "today"}, {"x": 1}):
        assert_invalid("reorder-suggestion", wire({**record, **change}))


def test_the_stock_schema_accepts_what_the_planner_reads() -> None:
    for record in (
        {"series": "851", "on_hand": 10},
        {"series": "851", "on_hand": 10.5, "on_order": 3, "as_of_ms": 5},
    ):
        assert_valid("stock-level", record)
        assert not isinstance(parse_stock(orjson.dumps(record)), Rejected)
    for record in ({"series": "851"}, {"series": "", "on_hand": 1}, {"series": "a", "on_hand": -1}):
        assert_invalid("stock-level", record)
        assert isinstance(parse_stock(orjson.dumps(record)), Rejected)
