"""Generators of ``bench.model_quality``: seeded, the stated shapes, readable as canonical CSV.

No training here (that is the harness's job, by hand): small populations, a few seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import model_quality as mq
from ingest.adapters import read_events
from training.cli import OFFLINE_MIN_EVENT_TIME_MS

SCALE = 0.1
FULL_CUSTOMERS = {
    "cdnow": 23_570,
    "grocery": 2_500,
    "wholesale": 5_000,
    "dormant": 10_000,
    "regular": 3_000,
    "marketplace": 40_000,
}
CUTOFFS = {
    "cdnow": "1998-04-01",  # 1997-01-01 + 65 weeks
    "grocery": "2022-10-03",  # start + 91 weeks of 104
    "wholesale": "2023-09-04",
    "dormant": "2023-10-09",  # start + 248 weeks of 261
    "regular": "2022-10-03",  # start + 91 weeks of 104
    "marketplace": "2018-10-01",  # start + 91 weeks of 104
}
SPAN_WEEKS = {"cdnow": 78, "grocery": 104, "dormant": 261, "regular": 104, "marketplace": 104}


@pytest.mark.parametrize("name", sorted(mq.GENERATORS))
def test_generator_is_deterministic(name: str) -> None:
    gen = mq.GENERATORS[name]
    a, b, other = gen(3, SCALE), gen(3, SCALE), gen(4, SCALE)
    pd.testing.assert_frame_equal(a.events, b.events)
    assert not a.events.equals(other.events)


@pytest.mark.parametrize("name", sorted(mq.GENERATORS))
def test_generator_shape(name: str) -> None:
    shop = mq.GENERATORS[name](1, SCALE)
    ev = shop.events
    assert shop.customers == round(FULL_CUSTOMERS[name] * SCALE)
    assert ev["user_id"].nunique() == shop.customers  # everyone's first order is in the data
    assert shop.cutoff == pd.Timestamp(CUTOFFS[name], tz="UTC")
    assert shop.cutoff.value % (mq.DAY_MS * 1_000_000) == 0  # 00:00 UTC
    assert shop.windows_after_cutoff() == mq.HORIZON
    t = ev["event_time_ms"].to_numpy()
    assert t.min() >= mq._ms(shop.start)
    assert t.max() < mq._ms(shop.cutoff) + mq.HORIZON * mq.WEEK_MS + mq.TAIL_DAYS * mq.DAY_MS
    if name in SPAN_WEEKS:
        span = (shop.cutoff - shop.start) / pd.Timedelta(weeks=1) + mq.HORIZON
        assert span == SPAN_WEEKS[name]
    assert (t >= mq._ms(shop.cutoff)).sum() > 0
    days = ev["event_time_ms"] // mq.DAY_MS
    assert not pd.DataFrame({"u": ev["user_id"], "d": days}).duplicated().any()
    assert ev["order_id"].is_unique
    assert (ev["price"] > 0).all() and (ev["event_type"] == "purchase").all()


def test_shape_specifics() -> None:
    cdnow = mq.gen_cdnow(1, SCALE).events
    first = cdnow.groupby("user_id")["event_time_ms"].min()
    assert first.max() < mq._ms(pd.Timestamp("1997-01-01", tz="UTC")) + 12 * mq.WEEK_MS
    dormant = mq.gen_dormant(1, SCALE)
    per_user = dormant.events.groupby("user_id").size()
    once = per_user[per_user.index.str[1:].astype(int) < dormant.customers // 2]
    assert (once == 1).all() and len(once) == dormant.customers // 2
    wholesale = mq.gen_wholesale(1, SCALE).events
    month = pd.to_datetime(wholesale["event_time_ms"], unit="ms").dt.month
    assert month.isin([10, 11]).mean() > 2 / 12  # the Q4 peak shows


def test_marketplace_customers_mostly_buy_once_and_arrive_ever_faster() -> None:
    """The marketplace: at least 85 % of its customers never order again, and the quarter
    before the cutoff brings about three times the new customers of the first quarter
    (acquisition grows fourfold over the history)."""
    shop = mq.gen_marketplace(1, 0.5)
    ev = shop.events
    per_user = ev.groupby("user_id").size()
    assert 0.85 <= float((per_user == 1).mean()) < 0.97  # the live base buys rarely too
    first = ev.groupby("user_id")["event_time_ms"].min()
    first_quarter = (first < mq._ms(shop.start) + 13 * mq.WEEK_MS).sum()
    last_quarter = (first >= mq._ms(shop.cutoff) - 13 * mq.WEEK_MS).sum()
    assert last_quarter > 2.5 * first_quarter


def test_regular_buyers_buy_more_regularly_than_poisson() -> None:
    """The regular shop's gaps between order days have a coefficient of variation well under
    1 (Poisson buying's), the grocery panel's (Poisson) about 1."""

    def median_cv(events: pd.DataFrame) -> float:
        days = events.assign(d=events["event_time_ms"] // mq.DAY_MS).groupby("user_id")["d"]
        gaps = days.diff().dropna()
        users = events.loc[gaps.index, "user_id"]
        stats = gaps.groupby(users).agg(["mean", "std", "size"])
        stats = stats[stats["size"] >= 8]
        return float((stats["std"] / stats["mean"]).median())

    assert median_cv(mq.gen_regular(1, 0.3).events) < 0.75
    assert median_cv(mq.gen_grocery(1, 0.3).events) > 0.85


@pytest.mark.parametrize("name", sorted(mq.GENERATORS))
def test_files_load_through_canonical_adapter(name: str, tmp_path: Path) -> None:
    shop = mq.GENERATORS[name](1, SCALE)
    path = mq.write_canonical(shop, tmp_path / f"{name}.csv")
    result = read_events(path, "canonical", min_event_time_ms=OFFLINE_MIN_EVENT_TIME_MS)
    assert len(result.events) == len(shop.events)
    np.testing.assert_array_equal(
        result.events["event_time_ms"].to_numpy(), shop.events["event_time_ms"].to_numpy()
    )
    assert set(result.events["user_id"]) == set(shop.events["user_id"])
    np.testing.assert_allclose(result.events["price"].sum(), shop.events["price"].sum())
