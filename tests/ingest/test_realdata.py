"""Real-data tier: the adapters on the real files in ``../shared/data`` (skips when absent)."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from ingest.adapters import detect_format, read_events

pytestmark = pytest.mark.realdata


def test_online_retail(real_data_dir: Path) -> None:
    path = real_data_dir / "online_retail.csv.gz"
    assert detect_format(path) == "transactions"
    started = time.perf_counter()
    result = read_events(path)
    elapsed = time.perf_counter() - started
    df, s = result.events, result.summary
    assert s.rows_read == 541_909
    assert s.excluded == {"guest": 135_080}
    # Cross-check against the raw column: distinct non-null CustomerID.
    raw = pd.read_csv(path, usecols=["CustomerID"])
    assert raw["CustomerID"].dropna().nunique() == 4_372
    assert df["user_id"].nunique() == 4_372
    assert s.events_out + s.bad_total + 135_080 == 541_909
    counts = df["event_type"].value_counts()
    assert counts["return"] > 0 and counts["purchase"] > counts["return"]
    returns = df[df["event_type"] == "return"]
    assert returns["order_id"].str.startswith("C").all() and (returns["quantity"] >= 1).all()
    assert df["order_id"].nunique() > 20_000
    assert not df["user_id"].str.endswith(".0").any()
    start, end = pd.Timestamp("2010-12-01", tz="UTC"), pd.Timestamp("2011-12-10", tz="UTC")
    times = pd.to_datetime(df["event_time_ms"], unit="ms", utc=True)
    assert times.min() >= start and times.max() < end
    assert elapsed < 10.0, f"online retail took {elapsed:.1f}s"


def test_rees46(real_data_dir: Path) -> None:
    path = real_data_dir / "rees46_2019oct_head.csv"
    assert detect_format(path) == "rees46"
    result = read_events(path)
    df = result.events
    assert result.summary.bad_rows == {} and result.summary.rows_read == 17_434
    assert df["user_id"].nunique() == 4_504
    assert df["event_type"].value_counts().to_dict() == {
        "view": 17_055,
        "purchase": 214,
        "cart": 165,
    }
    assert df["category"].notna().all()  # category_code, else category_id
    assert df["session_id"].notna().all()


def test_taobao(real_data_dir: Path) -> None:
    path = real_data_dir / "taobao_userbehavior_head.csv"
    assert detect_format(path) == "taobao"
    result = read_events(path)
    df = result.events
    assert result.summary.rows_read == 4_321 and result.summary.bad_rows == {}
    raw = pd.read_csv(path, dtype=str)
    expected = raw["behavior"].map(
        {"pv": "view", "cart": "cart", "fav": "wishlist", "buy": "purchase"}
    )
    assert df["event_type"].value_counts().to_dict() == expected.value_counts().to_dict()
    assert set(df["event_type"]) == {"view", "cart", "wishlist", "purchase"}
    assert df["price"].isna().all()
