"""The benchmark's harness: its configuration, the broker and worker processes it starts
and stops, CPU accounting, the generated dataset, preloading topics and scraping the worker."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from features.windows import DAY_MS
from ops import kafka_local
from ops.supervise import Supervised
from settings import Settings, child_environment, load_settings

log = logging.getLogger("bench.worker")

Record = tuple[bytes, bytes]


REPO = Path(__file__).resolve().parents[2]


POLL_S = 0.5
OUTPUT_WAIT_S = 120.0
"""Longest wait for a throughput run's outputs after its last commit
(``phases.run_worker_throughput``)."""


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
    evaluation_pairs: int = 1
    """On/off pairs of the online evaluation's cost, in alternating order (on off, off on,
    on off, ...): one pair run after another on a shared machine drifts by as much as the
    cost itself, and the alternation cancels a steady drift."""
    scale_workers: int = 2
    """Worker processes of the scale-out phase (one consumer group, the first store), measured
    against phase 2's one worker on the same events; below 2: not measured."""
    category_pairs: int = 0
    """On/off pairs of category demand's cost (``CLICKSIGNALS_CATEGORY_DEMAND``), in the same
    alternating order; 0: not measured."""
    bootstrap: str | None = None
    """Use this running broker (host:port) instead of starting one (the smoke test does)."""
    app_module: str = "stream.app"
    """The Faust app of the worker and latency phases (``--app``: compare a variant)."""
    latency_fresh_interval_s: float | None = None
    """``fresh_signal_min_interval_s`` of the latency worker; ``None``: the settings' value,
    i.e. the configuration whose rate phase 2 measured (0: a signal for every event)."""
    latency_base_rate: float | None = None
    """The rate (events/s) the latency fractions are of; ``None``: the worker rate phase 2
    measured. Two variants compared side by side need the same send rates, and this machine's
    measured rate drifts by ±10 % from one run to the next."""


def parse_args(argv: Sequence[str] | None) -> BenchConfig:
    p = argparse.ArgumentParser(
        prog="python -m bench.worker",
        description="Worker benchmark: the Faust worker's throughput and latency beside a "
        "raw-Kafka ceiling.",
    )
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
    p.add_argument(
        "--latency-base-rate",
        type=float,
        help="events/s the latency fractions are of (default: the measured worker rate; "
        "fix it to compare two variants at the same send rates)",
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
        "--evaluation-pairs",
        type=int,
        default=1,
        help="on/off pairs measuring the online evaluation's cost, in alternating order "
        "(default 1)",
    )
    p.add_argument(
        "--category-pairs",
        type=int,
        default=0,
        help="on/off pairs measuring category demand's cost, in alternating order (default 0)",
    )
    p.add_argument(
        "--scale-workers",
        type=int,
        help="worker processes in one consumer group, measured against one (default 2; "
        "0: not measured)",
    )
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
    stores = tuple(s.strip() for s in a.stores.split(",")) if a.stores else base.stores
    for s in stores:
        if s not in ("memory", "rocksdb"):
            p.error(f"--stores: unknown store {s!r} (memory, rocksdb)")
    base_rate = getattr(a, "latency_base_rate", None)
    if base_rate is not None and base_rate <= 0:
        p.error(f"--latency-base-rate must be positive, not {base_rate}")
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
        latency_base_rate=base_rate,
        verbose=a.verbose,
        bootstrap=a.bootstrap,
        app_module=a.app,
        evaluation_pairs=max(1, getattr(a, "evaluation_pairs", 1) or 1),
        category_pairs=max(0, getattr(a, "category_pairs", 0) or 0),
        scale_workers=base.scale_workers if a.scale_workers is None else a.scale_workers,
    )


class Worker(Supervised):
    """One ``faust -A <app> worker`` of a bench phase (:mod:`ops.supervise`)."""

    def __init__(self, name: str, settings: Settings, log_path: Path, app_module: str) -> None:
        faust = Path(sys.executable).with_name("faust")
        super().__init__(
            name=f"worker {name}",
            argv=[str(faust), "-A", app_module, "worker", "-l", "info"],
            env=child_environment(settings),
            log_path=log_path,
            url=f"http://{settings.worker.web_host}:{settings.worker.web_port}",
            cwd=REPO,
        )
        self.settings = settings


