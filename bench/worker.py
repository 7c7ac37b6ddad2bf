"""Worker benchmark: the Faust worker's throughput and latency beside a raw-Kafka ceiling.

``python -m bench.worker [--events N --users U --partitions P --quick]`` starts its own
single-node Kafka broker (fresh data dir under ``var/bench``, free ports) and measures, on that
one broker, in one run:

1. **ceiling** — N pre-loaded events read by a plain aiokafka consumer (group, earliest), each
   value decoded with orjson and answered by one small record on an output topic (acks=1,
   linger 5 ms, deliveries gathered in chunks). events/s = N / (first fetch → last delivery).
2. **worker** — the same N events pre-loaded into an isolated clickstream topic *before*
   ``faust -A stream.app worker`` starts (fresh app id and topic names; ``memory://`` store,
   optionally ``rocksdb://`` too). events/s from the group's committed offsets (polled every
   0.5 s against the end offsets), cross-checked with the worker's own ``events_in`` counter.
   ``/metrics`` gives the mean micro-batch size and sequences per ONNX Runtime call; the end
   offsets of the output topics give the signals out.
3. **latency** — a fresh worker, configured as in phase 2, fed generator traffic at fractions
   of the measured worker rate; for each event that gets an activity signal of its own (the
   per-user ``fresh_signal_min_interval_s`` rule; its ``window_end_ms`` is the event's time),
   latency = receive time of that signal − send time of the event, both taken in this process.
   ``--latency-fresh-interval 0`` gives every event a signal (more work per event than phase 2).

Results go to ``bench/results/worker.json`` and ``worker.md`` (``--out`` elsewhere; ``--quick``
writes to ``var/bench/quick`` unless ``--out`` is given). Figures, not assertions. Every
process started here (broker, workers) is stopped on the way out, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import importlib.metadata
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from features.windows import DAY_MS
from ops import kafka_local
from settings import Settings, env_names, load_settings
from stream.publish import partition_of

log = logging.getLogger("bench.worker")

REPO = Path(__file__).resolve().parent.parent
POLL_S = 0.5
Record = tuple[bytes, bytes]


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    events: int = 1_000_000
    users: int = 100_000
    partitions: int = 4
    days: int = 56
    seed: int = 7
    latency_seconds: float = 45.0
    latency_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    naive_events: int = 100_000
    """The naive pattern runs on the first ``naive_events`` events (it is ~10x slower)."""
    stores: tuple[str, ...] = ("memory",)
    quick: bool = False
    out_dir: Path = REPO / "bench" / "results"
    work_root: Path = REPO / "var" / "bench"
    keep_data: bool = False
    stall_timeout_s: float = 120.0
    verbose: bool = False
    bootstrap: str | None = None
    """Use this running broker (host:port) instead of starting one (the smoke test does)."""
    app_module: str = "stream.app"
    """The Faust app of the worker and latency phases (``--app``: compare a variant)."""
    latency_fresh_interval_s: float | None = None
    """``fresh_signal_min_interval_s`` of the latency worker; ``None``: the settings' value,
    i.e. the configuration whose rate phase 2 measured (0: a signal for every event)."""


def parse_args(argv: Sequence[str] | None) -> BenchConfig:
    p = argparse.ArgumentParser(prog="python -m bench.worker", description=__doc__.split("\n")[0])
    add_common_args(p)
    a = p.parse_args(argv)
    return config_from_args(p, a)


def add_common_args(p: argparse.ArgumentParser) -> None:
    """Options shared by ``python -m bench.worker`` and ``python -m bench``."""
    p.add_argument("--events", type=int, help="events pre-loaded (default 1,000,000)")
    p.add_argument("--users", type=int, help="generator users (default 100,000)")
    p.add_argument("--partitions", type=int, help="partitions of every topic (default 4)")
    p.add_argument("--days", type=int, help="generated time span in days (default 56)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--naive-events", type=int, help="events for the naive pattern (100,000)")
    p.add_argument("--latency-seconds", type=float, help="send time per latency rate (45)")
    p.add_argument(
        "--latency-fractions",
        help="latency send rates as fractions of the measured worker rate (0.25,0.5,0.75)",
    )
    p.add_argument("--quick", action="store_true", help="tiny smoke configuration (< 1 min)")
    p.add_argument("--out", type=Path, help="where the results go")
    p.add_argument("--bootstrap", help="use this running broker (host:port), start none")
    p.add_argument("--app", default="stream.app", help="Faust app module of the worker phases")
    p.add_argument(
        "--latency-fresh-interval",
        type=float,
        help="activity-signal interval (s) of the latency worker (default: the settings', as "
        "in the rate phase; 0: a signal for every event)",
    )
    p.add_argument("--keep-data", action="store_true", help="keep the broker's topic data")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument(
        "--stores",
        help="comma-separated worker stores to measure: memory, rocksdb (default memory; "
        "the first one sets the latency phase's rates)",
    )


def config_from_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> BenchConfig:
    if a.quick:
        base = BenchConfig(
            events=10_000,
            users=1_000,
            naive_events=1_000,
            latency_seconds=3.0,
            latency_fractions=(0.5,),
            out_dir=REPO / "var" / "bench" / "quick",
            stall_timeout_s=45.0,
            quick=True,
        )
    else:
        base = BenchConfig()
    fractions = base.latency_fractions
    if a.latency_fractions:
        try:
            fractions = tuple(float(x) for x in a.latency_fractions.split(","))
        except ValueError:
            p.error(f"--latency-fractions: not numbers: {a.latency_fractions!r}")
    stores = tuple(s.strip() for s in a.stores.split(",")) if getattr(a, "stores", None) else ()
    stores = stores or base.stores
    stores = tuple(s.strip() for s in a.stores.split(",")) if a.stores else base.stores
    for s in stores:
        if s not in ("memory", "rocksdb"):
            p.error(f"--stores: unknown store {s!r} (memory, rocksdb)")
    partitions = a.partitions or base.partitions
    if partitions < 1:
        p.error("--partitions must be >= 1")
    return BenchConfig(
        events=a.events or base.events,
        users=a.users or base.users,
        partitions=partitions,
        days=a.days or base.days,
        seed=a.seed,
        latency_seconds=a.latency_seconds or base.latency_seconds,
        latency_fractions=fractions,
        naive_events=a.naive_events or base.naive_events,
        stores=stores,
        quick=base.quick,
        out_dir=(a.out or base.out_dir).resolve(),
        work_root=base.work_root,
        keep_data=a.keep_data,
        stall_timeout_s=base.stall_timeout_s,
        latency_fresh_interval_s=getattr(a, "latency_fresh_interval", None),
        verbose=a.verbose,
        bootstrap=a.bootstrap,
        app_module=a.app,
    )


# --------------------------------------------------------------------------------------------
# Processes we start (stopped in main's finally, whatever happens)
# --------------------------------------------------------------------------------------------


@dataclass
class Worker:
    name: str
    settings: Settings
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{self.settings.web_host}:{self.settings.web_port}"


_WORKERS: list[Worker] = []


def _worker_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for name, var in env_names().items():
        value = getattr(settings, name)
        if value is None:
            env.pop(var, None)
            continue
        env[var] = value.reveal() if hasattr(value, "reveal") else str(value)
    return env


def start_worker(
    name: str, settings: Settings, log_path: Path, app_module: str = "stream.app"
) -> Worker:
    faust = Path(sys.executable).with_name("faust")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as handle:
        proc = subprocess.Popen(
            [str(faust), "-A", app_module, "worker", "-l", "info"],
            env=_worker_env(settings),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # no terminal signals: we stop it ourselves
        )
    worker = Worker(name, settings, proc, log_path)
    _WORKERS.append(worker)
    log.info("started worker %s (pid %d, log %s)", name, proc.pid, log_path)
    return worker


def stop_worker(worker: Worker, timeout_s: float = 30.0) -> None:
    proc = worker.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("worker %s ignored SIGTERM for %.0f s; killing it", worker.name, timeout_s)
            proc.kill()
            proc.wait()
    log.info("worker %s (pid %d) stopped, exit code %s", worker.name, proc.pid, proc.returncode)
    if worker in _WORKERS:
        _WORKERS.remove(worker)


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


async def wait_worker_ready(worker: Worker, timeout_s: float = 120.0) -> float:
    """Wait for ``/health`` then ``/ready``; returns seconds since the process started."""
    t0 = time.monotonic()
    for path in ("/health", "/ready"):
        while True:
            if worker.proc.poll() is not None:
                raise RuntimeError(
                    f"worker {worker.name} exited with code {worker.proc.returncode} during "
                    f"start-up; tail of {worker.log_path}:\n{_log_tail(worker.log_path)}"
                )
            with contextlib.suppress(OSError):
                status, _ = await asyncio.to_thread(_http_get, worker.url + path, 1.0)
                if status == 200:
                    break
            if time.monotonic() - t0 > timeout_s:
                raise RuntimeError(f"worker {worker.name} not {path[1:]} after {timeout_s:.0f} s")
            await asyncio.sleep(0.25)
    return time.monotonic() - t0


def machine_busy_seconds() -> float | None:
    """CPU seconds all CPUs spent busy since boot (/proc/stat: everything but idle, iowait)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    busy = sum(fields[:8]) - fields[3] - fields[4]  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuMark:
    t: float
    worker: float | None
    broker: float | None
    bench: float
    machine: float | None

    @classmethod
    def take(cls, t: float, worker_pid: int, broker_pid: int | None) -> CpuMark:
        return cls(
            t,
            cpu_seconds(worker_pid),
            cpu_seconds(broker_pid),
            time.process_time(),
            machine_busy_seconds(),
        )

    def cores_since(self, first: CpuMark) -> dict[str, float | None] | None:
        """Cores used between two marks: worker, broker, this process, everything else."""
        dt_ = self.t - first.t
        if dt_ <= 0:
            return None

        def rate(a: float | None, b: float | None) -> float | None:
            return (a - b) / dt_ if a is not None and b is not None else None

        out = {
            "worker": rate(self.worker, first.worker),
            "broker": rate(self.broker, first.broker),
            "bench": rate(self.bench, first.bench),
            "machine": rate(self.machine, first.machine),
        }
        parts = [out["worker"], out["broker"], out["bench"]]
        if out["machine"] is not None and all(x is not None for x in parts):
            out["others"] = max(0.0, out["machine"] - sum(x for x in parts if x is not None))
        return out


def cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of ``pid`` (its threads included) from /proc, in seconds."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass
class Dataset:
    records: list[Record]
    users_generated: int
    users_with_events: int
    first_event_ms: int
    last_event_ms: int
    seconds: float

    @property
    def span_days(self) -> float:
        return (self.last_event_ms - self.first_event_ms) / DAY_MS


def make_dataset(cfg: BenchConfig) -> Dataset:
    """Exactly ``cfg.events`` generator events over ``cfg.users`` users and ~``cfg.days`` days.

    The generator's session rate is scaled so that U users over D days give about N events
    (then the first N in time order are kept): the span stays D days whatever N/U is, so the
    stream crosses several weekly windows and the worker closes (and scores) them.
    """
    from ingest.adapters import to_wire_bytes
    from ingest.generator import GeneratorConfig, generate_clickstream, users_for_events

    t0 = time.perf_counter()
    base = GeneratorConfig()
    scale = users_for_events(cfg.events, cfg.days, base) / cfg.users
    n_users = cfg.users
    frame = None
    for attempt in range(5):  # the estimate is rough: rescale until N..1.05 N events
        gen = GeneratorConfig(mean_sessions_per_day=base.mean_sessions_per_day * scale)
        frame = generate_clickstream(n_users, days=cfg.days, seed=cfg.seed + attempt, config=gen)
        if cfg.events <= len(frame) <= 1.05 * cfg.events:
            break
        scale *= 1.02 * cfg.events / max(len(frame), 1)
    assert frame is not None
    if len(frame) < cfg.events:
        raise RuntimeError(f"generator gave {len(frame)} events, fewer than {cfg.events}")
    frame = frame.iloc[: cfg.events]
    records = to_wire_bytes(frame)
    return Dataset(
        records=records,
        users_generated=n_users,
        users_with_events=int(frame["user_id"].nunique()),
        first_event_ms=int(frame["event_time_ms"].iloc[0]),
        last_event_ms=int(frame["event_time_ms"].iloc[-1]),
        seconds=time.perf_counter() - t0,
    )


