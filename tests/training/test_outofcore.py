"""The DuckDB engine (training/outofcore.py) builds the pandas path's window tensor.

Parity with :func:`features.batch.build_window_tensor` on the canonical reader's frame of the
same file: generated shops (CSV, gzipped CSV, Parquet, a glob of several files), a file full of
bad rows (same rows refused, for the same reasons), UCI Online Retail (real-data tier) and a
file processed under a 64 MB memory limit, large enough that DuckDB spills. Counts, times and
the user order must be equal; sums (spend) agree to 1e-9 relative, as DuckDB may add them in
another order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.windows import BASE_FEATURES, DAY_MS, FEATURE_INDEX, WindowSpec
from ingest.adapters import IngestError, read_canonical
from ingest.generator import generate_clickstream
from training.cli import OFFLINE_MIN_EVENT_TIME_MS
from training.dataset import build_tensor, first_window, to_event_arrays
from training.outofcore import EngineConfig, EventStore, open_events

duckdb = pytest.importorskip("duckdb")

WEEK_MS = 7 * DAY_MS
NOW = 2_000_000_000_000  # generated data is dated 2024
SUM_FEATURES = ("spend", "spend_total")


def _spec(last_ms: int, midnight: bool = True) -> WindowSpec:
    cutoff = (last_ms - 5 * WEEK_MS) // DAY_MS * DAY_MS
    if not midnight:
        cutoff += 3 * 3_600_000  # boundaries at 03:00 UTC: days cut by a boundary
    return WindowSpec(WEEK_MS, cutoff, seq_len=12, horizon=4, lookback=12)


def assert_same_tensor(frame: pd.DataFrame, store: EventStore, spec: WindowSpec) -> int:
    """Both engines' tensors for every complete window; returns the cells compared."""
    arrays, user_ids = to_event_arrays(frame)
    first = first_window(arrays, spec)
    assert store.first_window(spec) == first
    last = spec.index(int(frame.event_time_ms.max())) - 1
    expected = build_tensor(arrays, spec, last)
    got, got_ids = store.window_tensor(spec, first, last)
    assert got_ids.tolist() == user_ids.tolist()
    assert got.first_index == expected.first_index
    assert got.features.shape == expected.features.shape
    sums = [FEATURE_INDEX[name] for name in SUM_FEATURES]
    exact = [i for i in range(expected.features.shape[-1]) if i not in sums]
    np.testing.assert_array_equal(got.features[..., exact], expected.features[..., exact])
    np.testing.assert_allclose(got.features[..., sums], expected.features[..., sums], rtol=1e-6)
    np.testing.assert_array_equal(got.orders, expected.orders)
    # float64 labels: the 1e-9 relative tolerance of a different summation order.
    np.testing.assert_allclose(got.spend, expected.spend, rtol=1e-9, atol=0)
    # The comparison means something: purchases, several distinct keys, spend.
    base = expected.features[..., : len(BASE_FEATURES)]
    assert base[..., FEATURE_INDEX["orders"]].max() >= 1
    assert expected.spend.sum() > 0
    return int(expected.orders.size)


def _store(paths: list[Path] | list[str], **kwargs: object) -> EventStore:
    return open_events(paths, now_ms=NOW, min_event_time_ms=OFFLINE_MIN_EVENT_TIME_MS, **kwargs)  # type: ignore[arg-type]


def _pandas(path: Path) -> pd.DataFrame:
    return read_canonical(path, now_ms=NOW, min_event_time_ms=OFFLINE_MIN_EVENT_TIME_MS).events


def _to_parquet(csv_path: Path, out: Path) -> Path:
    """Parquet written by DuckDB (no pyarrow needed): event_time_ms BIGINT, price DOUBLE with
    NULL for unknown, text columns VARCHAR."""
    con = duckdb.connect()
    con.execute(
        f"COPY (SELECT * FROM read_csv('{csv_path}', header=true, "
        "types={'user_id': 'VARCHAR', 'product_id': 'VARCHAR', 'category': 'VARCHAR', "
        "'brand': 'VARCHAR', 'session_id': 'VARCHAR', 'order_id': 'VARCHAR'})) "
        f"TO '{out}' (FORMAT parquet)"
    )
    con.close()
    return out


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frame = generate_clickstream(n_users=1500, days=150, seed=11)
    path = tmp_path_factory.mktemp("shop") / "events.csv"
    frame.to_csv(path, index=False)
    return path