def start_worker(
    name: str, settings: Settings, log_path: Path, app_module: str = "stream.app"
) -> Worker:
    worker = Worker(name, settings, log_path, app_module)
    worker.start()
    _WORKERS.append(worker)
    return worker


def stop_worker(worker: Worker, timeout_s: float = 30.0) -> None:
    worker.stop(timeout_s)
    if worker in _WORKERS:
        _WORKERS.remove(worker)


def _http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


async def wait_worker_ready(worker: Worker, timeout_s: float = 120.0) -> float:
    """Wait for ``/health`` then ``/ready``; returns seconds since the process started."""
    return await asyncio.to_thread(
        worker.wait_ready, timeout_s, ready_paths=("/health", "/ready"), poll_s=0.25
    )


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


def phase_settings(base: Settings, app_id: str, run_dir: Path, **changes: Any) -> Settings:
    """Settings with ``app_id`` and topic names of their own (each ending in ``-app_id``)."""
    return base.isolated(app_id).with_overrides(
        app_id=app_id,
        data_dir=run_dir / app_id,
        web_port=kafka_local.free_port(),
        **changes,
    )


async def preload(settings: Settings, topic: str, records: Sequence[Record]) -> float:
    """Produce ``records`` to ``topic`` as fast as possible (acks=1); returns seconds."""
    producer = AIOKafkaProducer(
        **settings.kafka.client_kwargs(), acks=1, linger_ms=20, max_batch_size=512 * 1024
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
    consumer = AIOKafkaConsumer(**settings.kafka.client_kwargs(), group_id=None)
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
        "closes_in_progress": int(samples.get("clicksignals_closes_in_progress", 0)),
        "batches": int(samples.get("clicksignals_batch_size_count", 0)),
        "mean_batch_size": mean("clicksignals_batch_size"),
        "ort_calls": int(samples.get("clicksignals_scored_per_batch_count", 0)),
        "sequences_scored": int(samples.get("clicksignals_scored_per_batch_sum", 0)),
        "mean_sequences_per_ort_call": mean("clicksignals_scored_per_batch"),
        "ort_seconds": samples.get("clicksignals_inference_seconds_sum", 0.0),
        "mean_ort_call_ms": (mean("clicksignals_inference_seconds") or 0.0) * 1000,
        "scoring_seconds": samples.get("clicksignals_scoring_seconds_sum", 0.0),
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


def new_run_dir(cfg: BenchConfig) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = (cfg.work_root / f"w{stamp}-{os.getpid()}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def base_settings(cfg: BenchConfig) -> Settings:
    return load_settings().with_overrides(
        partitions=cfg.partitions,
        replication_factor=1,
        model_dir=(REPO / load_settings().worker.model_dir).resolve(),
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


_WORKERS: list[Worker] = []


def run_config(cfg: BenchConfig, base: Settings, run_dir: Path, **extra: Any) -> dict[str, Any]:
    """The ``config`` block of a results file: what was run, and the worker settings it ran
    with (``extra``: a harness's own options, e.g. ``python -m bench``'s phases skipped)."""
    return {
        "events": cfg.events,
        "users": cfg.users,
        "partitions": cfg.partitions,
        "days": cfg.days,
        "seed": cfg.seed,
        "latency_seconds": cfg.latency_seconds,
        "latency_fractions": list(cfg.latency_fractions),
        "latency_base_rate": cfg.latency_base_rate,
        "naive_events": cfg.naive_events,
        "stores": list(cfg.stores),
        **extra,
        "quick": cfg.quick,
        "batch_size": base.worker.batch_size,
        "batch_timeout_s": base.worker.batch_timeout_s,
        "ort_intra_op_threads": base.worker.ort_intra_op_threads,
        "run_dir": str(run_dir),
    }
