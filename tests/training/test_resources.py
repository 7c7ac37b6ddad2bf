"""training.resources: each stage's wall time and its own peak memory (not the run's
high-water mark so far), for the report of a long training run."""

from __future__ import annotations

import mmap
import time

import numpy as np

from training.resources import MB, StageLog, progress


def test_each_stage_reports_its_own_peak_not_the_runs_so_far() -> None:
    stages = StageLog(sample_seconds=0.01)
    try:
        with stages.stage("load"):
            # 300 MB of anonymous pages, touched, then unmapped: mapped directly, because a
            # long test process's allocator may keep a freed numpy array's pages resident.
            block = mmap.mmap(-1, 300 * MB)
            view = np.frombuffer(block, dtype=np.uint8)
            view[:] = 1
            time.sleep(0.05)
            del view
            block.close()
        with stages.stage("small"):
            time.sleep(0.05)
    finally:
        stages.close()
    load, small = stages.stages
    assert (load.name, small.name) == ("load", "small")
    assert load.peak_rss_bytes - small.peak_rss_bytes > 200 * MB
    assert load.seconds >= 0.05 and small.seconds >= 0.05
    report = stages.to_dict()
    assert [s["stage"] for s in report["stages"]] == ["load", "small"]
    assert report["peak_rss_mb"] >= report["stages"][0]["peak_rss_mb"]


def test_starting_a_stage_ends_the_one_running() -> None:
    stages = StageLog()
    stages.start("read")
    stages.start("features")
    stages.close()
    assert [s.name for s in stages.stages] == ["read", "features"]
    stages.finish()  # nothing running: no stage added
    assert len(stages.stages) == 2


def test_a_progress_bar_passes_its_items_through() -> None:
    assert list(progress(range(5), desc="epochs", unit="epoch")) == [0, 1, 2, 3, 4]
