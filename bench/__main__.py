"""The whole harness in one command: ``python -m bench [--quick] [--out DIR]``.

Owns the order of the phases and the combined report; each phase lives in its own module:

1-3, 5. :mod:`bench.worker` — processor alone, raw-aiokafka ceiling, the real worker
   (``stream.app``), the naive pattern (``bench.naive_app``), latency at several fractions of
   the worker's rate. All on one broker, in one run, so the ratios are side by side.
4. :mod:`bench.inference` — ONNX Runtime across batch sizes vs the numpy matmul peak (run
   while the broker idles between phases).
6. :mod:`bench.state` — bytes per user, RSS and restore times with ``--state-users`` users,
   templated from the processor phase's real states.
7. :mod:`bench.training` — ``train-and-export`` on the full Online Retail data (after the
   broker has stopped; skipped without the data, and in ``--quick``).

Writes ``bench.json`` (everything but the raw latency samples, which go to
``latency_samples.json``), ``bench.md`` (the table, the targets, problems),
``throughput_vs_batch.png`` and ``latency.png`` into ``--out`` (default ``bench/results``;
``--quick``: ``var/bench/quick``) and prints the Markdown. ``--skip state,training`` leaves
phases out. Every process it started is stopped on the way out, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
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

from bench import inference, state, training
from bench.worker import cli as worker_cli
from bench.worker import harness, phases, report
from bench.worker.report import _fmt

log = logging.getLogger("bench")

PHASES = ("worker", "inference", "state", "training")


def parse_args(argv: Sequence[str] | None) -> tuple[harness.BenchConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    harness.add_common_args(p)
    p.add_argument("--state-users", type=int, help="users in the state phase (1,000,000)")
    p.add_argument("--max-batch", type=int, help="largest ORT batch size (1024)")
    p.add_argument(
        "--skip", default="", help=f"comma-separated phases to leave out: {', '.join(PHASES)}"
    )
    p.add_argument("--training", action="store_true", help="run the training phase in --quick")
    a = p.parse_args(argv)
    cfg = harness.config_from_args(p, a)
    skip = {x.strip() for x in a.skip.split(",") if x.strip()}
    if unknown := skip - set(PHASES):
        p.error(f"--skip: unknown phases {sorted(unknown)} ({', '.join(PHASES)})")
    if cfg.quick and not a.training:
        skip.add("training")
    a.skip_set = skip
    a.state_users = a.state_users or (2_000 if cfg.quick else 1_000_000)
    a.max_batch = a.max_batch or (64 if cfg.quick else 1024)
    return cfg, a


async def _run_kafka_phases(
    cfg: harness.BenchConfig, a: argparse.Namespace, settings: Any, run_dir: Path, pid: int | None
) -> dict[str, Any]:
    states: dict[str, bytes] = {}
    out: dict[str, Any] = {}
    if "worker" not in a.skip_set:
        out.update(await worker_cli.run_all(cfg, settings, run_dir, pid, keep_states=states))
    if "inference" not in a.skip_set:
        log.info("[inference] ORT at batch sizes 1..%d", a.max_batch)
        seconds = 0.05 if cfg.quick else 0.5
        out["inference"] = await asyncio.to_thread(
            inference.run, a.max_batch, seconds, 256 if cfg.quick else 1024
        )
    if "state" not in a.skip_set:
        if not states:  # the worker phases were skipped: template states from a short pass
            data = await asyncio.to_thread(harness.make_dataset, cfg)
            await asyncio.to_thread(phases.run_processor_only, settings, data.records, states)
        out["state"] = await state.run_state(
            state.StateConfig(users=a.state_users), settings, run_dir, states
        )
    return out


def targets(result: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, where we land, met?) for the issue's goals."""
    rows: list[tuple[str, str, bool | None]] = []
    w = (result.get("worker") or [None])[0]
    if w:
        r = w.get("ratio_to_ceiling")
        rows.append(("worker ≥ 0.5 × ceiling", f"{_fmt(r, 3)} ×", r >= 0.5 if r else None))
        r = w.get("ratio_to_naive")
        rows.append(("worker ≥ 10 × naive pattern", f"{_fmt(r, 1)} ×", r >= 10 if r else None))
        r = (w.get("ort_microbench") or {}).get("ratio")
        rows.append(
            (
                "worker ORT ≥ 0.7 × microbenchmark at its batch",
                f"{_fmt(r, 2)} ×",
                r >= 0.7 if r else None,
            )
        )
    proc = result.get("processor")
    if proc:
        r = proc.get("events_per_s")
        rows.append(
            (
                "processor alone ≥ 100,000 events/s",
                f"{_fmt(r)} events/s",
                r >= 100_000 if r else None,
            )
        )
    group = result.get("scale_out")
    if group:
        r = group.get("ratio_to_one")
        rows.append(
            (
                f"{group['workers']} workers in one group ≥ 1.7 × one",
                f"{_fmt(r, 2)} ×",
                r >= 1.7 if r else None,
            )
        )
    for fraction, bound in ((0.5, 250), (0.25, 100)):
        run = next(
            (x for x in result.get("latency") or [] if abs(x["fraction"] - fraction) < 1e-9), None
        )
        if run:
            p99 = run["p99_ms"]
            rows.append(
                (
                    f"p99 event→signal ≤ {bound} ms at {100 * fraction:.0f} %",
                    f"{_fmt(p99, 1)} ms",
                    p99 is not None and p99 <= bound,
                )
            )
    st = result.get("state")
    if st:
        by = {r["name"]: r for r in st["restores"]}
        mem = by.get("state-memory")
        warm = by.get("state-rocksdb-warm")
        n = f"{st['users']:,} users"
        if mem:
            t = mem["seconds_to_ready"]
            rows.append(
                (f"restore {n} from changelog < 60 s (start → ready)", f"{t:.1f} s", t < 60)
            )
        if warm:
            t = warm["seconds_to_ready"]
            rows.append(
                (f"restore {n} from warm RocksDB < 5 s (start → ready)", f"{t:.1f} s", t < 5)
            )
    return rows


