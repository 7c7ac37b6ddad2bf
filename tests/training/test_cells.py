"""The feature step on its own (training/cells.py): cells from the portable SQL, read back by
training, give the events path's window tensor; cells that do not fit are refused, naming why;
and train-and-export on a shop's cells gives its predictions from events."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.windows import DAY_MS, FEATURE_INDEX, WindowSpec
from ingest.adapters import IngestError
from ingest.generator import generate_clickstream
from training.cells import CELL_COLUMNS, cells_sql, open_cells, write_cells
from training.cli import OFFLINE_MIN_EVENT_TIME_MS
from training.outofcore import open_events
from training.shards import rows_of

duckdb = pytest.importorskip("duckdb")

WEEK_MS = 7 * DAY_MS
NOW = 2_000_000_000_000
SUMS = [FEATURE_INDEX["spend"], FEATURE_INDEX["spend_total"]]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated shop of 1,200 users over 150 days (views, carts, purchases, sessions)."""
    frame = generate_clickstream(n_users=1200, start="2024-01-01", days=150, seed=21)
    path = tmp_path_factory.mktemp("shop") / "events.csv"
    frame.to_csv(path, index=False)
    return path


def _spec(stop_ms: int, hour: int) -> WindowSpec:
    cutoff = (stop_ms - 5 * WEEK_MS) // DAY_MS * DAY_MS + hour * 3_600_000
    return WindowSpec(WEEK_MS, cutoff, seq_len=12, horizon=4, lookback=12)


@pytest.mark.parametrize("hour", [0, 3], ids=["midnight_utc", "cut_days"])
def test_cells_from_the_portable_sql_give_the_events_tensor(
    shop: Path, tmp_path: Path, hour: int
) -> None:
    with open_events([shop], now_ms=NOW, min_event_time_ms=OFFLINE_MIN_EVENT_TIME_MS) as events:
        spec = _spec(events.stop_ms, hour)
        written = write_cells(events, spec, tmp_path / "cells")
        first = events.first_window(spec)
        last = spec.index(events.stop_ms + 1) - 1
        expected, ids = events.window_cells(spec, first, last).tensor()
        n_events = events.rows
    # Users whose first event falls in the incomplete last window have no cell; they are
    # last in the events path's order (first event, then id), with all-zero rows.
    n = written.users
    assert written.files >= 1 and 0 < len(ids) - n < 0.05 * len(ids)
    assert not expected.features[n:].any()
    expected = rows_of(expected, np.arange(n))
    ids = ids[:n]
    assert written.last_window_end_ms == spec.end_ms(last)
    with open_cells([tmp_path / "cells" / "*.parquet"]) as cells:
        assert cells.first_window(spec) == first
        assert spec.index(cells.stop_ms + 1) - 1 == last
        assert cells.rows <= n_events  # events of the incomplete last window have no cell
        got, got_ids = cells.window_cells(spec, first, last).tensor()
    assert got_ids.tolist() == ids.tolist()
    exact = [i for i in range(expected.features.shape[-1]) if i not in SUMS]
    np.testing.assert_array_equal(got.features[..., exact], expected.features[..., exact])
    np.testing.assert_allclose(got.features[..., SUMS], expected.features[..., SUMS], rtol=1e-6)
    np.testing.assert_array_equal(got.orders, expected.orders)
    np.testing.assert_allclose(got.spend, expected.spend, rtol=1e-9)
    assert expected.orders.sum() > 100 and got.features[..., FEATURE_INDEX["sessions"]].max() > 1


def test_the_statement_is_plain_sql_over_canonical_events() -> None:
    sql = cells_sql(WindowSpec(WEEK_MS, 0, 1, 1, 1), 99, events="lake.events")
    assert "FROM lake.events" in sql and "COUNT(DISTINCT" in sql and "GROUP BY user_id, w" in sql
    assert "FILTER" not in sql and "::" not in sql  # no engine's dialect
    for column in CELL_COLUMNS:
        assert f"AS {column}" in sql or column == "user_id"


def _cells_of(shop: Path, directory: Path, spec_hour: int = 0) -> WindowSpec:
    with open_events([shop], now_ms=NOW, min_event_time_ms=OFFLINE_MIN_EVENT_TIME_MS) as events:
        spec = _spec(events.stop_ms, spec_hour)
        write_cells(events, spec, directory)
    return spec


