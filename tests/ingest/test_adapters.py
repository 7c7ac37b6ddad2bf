"""ingest.adapters on small inline files: mapping, bad rows with line numbers, detection, replay."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.events import EVENT_TYPES, ClickEvent
from features.validation import ValidationPolicy, validate
from features.windows import DAY_MS
from ingest.adapters import (
    CANONICAL_COLUMNS,
    IngestError,
    detect_format,
    iter_events,
    read_canonical,
    read_events,
    read_rees46,
    read_taobao,
    read_transactions,
    to_wire_bytes,
)

NOW = 1_700_000_000_000
HISTORY_FLOOR_MS = -2_208_988_800_000  # 1900: train-and-export's floor for history files


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def assert_canonical(df: pd.DataFrame) -> None:
    assert tuple(df.columns) == CANONICAL_COLUMNS
    assert df["event_time_ms"].dtype == np.int64
    assert df["quantity"].dtype == np.int64
    assert df["price"].dtype == np.float64
    for name in ("event_type", "user_id", "product_id", "category", "brand", "session_id"):
        assert pd.api.types.is_string_dtype(df[name].dtype), name
    assert set(df["event_type"]) <= set(EVENT_TYPES)
    assert df["user_id"].notna().all()
    assert (df["quantity"] >= 1).all()
    times = df["event_time_ms"].to_numpy()
    assert (np.diff(times) >= 0).all()


def test_canonical_columns_follow_click_event_fields() -> None:
    # iter_events builds ClickEvents positionally from these columns.
    assert tuple(ClickEvent.__dataclass_fields__) == CANONICAL_COLUMNS


# --- transactions ------------------------------------------------------------------------------

TRANSACTIONS = """\
InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country
536365,85123A,WHITE HANGING HEART,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom
536366,22633,HAND WARMER,6,2010-12-01 08:28:00,1.85,,United Kingdom
C536379,D,Discount,-1,2010-12-01 09:41:00,27.50,14527.0,United Kingdom
536380,22000,ZERO,0,2010-12-01 09:41:00,1.00,14527.0,United Kingdom
536381,22001,NEGATIVE PRICE,2,2010-12-01 09:41:00,-1.00,14527.0,United Kingdom
536382,22002,BAD DATE,2,not a date,1.00,14527.0,United Kingdom
536383,22003,EXTRA FIELD,2,2010-12-01 09:41:00,1.00,14527.0,United Kingdom,oops
536384,22004,"FREE, WITH COMMA",3,2010-12-01 07:00:00,0.00,13047.0,United Kingdom
536385,22005,NEG QTY NO C,-2,2010-12-01 10:00:00,4.00,13047.0,United Kingdom
536386,,NO STOCKCODE,1,2010-12-01 10:00:00,4.00,13047.0,United Kingdom
536387,22006,HALF,1.5,2010-12-01 10:00:00,4.00,13047.0,United Kingdom
"""


@pytest.mark.parametrize("name", ["retail.csv", "retail.csv.gz"])
def test_transactions(tmp_path: Path, name: str) -> None:
    result = read_transactions(write(tmp_path, name, TRANSACTIONS), now_ms=NOW)
    df, s = result.events, result.summary
    assert_canonical(df)
    assert s.rows_read == 11  # data lines 2..12
    assert s.excluded == {"guest": 1}
    assert s.bad_rows == {
        "bad_value:Quantity": 2,
        "bad_value:UnitPrice": 1,
        "bad_value:InvoiceDate": 1,
        "malformed_line": 1,
        "missing_field:StockCode": 1,
    }
    assert s.first_bad == [
        (5, "bad_value:Quantity"),
        (6, "bad_value:UnitPrice"),
        (7, "bad_value:InvoiceDate"),
        (8, "malformed_line"),
        (11, "missing_field:StockCode"),
        (12, "bad_value:Quantity"),
    ]
    assert s.events_out == len(df) == 4
    assert s.rows_read == s.events_out + s.bad_total + sum(s.excluded.values())
    # Sorted by time: the 07:00 line comes first.
    assert df["order_id"].tolist() == ["536384", "536365", "C536379", "536385"]
    assert df["event_type"].tolist() == ["purchase", "purchase", "return", "return"]
    assert df["quantity"].tolist() == [3, 6, 1, 2]
    assert df["user_id"].tolist() == ["13047", "17850", "14527", "13047"]  # '.0' removed
    assert df["price"].tolist() == [0.0, 2.55, 27.5, 4.0]
    assert df["event_time_ms"].iloc[1] == 1_291_191_960_000  # 2010-12-01T08:26:00Z (as UTC)
    assert df["category"].isna().all() and df["brand"].isna().all()


def test_transactions_original_uci_dates_and_retail_ii_names(tmp_path: Path) -> None:
    text = (
        "Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID,Country\n"
        "536365,85123A,X,6,12/1/2010 8:26,2.55,17850,United Kingdom\n"
    )
    path = write(tmp_path, "retail_ii.csv", text)
    assert detect_format(path) == "transactions"
    df = read_events(path, now_ms=NOW).events
    assert df["event_time_ms"].tolist() == [1_291_191_960_000]
    assert df["user_id"].tolist() == ["17850"]


# --- rees46 --------------------------------------------------------------------------------------

REES46 = """\
event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session
2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,s-a
2019-10-01 00:00:01 UTC,cart,3900821,2053013552326770905,appliances.heater,aqua,33.2,554748717,s-b
2019-10-01 00:00:02 UTC,click,3900821,2053013552326770905,,,33.20,554748717,s-b
2019-10-01 00:00:03 UTC,remove_from_cart,3900821,2053013552326770905,,,,554748717,s-b

