"""The benchmark's report: the machine, the problems a run shows, and the Markdown tables."""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from bench.worker.harness import REPO
from ops import kafka_local

log = logging.getLogger("bench.worker")


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


def _percent(part: float, whole: float | None) -> float | None:
    return 100 * part / whole if whole else None


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
    cost = result.get("evaluation_cost")
    if cost:
        lines += evaluation_rows(cost)
    cost = result.get("category_cost")
    if cost:
        lines += category_rows(cost)
    lines += ["", "Problems seen:" if result["problems"] else "Problems seen: none."]
    lines += [f"- {p}" for p in result["problems"]]
    lines += ["", "How these are measured: see `bench/README.md`.", ""]
    return "\n".join(lines)


def evaluation_rows(cost: dict[str, Any]) -> list[str]:
    """Rows of the online evaluation's cost: the means of the on and off runs, and with
    more than one pair each pair's own cost (their spread is the machine's noise)."""

    def spread(pairs: list[float | None]) -> str:
        known = [100 * c for c in pairs if c is not None]
        if len(known) < 2:
            return ""
        return f"; {len(known)} alternating pairs: " + ", ".join(f"{c:.1f} %" for c in known)

    runs = cost.get("runs", {})
    each = len([r for r in runs.get("worker", []) if r["evaluation"]]) or 1
    return [
        f"| online evaluation on / off, same events ({cost['prediction_outcomes']:,} "
        f"predictions settled): worker{f', mean of {each} runs each' if each > 1 else ''} | "
        f"{_fmt(cost['worker_on'])} / {_fmt(cost['worker_off'])} events/s, cost "
        f"**{100 * (cost['worker_cost'] or 0):.1f} %** (target < 10 %)"
        f"{spread(cost.get('worker_pair_costs', []))} |",
        f"| online evaluation on / off: processor alone | {_fmt(cost['processor_on'])} / "
        f"{_fmt(cost['processor_off'])} events/s, cost "
        f"{100 * (cost['processor_cost'] or 0):.1f} %"
        f"{spread(cost.get('processor_pair_costs', []))} |",
    ]


def category_rows(cost: dict[str, Any]) -> list[str]:
    """Rows of category demand's cost, as :func:`evaluation_rows` (``prediction_outcomes``
    holds the category forecasts made)."""

    def spread(pairs: list[float | None]) -> str:
        known = [100 * c for c in pairs if c is not None]
        return "; pairs: " + ", ".join(f"{c:.1f} %" for c in known) if len(known) > 1 else ""

    return [
        f"| category demand on / off, same events ({cost['prediction_outcomes']:,} category "
        f"forecasts): worker | {_fmt(cost['worker_on'])} / {_fmt(cost['worker_off'])} "
        f"events/s, cost **{100 * (cost['worker_cost'] or 0):.1f} %**"
        f"{spread(cost.get('worker_pair_costs', []))} |",
        f"| category demand on / off: processor alone | {_fmt(cost['processor_on'])} / "
        f"{_fmt(cost['processor_off'])} events/s, cost "
        f"{100 * (cost['processor_cost'] or 0):.1f} %"
        f"{spread(cost.get('processor_pair_costs', []))} |",
    ]


def worker_rows(result: dict[str, Any]) -> list[str]:
    """Markdown table rows of the worker, naive and latency phases."""
    lines: list[str] = []
    naive = result.get("naive")
    for run in result["worker"]:
        name = f"worker `{run['store']}://`"
        proc = run["processed"] or {}
        cores = run["cores_used"] or {}
        micro = run.get("ort_microbench") or {}
        m = run["metrics"]
        lines += [
            f"| {name}: events/s (committed offsets) | **{_fmt(run['events_per_s'])}** "
            f"(processed counter: {_fmt(proc.get('events_per_s'))}) |",
            f"| {name}: worker / ceiling | **{_fmt(run['ratio_to_ceiling'], 3)}** "
            f"(target ≥ 0.5; worker / processor alone: "
            f"{_fmt(run.get('ratio_to_processor'), 2)}) |",
            f"| {name}: worker / naive pattern | **{_fmt(run.get('ratio_to_naive'), 1)}** "
            "(target ≥ 10) |",
            f"| {name}: mean micro-batch size | {_fmt(run['metrics']['mean_batch_size'], 1)} |",
            f"| {name}: mean sequences per ONNX Runtime call | "
            f"{_fmt(run['metrics']['mean_sequences_per_ort_call'], 1)} "
            f"({run['metrics']['ort_calls']:,} calls, "
            f"{_fmt(run['metrics']['mean_ort_call_ms'], 2)} ms each) |",
            f"| {name}: ORT in the worker vs microbenchmark at batch {micro.get('batch', '—')} | "
            f"{_fmt(run.get('ort_sequences_per_s'))} vs "
            f"{_fmt(micro.get('microbench_sequences_per_s'))} sequences/s: "
            f"**{_fmt(micro.get('ratio'), 2)}** (target ≥ 0.7) |",
            f"| {name}: whole scoring in the worker (features, ORT, served forecast) | "
            f"{_fmt(run.get('scoring_sequences_per_s'))} sequences/s (ORT "
            f"{_fmt(_percent(m['ort_seconds'], m.get('scoring_seconds')), 1)} % of it) |",
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
    group = result.get("scale_out")
    if group:
        cores = group["cores_used"] or {}
        lines.append(
            f"| {group['workers']} workers `{group['store']}://` in one consumer group, same "
            f"events: events/s (committed offsets) | **{_fmt(group['events_per_s'])}**, "
            f"**{_fmt(group.get('ratio_to_one'), 2)} ×** one worker (target ≥ 1.7; the first "
            f"worker's cores {_fmt(cores.get('worker'), 2)}, broker "
            f"{_fmt(cores.get('broker'), 2)}, others {_fmt(cores.get('others'), 2)}) |"
        )
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
        of = "worker rate" if lat.get("base_rate") is None else f"{_fmt(lat['base_rate'])} events/s"
        lines += [
            f"| latency at {_fmt(lat['target_rate'])} events/s ({pct} of {of}), event → "
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