def render_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    c = result["config"]
    lines = [
        "# clicksignals benchmark",
        "",
        f"{result['date']} · {m['nproc']} CPUs ({m['cpu_model']}) · {m['memory_gb']} GB RAM · "
        f"Python {m['python']} · {m['java']} · git {m['git_commit']} · load average at start "
        + " / ".join(f"{x:.2f}" for x in m["load_average_start"])
        + f" · {result['total_seconds'] / 60:.1f} min",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        "",
    ]
    d = result.get("data")
    if d:
        lines += [
            f"Data: {d['events']:,} generator events, {d['users_generated']:,} users "
            f"({d['users_with_events']:,} with events), {d['span_days']:.1f} days, "
            f"{c['partitions']} partitions; naive pattern on the first {c['naive_events']:,} "
            f"events; latency {c['latency_seconds']:.0f} s per rate"
            + (" — **quick smoke configuration**" if c["quick"] else ""),
            "",
        ]
    lines += ["## Targets", "", "| target | result | met |", "|---|---|---|"]
    for name, value, met in targets(result):
        lines.append(f"| {name} | {value} | {'yes' if met else '—' if met is None else '**no**'} |")
    lines += ["", "## Figures", "", "| measure | value |", "|---|---|"]
    ceil = result.get("ceiling")
    if ceil:
        lines.append(
            "| ceiling: raw aiokafka consume + orjson decode + produce 1 record/event | "
            f"**{_fmt(ceil['events_per_s'])} events/s** ({ceil['seconds']:.1f} s) |"
        )
    proc = result.get("processor")
    if proc:
        lines.append(
            "| processor alone (no Kafka, no Faust; same events, dict store) | "
            f"{_fmt(proc['events_per_s'])} events/s ({proc['seconds']:.1f} s) |"
        )
    if result.get("worker"):
        lines += report.worker_rows(result)
    inf = result.get("inference")
    if inf:
        best = max(inf["batches"], key=lambda r: r["sequences_per_s"])
        b1 = inf["batches"][0]
        one = inf["numpy_peak_one_thread"] or {}
        lines += [
            f"| inference: ORT sequences/s at batch 1 / best (batch {best['batch']}) | "
            f"{_fmt(b1['sequences_per_s'])} / **{_fmt(best['sequences_per_s'])}** |",
            f"| inference: GFLOP/s at best batch vs numpy float32 matmul peak (1 thread / all) | "
            f"**{best['gflops']:.1f}** vs {_fmt(one.get('gflops'), 1)} / "
            f"{inf['numpy_peak_all_threads']['gflops']:.1f} "
            f"({inf['flops']['flops_per_sequence'] / 1e6:.3f} MFLOP per sequence) |",
        ]
    if result.get("state"):
        lines += state.render_rows(result["state"])
    if result.get("training"):
        lines += training.render_rows(result["training"])
    if inf:
        lines += ["", "## ONNX Runtime by batch size", "", inference.render_markdown(inf)]
    lines += ["", "Problems seen:" if result["problems"] else "Problems seen: none."]
    lines += [f"- {p}" for p in result["problems"]]
    lines += [
        "",
        "Plots: `throughput_vs_batch.png`, `latency.png`. How each figure is measured: "
        "`bench/README.md`.",
        "",
    ]
    return "\n".join(lines)


