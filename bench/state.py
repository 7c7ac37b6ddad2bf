"""State benchmark: bytes per user, worker memory with U users, and restore times.

Owns phase 6 of the harness (``python -m bench`` runs it after the worker phases; alone:
``python -m bench.state [--state-users 1000000]``). Steps, on the run's broker:

1. **Template states** — real per-user states: the encoded values (:func:`stream.codec.
   encode_user`) the Processor left in its store after the processor-alone phase (or, run
   alone, after a processor pass over a generated stream). *Bytes per user* = their encoded
   sizes (mean / p50 / p99; header vs the float32 ring), plus the key.
2. **Changelog written directly** — building 1M users' state through Kafka and the worker
   would take ~10 minutes of event processing, so the harness writes the table's changelog
   itself: ``U`` records ``bench-user-<i>`` → a template value (cycled), each on the partition
   Faust files it under (the key's murmur2 partition, as the worker's table does), plus one
   clock record per partition, into ``<app_id>-user-state-changelog``. That is byte for byte
   what a worker that had seen those users would have written.
3. **Restore, memory store** — a fresh ``faust -A stream.app worker`` (``memory://``, empty
   clickstream) replays the changelog. *Restore seconds* = Faust's log "Restoring state from
   changelog topics" → "Recovery complete" (the replay itself); *to ready* = process start →
   Faust's "Worker ready" (process start-up, group join and replay). Then the worker's RSS
   (``/proc/<pid>/status`` VmRSS) holds U users, and a sample of users is read back through
   ``/users/{id}`` to check the state is really there.
4. **Restore, RocksDB, cold** — the same with ``rocksdb://`` and an empty data dir (replay
   into RocksDB), then a clean stop (SIGTERM).
5. **Restore, RocksDB, warm** — a new worker process on that same data dir: it reads only the
   changelog past the offsets RocksDB recorded (none), which is what a restart on the same
   machine costs.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer

from ops import kafka_local
from settings import Settings
from stream.processor import clock_key, is_internal_key
from stream.publish import partition_of

log = logging.getLogger("bench.state")

_TS = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] \[\d+\] \[\w+\] (.*)$")


@dataclass(frozen=True)
class StateConfig:
    users: int = 1_000_000
    sample_reads: int = 50
    restore_timeout_s: float = 600.0
    app_module: str = "stream.app"
    """The Faust app restoring (``--app``: e.g. a variant with other consumer settings)."""


def state_size(states: Mapping[str, bytes]) -> dict[str, Any]:
    """Encoded size of per-user state (internal keys excluded: partition clocks and category
    sums)."""
    users = {k: v for k, v in states.items() if not is_internal_key(k)}
    if not users:
        raise ValueError("no user states to measure")
    sizes = np.array([len(v) for v in users.values()])
    headers = np.array([int.from_bytes(v[:4], "big") + 4 for v in users.values()])
    keys = np.array([len(k.encode()) for k in users])
    return {
        "users": len(users),
        "value_bytes_mean": float(sizes.mean()),
        "value_bytes_p50": float(np.percentile(sizes, 50)),
        "value_bytes_p99": float(np.percentile(sizes, 99)),
        "value_bytes_max": int(sizes.max()),
        "header_bytes_mean": float(headers.mean()),
        "ring_bytes_mean": float((sizes - headers).mean()),
        "key_bytes_mean": float(keys.mean()),
    }


def changelog_topic(settings: Settings) -> str:
    return f"{settings.worker.app_id}-user-state-changelog"


async def write_changelog(
    settings: Settings, templates: Sequence[bytes], clocks: Mapping[int, bytes], users: int
) -> dict[str, Any]:
    """``users`` records (``bench-user-<i>`` → a template, cycled) on their key's partition."""
    topic = changelog_topic(settings)
    await kafka_local.ensure_topics(settings, {topic: settings.topics.partitions})
    producer = AIOKafkaProducer(
        **settings.kafka.client_kwargs(), acks=1, linger_ms=20, max_batch_size=1024 * 1024
    )
    await producer.start()
    t0 = time.perf_counter()
    total_bytes = 0
    try:
        pending: list[asyncio.Future[Any]] = []
        n_templates = len(templates)
        for i in range(users):
            user = f"bench-user-{i}"
            # The table's keys are str, which Faust serialises as JSON; values are raw bytes.
            # Its changelog partition is the source partition: the user's murmur2 partition.
            key = orjson.dumps(user)
            value = templates[i % n_templates]
            total_bytes += len(key) + len(value)
            part = partition_of(user.encode(), settings.topics.partitions)
            pending.append(await producer.send(topic, value, key=key, partition=part))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        for p in range(settings.topics.partitions):
            key = orjson.dumps(clock_key(p, settings.topics.partitions))
            value = clocks.get(p) or orjson.dumps({"m": None, "c": None})
            pending.append(await producer.send(topic, value, key=key, partition=p))
        await asyncio.gather(*pending)
        await producer.flush()
    finally:
        await producer.stop()
    return {
        "topic": topic,
        "records": users + settings.topics.partitions,
        "bytes": total_bytes,
        "seconds": time.perf_counter() - t0,
    }


