"""Training benchmark: wall time and peak memory of ``train-and-export`` on the full Online
Retail data.

Owns phase 7 of the harness (alone: ``python -m bench.training``). Runs the README's command
for the shipped model (UCI Online Retail, weekly windows, seq_len 12, horizon 4, cutoff
2011-09-05, 2 CV folds) as a child process, output to a temporary directory — never
``onnx_models/default``. Wall time is measured around the process; peak memory is the child's
``VmHWM`` (``/proc/<pid>/status``: the high-water mark of its own address space since exec),
polled every 0.1 s until it exits. Not ``ru_maxrss``: a child spawned from a large process
carries the parent's high-water mark across fork/exec (inside ``python -m bench`` that read
6.4 GB for a 1.6 GB job). TensorFlow uses threads, not processes, so that is the whole job.
The data must be at ``../shared/data/online_retail.csv.gz``; without it the phase is skipped
with that reason.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("bench.training")

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "online_retail.csv.gz"
ARGS = [
    "--format",
    "transactions",
    "--window",
    "7d",
    "--seq-len",
    "12",
    "--horizon",
    "4",
    "--cutoff",
    "2011-09-05",
    "--cv-folds",
    "2",
]


def _vm_hwm_kb(pid: int) -> int:
    """Peak resident set of ``pid``'s current address space (KiB), 0 if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def run_training(data: Path = DATA, timeout_s: float = 1800.0) -> dict[str, Any]:
    """``train-and-export`` on ``data`` into a temp dir; wall seconds and peak RSS."""
    if not data.is_file():
        reason = f"training phase skipped: {data} not found"
        log.warning(reason)
        return {"skipped": reason}
    exe = Path(sys.executable).with_name("train-and-export")
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        out = Path(tmp) / "model"
        cmd = [str(exe), "--events", str(data), *ARGS, "--out", str(out)]
        log_path = Path(tmp) / "train.log"
        log.info("[training] %s", " ".join(cmd))
        t0 = time.perf_counter()
        with log_path.open("wb") as handle:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
            # wait4, not wait: this child's CPU time alone.
            deadline = time.monotonic() + timeout_s
            hwm_kb = 0
            while True:
                hwm_kb = max(hwm_kb, _vm_hwm_kb(proc.pid))
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    proc.kill()
                    pid, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.1)
            proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        report_path = out / "report.json"
        report = orjson.loads(report_path.read_bytes()) if report_path.is_file() else {}
    result: dict[str, Any] = {
        "command": "train-and-export --events ../shared/data/online_retail.csv.gz "
        + " ".join(ARGS)
        + " --out <tmp>",
        "exit_code": proc.returncode,
        "wall_seconds": seconds,
        "peak_rss_mb": hwm_kb / 1024,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "model_version": report.get("model_version"),
    }
    if proc.returncode != 0:
        result["log_tail"] = tail
        log.warning("[training] exit code %s:\n%s", proc.returncode, "\n".join(tail))
    log.info(
        "[training] %.1f s wall, peak RSS %.0f MB, exit %s",
        seconds,
        result["peak_rss_mb"],
        proc.returncode,
    )
    return result


def render_rows(res: dict[str, Any]) -> list[str]:
    if "skipped" in res:
        return [f"| training: `train-and-export` on Online Retail | {res['skipped']} |"]
    failed = "" if res["exit_code"] == 0 else f" — **failed, exit {res['exit_code']}**"
    return [
        f"| training: `train-and-export` on full Online Retail: wall / peak RSS / CPU | "
        f"**{res['wall_seconds']:.1f} s / {res['peak_rss_mb']:,.0f} MB** / "
        f"{res['cpu_seconds']:.0f} CPU s{failed} |"
    ]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.training", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    a = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    res = run_training(a.data)
    print("\n".join(["| measure | value |", "|---|---|", *render_rows(res)]))
    return 0 if res.get("exit_code", 0) == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
