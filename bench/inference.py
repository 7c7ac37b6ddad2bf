"""Inference benchmark: ONNX Runtime on the shipped model across batch sizes, against the
machine's float32 matmul peak.

``python -m bench.inference [--max-batch 1024] [--seconds 0.5] [--out DIR]`` measures, in one
process:

- **ORT per batch size** (1, 2, 4, …, ``--max-batch``): ``session.run`` on normalised inputs of
  the model's shape, the session built exactly as the worker builds it
  (:func:`serving.scorer.load_model`, ``ort_intra_op_threads`` from settings, default 1). Each
  size is timed for at least ``--seconds`` after warm-up calls; reported as sequences/s and
  ms per call (median of the timed calls, so a stray scheduling hiccup does not move it).
- **FLOPs per sequence**, counted from the ONNX graph: every ``LSTM`` node from its ``W`` /
  ``R`` initialiser shapes (per step ``2·4H·(I+H)`` multiply-adds-as-two, plus biases), every
  ``MatMul`` / ``Gemm`` with a constant ``[K, N]`` weight (``2·K·N`` per sequence; our dense
  heads run once per sequence, after the LSTM). Element-wise ops are ignored (< 2 %).
- **Peak**: numpy float32 ``A @ B`` (``--peak-n``, default 1024) in this process — the BLAS's
  default threads — and in a child process with ``OPENBLAS_NUM_THREADS=1`` (one core: the
  fair comparison for a 1-thread ORT session).

- **The customer-base summary** beside it: :func:`features.clv.prior_features` (what the
  scorer computes for every scored sequence before ``session.run``) on a seeded block of
  ``serving.scorer.MAX_SCORE_ROWS`` customers of a young shop (whole days of age and
  recency, a fifth of them browsers), for BG/NBD and Pareto/NBD with CDNOW's published fits
  and for a Pareto/NBD fit near its no-drop-out corner (real CDNOW at 1997-04-15), whose 2F1
  series need thousands of terms per row: µs per row against ORT's µs per sequence at the
  same batch.

Achieved GFLOP/s = sequences/s × FLOPs per sequence / 1e9. Results: ``inference.json`` /
``inference.md`` / ``inference_throughput.png`` in ``--out`` (default ``bench/results``).
:func:`ort_at_batch` is also what :mod:`bench.worker` calls to set the worker's ONNX Runtime
figure beside the microbenchmark at the batch size the worker actually used.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from settings import load_settings

log = logging.getLogger("bench.inference")

REPO = Path(__file__).resolve().parent.parent


def model_flops(onnx_path: Path) -> dict[str, Any]:
    """FLOPs per sequence from the graph's LSTM / MatMul / Gemm nodes (see module doc)."""
    import onnx  # the [train] extra; only needed here, never by the worker

    model = onnx.load(str(onnx_path))
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    seq_len = None
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if len(dims) == 3 and dims[1].dim_value:
            seq_len = int(dims[1].dim_value)
    if seq_len is None:
        raise ValueError(f"{onnx_path}: no [batch, seq_len, features] input")
    parts: list[dict[str, Any]] = []
    for node in model.graph.node:
        if node.op_type == "LSTM":
            w, r = inits[node.input[1]], inits[node.input[2]]
            dirs, four_h, n_in = w
            hidden = r[2]
            per_step = 2 * four_h * (n_in + hidden) + 2 * four_h  # gates' matmuls + 2 biases
            per_step += 8 * hidden  # cell update, gate products, output: a handful per unit
            parts.append(
                {
                    "op": "LSTM",
                    "name": node.name,
                    "input": n_in,
                    "hidden": hidden,
                    "directions": dirs,
                    "flops": dirs * seq_len * per_step,
                }
            )
        elif node.op_type in ("MatMul", "Gemm"):
            shape = next((inits[x] for x in node.input[1:2] if x in inits), None)
            if shape is None or len(shape) != 2:
                continue
            k, n = shape
            parts.append(
                {"op": node.op_type, "name": node.name, "k": k, "n": n, "flops": 2 * k * n}
            )
    return {
        "seq_len": seq_len,
        "flops_per_sequence": int(sum(p["flops"] for p in parts)),
        "nodes": parts,
    }


def time_calls(fn: Any, min_seconds: float, min_calls: int = 5) -> list[float]:
    for _ in range(3):  # warm-up: first calls allocate and pick kernels
        fn()
    times: list[float] = []
    t_end = time.perf_counter() + min_seconds
    while len(times) < min_calls or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _inputs(batch: int, seq_len: int, n_features: int, seed: int = 0) -> np.ndarray:
    # ~N(0, 1) values; they do not change the LSTM's cost.
    return np.random.default_rng(seed).standard_normal((batch, seq_len, n_features), np.float32)