def test_blocks_and_samples_of_users_are_their_rows_of_the_whole_tensor(shop: Path) -> None:
    """A shop of 1,500 generated users read back a block of users at a time (three blocks of
    consecutive codes: a range of the cell tables) and as a seeded sample (a semi-join):
    each is bit for bit those users' rows of the whole tensor, ids in code order. This is what
    lets training fit on a sample and score every user a block at a time in bounded memory."""
    frame = _pandas(shop)
    spec = _spec(int(frame.event_time_ms.max()))
    with _store([shop]) as store:
        first = store.first_window(spec)
        cells = store.window_cells(spec, first, spec.index(int(frame.event_time_ms.max())) - 1)
        whole, ids = cells.tensor()
        n = cells.n_users
        assert n == frame.user_id.nunique() and cells.nonempty > n
        sample = np.sort(np.random.default_rng(3).choice(n, size=400, replace=False))
        blocks = [np.arange(lo, min(lo + 600, n)) for lo in range(0, n, 600)]
        for codes in [*blocks, sample, np.array([n - 1]), np.zeros(0, dtype=np.int64)]:
            part, part_ids = cells.tensor(codes)
            assert part_ids.tolist() == ids[codes].tolist()
            assert part.first_index == whole.first_index
            np.testing.assert_array_equal(part.features, whole.features[codes])
            np.testing.assert_array_equal(part.orders, whole.orders[codes])
            np.testing.assert_array_equal(part.spend, whole.spend[codes])
        with pytest.raises(ValueError, match="sorted"):
            cells.tensor(sample[::-1])


@pytest.mark.parametrize("midnight", [True, False], ids=["midnight_utc", "cut_days"])
def test_generated_shop_csv(shop: Path, midnight: bool) -> None:
    frame = _pandas(shop)
    with _store([shop]) as store:
        assert store.rows == len(frame)
        assert store.users == frame.user_id.nunique()
        assert store.summary.bad_rows == {}
        assert (store.start_ms, store.stop_ms) == (
            int(frame.event_time_ms.min()),
            int(frame.event_time_ms.max()),
        )
        assert store.event_types == frame.event_type.value_counts().to_dict()
        spec = _spec(int(frame.event_time_ms.max()), midnight)
        assert assert_same_tensor(frame, store, spec) > 10_000


def test_generated_shop_gzip_parquet_and_glob(shop: Path, tmp_path: Path) -> None:
    frame = _pandas(shop)
    spec = _spec(int(frame.event_time_ms.max()))
    gz = tmp_path / "events.csv.gz"
    frame.to_csv(gz, index=False)
    with _store([gz]) as store:
        assert_same_tensor(frame, store, spec)
    with _store([_to_parquet(shop, tmp_path / "events.parquet")]) as store:
        assert store.summary.bad_rows == {}
        assert_same_tensor(frame, store, spec)
    # Three files, rows dealt round-robin (so each file holds every period): one glob.
    parts = tmp_path / "parts"
    parts.mkdir()
    for k in range(3):
        frame.iloc[k::3].to_csv(parts / f"part-{k}.csv", index=False)
    with _store([str(parts / "part-*.csv")]) as store:
        assert store.rows == len(frame)
        assert_same_tensor(frame, store, spec)


