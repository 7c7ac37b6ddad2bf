"""Poison messages, no broker: any message Kafka can deliver costs at most that message.

* A scorer or a codec that raises for one chosen user in a batch of 512: that one message is
  dead-lettered as ``processing_error`` (exception type and message), the other 511 give
  exactly the outputs and state of a run without it, and the next batch goes on as usual.
* Hypothesis at the message level: keys (None, arbitrary bytes, internal-key-shaped), values
  (None, ``b""``, arbitrary bytes, valid events with one field replaced by arbitrary JSON or by
  an internal key) and arbitrary headers: nothing raises, each message is folded, re-keyed or
  dead-lettered exactly once.
* Internal keys: a user id shaped like a partition clock's key is refused; state written by
  the previous version is read as it is; a clock key that holds no clock stops the worker
  with a clear message; a fault that is not one message's (every message raises) stops it too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stream.processor as processor_module
from features.validation import DEAD_LETTER_REASONS, Invalid, ValidationPolicy, validate
from ingest.adapters import to_wire_bytes
from ingest.generator import generate_clickstream
from serving.scorer import Scorer, Scores, load_model
from stream.codec import decode_user
from stream.processor import (
    ORIGIN_HEADER,
    BatchOutput,
    DictStore,
    FatalError,
    Processor,
    RawMessage,
    StateError,
    SystemicFailure,
    clock_key,
    origin_from_headers,
    watermark_key,
)
from stream.publish import partition_of
from tests.support.hostile import NOW_MS, PARTITIONS, make_processor
from tests.support.poison import (
    POISON_EVENT,
    POISON_USER,
    STREAM,
    FaultyScorer,
    keyed_messages,
    poison_sequence,
)
from tests.support.worker_harness import MODEL_DIR


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return load_model(MODEL_DIR)


def signals_of(out: BatchOutput) -> dict[tuple[str, str], float]:
    got = {("demand", d.signal_id): d.expected_orders for d in out.demand}
    got |= {("churn", c.signal_id): c.churn_probability for c in out.churn}
    return got


def assert_same_signals(got: dict[tuple[str, str], float], want: dict[tuple[str, str], float]):  # type: ignore[no-untyped-def]
    assert got.keys() == want.keys()
    # ONNX Runtime's float32 results move in the last bits when batches are composed
    # differently (isolation scores the halves separately).
    assert all(abs(got[k] - want[k]) <= 1e-5 for k in got)


def assert_same_state(a: DictStore, b: DictStore) -> None:
    assert a.data.keys() == b.data.keys()
    for key in a.data:
        if key.startswith("\x00"):
            assert a.data[key] == b.data[key], key
            continue
        x, y = decode_user(a.data[key]), decode_user(b.data[key])
        np.testing.assert_array_equal(x.state.ring, y.state.ring)
        assert (x.seen, x.state.closed_through, x.state.open.keys(), x.last_fresh_ms) == (
            y.seen,
            y.state.closed_through,
            y.state.open.keys(),
            y.last_fresh_ms,
        ), key


@contextmanager
def codec_raising_for(proc: Processor, user: str) -> Iterator[None]:
    """``encode_user`` raising for ``user``'s record (the processor's codec, patched)."""
    original = processor_module.encode_user

    def encode(record: Any) -> bytes:
        if record is proc._users.get(user):
            raise ValueError(f"codec fault for {user}")
        return original(record)

    processor_module.encode_user = encode  # type: ignore[assignment]
    try:
        yield
    finally:
        processor_module.encode_user = original


def scenario(
    proc: Processor, store: DictStore, with_poison: bool, fault: Callable[[], Any] | None = None
) -> tuple[BatchOutput, BatchOutput, RawMessage]:
    """Warm up on 2,600 events, then one batch of 512 (511 and the poison message at 300)
    under ``fault``, then the next 400 events. Without ``with_poison`` the poison message is
    left out and its offset stays unused, so every other message has the same coordinates."""
    offsets = [0] * PARTITIONS
    warm = keyed_messages(STREAM[:2600], offsets)
    for lo in range(0, len(warm), 512):
        store.apply(proc.process(warm[lo : lo + 512]).writes)
    pairs = list(STREAM[2600:3111])
    pairs.insert(300, (POISON_USER.encode(), POISON_EVENT))
    batch = keyed_messages(pairs, offsets)
    poison = batch[300]
    assert len(batch) == 512 and poison.value == POISON_EVENT
    if not with_poison:
        batch.remove(poison)
    if fault is None:
        out = proc.process(batch)
    else:
        with fault():
            out = proc.process(batch)
    store.apply(out.writes)
    after = proc.process(keyed_messages(STREAM[3111:3511], offsets))
    store.apply(after.writes)
    return out, after, poison


@pytest.mark.parametrize("fault_kind", ["scorer", "codec"])
def test_one_poisoned_message_in_a_batch_of_512_costs_that_message_only(
    scorer: Scorer, fault_kind: str
) -> None:
    clean_store = DictStore()
    clean, clean_after, _ = scenario(make_processor(scorer, clean_store), clean_store, False)

    store = DictStore()
    if fault_kind == "scorer":
        faulty = FaultyScorer(scorer, poison_sequence(scorer))
        proc = make_processor(faulty, store)
        out, after, poison = scenario(proc, store, True)
        expected = ("FloatingPointError", "scorer fault for one user's sequence")
    else:
        proc = make_processor(scorer, store)
        out, after, poison = scenario(
            proc, store, True, fault=lambda: codec_raising_for(proc, POISON_USER)
        )
        expected = ("ValueError", f"codec fault for {POISON_USER}")

    poisoned = [d for d in out.dead_letters if d.reason == "processing_error"]
    assert len(poisoned) == 1
    letter = poisoned[0]
    assert (letter.partition, letter.offset, letter.raw) == (
        poison.partition,
        poison.offset,
        POISON_EVENT,
    )
    assert letter.detail == f"{expected[0]}: {expected[1]}"
    assert out.processing_errors == {expected[0]: 1}
    assert 0 < out.isolation_runs <= 2 * 10  # two halves per level, log2(512) levels
    # The other 511: exactly the outputs of the run without the poisoned message.
    assert [d for d in out.dead_letters if d.reason != "processing_error"] == clean.dead_letters
    assert_same_signals(signals_of(out), signals_of(clean))
    assert POISON_USER not in {s.user_id for s in out.demand}
    # ... and the worker goes on: the next batch and the state are those of the clean run.
    assert not after.dead_letters and not after.isolation_runs
    assert_same_signals(signals_of(after), signals_of(clean_after))
    assert_same_state(store, clean_store)


def test_a_fault_of_every_message_stops_the_worker_instead_of_dead_lettering_the_stream(
    scorer: Scorer,
) -> None:
    class Broken:
        manifest, version = scorer.manifest, scorer.version
        session_seconds = 0.0

        def score(self, raw: np.ndarray) -> Scores:
            raise RuntimeError("the model is broken")

    store = DictStore()
    proc = make_processor(Broken(), store)
    proc.max_error_streak = 5
    msgs = keyed_messages(STREAM[:64], [0] * PARTITIONS)
    with pytest.raises(SystemicFailure, match="6 consecutive messages raised"):
        proc.process(msgs)
    assert not store.data  # nothing was written: the batch is processed again after a restart


def test_a_user_id_shaped_like_an_internal_key_is_refused_and_the_clock_intact(
    scorer: Scorer,
) -> None:
    store = DictStore()
    proc = make_processor(scorer, store)
    offsets = [0] * PARTITIONS
    for lo in range(0, 2000, 500):
        store.apply(proc.process(keyed_messages(STREAM[lo : lo + 500], offsets)).writes)
    template = orjson.loads(STREAM[2000][1])
    hostile = []
    for p in range(PARTITIONS):
        key = clock_key(p, PARTITIONS)
        value = orjson.dumps({**template, "user_id": key})
        # Keyed by that id, so it lands on the partition whose clock key it names.
        hostile.append(RawMessage(key.encode(), value, "clickstream", p, offsets[p]))
        offsets[p] += 1
    before = {p: store.data[clock_key(p, PARTITIONS)] for p in range(PARTITIONS)}
    out = proc.process(hostile)
    assert [(d.reason, d.field) for d in out.dead_letters] == [("bad_value", "user_id")] * 4
    assert not out.writes
    assert {p: store.data[clock_key(p, PARTITIONS)] for p in range(PARTITIONS)} == before
    assert proc.user_view(clock_key(0, PARTITIONS)) is None  # never shown as a user


def test_state_written_by_the_previous_version_is_read_as_it_is(scorer: Scorer) -> None:
    """The key layout did not change: a restarted worker on the old state emits what an
    uninterrupted one does. A user record the old validation let into the reserved namespace
    (an id starting with U+0000 that is no clock key) is left alone, never read as a clock."""
    msgs = keyed_messages(STREAM[:3000], [0] * PARTITIONS)
    ref_store = DictStore()
    ref = make_processor(scorer, ref_store)
    want: dict[tuple[str, str], float] = {}
    for lo in range(0, len(msgs), 500):
        out = ref.process(msgs[lo : lo + 500])
        ref_store.apply(out.writes)
        if lo >= 1500:
            want |= signals_of(out)

    store = DictStore()
    first = make_processor(scorer, store)
    for lo in range(0, 1500, 500):
        store.apply(first.process(msgs[lo : lo + 500]).writes)
    # What the old version stored for an id like "\x00clock/0/0" that is not the clock key.
    stray = next(
        f"\x00clock/{p}/0"
        for p in range(PARTITIONS)
        if clock_key(p, PARTITIONS) != f"\x00clock/{p}/0"
    )
    old_record = next(v for k, v in store.data.items() if not k.startswith("\x00"))
    store.data[stray] = old_record

    restarted = make_processor(scorer, store)
    got: dict[tuple[str, str], float] = {}
    for lo in range(1500, len(msgs), 500):
        out = restarted.process(msgs[lo : lo + 500])
        store.apply(out.writes)
        got |= signals_of(out)
    assert_same_signals(got, want)
    assert store.data[stray] == old_record


def test_a_clock_key_that_holds_no_clock_stops_the_worker_with_the_reason(
    scorer: Scorer,
) -> None:
    store = DictStore()
    proc = make_processor(scorer, store)
    msgs = keyed_messages(STREAM[:600], [0] * PARTITIONS)
    store.apply(proc.process(msgs[:300]).writes)
    p = msgs[300].partition
    user_record = next(v for k, v in store.data.items() if not k.startswith("\x00"))
    store.data[clock_key(p, PARTITIONS)] = user_record  # not a clock
    restarted = make_processor(scorer, store)
    with pytest.raises(StateError, match=f"partition {p}: table key .* does not hold a"):
        restarted.process(msgs[300:])
    assert isinstance(StateError("x"), FatalError)


# --- hypothesis: every shape of message ---------------------------------------------------

BASE = to_wire_bytes(generate_clickstream(n_users=10, days=40, seed=5))
TEMPLATE = orjson.loads(BASE[0][1])
INTERNAL_KEYS = [clock_key(p, PARTITIONS) for p in range(PARTITIONS)] + [
    f"\x00clock/{p}/{i}" for p in range(PARTITIONS) for i in range(3)
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(INTERNAL_KEYS),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
keys = st.one_of(
    st.none(),
    st.binary(max_size=24),
    st.sampled_from(INTERNAL_KEYS).map(str.encode),
    # Watermark-record keys with an event as the value: processed as the event they hold.
    st.sampled_from([watermark_key(p, PARTITIONS) for p in range(PARTITIONS)]),
    st.sampled_from([k for k, _ in BASE]),
)
fields = st.sampled_from(
    ["event_time", "event_type", "user_id", "price", "quantity", "product_id", "order_id"]
)
values = st.one_of(
    st.none(),
    st.just(b""),
    st.binary(max_size=64),
    st.tuples(fields, json_values).map(lambda fv: json.dumps({**TEMPLATE, fv[0]: fv[1]}).encode()),
    st.sampled_from(INTERNAL_KEYS).map(lambda k: orjson.dumps({**TEMPLATE, "user_id": k})),
    st.sampled_from([v for _, v in BASE]),
)
header_values = st.one_of(st.none(), st.binary(max_size=16), st.text(max_size=8), st.integers())
header_names = st.one_of(st.just(ORIGIN_HEADER), st.text(max_size=12), st.binary(max_size=8))
headers = st.one_of(
    st.lists(st.tuples(header_names, header_values), max_size=4).map(tuple),
    st.dictionaries(st.text(max_size=12) | st.just(ORIGIN_HEADER), header_values, max_size=3),
    st.none(),
    st.tuples(st.just(ORIGIN_HEADER), st.from_regex(rb"\A[0-9]{1,3}:[0-9]{1,6}\Z")).map(
        lambda h: (h,)
    ),
)


@given(headers)
def test_any_headers_give_an_origin_or_none(h: Any) -> None:
    origin = origin_from_headers(h)
    assert origin is None or (isinstance(origin, tuple) and all(x >= 0 for x in origin))


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    drawn=st.lists(
        st.tuples(keys, values, headers, st.integers(min_value=0, max_value=PARTITIONS - 1)),
        min_size=1,
        max_size=60,
    ),
    batch=st.sampled_from([1, 7, 64]),
)
def test_every_message_kafka_can_deliver_is_folded_rekeyed_or_dead_lettered_once(
    scorer: Scorer, drawn: list[tuple[bytes | None, bytes | None, Any, int]], batch: int
) -> None:
    store = DictStore()
    proc = make_processor(scorer, store)
    offsets = [0] * PARTITIONS
    msgs: list[RawMessage] = []
    # Half of the well-formed stream first, so messages meet existing state and clocks.
    msgs += keyed_messages(BASE[: len(BASE) // 2], offsets)
    for key, value, h, random_partition in drawn:
        # Keyed messages land where the default partitioner puts them; unkeyed ones anywhere.
        p = partition_of(key, PARTITIONS) if key else random_partition
        origin = origin_from_headers(h)  # what the worker does with the headers (app.py)
        msgs.append(RawMessage(key, value, "clickstream", p, offsets[p], None))
        offsets[p] += 1
        # The same shape on the re-keying topic, on the partition of the user it names
        # (re-keyed copies are produced keyed by user), with its arbitrary headers.
        verdict = validate(value, now_ms=NOW_MS, policy=ValidationPolicy()) if value else None
        if verdict is not None and not isinstance(verdict, Invalid):
            q = partition_of(verdict.user_id.encode(), PARTITIONS)
            msgs.append(RawMessage(key, value, "routed", q, 10_000 + len(msgs), origin))

    outcomes: dict[tuple[str, int, int], str] = {}

    def once(topic: str, p: int, o: int, what: str) -> None:
        assert (topic, p, o) not in outcomes, f"{topic}[{p}]@{o}: {outcomes.get((topic, p, o))}"
        outcomes[(topic, p, o)] = what

    for lo in range(0, len(msgs), batch):
        part = msgs[lo : lo + batch]
        out = proc.process(part)  # must not raise
        store.apply(out.writes)
        for d in out.dead_letters:
            assert d.reason in DEAD_LETTER_REASONS, d.reason
            assert d.reason != "processing_error", d.detail  # no input makes the code raise
            once(d.source_topic, d.partition, d.offset, "dead:" + d.reason)
        for p, o in out.reroute_origins:
            once("clickstream", p, o, "rekeyed")
        dead_or_moved = set(outcomes)
        for m in part:
            if (m.topic, m.partition, m.offset) in dead_or_moved:
                continue
            assert m.value is not None
            event = validate(m.value, now_ms=NOW_MS, policy=ValidationPolicy())
            assert not isinstance(event, Invalid)
            assert not event.user_id.startswith("\x00")
            record = decode_user(store.data[event.user_id])
            origin = (m.partition, m.offset) if m.topic == "clickstream" else m.origin
            if origin is not None:
                assert record.seen[origin[0]] >= origin[1]  # folded (or folded before)
            once(m.topic, m.partition, m.offset, "folded")
    assert len(outcomes) == len(msgs)
    null_values = [m for m in msgs if m.value is None]
    assert sum(1 for v in outcomes.values() if v == "dead:null_value") == len(null_values)
    # Internal keys hold clocks, nothing else.
    for key, value in store.data.items():
        if key.startswith("\x00"):
            assert key in INTERNAL_KEYS and orjson.loads(value).keys() == {"m", "c", "f"}
        else:
            decode_user(value)  # a user record
