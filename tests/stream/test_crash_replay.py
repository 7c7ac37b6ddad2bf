"""Crashes at any point, without a broker: the processor on Kafka's delivery semantics.

The Kafka-tier kill tests crash a real worker a few times at moments they cannot choose. Here a
small model of what Kafka and the worker's runtime guarantee drives the processor through many
crashes at chosen points, and every window-close signal must come out as from a run that never
crashed: same keys, same scores, a signal emitted twice always with one score.

The model, per micro-batch:

* a consumer takes runs of records from the clickstream and re-keying partitions in any mix
  and order (as fetches interleave them), each partition in offset order;
* outputs (signals, re-keyed copies, watermark records) are delivered before state is stored
  (``Worker.emit``), so copies and announcements are in the re-keying log from then on;
* the table's changelog gets the batch's writes partition by partition; a crash keeps any
  prefix of each partition's writes of the crashing batch (record batches delivered so far);
* committed offsets lag processing by zero to a few batches, and a crash rewinds every
  partition to them; the processor restarts empty on the stored state.

Populations: a shop keyed by user (as ``clicksignals replay`` produces) and an unkeyed one
(most events re-keyed), each with three crashes per run and micro-batches of 64 to 512.
"""

from __future__ import annotations

import random
from collections import defaultdict

import pytest

from ingest.adapters import to_wire_bytes
from ingest.generator import generate_clickstream
from serving.scorer import Scorer, load_model
from settings import Settings
from stream.processor import BatchOutput, DictStore, Processor, RawMessage, processor_from_settings
from stream.publish import partition_of
from tests.support.processor import MODEL_DIR

NOW_MS = 1_900_000_000_000
Closes = dict[tuple[str, int], set[float]]


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return load_model(MODEL_DIR)


def _clickstream(keyed: bool, seed: int, partitions: int, topic: str) -> list[list[RawMessage]]:
    frame = generate_clickstream(n_users=300, start="2024-01-01", days=70, seed=seed)
    rng = random.Random(seed)
    logs: list[list[RawMessage]] = [[] for _ in range(partitions)]
    for key, value in to_wire_bytes(frame):
        p = partition_of(key, partitions) if keyed else rng.randrange(partitions)
        logs[p].append(RawMessage(key if keyed else None, value, topic, p, len(logs[p])))
    return logs


def _replay(
    scorer: Scorer,
    settings: Settings,
    clickstream: list[list[RawMessage]],
    seed: int,
    crashes: int,
    batch_size: int,
) -> Closes:
    """Window-close demand scores per (user, window end), every emission kept."""
    rng = random.Random(seed)
    partitions = settings.topics.partitions
    click, routed_topic = settings.topics.clickstream, settings.topics.routed
    routed: list[list[RawMessage]] = [[] for _ in range(partitions)]
    logs = {click: clickstream, routed_topic: routed}
    position = {(t, p): 0 for t in logs for p in range(partitions)}
    committed = dict(position)
    after_batch: list[dict[tuple[str, int], int]] = []
    store = DictStore()

    def start() -> Processor:
        return processor_from_settings(scorer, store, settings, clock=lambda: NOW_MS)

    proc = start()
    closes: Closes = defaultdict(set)
    total = sum(len(log) for log in clickstream)
    crash_at = set(rng.sample(range(total // batch_size), crashes))

    def deliver(out: BatchOutput) -> None:
        for s in out.demand:
            if s.trigger == "window_close":
                closes[(s.user_id, s.window_end_ms)].add(s.expected_orders)
        copies = zip(out.reroute, out.reroute_origins, strict=True)
        for (key, value), origin in copies:
            p = partition_of(key, partitions)
            routed[p].append(RawMessage(key, value, routed_topic, p, len(routed[p]), origin))
        for key, value in out.watermarks:
            p = partition_of(key, partitions)
            routed[p].append(RawMessage(key, value, routed_topic, p, len(routed[p])))

    def take() -> list[RawMessage]:
        batch: list[RawMessage] = []
        ready = [tp for tp, at in position.items() if at < len(logs[tp[0]][tp[1]])]
        rng.shuffle(ready)
        for topic, p in ready:
            log, at = logs[topic][p], position[(topic, p)]
            n = min(rng.randint(1, 200), len(log) - at, batch_size - len(batch))
            batch += log[at : at + n]
            position[(topic, p)] = at + n
            if len(batch) >= batch_size:
                break
        return batch

    def drained() -> bool:
        return all(at >= len(logs[t][p]) for (t, p), at in position.items())

    def idle() -> list[int]:
        return [p for p in range(partitions) if position[(click, p)] >= len(clickstream[p])]

    n_batch, quiet = 0, 0
    while quiet < 3:
        before = proc.clocks_view()
        out = proc.process(take())
        deliver(out)
        if n_batch in crash_at:
            for p, entries in out.writes.items():
                items = list(entries.items())
                store.apply({p: dict(items[: rng.randint(0, len(items))])})
            if after_batch:
                committed = dict(after_batch[-rng.randint(1, min(4, len(after_batch)))])
            position.update(committed)
            after_batch.clear()
            proc = start()
        else:
            store.apply(out.writes)
            after_batch.append(dict(position))
            if rng.random() < 0.3:
                committed = dict(position)
        n_batch += 1
        done = drained()
        heartbeat = proc.heartbeat(range(partitions), idle())
        deliver(heartbeat)
        store.apply(heartbeat.writes)
        quiet = quiet + 1 if done and proc.clocks_view() == before else 0
    return closes


@pytest.mark.parametrize(("keyed", "seed"), [(True, 1), (True, 2), (False, 3), (False, 4)], ids=str)
def test_crashes_at_any_point_emit_the_window_closes_of_a_run_without_crashes(
    scorer: Scorer, keyed: bool, seed: int
) -> None:
    settings = Settings()
    clickstream = _clickstream(keyed, seed, settings.topics.partitions, settings.topics.clickstream)
    batch_size = random.Random(seed).choice([64, 128, 512])
    want = _replay(scorer, settings, clickstream, seed, crashes=0, batch_size=batch_size)
    got = _replay(scorer, settings, clickstream, seed + 100, crashes=3, batch_size=batch_size)
    assert len(want) > 1000
    assert set(got) == set(want), (len(set(want) - set(got)), len(set(got) - set(want)))
    tolerance = 1e-5  # the same sequence scored in batches of other sizes (ONNX Runtime)
    differing = {k: v for k, v in got.items() if max(v) - min(v) > tolerance}
    assert not differing, list(differing.items())[:3]
    wrong = [k for k in want if abs(min(got[k]) - min(want[k])) > tolerance]
    assert not wrong, [(k, want[k], got[k]) for k in wrong[:3]]