MESSY = """\
event_time,event_type,user_id,product_id,category,brand,price,quantity,session_id,order_id
2023-11-14T22:00:00Z,view,u1,p1,c1,,,,s1,
2023-11-14T23:00:00+01:00,cart,u1,p1,c1,, 9.5 ,2.0,s1,
1699999200000,purchase,u2,p1,c1,,9.5,1,,o1
2023-11-14T22:00:00,view,u1,p1,,,,,,
2023-11-14T22:00:00Z,click,u1,p1,,,,,,
2023-11-14T22:00:00Z,view, ,p1,,,,,,
2023-11-14T22:00:00Z,view,u1,p1,,,-1,,,
2023-11-14T22:00:00Z,view,u1,p1,,,,0,,
2023-11-14T22:00:00Z,view,u1,p1,,,inf,,,
2099-01-01T00:00:00Z,view,u1,p1,,,,,,
-2208988800001,view,u1,p1,,,,,,
,view,u1,p1,,,,,,
2023-11-14T22:00:00Z,purchase,u3,p2,c2,,1_000,,,
2023-11-14T22:00:00Z,purchase,u3,p2,c2,,abc,,,
2023-11-14T22:00:00Z,purchase,u3,p2,c2,,,2.5,,
2023-11-14T22:00:00Z,purchase,u3,p2,c2,,,1000001,,
2023-11-14T24:00:00Z,view,u3,p2,,,,,,
2023-11-14T22:00:00 +01:00,purchase,u3,p2,c2,,3.25,3,s9,
2023-11-14 22:00:00 UTC,purchase,u3,p3,c2,,1.5,,s9,
2023-11-14T22:00Z,purchase,u4,p3,,,,,,
2023-11-14T22:00:00.123+05:30,return,u4,p3,,,2,1,,o2
2023-11-14,view,u4,p3,,,,,,
2023-02-30T10:00:00Z,view,u4,p3,,,,,,
 view ,view,u4,p3,,,,,,
2023-11-15T22:00:00Z, purchase ,u4,p4, c3 ,,10,1, s8 ,"o3 "
1699999200000,,u5,p1,,,,,,
,,,,,,,,,
1699999200000,purchase,u5,p1,,,7,1,,,extra
1699999200001,wishlist, u5,p1,,,,,,
2023-11-13,purchase,u6,p5,,,4,,,o4
1699999200,purchase,u6,p5,,,4,,,o5
20231114,purchase,u6,p5,,,4,,,o6
0,view,u6,p5,,,,,,
"""


def test_bad_rows_are_refused_for_the_canonical_readers_reasons(tmp_path: Path) -> None:
    path = tmp_path / "messy.csv"
    path.write_text(MESSY)
    now = 1_700_100_000_000
    expected = read_canonical(path, now_ms=now, min_event_time_ms=OFFLINE_MIN_EVENT_TIME_MS)
    with open_events([path], now_ms=now, min_event_time_ms=OFFLINE_MIN_EVENT_TIME_MS) as store:
        got = store.summary
        assert got.bad_rows == expected.summary.bad_rows
        assert got.excluded == expected.summary.excluded == {"blank_line": 1}
        assert got.first_bad == expected.summary.first_bad
        assert got.rows_read == expected.summary.rows_read
        assert got.events_out == expected.summary.events_out == store.rows
        frame = expected.events
        # Whitespace kept in user ids (the partitioning key, as written), stripped elsewhere.
        assert " u5" in set(frame.user_id)
        spec = WindowSpec(DAY_MS, 1_699_920_000_000, seq_len=3, horizon=1, lookback=3)
        arrays, user_ids = to_event_arrays(frame)
        first = first_window(arrays, spec)
        last = spec.index(int(frame.event_time_ms.max()))
        a = build_tensor(arrays, spec, last)
        b, ids = store.window_tensor(spec, first, last)
        assert ids.tolist() == user_ids.tolist()
        np.testing.assert_array_equal(a.features, b.features)
        np.testing.assert_array_equal(a.spend, b.spend)


