"""The benchmark's phases: the processor alone, the raw-aiokafka ceiling, the worker's
throughput and its latency at fractions of that rate, and ONNX Runtime in the worker."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from bench.worker.harness import (
    OUTPUT_WAIT_S,
    POLL_S,
    BenchConfig,
    CpuMark,
    Record,
    cpu_seconds,
    end_offsets,
    log_findings,
    phase_settings,
    preload,
    scrape,
    start_worker,
    stop_worker,
    wait_worker_ready,
)
from ops import kafka_local
from settings import Settings
from stream import memory
from stream.publish import partition_of

log = logging.getLogger("bench.worker")


def run_processor_only(
    settings: Settings, records: Sequence[Record], keep_states: dict[str, bytes] | None = None
) -> dict[str, Any]:
    """The worker's logic in this process: the same events through :class:`Processor` with a
    dict store, in micro-batches of ``batch_size``, signals serialised as the agent does.

    What the worker would do if Kafka and Faust cost nothing; the gap to the worker's rate is
    the streaming overhead (consuming, per-signal sends, changelog writes, commits).
    """
    from serving.scorer import load_model
    from stream.categories import CategoryAggregator
    from stream.loopback import run_in_process
    from stream.processor import BatchOutput, DictStore, RawMessage, processor_from_settings
    from stream.worker import category_model

    scorer = load_model(settings.worker.model_dir, settings.worker.ort_intra_op_threads)
    store = DictStore()
    demand_model = category_model(settings, scorer)  # the worker's own choice
    processor = processor_from_settings(  # the worker's own
        scorer,
        store,
        settings,
        series_level=demand_model.level if demand_model is not None else None,
    )
    aggregator = (
        CategoryAggregator(demand_model, {}, settings.topics.partitions)
        if demand_model is not None
        else None
    )
    forecasts = 0
    parts = settings.topics.partitions
    messages = [
        RawMessage(key, value, settings.topics.clickstream, partition_of(key, parts), i)
        for i, (key, value) in enumerate(records)
    ]
    dumps = orjson.dumps
    size = settings.worker.batch_size
    demand = churn = dead = scored = calls = outcomes = 0
    ort = scoring = 0.0

    def consume(out: BatchOutput) -> None:
        nonlocal demand, churn, dead, scored, calls, ort, scoring, outcomes, forecasts
        store.apply(out.writes)
        if aggregator is not None:
            # The category agent's work too: the parts through the aggregator, as the
            # worker's one-partition topic brings them.
            for part in out.category_parts:
                for merged in aggregator.receive(dumps(part.to_dict()), 0):
                    forecasts += len(merged.forecasts)
                    for f in merged.forecasts:
                        dumps(f.to_dict())
        for d in out.demand:
            dumps(d.to_dict())
        for c in out.churn:
            dumps(c.to_dict())
        for o in out.outcomes:
            dumps(o.to_dict())
        for q in out.quality_parts:
            dumps(q.to_dict())
        outcomes += len(out.outcomes)
        demand += len(out.demand)
        churn += len(out.churn)
        dead += len(out.dead_letters)
        scored += out.scored
        calls += 1 if out.scored else 0
        ort += out.ort_seconds
        scoring += out.inference_seconds

    # The worker's collector, as `faust -A stream.app worker` tunes it once built: the events
    # held here are frozen with the rest (the worker holds a fetch of them at a time).
    collector = memory.tune_collector(settings.worker.gc_young_threshold)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    try:
        # Watermark records looped back as the worker's re-keying topic would bring them (here
        # one announcement per batch, the worker's is one per second: a little more work).
        run_in_process(processor, messages, size, consume)
    finally:
        memory.restore_collector(collector)
    seconds = time.perf_counter() - t0
    if keep_states is not None:  # the state phase measures and clones these
        keep_states.update(store.data)
    return {
        "events": len(messages),
        "seconds": seconds,
        "events_per_s": len(messages) / seconds,
        "cores": (time.process_time() - cpu0) / seconds,
        "batch_size": size,
        "ort_calls": calls,
        "sequences_scored": scored,
        "mean_sequences_per_ort_call": scored / calls if calls else None,
        "ort_seconds": ort,
        "scoring_seconds": scoring,
        "signals_out": {"demand": demand, "churn": churn, "dead_letters": dead},
        "prediction_outcomes": outcomes,
        "online_evaluation": settings.worker.online_evaluation,
        "category_demand": aggregator is not None,
        "category_forecasts": forecasts,
    }


async def run_ceiling(
    settings: Settings,
    in_topic: str,
    out_topic: str,
    n: int,
    stall_s: float,
    broker_pid: int | None,
) -> dict[str, Any]:
    kw = settings.kafka.client_kwargs()
    consumer = AIOKafkaConsumer(
        in_topic,
        **kw,
        group_id=f"{in_topic}-ceiling",
        auto_offset_reset="earliest",
        enable_auto_commit=True,
    )
    producer = AIOKafkaProducer(**kw, acks=1, linger_ms=5)
    await producer.start()
    await consumer.start()
    loads, dumps = orjson.loads, orjson.dumps
    try:
        count = 0
        pending: list[asyncio.Future[Any]] = []
        t_first: float | None = None
        cpu0 = time.process_time()
        broker0 = cpu_seconds(broker_pid)
        last_data = time.monotonic()
        while count < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=2000)
            if not batch:
                if time.monotonic() - last_data > stall_s:
                    raise RuntimeError(f"ceiling: stalled at {count}/{n} events")
                continue
            last_data = time.monotonic()
            if t_first is None:
                t_first = time.perf_counter()
                cpu0 = time.process_time()
                broker0 = cpu_seconds(broker_pid)
            for messages in batch.values():
                for m in messages:
                    event = loads(m.value)
                    out = dumps({"u": event["user_id"], "t": event["event_time"]})
                    pending.append(await producer.send(out_topic, out, key=m.key))
                count += len(messages)
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        await producer.flush()
        assert t_first is not None
        seconds = time.perf_counter() - t_first
        cpu = time.process_time() - cpu0
        broker1 = cpu_seconds(broker_pid)
    finally:
        await consumer.stop()
        await producer.stop()
    return {
        "events": count,
        "seconds": seconds,
        "events_per_s": count / seconds,
        "bench_process_cores": cpu / seconds,
        "broker_cores": (broker1 - broker0) / seconds if broker0 and broker1 else None,
        "producer": {"acks": 1, "linger_ms": 5},
    }


@dataclass
class Sample:
    t: float
    committed: int
    events_in: int | None


@dataclass
class Progress:
    samples: list[Sample] = field(default_factory=list)

    def rate(self, attr: str, total: int) -> dict[str, Any] | None:
        """From the first sample with progress to the first at ``total``: (total-c1)/(t2-t1).

        When one sample holds both (a run shorter than a poll: the smoke's 10,000 events on
        two workers, once the worker stopped waiting for each batch's acknowledgements), the
        sample before it, without progress, is the start: a rate over a longer time than the
        work took, never a missing one (the first sample's: from the workers' start)."""
        counts = [getattr(s, attr) or 0 for s in self.samples]
        i = next((i for i, c in enumerate(counts) if c > 0), None)
        last = next((s for s, c in zip(self.samples, counts, strict=True) if c >= total), None)
        if i is None or last is None:
            return None
        first, c1 = self.samples[i], counts[i]
        if last.t <= first.t:
            first, c1 = (self.samples[i - 1], counts[i - 1]) if i else (Sample(0.0, 0, 0), 0)
        if last.t <= first.t:
            return None
        seconds = last.t - first.t
        return {
            "t_first_progress": first.t,
            "first_progress_count": c1,
            "t_done": last.t,
            "seconds": seconds,
            "events_per_s": (total - c1) / seconds,
        }


async def committed_total(admin: AIOKafkaAdminClient, group: str, topic: str) -> int:
    offsets = await admin.list_consumer_group_offsets(group)
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)


async def run_worker_throughput(
    cfg: BenchConfig,
    base: Settings,
    run_dir: Path,
    store: str,
    records: Sequence[Record],
    broker_pid: int | None,
    *,
    name: str | None = None,
    app_module: str = "stream.app",
    workers: int = 1,
) -> dict[str, Any]:
    """Pre-load ``records``, start ``workers`` × ``faust -A app_module worker`` in one consumer
    group, time them through them (the group's committed offsets). With several workers each
    has its own web port and data dir; the metrics and CPU figures are the first worker's,
    ``events_in`` is summed over all."""
    name = name or store
    s = phase_settings(base, f"{run_dir.name}-{name}", run_dir, store_url=f"{store}://")
    await kafka_local.ensure_topics(s)
    log.info("[%s] pre-loading %d events into %s", name, len(records), s.topics.clickstream)
    preload_s = await preload(s, s.topics.clickstream, records)
    total = (await end_offsets(s, [s.topics.clickstream], cfg.partitions))[s.topics.clickstream]
    if total != len(records):
        raise RuntimeError(f"{s.topics.clickstream} holds {total} records, wanted {len(records)}")

    group = [start_worker(name, s, run_dir / f"worker-{name}.log", app_module)]
    for i in range(1, workers):
        own = s.with_overrides(
            web_port=kafka_local.free_port(), data_dir=s.worker.data_dir / f"w{i}"
        )
        group.append(
            start_worker(f"{name}-{i}", own, run_dir / f"worker-{name}-{i}.log", app_module)
        )
    worker = group[0]
    try:
        t_start = time.perf_counter()
        ready_s = max([await wait_worker_ready(w) for w in group])
        admin = AIOKafkaAdminClient(**s.kafka.client_kwargs())
        await admin.start()
        progress = Progress()
        cpu_marks: dict[str, CpuMark] = {}
        worker_pid = worker.pid
        assert worker_pid is not None, "start_worker returns a started worker"
        try:
            last_change = time.monotonic()
            last_value = -1
            while True:
                for w in group:
                    if not w.alive():
                        raise RuntimeError(
                            f"{w.name} exited with code {w.returncode}; tail of "
                            f"{w.log_path}:\n{w.log_tail(30)}"
                        )
                committed = await committed_total(admin, s.worker.app_id, s.topics.clickstream)
                try:
                    events_in: int | None = sum([(await scrape(w))["events_in"] for w in group])
                except (OSError, RuntimeError):
                    events_in = None
                now = time.perf_counter() - t_start
                progress.samples.append(Sample(now, committed, events_in))
                if (events_in or committed) and "first" not in cpu_marks:
                    cpu_marks["first"] = CpuMark.take(now, worker_pid, broker_pid)
                if (events_in or 0) >= total and "processed" not in cpu_marks:
                    cpu_marks["processed"] = CpuMark.take(now, worker_pid, broker_pid)
                if committed >= total:
                    break
                value = max(committed, events_in or 0)
                if value != last_value:
                    last_value, last_change = value, time.monotonic()
                elif time.monotonic() - last_change > cfg.stall_timeout_s:
                    raise RuntimeError(
                        f"worker {store}: no progress for {cfg.stall_timeout_s:.0f} s "
                        f"(committed {committed}/{total}, events_in {events_in})"
                    )
                await asyncio.sleep(POLL_S)
        finally:
            await admin.close()

        # Let the last sends land: the window close the last events began goes on a slice at
        # a time after them (seconds, on the announcement timer), so wait until no worker has
        # a close in progress and the output topics stopped growing (max OUTPUT_WAIT_S). A
        # first version waited for one second without growth and stopped a run with 19k of
        # its 806k signals still to come.
        # The re-keying topic is not among the outputs waited on: the announcement timer
        # writes watermark records to it every second, so it never stops growing.
        outputs = [s.topics.demand, s.topics.churn, s.topics.dead_letter, s.topics.routed]
        signals = outputs[:3]
        prev: dict[str, int] | None = None
        ends: dict[str, int] = {}
        deadline = time.monotonic() + OUTPUT_WAIT_S
        while time.monotonic() < deadline:
            ends = await end_offsets(s, outputs, cfg.partitions)
            closing = sum([(await scrape(w))["closes_in_progress"] for w in group])
            now_signals = {t: ends[t] for t in signals}
            if now_signals == prev and not closing:
                break
            prev = now_signals
            await asyncio.sleep(2.0)
        metrics = await scrape(worker)
    finally:
        for w in group:
            stop_worker(w)

    committed_rate = progress.rate("committed", total)
    processed_rate = progress.rate("events_in", total)
    cores = None
    if "first" in cpu_marks and "processed" in cpu_marks:
        cores = cpu_marks["processed"].cores_since(cpu_marks["first"])
    ort_s = metrics["ort_seconds"]
    return {
        "store": store,
        "name": name,
        "app": app_module,
        "workers": workers,
        "app_id": s.worker.app_id,
        "events": total,
        # ONNX Runtime inside the worker: sequences scored per second of session.run time
        # (the inputs' features and the served forecast are in scoring_seconds besides it).
        "ort_sequences_per_s": metrics["sequences_scored"] / ort_s if ort_s else None,
        "scoring_sequences_per_s": (
            metrics["sequences_scored"] / metrics["scoring_seconds"]
            if metrics["scoring_seconds"]
            else None
        ),
        "preload_seconds": preload_s,
        "worker_ready_seconds": ready_s,
        # Committed offsets are the headline; a run shorter than Faust's commit interval
        # (a smoke run) has no committed rate, so the processed counter stands in.
        "events_per_s": (committed_rate or processed_rate or {}).get("events_per_s"),
        "committed": committed_rate,
        "processed": processed_rate,
        "cores_used": cores,
        "metrics": metrics,
        "signals_out": {
            "demand": ends[s.topics.demand],
            "churn": ends[s.topics.churn],
            "dead_letters": ends[s.topics.dead_letter],
            "rerouted": ends[s.topics.routed],
        },
        "log": log_findings(worker.log_path),
        "log_path": str(worker.log_path),
        "samples": [[round(x.t, 2), x.committed, x.events_in] for x in progress.samples],
    }


def warmup_users(partitions: int) -> list[str]:
    """One user id per partition (so every partition is exercised before measuring)."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < partitions:
        user = f"bench-warmup-{i}"
        found.setdefault(partition_of(user.encode(), partitions), user)
        i += 1
    return [found[p] for p in range(partitions)]


def expected_activity(keys: Sequence[tuple[str, int]], interval_s: float) -> set[tuple[str, int]]:
    """Of the events' (user, event time), those the worker's activity rule scores, from empty
    state."""
    interval_ms = int(interval_s * 1000)
    last: dict[str, int] = {}
    out: set[tuple[str, int]] = set()
    for user, t in keys:
        prev = last.get(user)
        if prev is None or t - prev >= interval_ms:
            last[user] = t
            out.add((user, t))
    return out


async def run_latency(
    cfg: BenchConfig,
    base: Settings,
    run_dir: Path,
    records: Sequence[Record],
    rate: float,
    tag: str = "latency",
) -> dict[str, Any]:
    s = phase_settings(
        base,
        f"{run_dir.name}-{tag}",
        run_dir,
        store_url="memory://",
        fresh_signal_min_interval_s=(
            base.worker.fresh_signal_min_interval_s
            if cfg.latency_fresh_interval_s is None
            else cfg.latency_fresh_interval_s
        ),
    )
    n = min(len(records), max(1, round(rate * cfg.latency_seconds)))
    events = records[:n]
    # The events that get an activity signal of their own (the worker's per-user interval
    # rule on a fresh state; the generator's events are valid and in order per user). Only
    # those have an event -> signal latency; the others update state and wait for the next.
    keys = [(key.decode(), int(orjson.loads(value)["event_time"])) for key, value in events]
    expected = expected_activity(keys, s.worker.fresh_signal_min_interval_s)
    await kafka_local.ensure_topics(s)
    worker = start_worker(tag, s, run_dir / f"worker-{tag}.log", cfg.app_module)
    kw = s.kafka.client_kwargs()
    consumer = AIOKafkaConsumer(
        s.topics.demand, **kw, group_id=None, auto_offset_reset="earliest", fetch_max_wait_ms=100
    )
    producer = AIOKafkaProducer(**kw, acks=1, linger_ms=0)
    received: dict[tuple[str, int], list[float]] = defaultdict(list)
    # The worker's clock when it built each signal (``emitted_at_ms``, wall time): splits the
    # latency into send -> scored (Kafka in, the worker's queue and batch) and scored ->
    # received (the output's way through Kafka to this process).
    emitted: dict[tuple[str, int], list[float]] = defaultdict(list)
    wall_minus_perf = time.time() - time.perf_counter()  # send times on the worker's clock
    last_receive = [0.0]
    stop = asyncio.Event()
    collector: asyncio.Task[None] | None = None

    async def collect() -> None:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100, max_records=5000)
            now = time.perf_counter()
            if batch:
                last_receive[0] = now
            for messages in batch.values():
                for m in messages:
                    signal_ = orjson.loads(m.value)
                    if signal_.get("trigger") == "activity":
                        key_ = (signal_["user_id"], signal_["window_end_ms"])
                        received[key_].append(now)
                        emitted[key_].append(signal_["emitted_at_ms"] / 1000.0)

    try:
        ready_s = await wait_worker_ready(worker)
        await consumer.start()
        await producer.start()
        collector = asyncio.create_task(collect())

        # Warm-up: one event per partition, at the stream's first event time; wait for each
        # one's activity signal so the group is assigned and ORT is warm before measuring.
        first_ms = orjson.loads(events[0][1])["event_time"]
        warm = warmup_users(cfg.partitions)
        t_warm = time.perf_counter()
        for user in warm:
            value = orjson.dumps(
                {"event_time": first_ms - 1, "event_type": "view", "user_id": user}
            )
            await producer.send_and_wait(s.topics.clickstream, value, key=user.encode())
        while not all((u, first_ms - 1) in received for u in warm):
            if time.perf_counter() - t_warm > 60:
                raise RuntimeError("latency: warm-up signals did not arrive within 60 s")
            if not worker.alive():
                raise RuntimeError(f"latency worker exited:\n{worker.log_tail(30)}")
            await asyncio.sleep(0.05)
        warmup_s = time.perf_counter() - t_warm

        # Paced send: every event at (start + i / rate); send times taken at the send call.
        sent: dict[tuple[str, int], list[float]] = defaultdict(list)
        # Deliveries are checked by callback: gathering tens of thousands of futures at the
        # end would stall this loop and show up as latency of the last events.
        failures: list[BaseException] = []
        # Send call -> broker ack per event: the share of the latency that is the bench's own
        # producer and the broker, before the worker could have seen the event.
        acked = np.zeros(n)
        send_call = np.zeros(n)

        def delivered(index: int, fut: asyncio.Future[Any]) -> None:
            acked[index] = time.perf_counter()
            if not fut.cancelled() and fut.exception() is not None:
                failures.append(fut.exception())  # type: ignore[arg-type]

        t0 = time.perf_counter()
        i = 0
        while i < n:
            due = min(n, int((time.perf_counter() - t0) * rate) + 1)
            while i < due:
                key, value = events[i]
                send_call[i] = time.perf_counter()
                sent[keys[i]].append(send_call[i])
                fut = await producer.send(s.topics.clickstream, value, key=key)
                fut.add_done_callback(functools.partial(delivered, i))
                i += 1
            next_due = t0 + i / rate
            await asyncio.sleep(max(0.0, next_due - time.perf_counter()))
        send_seconds = time.perf_counter() - t0
        await producer.flush()
        if failures:
            raise RuntimeError(f"latency: {len(failures)} sends failed, first: {failures[0]!r}")

        # Wait for the signals: all expected matched, or nothing new for 10 s (max 120 s).
        def matched() -> int:
            return sum(min(len(v), len(received.get(k, ()))) for k, v in sent.items())

        n_expected = len(expected)

        deadline = time.perf_counter() + 120
        last, last_change = -1, time.perf_counter()
        while time.perf_counter() < deadline:
            m = matched()
            if m >= n_expected:
                break
            if m != last:
                last, last_change = m, time.perf_counter()
            elif time.perf_counter() - last_change > 10:
                break
            await asyncio.sleep(0.2)
        drain_s = time.perf_counter() - t0 - send_seconds
        metrics = await scrape(worker)
    finally:
        stop.set()
        if collector is not None:
            with contextlib.suppress(Exception):
                await collector
        with contextlib.suppress(Exception):
            await consumer.stop()
        with contextlib.suppress(Exception):
            await producer.stop()
        stop_worker(worker)

    lat: list[float] = []
    sent_at: list[float] = []
    to_scored: list[float] = []
    for k, sends in sent.items():
        if k not in expected:
            continue  # no signal of its own (within the user's activity interval)
        to_scored += [
            e - (t + wall_minus_perf) for t, e in zip(sends, emitted.get(k, ()), strict=False)
        ]
        for t_send, t_recv in zip(sends, received.get(k, ()), strict=False):
            lat.append(t_recv - t_send)
            sent_at.append(t_send - t0)
    arr = np.array(lat) * 1000.0
    order = np.argsort(sent_at)
    arr_by_time = arr[order] if len(arr) else arr

    def pct(a: np.ndarray, q: float) -> float | None:
        return float(np.percentile(a, q)) if len(a) else None

    tenth = max(1, len(arr_by_time) // 10)
    by_second = []
    if len(arr):
        seconds_of = np.floor(np.array(sent_at)[order]).astype(int)
        for sec in np.unique(seconds_of):
            chunk = arr_by_time[seconds_of == sec]
            by_second.append(
                [int(sec), len(chunk), round(pct(chunk, 50) or 0, 1), round(pct(chunk, 99) or 0, 1)]
            )
    last_s = last_receive[0] - t0
    # The same percentiles without the first 5 s of sending (start-up transient).
    steady = np.array([x for x, t in zip(lat, sent_at, strict=True) if t >= 5.0]) * 1000.0
    return {
        "name": tag,
        "app_id": s.worker.app_id,
        "target_rate": rate,
        "achieved_send_rate": n / send_seconds,
        "events_sent": n,
        "fresh_signal_min_interval_s": s.worker.fresh_signal_min_interval_s,
        "events_expected_to_signal": len(expected),
        "send_seconds": send_seconds,
        "drain_seconds_after_send": drain_s,
        "worker_ready_seconds": ready_s,
        "warmup_seconds": warmup_s,
        "matched": len(arr),
        "p50_ms": pct(arr, 50),
        "p90_ms": pct(arr, 90),
        "p99_ms": pct(arr, 99),
        "p999_ms": pct(arr, 99.9),
        "max_ms": float(arr.max()) if len(arr) else None,
        "mean_ms": float(arr.mean()) if len(arr) else None,
        "after_5s": {
            "matched": len(steady),
            "p50_ms": pct(steady, 50),
            "p99_ms": pct(steady, 99),
            "p999_ms": pct(steady, 99.9),
            "max_ms": float(steady.max()) if len(steady) else None,
        },
        "send_to_scored_ms": {
            "p50": pct(np.array(to_scored) * 1000.0, 50),
            "p99": pct(np.array(to_scored) * 1000.0, 99),
        },
        "send_to_ack_ms": {
            "p50": pct((acked - send_call) * 1000.0, 50),
            "p99": pct((acked - send_call) * 1000.0, 99),
            "max": float(((acked - send_call) * 1000.0).max()) if n else None,
        },
        "p50_first_tenth_ms": pct(arr_by_time[:tenth], 50),
        "p50_last_tenth_ms": pct(arr_by_time[-tenth:], 50),
        "last_signal_s": last_s,
        "effective_rate": n / last_s if last_s > 0 else None,
        "by_send_second": {"columns": ["second", "events", "p50_ms", "p99_ms"], "rows": by_second},
        # Every matched latency (ms, send order), for the distribution plot.
        "latencies_ms": [round(float(x), 2) for x in arr_by_time],
        "metrics": metrics,
        "log": log_findings(worker.log_path),
        "log_path": str(worker.log_path),
    }


async def worker_ort_vs_microbench(run: dict[str, Any]) -> dict[str, Any] | None:
    """ORT in the bench process at the worker's mean batch size, beside the worker's figure.

    Run after the worker stopped, so the microbenchmark has the core to itself.
    """
    from bench.inference import ort_at_batch

    mean = run["metrics"]["mean_sequences_per_ort_call"]
    if not mean:
        return None
    batch = max(1, round(mean))
    micro = await asyncio.to_thread(ort_at_batch, batch, 1.0)
    worker = run["ort_sequences_per_s"]
    return {
        "batch": batch,
        "microbench_sequences_per_s": micro["sequences_per_s"],
        "microbench_ms_per_call": micro["ms_per_call"],
        "worker_sequences_per_s": worker,
        "ratio": worker / micro["sequences_per_s"] if worker else None,
    }


def alternating_evaluation(pairs: int) -> list[bool]:
    """The online evaluation's setting for each run after a first run with it on, so that
    ``pairs`` on/off pairs alternate their order (on off, off on, on off, ...): a steady drift
    of the machine over the runs then falls on both sides alike."""
    order = [False]
    for k in range(2, pairs + 1):
        order += [False, True] if k % 2 == 0 else [True, False]
    return order


def evaluation_cost(
    worker_runs: Sequence[tuple[bool, float | None]],
    processor_runs: Sequence[tuple[bool, float]],
    prediction_outcomes: int,
    label: str = "evaluation",
) -> dict[str, Any]:
    """The online evaluation's cost from runs in :func:`alternating_evaluation`'s order
    (``(on, events/s)``, the first one on): mean rates on and off, the cost of the means, and
    each pair's own cost, which shows the spread between runs of one machine."""

    def summary(runs: Sequence[tuple[bool, float | None]]) -> dict[str, Any]:
        on = [r for o, r in runs if o and r]
        off = [r for o, r in runs if not o and r]
        mean_on = sum(on) / len(on) if on else None
        mean_off = sum(off) / len(off) if off else None
        pairs = []
        for (a_on, a), (_, b) in zip(runs[::2], runs[1::2], strict=False):
            rate_on, rate_off = (a, b) if a_on else (b, a)
            pairs.append(1 - rate_on / rate_off if rate_on and rate_off else None)
        cost = 1 - mean_on / mean_off if mean_on and mean_off else None
        return {"on": mean_on, "off": mean_off, "cost": cost, "pair_costs": pairs}

    worker = summary(worker_runs)
    processor = summary(processor_runs)
    return {
        "worker_on": worker["on"],
        "worker_off": worker["off"],
        "worker_cost": worker["cost"],
        "worker_pair_costs": worker["pair_costs"],
        "processor_on": processor["on"],
        "processor_off": processor["off"],
        "processor_cost": processor["cost"],
        "processor_pair_costs": processor["pair_costs"],
        "runs": {
            "worker": [{label: o, "events_per_s": r} for o, r in worker_runs],
            "processor": [{label: o, "events_per_s": r} for o, r in processor_runs],
        },
        "prediction_outcomes": prediction_outcomes,
    }
