"""``ops.demo_view``: the demo's tally, live console view and summary, without a broker.

Records are built by the code that writes them on the real topics (``features.signals``,
``subscribers.bidding``, ``subscribers.alerting``), so the tally reads what the system emits.
"""

from __future__ import annotations

import json

import orjson
import pytest

from features.signals import ChurnSignal
from ops.demo_view import (
    BID_CLASSES,
    FILES,
    KINDS,
    BidBounds,
    LiveStatus,
    Sample,
    Tally,
    histogram,
    progress_bar,
    rate,
    redraw,
    render_live,
    summary_record,
)
from subscribers.alerting import AlertConfig, apply_churn
from subscribers.bidding import BidConfig, adjustment_for
from tests.support.factories import churn, demand

NOW = 1_800_000_000_000


def _churn_bytes(signal: ChurnSignal) -> bytes:
    return orjson.dumps(signal.to_dict())


def _bid_bytes(user: str, orders: float, *, window: int = 0) -> bytes:
    adjustment = adjustment_for(demand(user, orders=orders, window=window), BidConfig(), NOW)
    return orjson.dumps(adjustment.to_dict())


def _alert_bytes(user: str) -> bytes:
    decision = apply_churn(None, churn(user, p=0.95), AlertConfig(), NOW)
    assert decision.alert is not None
    return orjson.dumps(decision.alert.to_dict())


def test_every_kind_is_counted_and_has_a_file() -> None:
    tally = Tally()
    tally.add("demand", orjson.dumps(demand("u1").to_dict()))
    tally.add("churn", _churn_bytes(churn("u1", p=0.3)))
    tally.add("dlq", b'{"reason": "late", "raw": "x"}')
    tally.add("bids", _bid_bytes("u1", 0.56))
    tally.add("alerts", _alert_bytes("u1"))
    tally.add("quality", b'{"window_end_ms": 5, "model_version": "m-1", "population": 3}')
    tally.add("categories", b'{"series": "c1", "window_end_ms": 5, "horizon": []}')
    assert tally.counts == dict.fromkeys(KINDS, 1)
    assert tally.total == 7
    assert list(tally.categories) == ["c1"]
    assert list(tally.quality) == [(5, "m-1")]
    assert tally.malformed == 0
    assert tally.dlq_reasons == {"late": 1}
    assert tally.alerted == {"u1"}
    assert set(FILES) == set(KINDS)
    assert FILES["bids"] == "bids.jsonl" and FILES["alerts"] == "alerts.jsonl"


def test_current_churn_is_the_latest_window_then_the_latest_emission() -> None:
    tally = Tally()
    tally.add("churn", _churn_bytes(churn("u1", window=2, p=0.4)))
    tally.add("churn", _churn_bytes(churn("u1", window=1, p=0.9)))  # older window: stale
    assert tally.top_churn() == [("u1", 0.4)]
    # Same window re-scored later (a new model version) replaces.
    tally.add("churn", _churn_bytes(churn("u1", window=2, p=0.7, emitted=10**13)))
    assert tally.top_churn() == [("u1", 0.7)]
    assert tally.counts["churn"] == 3


def test_top_lists_are_sorted_highest_first_ties_by_user() -> None:
    tally = Tally()
    for user, p in [("b", 0.5), ("a", 0.5), ("c", 0.9), ("d", 0.1), ("e", 0.6), ("f", 0.7)]:
        tally.add("churn", _churn_bytes(churn(user, p=p)))
    assert tally.top_churn(5) == [("c", 0.9), ("f", 0.7), ("e", 0.6), ("a", 0.5), ("b", 0.5)]
    for user, orders in [("x", 0.0), ("y", 5.0), ("z", 0.56)]:
        tally.add("bids", _bid_bytes(user, orders))
    assert [u for u, _ in tally.top_bids(2)] == ["y", "z"]


def test_bid_distribution_counts_floor_neutral_cap() -> None:
    tally = Tally()
    assert tally.bid_distribution() == dict.fromkeys(BID_CLASSES, 0)
    # Default config: baseline 0.02/day over 28 days = 0.56 orders is lift 1 (neutral 1.0);
    # 0 orders -> floor 0.5; 100 orders -> cap 2.0; 0.84 -> lift 1.5 -> 1.25; 0.28 -> 0.75.
    for user, orders in [("f", 0.0), ("n", 0.56), ("c", 100.0), ("a", 0.84), ("b", 0.28)]:
        tally.add("bids", _bid_bytes(user, orders))
    assert tally.bounds == BidBounds(0.5, 2.0)
    assert tally.bid_distribution() == {"floor": 1, "below": 1, "neutral": 1, "above": 1, "cap": 1}
    assert len(tally.bid_values()) == 5


def test_bid_bounds_classify_with_coinciding_floor_and_neutral() -> None:
    bounds = BidBounds(floor=1.0, cap=3.0)
    assert bounds.neutral == 1.0
    assert bounds.classify(1.0) == "floor"
    assert bounds.classify(3.0) == "cap"
    assert bounds.classify(2.0) == "above"
    assert BidBounds(1.5, 3.0).neutral == 1.5  # clip(1, floor, cap)


def test_malformed_records_are_counted_not_fatal() -> None:
    tally = Tally()
    tally.add("churn", b"not json")
    tally.add("bids", b"[1, 2]")
    tally.add("churn", b'{"user_id": "u1"}')  # no probability
    assert tally.counts["churn"] == 2 and tally.counts["bids"] == 1
    assert tally.malformed == 3
    assert tally.churn == {} and tally.bids == {}


