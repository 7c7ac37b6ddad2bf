"""Hostile input: the hand-made catalogue of bad records and a processor run over raw records
(shared by the processor-level property tests and the Kafka-tier replay)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from features.validation import ValidationPolicy
from serving.scorer import Scorer
from stream.loopback import run_in_process
from stream.processor import BatchOutput, DictStore, Processor, RawMessage
from stream.publish import partition_of

PARTITIONS = 4


NOW_MS = 1_900_000_000_000  # the processing clock of these tests (2030)


YEAR_2100_MS = 4_102_444_800_000


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


def make_processor(scorer: Any, store: DictStore) -> Processor:
    # Any: the real scorer or a test double with its manifest, version and score().
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

    def collect(out: BatchOutput) -> None:
        store.apply(out.writes)
        signals.update(("demand", d.signal_id, round(d.expected_orders, 6)) for d in out.demand)
        signals.update(("churn", c.signal_id, round(c.churn_probability, 6)) for c in out.churn)
        dead.extend(
            (where[(d.partition, d.offset)], d.reason)
            for d in out.dead_letters
            if d.source_topic == "clickstream"
        )
        rekeyed.extend(where[origin] for origin in out.reroute_origins)

    # The re-keying topic looped back, watermark records included: with event time aligned
    # over the sources, a processor that never hears the other sources closes nothing (and no
    # event is ever late), which is not what a worker does.
    run_in_process(proc, msgs, batch, collect)
    return signals, dead, rekeyed