def test_where_the_rules_differ_is_what_rule_differences_says(tmp_path: Path) -> None:
    """training.outofcore.RULE_DIFFERENCES, checked: a line that is not UTF-8 is refused (pandas
    replaces the bytes), a blank line is not counted, so a bad row below it is numbered one low
    (the refused line above it is counted); an unterminated quote refuses the file on both."""
    path = tmp_path / "edge.csv"
    path.write_bytes(
        b"event_time_ms,event_type,user_id,price\n"
        b"1700000000000,view,u1,\n"
        b"\n"
        b"1700000000001,view,u\xff2,\n"
        b"1700000000003,view,u4,1\n"
        b"1700000000004,purchase,u5,abc\n"
    )
    expected = read_canonical(path, now_ms=NOW).summary
    assert expected.first_bad == [(6, "bad_value:price")]
    assert expected.excluded == {"blank_line": 1}
    with _store([path]) as store:
        assert store.summary.first_bad == [(4, "unreadable_line"), (5, "bad_value:price")]
        assert store.summary.bad_rows == {"bad_value:price": 1, "unreadable_line": 1}
        assert store.summary.excluded == {}
        assert store.user_ids().tolist() == ["u1", "u4"]
    quote = tmp_path / "quote.csv"
    quote.write_text('event_time_ms,event_type,user_id\n1,view,u1\n2,view,"u3\n3,view,u4\n')
    with pytest.raises(IngestError, match="cannot read as CSV"):
        read_canonical(quote, now_ms=NOW)
    with pytest.raises(IngestError, match="unterminated quote on line 3"):
        _store([quote])


def test_several_files_name_the_file_of_a_bad_row_and_empty_files_are_empty(
    tmp_path: Path,
) -> None:
    header = "event_time_ms,event_type,user_id,quantity\n"
    (tmp_path / "a.csv").write_text(header + "1700000000000,view,u1,\n")
    (tmp_path / "b.csv").write_text(header + "1700000000000,view,u2,\n1700000000001,view,u3,0\n")
    with _store([str(tmp_path / "*.csv")]) as store:
        assert store.rows == 2
        assert store.summary.first_bad == [(3, f"bad_value:quantity in {tmp_path / 'b.csv'}")]
    (tmp_path / "empty.csv").write_text(header)
    with _store([tmp_path / "empty.csv"]) as store:
        assert (store.rows, store.users, store.summary.rows_read) == (0, 0, 0)


def test_parquet_time_columns_by_type(tmp_path: Path) -> None:
    """A zoned timestamp column is read as its instant; a naive one is refused, as a naive ISO
    text is in CSV; a DATE column is its UTC day, as a plain date is; NaN in a float price is
    unknown (blank), not a bad number."""
    path = tmp_path / "typed.parquet"
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(
        "COPY (SELECT * FROM (VALUES "
        "(TIMESTAMPTZ '2023-11-14 22:13:20.123456+00', 'purchase', 'u1', 'nan'::DOUBLE), "
        "(TIMESTAMPTZ '2023-11-14 23:13:20+01', 'view', 'u2', 2.5::DOUBLE)"
        ") t(event_time, event_type, user_id, price)) "
        f"TO '{path}' (FORMAT parquet)"
    )
    naive = tmp_path / "naive.parquet"
    con.execute(
        "COPY (SELECT TIMESTAMP '2023-11-14 22:13:20' AS event_time, 'view' AS event_type, "
        f"'u1' AS user_id) TO '{naive}' (FORMAT parquet)"
    )
    dates = tmp_path / "dates.parquet"
    con.execute(
        "COPY (SELECT DATE '2023-11-14' AS event_time, 'purchase' AS event_type, "
        f"'u1' AS user_id) TO '{dates}' (FORMAT parquet)"
    )
    con.close()
    with _store([path]) as store:
        assert store.summary.bad_rows == {}
        assert (store.start_ms, store.stop_ms) == (1_700_000_000_000, 1_700_000_000_123)
        assert store.user_ids().tolist() == ["u2", "u1"]
    with _store([naive]) as store:
        assert store.summary.bad_rows == {"bad_value:event_time": 1}
        assert store.summary.first_bad == [(1, "bad_value:event_time")]
    # A DATE column is an order export's day, as a plain date in CSV: the start of that UTC day.
    with _store([dates]) as store:
        assert store.summary.bad_rows == {}
        assert store.start_ms == 1_700_000_000_000 - 1_700_000_000_000 % DAY_MS