def ort_at_batch(
    batch: int, seconds: float = 0.5, model_dir: Path | None = None, threads: int | None = None
) -> dict[str, Any]:
    """``session.run`` at one batch size, the session built as the worker builds it."""
    from features.manifest import OUTPUT_NAMES
    from features.windows import N_FEATURES
    from serving.scorer import load_model

    settings = load_settings()
    scorer = load_model(
        model_dir or (REPO / settings.worker.model_dir),
        settings.worker.ort_intra_op_threads if threads is None else threads,
    )
    # Raw-like inputs (counts are non-negative) through the scorer's own feed builder, outside
    # the timed call: this phase times the session alone, whatever inputs the model takes.
    feeds = scorer.feeds(np.abs(_inputs(batch, scorer.manifest.spec.seq_len, N_FEATURES)))
    names = list(OUTPUT_NAMES)
    session = scorer.session
    times = time_calls(lambda: session.run(names, feeds), seconds)
    median = float(np.median(times))
    return {
        "batch": batch,
        "calls": len(times),
        "ms_per_call": median * 1000,
        "ms_per_call_p90": float(np.percentile(times, 90)) * 1000,
        "sequences_per_s": batch / median,
    }


def summary_cost(seconds: float = 0.5, batch: int | None = None) -> list[dict[str, Any]]:
    """µs per row of the customer-base summary, per customer-base model (see module doc); by
    default at the scorer's largest block (``serving.scorer.MAX_SCORE_ROWS``)."""
    from features.clv import BgNbdParams, ParetoNbdParams, prior_features
    from serving.scorer import MAX_SCORE_ROWS

    batch = MAX_SCORE_ROWS if batch is None else batch

    models: list[tuple[str, BgNbdParams | ParetoNbdParams]] = [
        ("BG/NBD, CDNOW's published fit", BgNbdParams(r=0.243, alpha=4.414, a=0.793, b=2.426)),
        (
            "Pareto/NBD, CDNOW's published fit",
            ParetoNbdParams(r=0.5534, alpha=10.5802, s=0.6061, beta=11.6562),
        ),
        (
            "Pareto/NBD near no drop-out (real CDNOW at 1997-04-15)",
            ParetoNbdParams(r=0.5206, alpha=8.622, s=24.08, beta=417.2),
        ),
    ]
    rng = np.random.default_rng(3)
    age = np.floor(rng.uniform(0.0, 52.0, batch) * 7.0) / 7.0
    x = np.floor(rng.gamma(0.5, 2.0, batch))
    t_x = np.where(x > 0, np.floor(age * rng.random(batch) * 7.0) / 7.0, 0.0)
    ordered = rng.random(batch) > 0.2
    out = []
    for name, params in models:
        times = time_calls(lambda p=params: prior_features(p, x, t_x, age, ordered, 13.0), seconds)
        out.append(
            {"model": name, "batch": batch, "us_per_row": float(np.median(times)) / batch * 1e6}
        )
        log.info("summary, %s: %.1f us per row", name, out[-1]["us_per_row"])
    return out


