"""``clicksignals demo``: the whole system on this machine, in one command.

Owns the demo's choreography: start the local Kafka broker (unless one already answers at the
configured URL), create the topics, start the worker with the shipped model, replay generated
traffic (or a file), show a live summary (events/s, signals, dead letters, top churn risks),
then shut everything down — Ctrl-C included — and say where the outputs are.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from ops import kafka_local
from ops.replay import load_wire, produce
from settings import Settings, child_environment

log = logging.getLogger(__name__)


def start_worker(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    faust = Path(sys.executable).with_name("faust")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handle = log_path.open("wb")
    return subprocess.Popen(
        [str(faust), "-A", "stream.app", "worker", "-l", "info"],
        env=child_environment(settings),
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_ready(settings: Settings, proc: subprocess.Popen[bytes], timeout_s: float = 90) -> None:
    url = f"http://{settings.web_host}:{settings.web_port}/health"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with code {proc.returncode} during start-up")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:
            if response.status == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"worker not healthy at {url} after {timeout_s:.0f}s")


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Summary:
    """Counts what comes out of the worker and keeps the riskiest users."""

    def __init__(self, out_dir: Path) -> None:
        self.counts = {"demand": 0, "churn": 0, "dlq": 0}
        self.risk: dict[str, float] = {}
        self.out_dir = out_dir
        self.files = {k: (out_dir / f"{k}.jsonl").open("wb") for k in self.counts}

    def add(self, kind: str, value: bytes) -> None:
        self.counts[kind] += 1
        self.files[kind].write(value + b"\n")
        if kind == "churn":
            record = orjson.loads(value)
            if record.get("trigger") == "window_close":
                self.risk[record["user_id"]] = record["churn_probability"]

    def top_risks(self, n: int = 5) -> list[tuple[str, float]]:
        return sorted(self.risk.items(), key=lambda kv: -kv[1])[:n]

    def close(self) -> None:
        for f in self.files.values():
            f.close()


async def collect(settings: Settings, summary: Summary, stop: asyncio.Event) -> None:
    topics = {
        settings.topic_demand: "demand",
        settings.topic_churn: "churn",
        settings.topic_dead_letter: "dlq",
    }
    consumer = AIOKafkaConsumer(
        *topics, **settings.kafka_client_kwargs(), auto_offset_reset="latest", group_id=None
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for tp, messages in batch.items():
                for m in messages:
                    summary.add(topics[tp.topic], m.value)
    finally:
        await consumer.stop()


async def run_demo(settings: Settings, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    records = load_wire(args.events, args.format, args.users, args.days, args.seed)
    summary = Summary(out_dir)
    stop = asyncio.Event()
    collector = asyncio.create_task(collect(settings, summary, stop))
    await asyncio.sleep(1.0)  # let the collector join before traffic starts
    started = time.perf_counter()
    producer = asyncio.create_task(
        produce(settings, records, rate=args.rate, progress=not args.quiet)
    )
    last_total = -1
    idle_since = time.perf_counter()
    while True:
        await asyncio.sleep(2.0)
        total = sum(summary.counts.values())
        elapsed = time.perf_counter() - started
        top = ", ".join(f"{u}:{p:.2f}" for u, p in summary.top_risks(3))
        log.info(
            "%.0fs  replay %s (%d events)  demand %d  churn %d  dlq %d  top churn risk [%s]",
            elapsed,
            "done" if producer.done() else "running",
            len(records),
            summary.counts["demand"],
            summary.counts["churn"],
            summary.counts["dlq"],
            top,
        )
        if total != last_total:
            last_total, idle_since = total, time.perf_counter()
        if producer.done() and time.perf_counter() - idle_since > args.settle:
            break
    seconds = await producer
    stop.set()
    await collector
    summary.close()
    result = {
        "events": len(records),
        "replay_seconds": round(seconds, 2),
        "signals": summary.counts,
        "top_churn_risks": summary.top_risks(10),
        "outputs": {k: str(f.name) for k, f in summary.files.items()},
    }
    (out_dir / "summary.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return result


def demo_command(args: argparse.Namespace, settings: Settings) -> int:
    base = Path(args.workdir).resolve()
    out_dir = base / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    kafka_dir = base / "kafka"
    started_broker = False
    if not kafka_local._answers(settings.bootstrap_servers, timeout_s=2.0):
        port = kafka_local.free_port()
        state = kafka_local.start(settings, kafka_dir, port=port)
        settings = settings.with_overrides(broker_url=state.broker_url)
        started_broker = True
    settings = settings.with_overrides(
        data_dir=base / "worker", web_port=kafka_local.free_port(), store_url="memory://"
    )
    kafka_local.create_topics(settings)
    worker = start_worker(settings, base / "worker.log")
    try:
        wait_ready(settings, worker)
        log.info("worker ready (web views on http://%s:%d)", settings.web_host, settings.web_port)
        result = asyncio.run(run_demo(settings, args, out_dir))
    except KeyboardInterrupt:
        log.warning("interrupted: shutting down")
        result = None
    finally:
        stop_worker(worker)
        if started_broker:
            kafka_local.stop(kafka_dir)
    if result is None:
        return 130
    print(f"events replayed: {result['events']} in {result['replay_seconds']}s")
    print("signals: demand {demand}, churn {churn}, dead letters {dlq}".format(**result["signals"]))
    print("top churn risks:", ", ".join(f"{u} {p:.2f}" for u, p in result["top_churn_risks"][:5]))
    print(f"outputs: {out_dir} (demand.jsonl, churn.jsonl, dlq.jsonl, summary.json)")
    print(f"worker log: {base / 'worker.log'}")
    return 0
