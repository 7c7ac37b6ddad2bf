"""Kafka tier: single messages that used to stop all scoring, and a worker whose agent stops.

1. A tombstone (null value) and a valid-looking event whose ``user_id`` is a partition
   clock's table key, in the middle of the REES46 replay: the worker stays healthy, each is
   dead-lettered once (``null_value``; ``bad_value`` on ``user_id``), and every other signal
   equals the clean reference's (the processor alone over the same events: same ids, same
   scores).
2. An agent that stops (a routed record on the wrong partition: the re-keying topic's
   partition count does not match settings, a :class:`stream.processor.FatalError`):
   ``/health`` and ``/ready`` answer 503 with the reason and the process exits with status 70
   within seconds.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from ingest.adapters import read_events, to_wire_bytes
from serving.scorer import load_model
from settings import Settings
from stream.liveness import EXIT_AGENT_STOPPED
from stream.loopback import run_in_process
from stream.processor import (
    BatchOutput,
    DictStore,
    RawMessage,
    clock_key,
    processor_from_settings,
)
from stream.publish import partition_of
from tests.support.worker_harness import (
    MODEL_DIR,
    WorkerProcess,
    produce,
    read_topic,
    run_sync,
    wait_until_done,
    worker_settings,
)

WorkerFactory = Callable[..., WorkerProcess]


def report(message: str) -> None:
    print(f"[poison] {message}")


def reference_signals(
    s: Settings, records: list[tuple[bytes | None, bytes | None]]
) -> dict[tuple[str, str], float]:
    """The processor alone over ``records`` (keyed: each on its key's partition)."""
    store = DictStore()
    proc = processor_from_settings(load_model(MODEL_DIR), store, s)
    offsets = [0] * s.topics.partitions
    msgs = []
    for key, value in records:
        assert key is not None
        p = partition_of(key, s.topics.partitions)
        msgs.append(RawMessage(key, value, s.topics.clickstream, p, offsets[p]))
        offsets[p] += 1
    got: dict[tuple[str, str], float] = {}

    def collect(out: BatchOutput) -> None:
        store.apply(out.writes)
        got.update({("demand", d.signal_id): d.expected_orders for d in out.demand})
        got.update({("churn", c.signal_id): c.churn_probability for c in out.churn})

    run_in_process(proc, msgs, s.worker.batch_size, collect)
    return got


@pytest.mark.kafka
@pytest.mark.realdata
def test_a_tombstone_and_a_clock_key_user_mid_replay_cost_one_dead_letter_each(
    isolated_kafka_settings: Settings,
    shared_data: Path,
    worker_factory: WorkerFactory,
    tmp_path: Path,
) -> None:
    frame = read_events(shared_data / "rees46_2019oct_head.csv", "rees46").events
    good: list[tuple[bytes | None, bytes | None]] = list(to_wire_bytes(frame))
    s = worker_settings(isolated_kafka_settings, tmp_path / "data", fresh_signal_min_interval_s=1.0)
    middle = len(good) // 2
    tombstone_key = good[middle][0]
    # The clock key of the partition it hashes to: the record lands there, on the key the
    # worker's table keeps that partition's clock under.
    internal = clock_key(1, s.topics.partitions)
    assert partition_of(internal.encode(), s.topics.partitions) == 1
    template = orjson.loads(good[middle][1])  # type: ignore[arg-type]
    clock_user = orjson.dumps({**template, "user_id": internal})
    records = [*good[:middle], (tombstone_key, None), (internal.encode(), clock_user)]
    records += good[middle:]

    worker = worker_factory(s, "poison").start()
    report(f"worker ready in {worker.wait_ready():.1f} s")
    t0 = time.monotonic()
    coords = run_sync(produce(s, s.topics.clickstream, records))  # type: ignore[arg-type]
    health_mid = worker.get_json("/health")
    wait_until_done(worker, expect_min_source=len(records))
    report(f"{len(records)} records produced and processed in {time.monotonic() - t0:.1f} s")

    assert worker.alive()
    assert health_mid[0] == 200 and health_mid[1]["status"] == "ok"
    status, health = worker.get_json("/health")
    assert status == 200
    # model_input: the shipped model was trained on order lines, this traffic has views.
    assert {k: v for k, v in health.items() if k != "model_input"} == {
        "status": "ok",
        "model_version": load_model(MODEL_DIR).version,
    }
    assert health["model_input"]["trained_on"] == "order_lines"
    assert worker.get_json("/ready")[0] == 200

    dlq = [r.json() for r in run_sync(read_topic(s, s.topics.dead_letter))]
    where = {"null_value": coords[middle], "bad_value": coords[middle + 1]}
    assert sorted((d["reason"], d["partition"], d["offset"]) for d in dlq) == sorted(
        (reason, *c) for reason, c in where.items()
    ), dlq
    by_reason = {d["reason"]: d for d in dlq}
    assert by_reason["null_value"]["raw_size"] == 0
    assert by_reason["bad_value"]["field"] == "user_id"
    assert "control character" in by_reason["bad_value"]["detail"]

    got: dict[tuple[str, str], float] = {}
    for topic, kind, score in (
        (s.topics.demand, "demand", "expected_orders"),
        (s.topics.churn, "churn", "churn_probability"),
    ):
        for r in run_sync(read_topic(s, topic)):
            signal = r.json()
            assert signal["user_id"] != internal
            got[(kind, signal["signal_id"])] = signal[score]
    want = reference_signals(s, good)
    report(f"{len(got)} signals, {len(want)} in the clean reference; {len(dlq)} dead letters")
    assert got.keys() == want.keys()
    assert all(abs(got[k] - want[k]) <= 1e-5 for k in got)

    log = worker.log_text()
    assert "Traceback" not in log


def get_json(worker: WorkerProcess, path: str) -> tuple[int, Any]:
    """Status and JSON body, also of an error status (the harness drops those bodies)."""
    try:
        with urllib.request.urlopen(worker.url + path, timeout=0.5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


async def _produce_on_partition(
    s: Settings, topic: str, key: bytes, value: bytes, partition: int
) -> None:
    producer = AIOKafkaProducer(**s.kafka.client_kwargs(), acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key, partition=partition)
    finally:
        await producer.stop()


@pytest.mark.kafka
def test_an_agent_that_stops_makes_the_worker_answer_503_and_exit_non_zero(
    isolated_kafka_settings: Settings, worker_factory: WorkerFactory, tmp_path: Path
) -> None:
    s = worker_settings(isolated_kafka_settings, tmp_path / "data")
    worker = worker_factory(s, "crash").start()
    report(f"worker ready in {worker.wait_ready():.1f} s")
    assert worker.get_json("/health")[0] == 200 and worker.get_json("/ready")[0] == 200

    user = "u-crash"
    home = partition_of(user.encode(), s.topics.partitions)
    event = orjson.dumps({"event_time": 1_570_000_000_000, "event_type": "view", "user_id": user})
    sent = time.monotonic()
    run_sync(
        _produce_on_partition(
            s, s.topics.routed, user.encode(), event, (home + 1) % s.topics.partitions
        )
    )
    seen: dict[str, tuple[int, Any]] = {}
    deadline = sent + 30.0
    while worker.alive() and time.monotonic() < deadline:
        for path in ("/health", "/ready"):
            try:
                status, body = get_json(worker, path)
            except (OSError, ValueError):
                continue
            if status == 503 and path not in seen:
                seen[path] = (status, body)
        time.sleep(0.05)
    assert worker.proc is not None
    code = worker.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    exited = time.monotonic() - sent
    report(f"503 on {sorted(seen)}; exit status {code} {exited:.1f} s after the record was sent")
    assert code == EXIT_AGENT_STOPPED
    assert exited < 15.0
    # Both views answered 503 with the reason before the process went.
    for path, (_, body) in seen.items():
        assert "partition counts do not match" in body["reason"], (path, body)
    assert seen["/health"][1]["status"] == "failed"
    assert seen["/ready"][1]["ready"] is False
    log = worker.log_text()
    assert "partition counts do not match" in log
    assert f"exiting with status {EXIT_AGENT_STOPPED}" in log