def plot_latency(result: dict[str, Any], path: Path) -> None:
    """Histogram and CDF of event→signal latency, one series per send rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs = [r for r in result.get("latency") or [] if r.get("latencies_ms")]
    if not runs:
        return
    fig, (hist, cdf) = plt.subplots(1, 2, figsize=(11, 4.2))
    hi = max(max(r["latencies_ms"]) for r in runs)
    lo = max(0.5, min(min(r["latencies_ms"]) for r in runs))
    bins = np.logspace(np.log10(lo), np.log10(hi * 1.01), 60)
    for r in runs:
        x = np.sort(np.asarray(r["latencies_ms"]))
        label = f"{100 * r['fraction']:.0f} % ({r['target_rate']:,.0f} ev/s)"
        hist.hist(x, bins=bins, histtype="step", label=label)
        cdf.plot(x, np.arange(1, len(x) + 1) / len(x), label=label)
    for ax in (hist, cdf):
        ax.set_xscale("log")
        ax.set_xlabel("event → signal latency (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.axvline(250, color="grey", ls="--", lw=1)
    hist.set_ylabel("events")
    cdf.set_ylabel("fraction of events")
    cdf.set_ylim(0.9, 1.0005)
    cdf.set_title("CDF (top 10 %); dashed: 250 ms target")
    hist.set_title("distribution by send rate (fraction of max)")
    hist.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(result: dict[str, Any], out: Path) -> str:
    """bench.json, latency_samples.json, bench.md and the plots; returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    # Raw latency samples (~rate x seconds each) go to their own compact file: indented in
    # bench.json they would be one line per number.
    samples = {
        lat["name"]: lat.get("latencies_ms", [])
        for lat in result.get("latency") or []
        if "latencies_ms" in lat
    }
    if samples:
        (out / "latency_samples.json").write_bytes(orjson.dumps(samples) + b"\n")
    slim = dict(result)
    if result.get("latency"):
        slim["latency"] = [
            {k: v for k, v in lat.items() if k != "latencies_ms"} for lat in result["latency"]
        ]
    (out / "bench.json").write_bytes(
        orjson.dumps(slim, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n"
    )
    md = render_markdown(result)
    (out / "bench.md").write_text(md)
    if result.get("inference"):
        points = []
        for w in result.get("worker") or []:
            micro = w.get("ort_microbench") or {}
            points.append(
                {
                    "batch": micro.get("batch"),
                    "sequences_per_s": w.get("ort_sequences_per_s"),
                    "label": f"worker ({w['store']}), in situ",
                }
            )
        naive = result.get("naive")
        if naive and naive["metrics"].get("mean_ort_call_ms"):
            points.append(
                {
                    "batch": 1,
                    "sequences_per_s": 1000 / naive["metrics"]["mean_ort_call_ms"],
                    "label": "naive pattern, in situ",
                }
            )
        inference.plot(result["inference"], out / "throughput_vs_batch.png", points)
    plot_latency(result, out / "latency.png")
    return md


def main(argv: Sequence[str] | None = None) -> int:
    cfg, a = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if cfg.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    signal.signal(signal.SIGTERM, worker_cli._raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)

    run_dir = harness.new_run_dir(cfg)
    started = dt.datetime.now(dt.UTC)
    machine = report.machine_info()
    base = harness.base_settings(cfg)
    t0 = time.perf_counter()
    result: dict[str, Any] = {}
    try:
        with harness.bench_broker(cfg, base, run_dir) as (settings, pid):
            result.update(asyncio.run(_run_kafka_phases(cfg, a, settings, run_dir, pid)))
        if "training" not in a.skip_set:
            result["training"] = training.run_training()
        elif cfg.quick:
            result["training"] = {
                "skipped": "training phase skipped in --quick (--training runs it)"
            }
    except KeyboardInterrupt:
        log.warning("interrupted: workers and the broker stopped")
        return 130
    machine["load_average_end"] = os.getloadavg()
    result = {
        "date": started.isoformat(timespec="seconds"),
        "total_seconds": time.perf_counter() - t0,
        "machine": machine,
        "config": harness.run_config(
            cfg,
            base,
            run_dir,
            state_users=a.state_users,
            max_batch=a.max_batch,
            skipped=sorted(a.skip_set),
        ),
        **result,
    }
    result["problems"] = report.problems(result) if result.get("worker") else []
    md = write_outputs(result, cfg.out_dir)
    print(md)
    print(f"results in {cfg.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