# --------------------------------------------------------------------------------------------
# Kafka helpers
# --------------------------------------------------------------------------------------------


def phase_settings(base: Settings, app_id: str, run_dir: Path, **changes: Any) -> Settings:
    """Settings with an own app id and own topic names (all under ``app_id``)."""
    return base.with_overrides(
        app_id=app_id,
        topic_clickstream=f"{app_id}-clickstream",
        topic_demand=f"{app_id}-demand",
        topic_churn=f"{app_id}-churn",
        topic_dead_letter=f"{app_id}-dlq",
        topic_bid_adjustments=f"{app_id}-bid-adjustments",
        topic_churn_alerts=f"{app_id}-churn-alerts",
        data_dir=run_dir / app_id,
        web_port=kafka_local.free_port(),
        **changes,
    )


async def preload(settings: Settings, topic: str, records: Sequence[Record]) -> float:
    """Produce ``records`` to ``topic`` as fast as possible (acks=1); returns seconds."""
    producer = AIOKafkaProducer(
        **settings.kafka_client_kwargs(), acks=1, linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    t0 = time.perf_counter()
    try:
        pending: list[asyncio.Future[Any]] = []
        for key, value in records:
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        await producer.flush()
    finally:
        await producer.stop()
    return time.perf_counter() - t0


async def end_offsets(settings: Settings, topics: Sequence[str], partitions: int) -> dict[str, int]:
    """Sum of end offsets per topic."""
    consumer = AIOKafkaConsumer(**settings.kafka_client_kwargs(), group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    totals: dict[str, int] = dict.fromkeys(topics, 0)
    for tp, off in ends.items():
        totals[tp.topic] += off
    return totals


def parse_metrics(text: str) -> dict[str, Any]:
    """The worker's Prometheus view reduced to the figures the bench reports."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, float] = defaultdict(float)
    labelled: dict[str, dict[str, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_bucket") or s.name.endswith("_created"):
                continue
            samples[s.name] += s.value
            if s.labels:
                label = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                labelled[s.name][label] = s.value

    def mean(name: str) -> float | None:
        count = samples.get(f"{name}_count", 0.0)
        return samples[f"{name}_sum"] / count if count else None

    return {
        "events_in": int(samples.get("clicksignals_events_in_total", 0)),
        "batches": int(samples.get("clicksignals_batch_size_count", 0)),
        "mean_batch_size": mean("clicksignals_batch_size"),
        "ort_calls": int(samples.get("clicksignals_scored_per_batch_count", 0)),
        "sequences_scored": int(samples.get("clicksignals_scored_per_batch_sum", 0)),
        "mean_sequences_per_ort_call": mean("clicksignals_scored_per_batch"),
        "ort_seconds": samples.get("clicksignals_inference_seconds_sum", 0.0),
        "mean_ort_call_ms": (mean("clicksignals_inference_seconds") or 0.0) * 1000,
        "batch_seconds": samples.get("clicksignals_batch_seconds_sum", 0.0),
        "signals": labelled.get("clicksignals_signals_total", {}),
        "invalid": labelled.get("clicksignals_invalid_total", {}),
        "rerouted": int(samples.get("clicksignals_rerouted_total", 0)),
    }


async def scrape(worker: Worker) -> dict[str, Any]:
    status, body = await asyncio.to_thread(_http_get, worker.url + "/metrics", 5.0)
    if status != 200:
        raise RuntimeError(f"/metrics of worker {worker.name} answered {status}")
    return parse_metrics(body.decode())


def log_findings(path: Path) -> dict[str, Any]:
    """Counts of WARNING / ERROR / CRITICAL / Traceback lines in a worker log, with examples."""
    counts = {"WARNING": 0, "ERROR": 0, "CRITICAL": 0, "Traceback": 0}
    examples: list[str] = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {
            "counts": counts,
            "examples": ["(no log)"],
            "producer_buffer_full": 0,
            "producer_flush_seconds": 0.0,
        }
    buffer_full = 0
    flush_seconds = 0.0
    for line in lines:
        if "producer buffer full" in line:
            buffer_full += 1
        elif "producer flush took" in line:
            with contextlib.suppress(ValueError):
                flush_seconds += float(line.split()[-1])
        for key in counts:
            if key in line:
                counts[key] += 1
                if key != "WARNING" and len(examples) < 8:
                    examples.append(line.strip()[:300])
                break
    return {
        "counts": counts,
        "examples": examples,
        # Faust's ProducerBuffer (table changelog writes) over 100 messages: the stream waits.
        "producer_buffer_full": buffer_full,
        "producer_flush_seconds": flush_seconds,
    }


# --------------------------------------------------------------------------------------------
# Phase 0: the processor alone (no Kafka, no Faust)
# --------------------------------------------------------------------------------------------


def run_processor_only(
    settings: Settings, records: Sequence[Record], keep_states: dict[str, bytes] | None = None
) -> dict[str, Any]:
    """The worker's logic in this process: the same events through :class:`Processor` with a
    dict store, in micro-batches of ``batch_size``, signals serialised as the agent does.

    What the worker would do if Kafka and Faust cost nothing; the gap to the worker's rate is
    the streaming overhead (consuming, per-signal sends, changelog writes, commits).
    """
    from stream.loopback import run_in_process
    from stream.model import load_model
    from stream.processor import BatchOutput, DictStore, RawMessage, processor_from_settings

    scorer = load_model(settings.model_dir, settings.ort_intra_op_threads)
    store = DictStore()
    processor = processor_from_settings(scorer, store, settings)  # the worker's own
    parts = settings.partitions
    messages = [
        RawMessage(key, value, settings.topic_clickstream, partition_of(key, parts), i)
        for i, (key, value) in enumerate(records)
    ]
    dumps = orjson.dumps
    size = settings.batch_size
    demand = churn = dead = scored = calls = 0
    ort = 0.0
    t0 = time.perf_counter()
    cpu0 = time.process_time()

    def consume(out: BatchOutput) -> None:
        nonlocal demand, churn, dead, scored, calls, ort
        store.apply(out.writes)
        for d in out.demand:
            dumps(d.to_dict())
        for c in out.churn:
            dumps(c.to_dict())
        demand += len(out.demand)
        churn += len(out.churn)
        dead += len(out.dead_letters)
        scored += out.scored
        calls += 1 if out.scored else 0
        ort += out.inference_seconds

    # Watermark records looped back as the worker's re-keying topic would bring them (here one
    # announcement per batch, the worker's is one per second: a little more work than live).
    run_in_process(processor, messages, size, consume)
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
        "signals_out": {"demand": demand, "churn": churn, "dead_letters": dead},
    }


# --------------------------------------------------------------------------------------------
# Phase 1: the ceiling
# --------------------------------------------------------------------------------------------


async def run_ceiling(
    settings: Settings,
    in_topic: str,
    out_topic: str,
    n: int,
    stall_s: float,
    broker_pid: int | None,
) -> dict[str, Any]:
    kw = settings.kafka_client_kwargs()
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


# --------------------------------------------------------------------------------------------
# Phase 2: worker throughput
# --------------------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    committed: int
    events_in: int | None


@dataclass
class Progress:
    samples: list[Sample] = field(default_factory=list)

    def rate(self, attr: str, total: int) -> dict[str, Any] | None:
        """From the first sample with progress to the first at ``total``: (total-c1)/(t2-t1)."""
        first = next((s for s in self.samples if (getattr(s, attr) or 0) > 0), None)
        last = next((s for s in self.samples if (getattr(s, attr) or 0) >= total), None)
        if first is None or last is None or last.t <= first.t:
            return None
        c1 = getattr(first, attr)
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
) -> dict[str, Any]:
    """Pre-load ``records``, start ``faust -A app_module worker``, time it through them."""
    name = name or store
    s = phase_settings(base, f"{run_dir.name}-{name}", run_dir, store_url=f"{store}://")
    await kafka_local.ensure_topics(s)
    log.info("[%s] pre-loading %d events into %s", name, len(records), s.topic_clickstream)
    preload_s = await preload(s, s.topic_clickstream, records)
    total = (await end_offsets(s, [s.topic_clickstream], cfg.partitions))[s.topic_clickstream]
    if total != len(records):
        raise RuntimeError(f"{s.topic_clickstream} holds {total} records, wanted {len(records)}")

    worker = start_worker(name, s, run_dir / f"worker-{name}.log", app_module)
    try:
        t_start = time.perf_counter()
        ready_s = await wait_worker_ready(worker)
        admin = AIOKafkaAdminClient(**s.kafka_client_kwargs())
        await admin.start()
        progress = Progress()
        cpu_marks: dict[str, CpuMark] = {}
        try:
            last_change = time.monotonic()
            last_value = -1
            while True:
                if worker.proc.poll() is not None:
                    raise RuntimeError(
                        f"worker {store} exited with code {worker.proc.returncode}; tail of "
                        f"{worker.log_path}:\n{_log_tail(worker.log_path)}"
                    )
                committed = await committed_total(admin, s.app_id, s.topic_clickstream)
                try:
                    events_in: int | None = (await scrape(worker))["events_in"]
                except (OSError, RuntimeError):
                    events_in = None
                now = time.perf_counter() - t_start
                progress.samples.append(Sample(now, committed, events_in))
                if (events_in or committed) and "first" not in cpu_marks:
                    cpu_marks["first"] = CpuMark.take(now, worker.proc.pid, broker_pid)
                if (events_in or 0) >= total and "processed" not in cpu_marks:
                    cpu_marks["processed"] = CpuMark.take(now, worker.proc.pid, broker_pid)
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

        # Let the last sends land: wait until the output topics stop growing (max 30 s).
        outputs = [s.topic_demand, s.topic_churn, s.topic_dead_letter, s.topic_routed]
        prev: dict[str, int] | None = None
        ends: dict[str, int] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ends = await end_offsets(s, outputs, cfg.partitions)
            if ends == prev:
                break
            prev = ends
            await asyncio.sleep(1.0)
        metrics = await scrape(worker)
    finally:
        stop_worker(worker)

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
        "app_id": s.app_id,
        "events": total,
        # ONNX Runtime inside the worker: sequences scored per second of Scorer.score time.
        "ort_sequences_per_s": metrics["sequences_scored"] / ort_s if ort_s else None,
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
            "demand": ends[s.topic_demand],
            "churn": ends[s.topic_churn],
            "dead_letters": ends[s.topic_dead_letter],
            "rerouted": ends[s.topic_routed],
        },
        "log": log_findings(worker.log_path),
        "log_path": str(worker.log_path),
        "samples": [[round(x.t, 2), x.committed, x.events_in] for x in progress.samples],
    }


# --------------------------------------------------------------------------------------------
# Phase 3: latency at a fraction of the worker's rate
# --------------------------------------------------------------------------------------------


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
            base.fresh_signal_min_interval_s
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
    expected = expected_activity(keys, s.fresh_signal_min_interval_s)
    await kafka_local.ensure_topics(s)
    worker = start_worker(tag, s, run_dir / f"worker-{tag}.log", cfg.app_module)
    kw = s.kafka_client_kwargs()
    consumer = AIOKafkaConsumer(
        s.topic_demand, **kw, group_id=None, auto_offset_reset="earliest", fetch_max_wait_ms=100
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
            await producer.send_and_wait(s.topic_clickstream, value, key=user.encode())
        while not all((u, first_ms - 1) in received for u in warm):
            if time.perf_counter() - t_warm > 60:
                raise RuntimeError("latency: warm-up signals did not arrive within 60 s")
            if worker.proc.poll() is not None:
                raise RuntimeError(f"latency worker exited:\n{_log_tail(worker.log_path)}")
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
                fut = await producer.send(s.topic_clickstream, value, key=key)
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
        "app_id": s.app_id,
        "target_rate": rate,
        "achieved_send_rate": n / send_seconds,
        "events_sent": n,
        "fresh_signal_min_interval_s": s.fresh_signal_min_interval_s,
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


# --------------------------------------------------------------------------------------------
# Machine, report
# --------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    java = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=20)
        java = (out.stderr or out.stdout).strip().splitlines()[0]
    versions = {}
    for dist in ("faust-streaming", "aiokafka", "onnxruntime", "numpy", "orjson", "rocksdict"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    with contextlib.suppress(Exception):
        versions["kafka"] = kafka_local.kafka_version()
    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True
        )
        if head.returncode == 0:
            commit = head.stdout.strip() + (" (dirty)" if dirty.stdout.strip() else "")
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "memory_gb": mem_gb,
        "os": platform.platform(),
        "python": platform.python_version(),
        "java": java,
        "versions": versions,
        "git_commit": commit,
        "load_average_start": os.getloadavg(),
    }


def _fmt(x: float | None, digits: int = 0) -> str:
    if x is None:
        return "—"
    return f"{x:,.{digits}f}"


def problems(result: dict[str, Any]) -> list[str]:
    found = []
    naive = [result["naive"]] if result.get("naive") else []
    for run in [*result.get("worker", []), *naive, *(result.get("latency") or [])]:
        if not run:
            continue
        name = run.get("name") or run.get("store", "latency")
        counts = run["log"]["counts"]
        if counts["ERROR"] or counts["CRITICAL"] or counts["Traceback"]:
            found.append(
                f"worker {name}: {counts['ERROR']} ERROR, {counts['CRITICAL']} CRITICAL, "
                f"{counts['Traceback']} Traceback lines in {run['log_path']}"
            )
        m = run["metrics"]
        if m.get("invalid"):
            found.append(f"worker {name}: dead letters by reason {m['invalid']}")
        if m.get("rerouted"):
            found.append(f"worker {name}: {m['rerouted']} events re-keyed (producer partitioning)")
        stall = run["log"].get("producer_flush_seconds", 0.0)
        full = run["log"].get("producer_buffer_full", 0)
        if full and stall > 1.0:
            found.append(
                f"worker {name}: Faust 'producer buffer full' {full:,} times; the stream waited "
                f"{stall:,.1f} s in total for its producer buffer (table changelog writes) to drain"
            )
        others = (run.get("cores_used") or {}).get("others")
        if others is not None and others > 0.25:
            found.append(
                f"worker {name}: other processes used {others:.2f} cores on average while it "
                "ran (shared machine): its rate is depressed"
            )
    proc = result.get("processor")
    for run in result.get("worker", []):
        if proc and run["signals_out"]["demand"] != proc["signals_out"]["demand"]:
            found.append(
                f"worker {run['store']}: {run['signals_out']['demand']:,} demand signals, the "
                f"in-process Processor gave {proc['signals_out']['demand']:,} for the same events"
            )
    for lat in result.get("latency") or []:
        due = lat.get("events_expected_to_signal", lat["events_sent"])
        if lat["matched"] < due:
            found.append(
                f"{lat['name']}: only {lat['matched']} of the {due} events that should signal "
                "matched a signal"
            )
        if lat["achieved_send_rate"] < 0.95 * lat["target_rate"]:
            found.append(
                f"{lat['name']}: sent at {lat['achieved_send_rate']:,.0f}/s, target "
                f"{lat['target_rate']:,.0f}/s (the bench process could not keep the pace)"
            )
        first, last = lat.get("p50_first_tenth_ms"), lat.get("p50_last_tenth_ms")
        if first and last and last > 3 * first and last > 100:
            found.append(
                f"{lat['name']}: p50 grew from {first:.0f} ms (first tenth) to {last:.0f} ms (last "
                "tenth): the worker did not keep up at this rate"
            )
    load = result["machine"].get("load_average_start", (0, 0, 0))[0]
    if load > 1.5:
        found.append(f"load average {load:.2f} at start: other work shared the CPUs")
    return found


def render_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    c = result["config"]
    d = result["data"]
    ceil = result["ceiling"]
    lines = [
        "# Worker benchmark",
        "",
        f"{result['date']} · {m['nproc']} CPUs ({m['cpu_model']}) · {m['memory_gb']} GB · "
        f"Python {m['python']} · {m['java']} · git {m['git_commit']}",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        "",
        f"Data: {d['events']:,} generator events, {d['users_generated']:,} users "
        f"({d['users_with_events']:,} with events), {d['span_days']:.1f} days "
        f"(~{d['span_days'] / 7:.1f} weekly windows), {c['partitions']} partitions, "
        f"one local Kafka {m['versions'].get('kafka', '')} broker"
        + (" — **quick smoke configuration**" if c["quick"] else ""),
        "",
        "| measure | value |",
        "|---|---|",
        f"| ceiling: raw aiokafka consume + orjson decode + produce 1 record/event | "
        f"**{_fmt(ceil['events_per_s'])} events/s** ({ceil['seconds']:.1f} s) |",
    ]
    proc_only = result.get("processor")
    if proc_only:
        lines.append(
            f"| processor alone (no Kafka, no Faust; same events, dict store) | "
            f"{_fmt(proc_only['events_per_s'])} events/s ({proc_only['seconds']:.1f} s) |"
        )
    lines += worker_rows(result)
    lines += ["", "Problems seen:" if result["problems"] else "Problems seen: none."]
    lines += [f"- {p}" for p in result["problems"]]
    lines += ["", "How these are measured: see `bench/README.md`.", ""]
    return "\n".join(lines)


def worker_rows(result: dict[str, Any]) -> list[str]:
    """Markdown table rows of the worker, naive and latency phases."""
    lines: list[str] = []
    naive = result.get("naive")
    for run in result["worker"]:
        name = f"worker `{run['store']}://`"
        proc = run["processed"] or {}
        cores = run["cores_used"] or {}
        micro = run.get("ort_microbench") or {}
        lines += [
            f"| {name}: events/s (committed offsets) | **{_fmt(run['events_per_s'])}** "
            f"(processed counter: {_fmt(proc.get('events_per_s'))}) |",
            f"| {name}: worker / ceiling | **{_fmt(run['ratio_to_ceiling'], 3)}** "
            f"(target ≥ 0.5; worker / processor alone: "
            f"{_fmt(run.get('ratio_to_processor'), 2)}) |",
            f"| {name}: worker / naive pattern | **{_fmt(run.get('ratio_to_naive'), 1)}** "
            "(target ≥ 5) |",
            f"| {name}: mean micro-batch size | {_fmt(run['metrics']['mean_batch_size'], 1)} |",
            f"| {name}: mean sequences per ONNX Runtime call | "
            f"{_fmt(run['metrics']['mean_sequences_per_ort_call'], 1)} "
            f"({run['metrics']['ort_calls']:,} calls, "
            f"{_fmt(run['metrics']['mean_ort_call_ms'], 2)} ms each) |",
            f"| {name}: ORT in the worker vs microbenchmark at batch {micro.get('batch', '—')} | "
            f"{_fmt(run.get('ort_sequences_per_s'))} vs "
            f"{_fmt(micro.get('microbench_sequences_per_s'))} sequences/s: "
            f"**{_fmt(micro.get('ratio'), 2)}** (target ≥ 0.7) |",
            f"| {name}: ORT share of batch processing time | "
            f"{_fmt(100 * (run['ort_share_of_batch_time'] or 0), 1)} % |",
            f"| {name}: CPU cores used (worker / broker / others) | "
            f"{_fmt(cores.get('worker'), 2)} / {_fmt(cores.get('broker'), 2)} / "
            f"{_fmt(cores.get('others'), 2)} |",
            f"| {name}: stream waits on Faust's producer buffer | "
            f"{run['log'].get('producer_buffer_full', 0):,} times, "
            f"{_fmt(run['log'].get('producer_flush_seconds'), 1)} s |",
            f"| {name}: signals out (demand / churn / dead letters) | "
            f"{run['signals_out']['demand']:,} / {run['signals_out']['churn']:,} / "
            f"{run['signals_out']['dead_letters']:,} |",
        ]
    if naive:
        lines += [
            f"| naive pattern (`bench.naive_app`: per event 1 table write + batch-1 ORT call), "
            f"first {naive['events']:,} events | **{_fmt(naive['events_per_s'])} events/s** "
            f"(ORT {_fmt(naive['metrics']['mean_ort_call_ms'], 3)} ms per call; "
            f"{naive['log'].get('producer_buffer_full', 0):,} producer-buffer waits) |",
        ]
    for lat in result.get("latency") or []:
        after = lat.get("after_5s") or {}
        pct = f"{100 * lat['fraction']:.0f} %"
        lines += [
            f"| latency at {_fmt(lat['target_rate'])} events/s ({pct} of worker rate), event → "
            f"activity signal: p50 / p99 / p99.9 | **{_fmt(lat['p50_ms'], 1)} / "
            f"{_fmt(lat['p99_ms'], 1)} / {_fmt(lat['p999_ms'], 1)} ms** "
            f"(max {_fmt(lat['max_ms'], 1)}; {lat['matched']:,} matched of "
            f"{lat.get('events_expected_to_signal', lat['events_sent']):,} events with a signal "
            f"of their own, {lat['events_sent']:,} sent; activity interval "
            f"{lat.get('fresh_signal_min_interval_s', 0):g} s) |",
            *(
                [
                    f"| latency at {pct}, without the first 5 s: p50 / p99 / p99.9 | "
                    f"{_fmt(after['p50_ms'], 1)} / {_fmt(after['p99_ms'], 1)} / "
                    f"{_fmt(after['p999_ms'], 1)} ms (max {_fmt(after['max_ms'], 1)}) |"
                ]
                if after.get("matched")
                else []
            ),
            f"| latency at {pct}: sent at / mean batch size / sequences per ORT call | "
            f"{_fmt(lat['achieved_send_rate'])}/s for {lat['send_seconds']:.1f} s / "
            f"{_fmt(lat['metrics']['mean_batch_size'], 1)} / "
            f"{_fmt(lat['metrics']['mean_sequences_per_ort_call'], 1)} |",
        ]
    return lines


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


async def run_all(
    cfg: BenchConfig,
    settings: Settings,
    run_dir: Path,
    broker_pid: int | None,
    keep_states: dict[str, bytes] | None = None,
) -> dict[str, Any]:
    log.info("generating %d events over %d users and %d days", cfg.events, cfg.users, cfg.days)
    data = await asyncio.to_thread(make_dataset, cfg)
    log.info(
        "data: %d events, %d users with events, %.1f days (%.1f s)",
        len(data.records),
        data.users_with_events,
        data.span_days,
        data.seconds,
    )
    result: dict[str, Any] = {
        "data": {
            "events": len(data.records),
            "users_generated": data.users_generated,
            "users_with_events": data.users_with_events,
            "span_days": data.span_days,
            "first_event_ms": data.first_event_ms,
            "last_event_ms": data.last_event_ms,
            "mean_value_bytes": sum(len(v) for _, v in data.records) / len(data.records),
            "generation_seconds": data.seconds,
        }
    }

    # 0. the processor alone (broker idle)
    log.info("[processor] %d events through the Processor in this process", len(data.records))
    result["processor"] = await asyncio.to_thread(
        run_processor_only,
        settings.with_overrides(app_id=f"{run_dir.name}-proc"),
        data.records,
        keep_states,
    )
    log.info("[processor] %.0f events/s", result["processor"]["events_per_s"])

    # 1. ceiling
    ceil = phase_settings(settings, f"{run_dir.name}-ceiling", run_dir)
    specs = {ceil.topic_clickstream: cfg.partitions, f"{ceil.app_id}-out": cfg.partitions}
    await kafka_local.ensure_topics(ceil, specs)
    log.info("[ceiling] pre-loading %d events", len(data.records))
    preload_s = await preload(ceil, ceil.topic_clickstream, data.records)
    log.info("[ceiling] pre-loaded in %.1f s; consuming", preload_s)
    result["ceiling"] = await run_ceiling(
        ceil,
        ceil.topic_clickstream,
        f"{ceil.app_id}-out",
        len(data.records),
        cfg.stall_timeout_s,
        broker_pid,
    )
    result["ceiling"]["preload_seconds"] = preload_s
    log.info("[ceiling] %.0f events/s", result["ceiling"]["events_per_s"])

    # 2. the worker, per store
    result["worker"] = []
    for store in cfg.stores:
        run = await run_worker_throughput(
            cfg, settings, run_dir, store, data.records, broker_pid, app_module=cfg.app_module
        )
        rate = run["events_per_s"]
        run["ratio_to_ceiling"] = rate / result["ceiling"]["events_per_s"] if rate else None
        run["ratio_to_processor"] = rate / result["processor"]["events_per_s"] if rate else None
        bs = run["metrics"]["batch_seconds"]
        run["ort_share_of_batch_time"] = run["metrics"]["ort_seconds"] / bs if bs else None
        run["ort_microbench"] = await worker_ort_vs_microbench(run)
        result["worker"].append(run)
        log.info(
            "[%s] %s events/s, mean batch %.1f, %.1f sequences per ORT call",
            store,
            _fmt(rate),
            run["metrics"]["mean_batch_size"] or 0,
            run["metrics"]["mean_sequences_per_ort_call"] or 0,
        )

    # 2b. the naive pattern (per-event table write + batch-1 ORT call) on the first events
    naive_records = data.records[: cfg.naive_events]
    naive = await run_worker_throughput(
        cfg,
        settings,
        run_dir,
        "memory",
        naive_records,
        broker_pid,
        name="naive",
        app_module="bench.naive_app",
    )
    naive["ratio_to_ceiling"] = (
        naive["events_per_s"] / result["ceiling"]["events_per_s"] if naive["events_per_s"] else None
    )
    result["naive"] = naive
    log.info("[naive] %s events/s on %d events", _fmt(naive["events_per_s"]), len(naive_records))
    for run in result["worker"]:
        run["ratio_to_naive"] = (
            run["events_per_s"] / naive["events_per_s"]
            if run["events_per_s"] and naive["events_per_s"]
            else None
        )

    # 3. latency at fractions of the first store's rate
    worker_rate: float = (result["worker"][0]["events_per_s"] if result["worker"] else 0) or 0
    result["latency"] = []
    for fraction in cfg.latency_fractions if worker_rate else ():
        target = worker_rate * fraction
        tag = f"latency-{round(100 * fraction)}"
        log.info("[%s] %.0f events/s for %.0f s", tag, target, cfg.latency_seconds)
        lat = await run_latency(cfg, settings, run_dir, data.records, target, tag)
        lat["fraction"] = fraction
        result["latency"].append(lat)
        log.info(
            "[%s] p50 %s ms, p99 %s ms, p99.9 %s ms (%d matched)",
            tag,
            _fmt(lat["p50_ms"], 1),
            _fmt(lat["p99_ms"], 1),
            _fmt(lat["p999_ms"], 1),
            lat["matched"],
        )
    return result


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


def new_run_dir(cfg: BenchConfig) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = (cfg.work_root / f"w{stamp}-{os.getpid()}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def base_settings(cfg: BenchConfig) -> Settings:
    return load_settings().with_overrides(
        partitions=cfg.partitions,
        replication_factor=1,
        model_dir=(REPO / load_settings().model_dir).resolve(),
        web_host="127.0.0.1",
        log_format="text",
    )


@contextlib.contextmanager
def bench_broker(
    cfg: BenchConfig, base: Settings, run_dir: Path
) -> Iterator[tuple[Settings, int | None]]:
    """The broker of one run: ``--bootstrap`` if given, else our own one in ``run_dir/kafka``.

    On the way out (whatever happened) every worker we started is stopped, our broker too, and
    its topic data and the workers' data dirs are deleted unless ``--keep-data``.
    """
    kafka_dir = run_dir / "kafka"
    state = None
    try:
        if cfg.bootstrap:
            yield base.with_overrides(broker_url=f"kafka://{cfg.bootstrap}"), None
        else:
            state = kafka_local.start(base, kafka_dir, port=kafka_local.free_port(), timeout_s=90)
            settings = base.with_overrides(broker_url=state.broker_url, kafka_data_dir=kafka_dir)
            yield settings, state.pid
    finally:
        for worker in list(_WORKERS):
            with contextlib.suppress(Exception):
                stop_worker(worker)
        if state is not None:
            with contextlib.suppress(Exception):
                kafka_local.stop(kafka_dir)
        if not cfg.keep_data:
            shutil.rmtree(kafka_dir / kafka_local.LOG_DIRS, ignore_errors=True)
            for child in run_dir.iterdir() if run_dir.exists() else ():
                if child.is_dir() and child.name != "kafka":
                    shutil.rmtree(child, ignore_errors=True)  # worker data dirs


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if cfg.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if inherited as ignored

    run_dir = new_run_dir(cfg)
    started = dt.datetime.now(dt.UTC)
    machine = machine_info()
    base = base_settings(cfg)
    t0 = time.perf_counter()
    try:
        with bench_broker(cfg, base, run_dir) as (settings, broker_pid):
            result = asyncio.run(run_all(cfg, settings, run_dir, broker_pid))
    except KeyboardInterrupt:
        log.warning("interrupted: stopping workers and the broker")
        return 130

    machine["load_average_end"] = os.getloadavg()
    result = {
        "date": started.isoformat(timespec="seconds"),
        "total_seconds": time.perf_counter() - t0,
        "machine": machine,
        "config": {
            "events": cfg.events,
            "users": cfg.users,
            "partitions": cfg.partitions,
            "days": cfg.days,
            "seed": cfg.seed,
            "latency_seconds": cfg.latency_seconds,
            "latency_fractions": list(cfg.latency_fractions),
            "naive_events": cfg.naive_events,
            "stores": list(cfg.stores),
            "quick": cfg.quick,
            "batch_size": base.batch_size,
            "batch_timeout_s": base.batch_timeout_s,
            "ort_intra_op_threads": base.ort_intra_op_threads,
            "run_dir": str(run_dir),
        },
        **result,
    }
    result["problems"] = problems(result)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    (cfg.out_dir / "worker.json").write_bytes(
        orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n"
    )
    markdown = render_markdown(result)
    (cfg.out_dir / "worker.md").write_text(markdown)
    print(markdown)
    print(f"results: {cfg.out_dir / 'worker.json'}, {cfg.out_dir / 'worker.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
