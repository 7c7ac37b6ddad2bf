"""Hostile input, no broker: the processor never raises, dead-letters every invalid message with
a reason, and the valid messages of a mixed stream give exactly the signals they give alone.

:func:`hostile_catalogue` is the hand-made list (also replayed through Kafka by
``test_faults_kafka.py``); the hypothesis test generates hostile payloads -- arbitrary bytes,
arbitrary JSON, valid events with a field replaced by an arbitrary JSON value, extreme numbers
and times -- and mixes them into a valid stream.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.validation import REASONS, Invalid, ValidationPolicy, validate
from ingest.adapters import to_wire_bytes
from ingest.generator import generate_clickstream
from stream.model import Scorer, load_model
from stream.processor import DictStore, Processor, RawMessage
from stream.publish import partition_of
from tests.support.worker_harness import MODEL_DIR

PARTITIONS = 4
NOW_MS = 1_900_000_000_000  # the processing clock of these tests (2030)
YEAR_2100_MS = 4_102_444_800_000


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return load_model(MODEL_DIR)


def hostile_catalogue(template: dict[str, Any], big_bytes: int) -> list[tuple[bytes, str]]:
    """``(payload, dead-letter reason)`` of every hostile kind the brief names. ``template`` is a
    valid event; ``big_bytes`` the size of the oversized payload (it is cut by size first)."""
    good = orjson.dumps(template)
    user = str(template["user_id"]).encode()
    t = int(template["event_time"])

    def variant(**changes: Any) -> bytes:
        return orjson.dumps({**template, **changes})

    deep = b'{"a":' * 5000 + b"1" + b"}" * 5000
    return [
        (b"\xff\xfe\xfa not utf-8", "not_utf8"),
        (good.replace(b"{", b"{\xc3\x28", 1), "not_utf8"),
        (good[: len(good) // 2], "not_json"),
        (b"", "not_json"),
        (b"[1, 2, 3]", "not_object"),
        (orjson.dumps([template] * 3), "not_object"),
        (b"null", "not_object"),
        (deep, "not_json"),  # a nested giant: 5000 levels
        (
            b'{"event_time": %d, "event_type": "view", "user_id": "%s", "x": %s}' % (t, user, deep),
            "not_json",
        ),
        (orjson.dumps({k: v for k, v in template.items() if k != "user_id"}), "missing_field"),
        (variant(user_id=None), "missing_field"),
        (variant(user_id=""), "bad_value"),
        (variant(user_id="   "), "bad_value"),
        (variant(user_id=17.5), "wrong_type"),
        (variant(user_id=[1]), "wrong_type"),
        (variant(event_type=7), "wrong_type"),
        (variant(price="12.5"), "wrong_type"),
        (variant(quantity="two"), "wrong_type"),
        (
            b'{"event_time": %d, "event_type": "view", "user_id": "%s", "price": NaN}' % (t, user),
            "bad_value",
        ),
        (
            b'{"event_time": %d, "event_type": "view", "user_id": "%s", "price": Infinity}'
            % (t, user),
            "bad_value",
        ),
        (
            b'{"event_time": %d, "event_type": "view", "user_id": "%s", "price": 1e999}'
            % (t, user),
            "bad_value",
        ),
        (variant(price=-1.5), "bad_value"),
        (variant(event_time="1970-01-01T00:00:00Z"), "time_too_old"),
        (variant(event_time=0), "time_too_old"),
        (variant(event_time="2100-01-01T00:00:00Z"), "time_in_future"),
        (variant(event_time=YEAR_2100_MS), "time_in_future"),
        (variant(event_type="click"), "unknown_event_type"),
        (variant(pad="x" * big_bytes), "too_large"),
    ]


def test_the_catalogue_reasons_are_what_validation_says() -> None:
    template = orjson.loads(to_wire_bytes(generate_clickstream(n_users=20, days=20, seed=1))[0][1])
    for payload, reason in hostile_catalogue(template, 70_000):
        result = validate(payload, now_ms=NOW_MS, policy=ValidationPolicy())
        assert isinstance(result, Invalid) and result.reason == reason, (payload[:80], result)


def make_processor(scorer: Scorer, store: DictStore) -> Processor:
    return Processor(
        scorer,
        store,
        partitions=PARTITIONS,
        policy=ValidationPolicy(),
        allowed_lateness_ms=3_600_000,
        fresh_interval_ms=3_600_000,
        routed_topics=frozenset({"routed"}),
        clock=lambda: NOW_MS,
    )


def run(
    scorer: Scorer, payloads: Sequence[tuple[bytes | None, bytes]], batch: int
) -> tuple[set[tuple[str, str, float]], list[tuple[int, str]], list[int]]:
    """Process ``payloads`` (key, value); returns signals as (kind, signal_id, score), dead
    letters as (index, reason), and the indexes that were re-keyed."""
    store = DictStore()
    proc = make_processor(scorer, store)
    offsets = [0] * PARTITIONS
    msgs: list[RawMessage] = []
    where: dict[tuple[int, int], int] = {}
    for i, (key, value) in enumerate(payloads):
        p = partition_of(key, PARTITIONS) if key is not None else i % PARTITIONS
        msgs.append(RawMessage(key, value, "clickstream", p, offsets[p]))
        where[(p, offsets[p])] = i
        offsets[p] += 1
    signals: set[tuple[str, str, float]] = set()
    dead: list[tuple[int, str]] = []
    rekeyed: list[int] = []
    for lo in range(0, len(msgs), batch):
        out = proc.process(msgs[lo : lo + batch])
        store.apply(out.writes)
        signals |= {("demand", d.signal_id, round(d.expected_orders, 6)) for d in out.demand}
        signals |= {("churn", c.signal_id, round(c.churn_probability, 6)) for c in out.churn}
        dead += [(where[(d.partition, d.offset)], d.reason) for d in out.dead_letters]
        rekeyed += [where[origin] for origin in out.reroute_origins]
    return signals, dead, rekeyed


BASE = to_wire_bytes(generate_clickstream(n_users=12, days=60, seed=3))
TEMPLATE = orjson.loads(BASE[0][1])
KEYS = sorted({k for k, _ in BASE})

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _dumps(value: Any) -> bytes:
    # json (not orjson) writes NaN/Infinity literals: hostile JSON a sloppy producer emits.
    return json.dumps(value).encode()


times = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63),
    st.sampled_from([0, 1, -1, YEAR_2100_MS, NOW_MS + 2 * 86_400_000, 10**18]),
    st.sampled_from(["1970-01-01T00:00:00Z", "2100-01-01T00:00:00Z", "2019-10-01 00:00", ""]),
    st.floats(allow_nan=True, allow_infinity=True),
)
fields = st.sampled_from(
    ["event_time", "event_type", "user_id", "price", "quantity", "product_id", "order_id"]
)
hostile_payloads = st.one_of(
    st.binary(max_size=64),
    json_values.map(_dumps),
    st.tuples(fields, json_values).map(lambda fv: _dumps({**TEMPLATE, fv[0]: fv[1]})),
    times.map(lambda t: _dumps({**TEMPLATE, "event_time": t})),
    st.sampled_from([p for p, _ in hostile_catalogue(TEMPLATE, 70_000)]),
    # Late: valid, but from a window the partition closed long ago.
    st.integers(min_value=0, max_value=len(BASE) - 1).map(
        lambda i: _dumps({**orjson.loads(BASE[i][1]), "event_time": TEMPLATE["event_time"]})
    ),
    # Duplicates: a valid event sent again (valid, counted again, as Kafka would deliver it).
    st.integers(min_value=0, max_value=len(BASE) - 1).map(lambda i: BASE[i][1]),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    inserts=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=len(BASE)),
            hostile_payloads,
            st.integers(min_value=-1, max_value=len(KEYS) - 1),
        ),
        min_size=1,
        max_size=max(1, len(BASE) // 10),
    ),
    batch=st.sampled_from([1, 37, 512]),
)
def test_hostile_payloads_are_dead_lettered_with_a_reason_and_valid_ones_are_unaffected(
    scorer: Scorer, inserts: list[tuple[int, bytes, int]], batch: int
) -> None:
    # Build the mixed stream: each hostile payload at its position, keyed by a real user (or
    # not keyed, key index -1).
    mixed: list[tuple[bytes | None, bytes]] = []
    by_pos: dict[int, list[tuple[bytes | None, bytes]]] = {}
    for pos, payload, k in inserts:
        by_pos.setdefault(pos, []).append((KEYS[k] if k >= 0 else None, payload))
    for i in range(len(BASE) + 1):
        mixed += by_pos.get(i, [])
        if i < len(BASE):
            mixed.append(BASE[i])
    verdicts = [validate(v, now_ms=NOW_MS, policy=ValidationPolicy()) for _, v in mixed]
    invalid = {i: v.reason for i, v in enumerate(verdicts) if isinstance(v, Invalid)}
    # Valid messages are sent keyed by their user (re-keying unkeyed ones is tested elsewhere);
    # hostile ones keep the key they were generated with. The clean run is the valid ones alone.
    keyed = [
        mixed[i] if i in invalid else (v.user_id.encode(), mixed[i][1])  # type: ignore[union-attr]
        for i, v in enumerate(verdicts)
    ]
    clean = [m for i, m in enumerate(keyed) if i not in invalid]

    signals, dead, rekeyed = run(scorer, keyed, batch)  # must not raise
    clean_signals, clean_dead, _ = run(scorer, clean, batch)

    assert not rekeyed  # every valid message was sent keyed by its user
    reasons = dict(dead)
    assert len(reasons) == len(dead), "a message was dead-lettered twice"
    for i, reason in invalid.items():
        assert reasons.get(i) == reason, (mixed[i][1][:100], reason, reasons.get(i))
    late = {i for i, r in dead if r == "late"}
    assert set(reasons) == set(invalid) | late
    assert all(r in (*REASONS, "late") for r in reasons.values())  # hostile bytes or time
    assert len(late) == sum(1 for _, r in clean_dead if r == "late")
    assert all(r == "late" for _, r in clean_dead)
    # Same signals; scores to 1e-5, because ONNX Runtime's float32 results move in the last
    # bits when a batch is composed differently (the hostile records change the batches).
    got = {(kind, sid): score for kind, sid, score in signals}
    want = {(kind, sid): score for kind, sid, score in clean_signals}
    assert got.keys() == want.keys()
    assert all(abs(got[k] - want[k]) <= 1e-5 for k in got)
    assert all(math.isfinite(score) for _, _, score in signals)