def _log_times(path: Path) -> dict[str, float]:
    """Wall-clock times (epoch s) of Faust's recovery milestones in a worker log (last wins)."""
    marks = {
        "restoring": "Restoring state from changelog topics",
        "done_reading": "Done reading from changelog topics",
        "recovery_complete": "Recovery complete",
        "worker_ready": "[^---Recovery]: Worker ready",
    }
    found: dict[str, float] = {}
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return found
    for line in lines:
        m = _TS.match(line)
        if not m:
            continue
        for name, text in marks.items():
            if text in m.group(2):
                stamp = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
                found[name] = stamp.timestamp()
    return found


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


async def restore_once(
    settings: Settings, name: str, log_path: Path, users: int, cfg: StateConfig
) -> dict[str, Any]:
    """Start a worker on the changelog, wait for Faust's recovery, measure, stop it."""
    from bench.worker.harness import _http_get, start_worker, stop_worker

    t_start_wall = time.time()
    t0 = time.perf_counter()
    worker = start_worker(name, settings, log_path, cfg.app_module)
    try:
        while True:
            if not worker.alive():
                raise RuntimeError(f"{name} worker exited:\n{worker.log_tail(30)}")
            times = _log_times(log_path)
            if "worker_ready" in times:
                break
            if "Error in recovery" in log_path.read_text(errors="replace"):
                # Faust logs undecodable changelog records and then waits forever.
                raise RuntimeError(
                    f"{name}: Faust could not apply the changelog:\n{worker.log_tail(30)}"
                )
            if time.perf_counter() - t0 > cfg.restore_timeout_s:
                raise RuntimeError(f"{name}: no 'Worker ready' in {cfg.restore_timeout_s:.0f} s")
            await asyncio.sleep(0.2)
        to_ready = time.perf_counter() - t0
        await asyncio.sleep(1.0)  # let the freed replay buffers go before reading RSS
        assert worker.pid is not None
        rss = rss_mb(worker.pid)
        # Read a sample of users back through the worker (the state is really there).
        found = 0
        slowest = 0.0
        step = max(1, users // cfg.sample_reads)
        for i in range(0, users, step)[: cfg.sample_reads]:
            asked = time.perf_counter()
            # Generous: right after "ready" the first announcements rebuild each partition's
            # close candidates from the store (2026-12-05: 22 s for 1M users, the loop busy
            # throughout); the bench reports it (slowest_read_s) instead of dying on it.
            status, _ = await asyncio.to_thread(
                _http_get, f"{worker.url}/users/bench-user-{i}", 120.0
            )
            slowest = max(slowest, time.perf_counter() - asked)
            found += status == 200
        sampled = len(range(0, users, step)[: cfg.sample_reads])
    finally:
        stop_worker(worker)
    restoring = times.get("restoring")
    complete = times.get("recovery_complete")
    return {
        "name": name,
        "store": settings.worker.store_url,
        "seconds_to_ready": to_ready,
        "restore_seconds": complete - restoring if restoring and complete else 0.0,
        "replayed": restoring is not None,
        "slowest_read_s": slowest,
        "log_marks_since_start": {k: v - t_start_wall for k, v in times.items()},
        "rss_mb": rss,
        "users_read_back": f"{found}/{sampled}",
        "log_path": str(log_path),
    }


async def run_state(
    cfg: StateConfig, base: Settings, run_dir: Path, states: Mapping[str, bytes]
) -> dict[str, Any]:
    from bench.worker.harness import phase_settings

    size = state_size(states)
    log.info(
        "[state] %d template users, %.0f bytes per user (p99 %.0f)",
        size["users"],
        size["value_bytes_mean"],
        size["value_bytes_p99"],
    )
    templates = [v for k, v in states.items() if not is_internal_key(k)]
    clocks = {
        p: states[clock_key(p, base.topics.partitions)]
        for p in range(base.topics.partitions)
        if clock_key(p, base.topics.partitions) in states
    }
    s = phase_settings(base, f"{run_dir.name}-state", run_dir, store_url="memory://")
    await kafka_local.ensure_topics(s)
    log.info("[state] writing %d users' state to %s", cfg.users, changelog_topic(s))
    written = await write_changelog(s, templates, clocks, cfg.users)
    log.info("[state] changelog: %.0f MB in %.1f s", written["bytes"] / 1e6, written["seconds"])

    runs = []
    mem = await restore_once(s, "state-memory", run_dir / "worker-state-memory.log", cfg.users, cfg)
    runs.append(mem)
    rocks_settings = s.with_overrides(store_url="rocksdb://", data_dir=run_dir / "state-rocksdb")
    for name in ("state-rocksdb-cold", "state-rocksdb-warm"):
        runs.append(
            await restore_once(rocks_settings, name, run_dir / f"worker-{name}.log", cfg.users, cfg)
        )
    for r in runs:
        log.info(
            "[%s] restore %.1f s, ready after %.1f s, RSS %.0f MB, read back %s",
            r["name"],
            r["restore_seconds"],
            r["seconds_to_ready"],
            r["rss_mb"] or 0,
            r["users_read_back"],
        )
    return {
        "users": cfg.users,
        "size": size,
        "changelog": written,
        "bytes_per_user_in_changelog": written["bytes"] / cfg.users,
        "restores": runs,
    }


def render_rows(res: dict[str, Any]) -> list[str]:
    size = res["size"]
    by = {r["name"]: r for r in res["restores"]}
    mem = by.get("state-memory", {})
    cold = by.get("state-rocksdb-cold", {})
    warm = by.get("state-rocksdb-warm", {})
    users = res["users"]

    def sec(r: dict[str, Any], key: str) -> str:
        return f"{r[key]:.1f} s" if r.get(key) is not None else "—"

    return [
        f"| state: bytes per user (encoded value; from {size['users']:,} real users) | "
        f"**{size['value_bytes_mean']:,.0f}** mean, p50 {size['value_bytes_p50']:,.0f}, p99 "
        f"{size['value_bytes_p99']:,.0f} (JSON header {size['header_bytes_mean']:,.0f} + "
        f"float32 ring {size['ring_bytes_mean']:,.0f}; key {size['key_bytes_mean']:.0f}) |",
        f"| state: worker RSS with {users:,} users (memory store / RocksDB) | "
        f"**{(mem.get('rss_mb') or 0):,.0f} MB** / {(cold.get('rss_mb') or 0):,.0f} MB |",
        f"| state: restore {users:,} users from the changelog, memory store (target < 60 s) | "
        f"**{sec(mem, 'restore_seconds')}** replay ({sec(mem, 'seconds_to_ready')} from "
        f"process start to ready; read back {mem.get('users_read_back', '—')}, the slowest "
        f"read {sec(mem, 'slowest_read_s')}) |",
        f"| state: restore from the changelog into an empty RocksDB dir | "
        f"{sec(cold, 'restore_seconds')} replay ({sec(cold, 'seconds_to_ready')} to ready) |",
        f"| state: restart on a warm RocksDB dir (target < 5 s) | "
        f"**{sec(warm, 'seconds_to_ready')}** process start to ready "
        f"(replay {sec(warm, 'restore_seconds')}; read back {warm.get('users_read_back', '—')}) |",
        f"| state: changelog written directly ({res['changelog']['records']:,} records) | "
        f"{res['changelog']['bytes'] / 1e6:,.0f} MB in {res['changelog']['seconds']:.1f} s |",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone: template states from a processor pass over a generated stream."""
    from bench.worker.harness import (
        BenchConfig,
        base_settings,
        bench_broker,
        make_dataset,
        new_run_dir,
    )
    from bench.worker.phases import run_processor_only

    p = argparse.ArgumentParser(prog="python -m bench.state", description=__doc__.split("\n")[0])
    p.add_argument("--state-users", type=int, default=1_000_000)
    p.add_argument("--events", type=int, default=200_000, help="events for the template states")
    p.add_argument("--users", type=int, default=20_000, help="users for the template states")
    p.add_argument("--bootstrap")
    p.add_argument("--app", default="stream.app", help="Faust app module of the workers")
    a = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    bcfg = BenchConfig(events=a.events, users=a.users, bootstrap=a.bootstrap)
    run_dir = new_run_dir(bcfg)
    base = base_settings(bcfg)
    data = make_dataset(bcfg)
    states: dict[str, bytes] = {}
    run_processor_only(base, data.records, keep_states=states)
    with bench_broker(bcfg, base, run_dir) as (settings, _pid):
        scfg = StateConfig(users=a.state_users, app_module=a.app)
        res = asyncio.run(run_state(scfg, settings, run_dir, states))
    print("\n".join(["| measure | value |", "|---|---|", *render_rows(res)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