def test_files_that_cannot_be_read_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="no such file"):
        _store([tmp_path / "nope.csv"])
    with pytest.raises(IngestError, match="no file matches"):
        _store([str(tmp_path / "*.parquet")])
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("when,what,who\n1,view,u\n")
    with pytest.raises(IngestError, match=r"missing column\(s\) event_type, user_id"):
        _store([wrong])
    no_time = tmp_path / "no_time.csv"
    no_time.write_text("event_type,user_id\nview,u\n")
    with pytest.raises(IngestError, match="missing column event_time"):
        _store([no_time])
    other = tmp_path / "other.csv"
    other.write_text("event_time_ms,user_id,event_type\n1699999200000,u,view\n")
    good = tmp_path / "good.csv"
    good.write_text("event_time_ms,event_type,user_id\n1699999200000,view,u\n")
    with pytest.raises(IngestError, match="header differs"):
        _store([good, other])
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(IngestError, match="cannot read as Parquet"):
        _store([broken])
    with pytest.raises(ValueError, match="before"), _store([good]) as store:
        # The one event lies in window 0 of this grid.
        spec = WindowSpec(WEEK_MS, 1_699_999_200_000, seq_len=1, horizon=1, lookback=1)
        store.window_tensor(spec, 1, 2)


@pytest.mark.slow
def test_spilling_under_a_small_memory_limit_gives_the_same_tensor(tmp_path: Path) -> None:
    """32 MB for DuckDB (2 threads) on 1.2M events of about 25,000 users: the tensor's distinct-key
    aggregation does not fit, DuckDB spills it (its query profiles count the bytes; with
    48 MB it does not spill for this file), and the tensor is still the pandas path's. The
    spill directory named need not exist yet."""
    frame = generate_clickstream(n_users=30_000, days=120, seed=5)
    path = tmp_path / "big.csv"
    frame.to_csv(path, index=False)
    frame = _pandas(path)
    assert len(frame) > 1_200_000
    spec = _spec(int(frame.event_time_ms.max()))
    spill = tmp_path / "not" / "yet"
    config = EngineConfig(memory_limit="32MB", threads=2, temp_dir=spill)
    with _store([path], config=config) as store:
        limit = store.con.execute("SELECT current_setting('memory_limit')").fetchone()
        assert limit is not None and str(limit[0]).startswith("30.5"), limit  # 32 MB in MiB
        loaded = store.spilled_bytes
        assert_same_tensor(frame, store, spec)
        assert store.spilled_bytes > loaded, "DuckDB did not spill building the tensor"
    assert spill.is_dir() and not list(spill.glob("clicksignals-duckdb-*")), "left behind"