def test_cells_laid_on_another_grid_are_refused(shop: Path, tmp_path: Path) -> None:
    spec = _cells_of(shop, tmp_path / "cells")
    other = WindowSpec(WEEK_MS, spec.origin_ms + DAY_MS, 12, 4, 12)
    with (
        open_cells([tmp_path / "cells" / "*.parquet"]) as cells,
        pytest.raises(IngestError, match=r"off this run's window grid.*same --window"),
    ):
        cells.window_cells(other, cells.first_window(other), other.index(cells.stop_ms))


def test_files_that_are_not_cells_name_what_is_missing(shop: Path, tmp_path: Path) -> None:
    events = tmp_path / "events.parquet"
    con = duckdb.connect()
    con.execute(f"COPY (SELECT * FROM read_csv('{shop}', header=true)) TO '{events}'")
    con.close()
    with pytest.raises(IngestError, match="not cells: missing window_end_ms, first_event_ms"):
        open_cells([events])


def test_a_users_window_given_twice_is_refused(shop: Path, tmp_path: Path) -> None:
    _cells_of(shop, tmp_path / "cells")
    first = sorted((tmp_path / "cells").glob("*.parquet"))[0]
    (tmp_path / "again").mkdir()
    twice = tmp_path / "again" / "copy.parquet"
    twice.write_bytes(first.read_bytes())
    with pytest.raises(IngestError, match="given more than once"):
        open_cells([tmp_path / "cells" / "*.parquet", twice])


@pytest.mark.slow
def test_train_and_export_on_a_shops_cells_gives_its_predictions_from_events(
    tmp_path: Path,
) -> None:
    """The two-step route beyond one machine, run on one: ``python -m training.cells`` (the
    feature step) then ``train-and-export --cells``, against ``--engine duckdb --events``."""
    from training.cells import main as cells_main
    from training.cli import main

    frame = generate_clickstream(n_users=500, start="2024-01-01", days=180, seed=7)
    path = tmp_path / "events.csv"
    frame.to_csv(path, index=False)
    cutoff = pd.Timestamp(frame.event_time_ms.max() - 15 * WEEK_MS, unit="ms").strftime("%Y-%m-%d")
    common = [
        "--cutoff",
        cutoff,
        "--epochs",
        "1",
        "--seeds",
        "1",
        "--duckdb-temp-dir",
        str(tmp_path),
    ]
    assert (
        cells_main(["--events", str(path), "--cutoff", cutoff, "--out", str(tmp_path / "c")]) == 0
    )
    assert (
        main(["--cells", str(tmp_path / "c" / "*.parquet"), "--out", str(tmp_path / "m1"), *common])
        == 0
    )
    assert (
        main(["--events", str(path), "--engine", "duckdb", "--out", str(tmp_path / "m2"), *common])
        == 0
    )
    one = pd.read_csv(tmp_path / "m1" / "predictions.csv")
    two = pd.read_csv(tmp_path / "m2" / "predictions.csv")
    assert one.user_id.tolist() == two.user_id.tolist() and len(one) > 200
    for column in ("expected_orders", "mean_orders", "churn_probability", "actual_orders"):
        np.testing.assert_allclose(one[column], two[column], rtol=1e-5, atol=1e-6)
    data = json.loads((tmp_path / "m1" / "manifest.json").read_text())["training_data"]
    assert data["cells"].endswith("*.parquet") and data["ingest"]["format"] == "cells"
    assert not list(tmp_path.glob("clicksignals-duckdb-*")), "a database was left behind"


def test_the_printed_statement_keeps_whole_windows_only(capsys: pytest.CaptureFixture[str]) -> None:
    from training.cells import main as cells_main

    with pytest.raises(SystemExit):
        cells_main(["--cutoff", "2024-06-03", "--print-sql"])
    assert "--print-sql needs --until" in capsys.readouterr().err
    args = ["--cutoff", "2024-06-03", "--until", "2024-07-01T00:00:00Z", "--print-sql"]
    assert cells_main(args) == 0
    sql = capsys.readouterr().out
    # 2024-06-03 + 4 weeks = 2024-07-01: windows 0..3 on the cutoff's grid.
    assert "WHERE w <= 3" in sql and sql.rstrip().endswith(";")


def test_training_on_cells_needs_the_cutoff_they_were_laid_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.cli import main

    assert main(["--cells", str(tmp_path / "*.parquet"), "--out", str(tmp_path / "m")]) == 2
    assert "--cells needs the --cutoff the cells were laid on" in capsys.readouterr().err
