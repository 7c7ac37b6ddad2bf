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

import asyncio
import datetime as dt
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from bench.worker.harness import (
    BenchConfig,
    base_settings,
    bench_broker,
    make_dataset,
    new_run_dir,
    parse_args,
    phase_settings,
    preload,
    run_config,
)
from bench.worker.phases import (
    alternating_evaluation,
    evaluation_cost,
    run_ceiling,
    run_latency,
    run_processor_only,
    run_worker_throughput,
    worker_ort_vs_microbench,
)
from bench.worker.report import _fmt, machine_info, problems, render_markdown
from ops import kafka_local
from settings import Settings

log = logging.getLogger("bench.worker")


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
    # The online evaluation's cost (issue 15: under 10 %), side by side: the same events with
    # it off, through the processor alone and (below) through the worker; with more than one
    # pair, in alternating order (the run above is the first "on").
    processor_runs = [(True, result["processor"]["events_per_s"])]
    for n, on in enumerate(alternating_evaluation(cfg.evaluation_pairs)):
        run = await asyncio.to_thread(
            run_processor_only,
            settings.with_overrides(
                app_id=f"{run_dir.name}-proc-{'eval' if on else 'noeval'}-{n}",
                online_evaluation=on,
            ),
            data.records,
        )
        if not on and "processor_no_eval" not in result:
            result["processor_no_eval"] = run
        processor_runs.append((on, run["events_per_s"]))
        log.info(
            "[processor, evaluation %s] %.0f events/s", "on" if on else "off", run["events_per_s"]
        )

    # Category demand's cost (issue 17), the same way: the runs above have it on (when the
    # model directory has a category model).
    category_processor: list[tuple[bool, float]] = []
    if cfg.category_pairs:
        category_processor = [(True, result["processor"]["events_per_s"])]
        for n, on in enumerate(alternating_evaluation(cfg.category_pairs)):
            run = await asyncio.to_thread(
                run_processor_only,
                settings.with_overrides(
                    app_id=f"{run_dir.name}-proc-{'cat' if on else 'nocat'}-{n}",
                    category_demand=on,
                ),
                data.records,
            )
            category_processor.append((on, run["events_per_s"]))
            log.info(
                "[processor, category demand %s] %.0f events/s",
                "on" if on else "off",
                run["events_per_s"],
            )

    # 1. ceiling
    ceil = phase_settings(settings, f"{run_dir.name}-ceiling", run_dir)
    specs = {
        ceil.topics.clickstream: cfg.partitions,
        f"{ceil.worker.app_id}-out": cfg.partitions,
    }
    await kafka_local.ensure_topics(ceil, specs)
    log.info("[ceiling] pre-loading %d events", len(data.records))
    preload_s = await preload(ceil, ceil.topics.clickstream, data.records)
    log.info("[ceiling] pre-loaded in %.1f s; consuming", preload_s)
    result["ceiling"] = await run_ceiling(
        ceil,
        ceil.topics.clickstream,
        f"{ceil.worker.app_id}-out",
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

    # 2c. scale-out: several worker processes in one consumer group, the same events
    if cfg.stores and cfg.scale_workers >= 2 and result["worker"]:
        one = result["worker"][0]
        group = await run_worker_throughput(
            cfg,
            settings,
            run_dir,
            cfg.stores[0],
            data.records,
            broker_pid,
            name=f"{cfg.stores[0]}-x{cfg.scale_workers}",
            app_module=cfg.app_module,
            workers=cfg.scale_workers,
        )
        rate = group["events_per_s"]
        group["ratio_to_one"] = rate / one["events_per_s"] if rate and one["events_per_s"] else None
        result["scale_out"] = group
        log.info(
            "[scale-out] %d workers: %s events/s, %s x one worker",
            cfg.scale_workers,
            _fmt(rate),
            _fmt(group["ratio_to_one"], 2),
        )

    async def alternate(setting: str, pairs: int, tag: str) -> list[tuple[bool, float | None]]:
        """The first store's worker with ``setting`` off and on in alternating order after
        phase 2's run (the first "on"): ``(on, events/s)`` of each run."""
        runs: list[tuple[bool, float | None]] = [(True, result["worker"][0]["events_per_s"])]
        for n, on in enumerate(alternating_evaluation(pairs)):
            run = await run_worker_throughput(
                cfg,
                settings.with_overrides(**{setting: on}),
                run_dir,
                cfg.stores[0],
                data.records,
                broker_pid,
                name=f"{cfg.stores[0]}-{tag if on else 'no-' + tag}-{n}",
                app_module=cfg.app_module,
            )
            runs.append((on, run["events_per_s"]))
            rate = _fmt(run["events_per_s"])
            log.info("[worker, %s %s] %s events/s", setting, "on" if on else "off", rate)
        return runs

    # 2a. the first store's worker with the online evaluation off (and, with more pairs, on
    # and off again in alternating order); with --category-pairs, category demand likewise
    if cfg.stores:
        worker_runs = await alternate("online_evaluation", cfg.evaluation_pairs, "eval")
        result["evaluation_cost"] = evaluation_cost(
            worker_runs, processor_runs, result["processor"]["prediction_outcomes"]
        )
        log.info("[evaluation cost] %s", result["evaluation_cost"])
    if cfg.stores and cfg.category_pairs:
        category_worker = await alternate("category_demand", cfg.category_pairs, "cat")
        result["category_cost"] = evaluation_cost(
            category_worker,
            category_processor,
            result["processor"]["category_forecasts"],
            label="category_demand",
        )
        log.info("[category demand cost] %s", result["category_cost"])

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

    # 3. latency at fractions of the first store's rate (or of the rate asked for)
    measured: float = (result["worker"][0]["events_per_s"] if result["worker"] else 0) or 0
    worker_rate = cfg.latency_base_rate or measured
    result["latency"] = []
    for fraction in cfg.latency_fractions if worker_rate else ():
        target = worker_rate * fraction
        tag = f"latency-{round(100 * fraction)}"
        log.info("[%s] %.0f events/s for %.0f s", tag, target, cfg.latency_seconds)
        lat = await run_latency(cfg, settings, run_dir, data.records, target, tag)
        lat["fraction"] = fraction
        lat["base_rate"] = cfg.latency_base_rate
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
        "config": run_config(cfg, base, run_dir),
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