def test_histogram_bins_clip_and_skip_non_finite() -> None:
    assert histogram([0.0, 0.05, 0.5, 0.99, 1.0], 0.0, 1.0, 10) == [2, 0, 0, 0, 0, 1, 0, 0, 0, 2]
    assert histogram([-1.0, 2.0, float("nan"), float("inf")], 0.0, 1.0, 2) == [1, 1]
    assert histogram([], 0.0, 1.0, 3) == [0, 0, 0]
    assert histogram([0.5, 0.5], 0.5, 0.5, 4) == [2, 0, 0, 0]  # empty range: first bin


def test_rate_over_the_recent_window() -> None:
    samples = [Sample(t, int(t * 100), {"demand": int(t * 10)}) for t in (0, 1, 2, 3, 4)]
    assert rate(samples, 2.0) == pytest.approx(100.0)
    assert rate(samples, 2.0, outputs=True) == pytest.approx(10.0)
    assert rate(samples[:1]) == 0.0
    assert rate([Sample(1, 5, {}), Sample(1, 5, {})]) == 0.0


@pytest.mark.parametrize(
    ("done", "total", "percent", "filled"),
    [
        (0, 100, "  0%", 0),
        (50, 100, " 50%", 5),
        (100, 100, "100%", 10),
        (150, 100, "100%", 10),
        (0, 0, "100%", 10),
    ],
)
def test_progress_bar(done: int, total: int, percent: str, filled: int) -> None:
    bar = progress_bar(done, total, width=10)
    assert bar.endswith(percent)
    assert bar.count("█") == filled and bar.count("░") == 10 - filled


def _status(**changes: object) -> LiveStatus:
    values: dict[str, object] = {
        "phase": "replaying",
        "elapsed_s": 3.0,
        "events_sent": 21_000,
        "events_total": 43_566,
        "events_per_s": 12_345.0,
        "outputs_per_s": 2_500.0,
    }
    values.update(changes)
    return LiveStatus(**values)  # type: ignore[arg-type]


def test_live_view_shows_progress_rates_counts_risks_and_bids() -> None:
    tally = Tally()
    for i in range(7):
        tally.add("churn", _churn_bytes(churn(f"u{i}", p=0.1 * i)))
        tally.add("bids", _bid_bytes(f"u{i}", 0.28 * i))
    tally.add("alerts", _alert_bytes("u6"))
    lines = render_live(_status(), tally)
    text = "\n".join(lines)
    assert "replaying" in text
    assert "21,000/43,566 events" in text and "12,345 ev/s" in text and "2,500/s" in text
    assert " 48%" in text
    assert "churn 7" in text and "bid-adjustments 7" in text and "churn-alerts 1" in text
    assert "dead letters 0" in text
    # Top five churn risks, highest first; the two lowest are not shown.
    risk_line = next(line for line in lines if "top churn risk" in line)
    assert risk_line.split()[3:5] == ["u6", "0.600"]
    assert "u1 " not in risk_line and "u0 " not in risk_line
    assert "u6 ×" in next(line for line in lines if "top bids" in line)
    dist_line = next(line for line in lines if line.strip().startswith("bid multipliers"))
    # Lifts 0, 0.5, ... 3 -> multipliers 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0.
    assert dist_line.endswith("7 users: floor ×0.5 1 · below 1 · neutral ×1 1 · above 3 · cap ×2 1")
    assert all("\x1b" not in line for line in lines)
    assert all(len(line) <= 140 for line in lines)


def test_live_view_before_any_output() -> None:
    lines = render_live(_status(events_sent=0, events_per_s=0.0), Tally())
    assert any("(none yet)" in line for line in lines)
    assert "  0%" in lines[1]


def test_redraw_moves_up_over_the_previous_frame() -> None:
    first = redraw(0, ["a", "b"])
    assert first == "\x1b[2Ka\n\x1b[2Kb\n"
    assert redraw(2, ["c", "d", "e"]).startswith("\x1b[2F\x1b[2Kc\n")


def test_summary_record_is_json_with_every_signal_kind() -> None:
    tally = Tally()
    tally.add("churn", _churn_bytes(churn("u1", p=0.9)))
    tally.add("bids", _bid_bytes("u1", 100.0))
    tally.add("alerts", _alert_bytes("u1"))
    record = summary_record(
        tally,
        events=10,
        events_sent=10,
        replay_seconds=2.0,
        wall_seconds=30.04,
        interrupted=False,
        outputs={"bids": "/x/bids.jsonl"},
    )
    assert json.loads(json.dumps(record)) == record
    assert record["signals"] == {
        "demand": 0,
        "churn": 1,
        "dlq": 0,
        "bid_adjustments": 1,
        "churn_alerts": 1,
    }
    assert record["events_per_second"] == 5.0 and record["wall_seconds"] == 30.0
    assert record["top_churn_risks"] == [["u1", 0.9]]
    assert record["top_bid_multipliers"] == [["u1", 2.0]]
    assert record["bid_bounds"] == {"floor": 0.5, "neutral": 1.0, "cap": 2.0}
    assert record["bid_distribution"]["cap"] == 1
    assert record["users"] == {"with_churn_signal": 1, "with_bid": 1, "alerted": 1}


def test_summary_record_of_an_interrupted_run_before_the_replay_ended() -> None:
    record = summary_record(
        Tally(),
        events=10,
        events_sent=3,
        replay_seconds=None,
        wall_seconds=1.0,
        interrupted=True,
        outputs={},
    )
    assert record["interrupted"] is True
    assert record["replay_seconds"] is None and record["events_per_second"] is None
    assert record["bid_bounds"] is None