def numpy_peak(n: int, seconds: float) -> dict[str, Any]:
    """float32 ``A @ B`` GFLOP/s in this process (the BLAS's default thread count)."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n), np.float32)
    b = rng.standard_normal((n, n), np.float32)
    times = time_calls(lambda: a @ b, seconds, min_calls=3)
    best = min(times)  # peak: the best call, not the typical one
    return {"n": n, "calls": len(times), "gflops": 2 * n**3 / best / 1e9}


def numpy_peak_one_thread(n: int, seconds: float) -> dict[str, Any] | None:
    """The same in a child whose BLAS is limited to one thread (set before numpy loads)."""
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    code = (
        "import sys, orjson; from bench.inference import numpy_peak; "
        f"sys.stdout.buffer.write(orjson.dumps(numpy_peak({n}, {seconds})))"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, timeout=120
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("one-thread numpy peak failed: %s", exc)
        return None
    if out.returncode != 0:
        log.warning("one-thread numpy peak failed: %s", out.stderr.decode()[-500:])
        return None
    result: dict[str, Any] = orjson.loads(out.stdout)
    return result


def batch_sizes(max_batch: int) -> list[int]:
    sizes, b = [], 1
    while b <= max_batch:
        sizes.append(b)
        b *= 2
    return sizes


def run(max_batch: int = 1024, seconds: float = 0.5, peak_n: int = 1024) -> dict[str, Any]:
    settings = load_settings()
    model_dir = (REPO / settings.worker.model_dir).resolve()
    from serving.scorer import load_model

    scorer = load_model(model_dir, settings.worker.ort_intra_op_threads)
    flops = model_flops(scorer.path)
    per_seq = flops["flops_per_sequence"]
    rows = []
    for batch in batch_sizes(max_batch):
        row = ort_at_batch(batch, seconds, model_dir)
        row["gflops"] = row["sequences_per_s"] * per_seq / 1e9
        rows.append(row)
        log.info(
            "batch %5d: %10.0f seq/s, %.3f ms/call, %.2f GFLOP/s",
            batch,
            row["sequences_per_s"],
            row["ms_per_call"],
            row["gflops"],
        )
    summary = summary_cost(seconds)
    peak_all = numpy_peak(peak_n, seconds)
    peak_one = numpy_peak_one_thread(peak_n, seconds)
    best = max(rows, key=lambda r: r["sequences_per_s"])
    for row in rows:
        row["share_of_peak_one_thread"] = row["gflops"] / peak_one["gflops"] if peak_one else None
        row["share_of_peak_all_threads"] = row["gflops"] / peak_all["gflops"]
    return {
        "model_version": scorer.version,
        "model_path": str(scorer.path),
        "ort_intra_op_threads": settings.worker.ort_intra_op_threads,
        "flops": flops,
        "batches": rows,
        "best": {"batch": best["batch"], "sequences_per_s": best["sequences_per_s"]},
        "numpy_peak_all_threads": peak_all,
        "numpy_peak_one_thread": peak_one,
        "summary": summary,
    }


def render_markdown(res: dict[str, Any]) -> str:
    one = res["numpy_peak_one_thread"]
    allp = res["numpy_peak_all_threads"]
    f = res["flops"]
    lines = [
        f"Model {res['model_version']}: {f['flops_per_sequence'] / 1e6:.3f} MFLOP per sequence "
        f"(seq_len {f['seq_len']}; "
        + ", ".join(
            f"{p['op']} {p['flops'] / 1e3:,.0f} kFLOP" for p in f["nodes"] if p["flops"] > 1000
        )
        + f"). ORT intra-op threads: {res['ort_intra_op_threads']}. numpy float32 matmul peak "
        f"(n={allp['n']}): {allp['gflops']:.1f} GFLOP/s all threads, "
        + (f"{one['gflops']:.1f} GFLOP/s one thread." if one else "one thread: not measured."),
        "",
        "| batch | sequences/s | ms per call | GFLOP/s | share of 1-thread peak |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in res["batches"]:
        share = r["share_of_peak_one_thread"]
        lines.append(
            f"| {r['batch']} | {r['sequences_per_s']:,.0f} | {r['ms_per_call']:.3f} | "
            f"{r['gflops']:.2f} | {'—' if share is None else f'{100 * share:.1f} %'} |"
        )
    summary = res.get("summary") or []
    if summary:
        batch = summary[0]["batch"]
        ort = next((r for r in res["batches"] if r["batch"] == batch), None)
        ort_us = "—" if ort is None else f"{1e6 / ort['sequences_per_s']:.1f}"
        lines += [
            "",
            f"Customer-base summary per scored row at batch {batch} (ORT at that batch: "
            f"{ort_us} µs per sequence):",
            "",
            "| customer-base model | µs per row |",
            "|---|---:|",
        ]
        lines += [f"| {r['model']} | {r['us_per_row']:.1f} |" for r in summary]
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], path: Path, worker_points: Sequence[dict[str, Any]] = ()) -> None:
    """Throughput vs batch size (log-log), with the worker's in-situ ORT figure(s) marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["batches"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(
        [r["batch"] for r in rows],
        [r["sequences_per_s"] for r in rows],
        "o-",
        label="ONNX Runtime microbenchmark",
    )
    for point in worker_points:
        if point.get("batch") and point.get("sequences_per_s"):
            ax.plot(
                point["batch"], point["sequences_per_s"], "s", ms=9, label=point.get("label", "")
            )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size (sequences per ORT call)")
    ax.set_ylabel("sequences / s")
    ax.set_title(f"ORT on {res['model_version']} ({res['ort_intra_op_threads']} intra-op thread)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.inference", description=__doc__.split("\n")[0]
    )
    p.add_argument("--max-batch", type=int, default=1024)
    p.add_argument("--seconds", type=float, default=0.5, help="timed seconds per batch size")
    p.add_argument("--peak-n", type=int, default=1024, help="matrix size of the numpy peak")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    a = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    res = run(a.max_batch, a.seconds, a.peak_n)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "inference.json").write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2) + b"\n")
    md = render_markdown(res)
    (a.out / "inference.md").write_text("# Inference benchmark\n\n" + md)
    plot(res, a.out / "inference_throughput.png")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
