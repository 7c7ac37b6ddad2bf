"""The scale bench's pieces without its hours: a generated shop written as Parquet shards by
blocks of users is one shop (no user in two blocks, about the events asked for) that the
DuckDB engine reads as a glob; the results render as a table and a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import scale

pytest.importorskip("duckdb")


def test_a_shop_written_in_blocks_of_users_is_read_back_as_one_shop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.cli import OFFLINE_MIN_EVENT_TIME_MS
    from training.outofcore import EngineConfig, open_events

    monkeypatch.setattr(scale, "BLOCK_USERS", 400)
    users = scale.users_for(20_000, events_per_user=17)
    data = scale.write_shards(tmp_path / "shards", 20_000, users, days=182, seed=3)
    assert len(list((tmp_path / "shards").glob("part-*.parquet"))) == 3
    assert 0.6 * 20_000 < data["events"] < 1.4 * 20_000
    (tmp_path / "db").mkdir()
    with open_events(
        [str(tmp_path / "shards" / "part-*.parquet")],
        min_event_time_ms=OFFLINE_MIN_EVENT_TIME_MS,
        now_ms=2_000_000_000_000,  # generated data is dated 2024
        config=EngineConfig(temp_dir=tmp_path / "db"),
    ) as store:
        assert store.rows == data["events"]
        ids = store.user_ids()
        assert len(ids) == len(set(ids)) <= users
        assert {i.split("-")[0] for i in ids} == {"b0", "b1", "b2"}


def test_results_render_as_a_table_and_a_plot(tmp_path: Path) -> None:
    stages = [{"stage": s, "seconds": 1.5, "peak_rss_mb": 900.0} for s in ("read", "fit")]
    run: dict[str, Any] = {
        "data": {"events": 1_000_000, "users": 58_824, "days": 182, "bytes": 30e6},
        "returncode": 0,
        "wall_seconds": 60.0,
        "peak_rss_mb": 1_000.0,
        "stages": stages,
        "samples": {"kept": 200_000, "rows_before_cap": 400_000, "kept_fraction": 0.5},
        "epochs": 3,
    }
    failed = {**run, "returncode": 137, "data": {**run["data"], "events": 5_000_000}}
    res = {
        "date": "today",
        "command": "python -m bench.scale",
        "machine": "m",
        "runs": [run, failed],
    }
    md = scale.render(res)
    assert "| 1,000,000 | 58,824 | 30 | read | 1.5 | 900 |" in md
    assert "failed (exit 137)" in md and "200,000 training rows of 400,000" in md
    scale.plot(res, tmp_path / "scale.png")
    assert (tmp_path / "scale.png").stat().st_size > 10_000