2019-10-01 00:00:04 UTC,purchase,3900821,2053013552326770905,,,33.20,,s-b
2019-10-01 00:00:05,view,1,2,,,1.0,554748717,s-b
2019-10-01T00:00:06Z,purchase,3900821,,,,-3,554748717,s-b
2019-10-01T00:00:07Z,purchase,3900821,,,,33.20,554748717,
"""


def test_rees46(tmp_path: Path) -> None:
    result = read_rees46(write(tmp_path, "rees.csv", REES46), now_ms=NOW)
    df, s = result.events, result.summary
    assert_canonical(df)
    assert s.rows_read == 9
    assert s.excluded == {"blank_line": 1}
    assert s.first_bad == [
        (4, "unknown_event_type:event_type"),
        (7, "missing_field:user_id"),
        (8, "bad_value:event_time"),  # naive time: REES46 times carry "UTC"
        (9, "bad_value:price"),
    ]
    assert df["event_type"].tolist() == ["view", "cart", "remove_from_cart", "purchase"]
    # category_code when present, else category_id
    assert df["category"].tolist()[:2] == ["2103807459595387724", "appliances.heater"]
    assert df["brand"].tolist()[:2] == ["shiseido", "aqua"]
    assert np.isnan(df["price"].iloc[2])  # blank price = unknown, not bad
    assert df["session_id"].iloc[0] == "s-a"
    assert pd.isna(df["session_id"].iloc[3])
    assert df["order_id"].isna().all()
    assert df["event_time_ms"].iloc[0] == 1_569_888_000_000


# --- taobao --------------------------------------------------------------------------------------

TAOBAO_ROWS = """\
1,2268318,2520377,pv,1511544070
1,2333346,2520771,fav,1511561733
2,2333346,2520771,cart,1511561734
2,2333346,2520771,buy,1511561735
3,2333346,2520771,share,1511561736
3,2333346,2520771,pv,abc
3,2333346,2520771,pv,100
"""


@pytest.mark.parametrize("header", [True, False])
def test_taobao(tmp_path: Path, header: bool) -> None:
    text = ("user_id,item_id,category_id,behavior,timestamp\n" if header else "") + TAOBAO_ROWS
    path = write(tmp_path, "taobao.csv", text)
    assert detect_format(path) == "taobao"
    result = read_taobao(path, now_ms=NOW)
    df, s = result.events, result.summary
    assert_canonical(df)
    assert df["event_type"].tolist() == ["view", "wishlist", "cart", "purchase"]
    assert df["event_time_ms"].iloc[0] == 1_511_544_070_000  # seconds -> ms
    assert df["product_id"].iloc[0] == "2268318" and df["category"].iloc[0] == "2520377"
    off = 1 if header else 0
    assert s.first_bad == [
        (5 + off, "unknown_event_type:behavior"),
        (6 + off, "bad_value:timestamp"),
        (7 + off, "time_too_old:timestamp"),
    ]
    assert s.rows_read == 7


# --- canonical -----------------------------------------------------------------------------------

CANONICAL_CSV = """\
event_time,event_type,user_id,product_id,price,quantity,order_id
2023-11-14T22:00:00Z,view,u1,p1,,,
2023-11-14T23:00:00+01:00,cart,u1,p1,9.5,2.0,
1699999200000,purchase,u2,p1,9.5,1,o1
2023-11-14T22:00:00,view,u1,p1,,,
2023-11-14T22:00:00Z,click,u1,p1,,,
2023-11-14T22:00:00Z,view, ,p1,,,
2023-11-14T22:00:00Z,view,u1,p1,-1,,
2023-11-14T22:00:00Z,view,u1,p1,,0,
2023-11-14T22:00:00Z,view,u1,p1,inf,,
2099-01-01T00:00:00Z,view,u1,p1,,,
946684799999,view,u1,p1,,,
,view,u1,p1,,,
"""


def test_canonical_csv(tmp_path: Path) -> None:
    result = read_canonical(write(tmp_path, "events.csv", CANONICAL_CSV), now_ms=NOW)
    df, s = result.events, result.summary
    assert_canonical(df)
    assert s.first_bad == [
        (5, "bad_value:event_time"),  # naive
        (6, "unknown_event_type:event_type"),
        (7, "missing_field:user_id"),
        (8, "bad_value:price"),
        (9, "bad_value:quantity"),
        (10, "bad_value:price"),
        (11, "time_in_future:event_time"),
        (12, "time_too_old:event_time"),
        (13, "missing_field:event_time"),
    ]
    # Three rows at the same instant: sorted by user, ties in file order.
    assert df["event_time_ms"].tolist() == [1_699_999_200_000] * 3
    assert df["user_id"].tolist() == ["u1", "u1", "u2"]
    assert df["event_type"].tolist() == ["view", "cart", "purchase"]
    assert df["quantity"].tolist() == [1, 2, 1]
    assert df["order_id"].isna().tolist() == [True, True, False]
    assert df["brand"].isna().all()  # absent column -> missing


ORDER_EXPORT_DATES = """\
event_time,event_type,user_id,order_id,price
1997-01-01,purchase,c1,o1,11.77
1997-01-12,purchase,c2,o2,12.00
1997-01-12,purchase,c1,o3,5.00
1997-02-30,purchase,c2,o4,1.00
"""


def test_an_order_export_of_plain_dates_is_read_as_utc_days(tmp_path: Path) -> None:
    """A 1990s order export (CDNOW's shape) whose only time is the date: each row is the start
    of its UTC day, so its order day is the date as written; an impossible date is refused."""
    path = write(tmp_path, "orders.csv", ORDER_EXPORT_DATES)
    result = read_canonical(path, now_ms=NOW, min_event_time_ms=HISTORY_FLOOR_MS)
    df = result.events
    assert result.summary.first_bad == [(5, "bad_value:event_time")]
    day = pd.Timestamp("1997-01-01", tz="UTC").value // 1_000_000
    assert df["event_time_ms"].tolist() == [day, day + 11 * DAY_MS, day + 11 * DAY_MS]
    assert df["user_id"].tolist() == ["c1", "c1", "c2"]


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("event_time", "852076800"),  # 1997-01-01 in epoch seconds
        ("event_time", "19970101"),  # a YYYYMMDD date written as a number
        ("event_time_ms", "1699999200"),  # 2023-11-14 in epoch seconds
        ("event_time", "0"),
    ],
)
def test_a_number_time_of_1970_is_refused_as_seconds_or_a_date_not_read_as_ms(
    tmp_path: Path, column: str, value: str
) -> None:
    """Read as milliseconds, epoch seconds and YYYYMMDD numbers fall a few days into 1970,
    above the 1900 floor of history files: a whole export would train as a history of
    seconds. Refused, with the rule saying what the number looks like."""
    text = f"{column},event_type,user_id,order_id\n{value},purchase,c1,o1\n"
    text += "852076800000,purchase,c1,o2\n"
    result = read_canonical(
        write(tmp_path, "orders.csv", text), now_ms=NOW, min_event_time_ms=HISTORY_FLOOR_MS
    )
    assert result.summary.first_bad == [(2, f"bad_value:{column}")]
    assert result.events["event_time_ms"].tolist() == [852_076_800_000]
    assert "YYYYMMDD" in result.summary.explain()


def test_a_summary_explains_its_most_frequent_refusal_by_the_rule_broken(tmp_path: Path) -> None:
    """The mixed file above: one refusal of each kind but two of bad prices, so the bad price
    is what a reader of the error is told about first, with its line and its rule."""
    summary = read_canonical(write(tmp_path, "events.csv", CANONICAL_CSV), now_ms=NOW).summary
    assert summary.explain() == (
        "2 of 12 rows refused as bad_value:price, the first on line 8: price must be a number "
        ">= 0 (blank: unknown)"
    )
    clean = tmp_path / "clean.csv"
    clean.write_text("event_time,event_type,user_id\n2023-11-14T22:00:00Z,view,u1\n")
    assert read_canonical(clean, now_ms=NOW).summary.explain() is None


def test_canonical_csv_round_trips_a_canonical_frame(tmp_path: Path) -> None:
    from ingest.generator import generate_clickstream

    frame = generate_clickstream(n_users=200, days=10, seed=3)
    path = tmp_path / "gen.csv"
    frame.to_csv(path, index=False)
    assert detect_format(path) == "canonical"
    back = read_events(path, now_ms=2_000_000_000_000)  # the frame is dated 2024
    assert back.summary.bad_rows == {}
    pd.testing.assert_frame_equal(back.events, frame)


def test_canonical_jsonl_uses_wire_rules(tmp_path: Path) -> None:
    lines = [
        json.dumps({"event_time": NOW - 10, "event_type": "view", "user_id": 7}),
        "",
        json.dumps({"event_time": str(NOW), "event_type": "view", "user_id": "u"}),
        "not json",
        json.dumps({"event_time": "2023-11-14T22:00:00Z", "event_type": "cart", "user_id": "u"}),
    ]
    path = write(tmp_path, "events.jsonl", "\n".join(lines) + "\n")
    assert detect_format(path) == "canonical"
    result = read_events(path, now_ms=NOW)
    assert result.summary.first_bad == [(3, "bad_value:event_time"), (4, "not_json")]
    assert result.summary.excluded == {"blank_line": 1}
    assert result.events["user_id"].tolist() == ["u", "7"]
    assert_canonical(result.events)


@pytest.mark.parametrize(
    "row,ok",
    [
        ({"event_time": "2023-11-14T22:00:00Z", "price": 1.5, "quantity": 2}, True),
        ({"event_time": "2023-11-14T22:00:00+05:30"}, True),
        ({"event_time": "2023-11-14T22:00:00"}, False),
        ({"event_time": "2023-11-14"}, True),  # a date: the start of that UTC day
        ({"event_time": "2023-11-14T22"}, False),
        ({"event_time": "2023-11-14T22:00:00Z", "price": -1}, False),
        ({"event_time": "2023-11-14T22:00:00Z", "quantity": 2.5}, False),
        ({"event_time": "2023-11-14T22:00:00Z", "quantity": 2.0}, True),
        ({"event_time": "2023-11-14T22:00:00Z", "event_type": "VIEW"}, False),
        ({"event_time": "1999-12-31T23:59:59Z"}, False),
        ({"event_time": "2023-11-16T22:00:00Z"}, False),
    ],
)
def test_canonical_csv_agrees_with_validate(
    tmp_path: Path, row: dict[str, object], ok: bool
) -> None:
    event = {"event_type": "view", "user_id": "u1", **row}
    via_wire = validate(json.dumps(event).encode(), now_ms=NOW, policy=ValidationPolicy())
    assert isinstance(via_wire, ClickEvent) is ok
    frame = pd.DataFrame([event])
    path = tmp_path / "one.csv"
    frame.to_csv(path, index=False)
    result = read_canonical(path, now_ms=NOW)
    assert result.summary.events_out == int(ok)
    if ok:
        assert next(iter_events(result.events)) == via_wire


# --- detection and errors ------------------------------------------------------------------------


def test_detect_each_format(tmp_path: Path) -> None:
    assert detect_format(write(tmp_path, "a.csv", TRANSACTIONS)) == "transactions"
    assert detect_format(write(tmp_path, "b.csv", REES46)) == "rees46"
    assert detect_format(write(tmp_path, "c.csv.gz", CANONICAL_CSV)) == "canonical"
    assert detect_format(write(tmp_path, "d.ndjson", "{}\n")) == "canonical"


def test_unknown_format_names_the_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "x.csv", "foo,bar\n1,2\n")
    with pytest.raises(IngestError, match=r"x\.csv.*unknown format.*columns found: bar, foo"):
        read_events(path)


def test_wrong_columns_for_forced_format(tmp_path: Path) -> None:
    path = write(tmp_path, "x.csv", REES46)
    with pytest.raises(IngestError, match=r"not a transactions file: missing column"):
        read_events(path, "transactions")


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="no such file"):
        read_events(tmp_path / "missing.csv")
    with pytest.raises(IngestError, match=r"empty\.csv"):
        read_events(write(tmp_path, "empty.csv", ""), "rees46")
    bad_gz = tmp_path / "broken.csv.gz"
    bad_gz.write_bytes(b"not gzip at all")
    with pytest.raises(IngestError, match=r"broken\.csv\.gz"):
        read_events(bad_gz)
    with pytest.raises(IngestError, match="unknown format 'parquet'"):
        read_events(write(tmp_path, "y.csv", TRANSACTIONS), "parquet")


def test_header_only_file_gives_empty_frame(tmp_path: Path) -> None:
    result = read_events(write(tmp_path, "h.csv", REES46.splitlines()[0] + "\n"), now_ms=NOW)
    assert len(result.events) == 0 and result.summary.rows_read == 0
    assert tuple(result.events.columns) == CANONICAL_COLUMNS


# --- replay --------------------------------------------------------------------------------------


def test_iter_events_and_wire_bytes_round_trip(tmp_path: Path) -> None:
    df = read_rees46(write(tmp_path, "rees.csv", REES46), now_ms=NOW).events
    events = list(iter_events(df))
    assert all(isinstance(e, ClickEvent) for e in events)
    assert events[0].brand == "shiseido" and events[2].price is None
    assert events[3].session_id is None
    records = to_wire_bytes(df)
    assert [k for k, _ in records] == [e.user_id.encode() for e in events]
    policy = ValidationPolicy()
    assert [validate(v, now_ms=NOW, policy=policy) for _, v in records] == events