@pytest.mark.realdata
def test_uci_online_retail(shared_data: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A year of real order lines (Online Retail, converted to canonical CSV and Parquet):
    every cell of every user's weekly windows on the shipped model's grid."""
    from ingest.adapters import read_events

    lines = read_events(
        shared_data / "online_retail.csv.gz",
        "transactions",
        min_event_time_ms=OFFLINE_MIN_EVENT_TIME_MS,
    ).events
    path = tmp_path / "online_retail.csv"
    lines.to_csv(path, index=False)
    frame = _pandas(path)
    assert len(frame) == len(lines) > 400_000
    cutoff = int(pd.Timestamp("2011-09-05", tz="UTC").value // 1_000_000)
    spec = WindowSpec(WEEK_MS, cutoff, seq_len=12, horizon=4, lookback=12)
    with _store([path]) as store:
        assert assert_same_tensor(frame, store, spec) > 200_000
    with _store([_to_parquet(path, tmp_path / "online_retail.parquet")]) as store:
        assert_same_tensor(frame, store, spec)


def test_the_worker_does_not_import_duckdb() -> None:
    """DuckDB is a training dependency (the ``train`` extra): the worker's modules never load it."""
    import subprocess
    import sys

    code = (
        "import sys, stream.worker, stream.processor, serving.scorer, features.batch; "
        "assert 'duckdb' not in sys.modules, 'duckdb imported'"
    )
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
def test_train_and_export_with_the_duckdb_engine_equals_the_pandas_engine(tmp_path: Path) -> None:
    """The whole command on a Parquet glob (--engine duckdb) and on the same events as one CSV
    (pandas): the same predictions, byte for byte, and the same metrics."""
    import json

    from training.cli import main

    frame = generate_clickstream(n_users=500, start="2024-01-01", days=180, seed=7)
    csv_path = tmp_path / "events.csv"
    frame.to_csv(csv_path, index=False)
    parts = tmp_path / "parquet"
    parts.mkdir()
    for k in range(2):
        frame.iloc[k::2].to_csv(tmp_path / f"part-{k}.csv", index=False)
        _to_parquet(tmp_path / f"part-{k}.csv", parts / f"part-{k}.parquet")
    common = ["--epochs", "1", "--seeds", "1"]
    assert main(["--events", str(csv_path), "--out", str(tmp_path / "pd"), *common]) == 0
    duck = ["--engine", "duckdb", "--duckdb-temp-dir", str(tmp_path)]
    glob = str(parts / "*.parquet")
    assert main(["--events", glob, "--out", str(tmp_path / "duck"), *duck, *common]) == 0
    predictions = (tmp_path / "pd" / "predictions.csv").read_bytes()
    assert predictions == (tmp_path / "duck" / "predictions.csv").read_bytes()
    manifests = [json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("pd", "duck")]
    assert manifests[0]["metrics"] == manifests[1]["metrics"]
    data = [m["training_data"] for m in manifests]
    assert data[1]["engine"] == "duckdb"
    for key in ("events_rows", "users", "event_types", "input_kind", "cutoff"):
        assert data[0][key] == data[1][key], key
    assert not list(tmp_path.glob("clicksignals-duckdb-*")), "the database was left behind"


@pytest.mark.slow
def test_a_shop_larger_than_a_block_and_the_fit_sample_still_predicts_every_customer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A generated shop of ~430 users (Parquet, --engine duckdb) scored in blocks of 150 users
    gives the one-block predictions byte for byte; fitted on a seeded sample of 250 of its
    users, it still predicts every customer of the cutoff population, says it sampled, and
    quantizes on that sample."""
    import json

    import training.pipeline as pipeline
    from training.cli import main

    frame = generate_clickstream(n_users=500, start="2024-01-01", days=180, seed=7)
    frame.to_csv(tmp_path / "events.csv", index=False)
    parquet = _to_parquet(tmp_path / "events.csv", tmp_path / "events.parquet")
    args = ["--events", str(parquet), "--engine", "duckdb", "--epochs", "1", "--seeds", "1"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    monkeypatch.setattr(pipeline, "BLOCK_USERS", 150)
    assert main([*args, "--out", str(tmp_path / "blocks")]) == 0
    one = (tmp_path / "one" / "predictions.csv").read_bytes()
    assert one == (tmp_path / "blocks" / "predictions.csv").read_bytes()

    monkeypatch.setattr(pipeline, "MAX_FIT_USERS", 250)
    # --quantize reads the sample's tensor again after scoring, which let it go.
    assert main([*args, "--quantize", "--out", str(tmp_path / "sample")]) == 0
    everyone = pd.read_csv(tmp_path / "one" / "predictions.csv")
    sampled = pd.read_csv(tmp_path / "sample" / "predictions.csv")
    assert len(everyone) > 250
    assert sampled.user_id.tolist() == everyone.user_id.tolist()
    assert sampled.actual_orders.tolist() == everyone.actual_orders.tolist()
    users = json.loads((tmp_path / "sample" / "report.json").read_text())["extra"]["split"]["users"]
    total = frame.user_id.nunique()  # of the 500 generated, those with an event
    assert users == {"cutoff": len(everyone), "total": total, "fitted_on": 250}
    assert (tmp_path / "sample" / "quantized" / "model.onnx").is_file()


def test_the_duckdb_engine_refuses_other_formats(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.cli import main

    lines = tmp_path / "lines.csv"
    lines.write_text(
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
        "536365,85123A,HEART,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom\n"
    )
    out = str(tmp_path / "o")
    assert main(["--events", str(lines), "--engine", "duckdb", "--out", out]) == 2
    assert "a transactions file; --engine duckdb reads canonical files only" in (
        capsys.readouterr().err
    )
    args = ["--events", str(lines), "--engine", "duckdb", "--format", "taobao", "--out", out]
    assert main(args) == 2
    assert "canonical files only, not taobao" in capsys.readouterr().err
    assert main(["--engine", "duckdb", "--out", out]) == 2
    assert "--engine duckdb reads --events files" in capsys.readouterr().err
