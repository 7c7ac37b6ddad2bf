"""Smoke run of the benchmark harness (``python -m bench --quick``) so it cannot rot.

Runs every phase except training in its tiny configuration against the session's broker (a
few thousand events, one latency rate, 2,000 users of state) into ``tmp_path``, and checks the
report has every figure and the plots were drawn. Figures are not asserted: this is about the
harness running end to end, not about speed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]


def test_bench_quick_runs_every_phase(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--bootstrap",
            kafka_bootstrap,
            "--latency-seconds",
            "2",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = orjson.loads((out / "bench.json").read_bytes())

    assert result["ceiling"]["events_per_s"] > 0
    assert result["processor"]["events_per_s"] > 0
    (run,) = result["worker"]
    assert run["events_per_s"] and run["ratio_to_naive"] and run["ratio_to_ceiling"]
    assert run["signals_out"]["demand"] == result["processor"]["signals_out"]["demand"]
    assert run["ort_microbench"]["ratio"] > 0
    assert result["naive"]["events_per_s"] > 0
    # Scale-out: two worker processes in one consumer group through the same events.
    group = result["scale_out"]
    assert group["workers"] == 2 and group["events"] == run["events"]
    assert group["ratio_to_one"] > 0
    # At least once: a record processed before the group's first rebalance may go twice.
    assert group["signals_out"]["demand"] >= run["signals_out"]["demand"]
    # The online evaluation's cost, measured side by side: the same signals with it off.
    cost = result["evaluation_cost"]
    assert cost["worker_on"] > 0 and cost["worker_off"] > 0 and cost["processor_off"] > 0
    off = result["processor_no_eval"]
    assert off["signals_out"] == result["processor"]["signals_out"]
    assert off["prediction_outcomes"] == 0
    (lat,) = result["latency"]
    # Every event that gets an activity signal of its own (the worker's per-user interval
    # rule, as in the rate phase) is matched to it; the others only update state.
    assert lat["matched"] == lat["events_expected_to_signal"] > 0
    assert lat["events_expected_to_signal"] <= lat["events_sent"]
    assert lat["send_to_scored_ms"]["p50"] is not None
    assert lat["p99_ms"] is not None
    assert [b["batch"] for b in result["inference"]["batches"]] == [1, 2, 4, 8, 16, 32, 64]
    assert result["inference"]["flops"]["flops_per_sequence"] > 0
    # The customer-base summary the scorer computes beside ORT: both models, both regimes.
    assert len(result["inference"]["summary"]) == 3
    assert all(r["us_per_row"] > 0 for r in result["inference"]["summary"])
    restores = {r["name"]: r for r in result["state"]["restores"]}
    assert set(restores) == {"state-memory", "state-rocksdb-cold", "state-rocksdb-warm"}
    for r in restores.values():
        found, sampled = r["users_read_back"].split("/")
        assert found == sampled != "0", r
    assert restores["state-memory"]["replayed"] and restores["state-rocksdb-cold"]["replayed"]
    assert "skipped" in result["training"]

    md = (out / "bench.md").read_text()
    assert "## Targets" in md and "worker ≥ 10 × naive pattern" in md
    assert "2 workers in one group ≥ 1.7 × one" in md
    for png in ("throughput_vs_batch.png", "latency.png"):
        assert (out / png).stat().st_size > 1000
