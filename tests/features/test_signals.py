"""features.signals: deterministic signal ids, risk levels and JSON-ready output records."""

from __future__ import annotations

import base64
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.signals import (
    DLQ_MAX_RAW_BYTES,
    ChurnSignal,
    DeadLetter,
    DemandSignal,
    RiskThresholds,
    ms_to_iso,
    risk_level,
    signal_id,
)
from features.validation import Invalid

ARGS = ("demand", "u1", 1_569_888_000_000, "window_close", "v1")
THRESHOLDS = RiskThresholds(medium=0.3, high=0.7)


def test_signal_id_is_deterministic_hex_32() -> None:
    a = signal_id(*ARGS)
    assert a == signal_id(*ARGS)
    assert len(a) == 32 and int(a, 16) >= 0


@pytest.mark.parametrize(
    "changed",
    [
        ("churn", "u1", 1_569_888_000_000, "window_close", "v1"),
        ("demand", "u2", 1_569_888_000_000, "window_close", "v1"),
        ("demand", "u1", 1_569_888_000_001, "window_close", "v1"),
        ("demand", "u1", 1_569_888_000_000, "activity", "v1"),
        ("demand", "u1", 1_569_888_000_000, "window_close", "v2"),
    ],
)
def test_signal_id_changes_with_every_field(changed: tuple[str, str, int, str, str]) -> None:
    assert signal_id(*changed) != signal_id(*ARGS)


def test_signal_id_encoding_is_unambiguous() -> None:
    # A naive "|".join would make these collide.
    assert signal_id("demand", "a|b", 1, "c", "v") != signal_id("demand", "a", 1, "b|c", "v")
    assert signal_id("demand", "a", 1, "x", "v") != signal_id("demand", "a\n", 1, "x", "v")


def test_signal_ids_distinct_over_many_users() -> None:
    ids = {signal_id("churn", f"u{i}", 0, "window_close", "v") for i in range(10_000)}
    assert len(ids) == 10_000


def test_risk_level_boundaries() -> None:
    assert risk_level(0.0, THRESHOLDS) == "low"
    assert risk_level(0.2999, THRESHOLDS) == "low"
    assert risk_level(0.3, THRESHOLDS) == "medium"
    assert risk_level(0.6999, THRESHOLDS) == "medium"
    assert risk_level(0.7, THRESHOLDS) == "high"
    assert risk_level(1.0, THRESHOLDS) == "high"
    with pytest.raises(ValueError, match="NaN"):
        risk_level(math.nan, THRESHOLDS)


@pytest.mark.parametrize("medium,high", [(0.8, 0.5), (-0.1, 0.5), (0.2, 1.1)])
def test_thresholds_validated(medium: float, high: float) -> None:
    with pytest.raises(ValueError):
        RiskThresholds(medium=medium, high=high)


def test_thresholds_from_mapping() -> None:
    assert RiskThresholds.from_mapping({"medium": "0.3", "high": 0.7}) == THRESHOLDS


def test_ms_to_iso() -> None:
    assert ms_to_iso(0) == "1970-01-01T00:00:00.000Z"
    assert ms_to_iso(1_569_888_000_123) == "2019-10-01T00:00:00.123Z"


def test_demand_signal_dict() -> None:
    sig = DemandSignal.create(
        user_id="u1",
        window_end_ms=1_569_888_000_000,
        horizon_windows=7,
        horizon_days=7.0,
        expected_orders=0.4,
        expected_spend=12.5,
        purchase_probability=0.3,
        trigger="window_close",
        model_version="v1",
        emitted_at_ms=1_569_888_001_000,
    )
    assert sig.signal_id == signal_id(*ARGS)
    d = sig.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["window_end"] == "2019-10-01T00:00:00.000Z"
    assert d["window_end_ms"] == 1_569_888_000_000
    assert d["emitted_at"] == "2019-10-01T00:00:01.000Z"
    assert d["trigger"] == "window_close"
    assert set(d) >= {
        "user_id", "window_end", "horizon_windows", "horizon_days", "expected_orders",
        "expected_spend", "purchase_probability", "trigger", "model_version", "signal_id",
        "emitted_at",
    }  # fmt: skip


def test_churn_signal_dict() -> None:
    sig = ChurnSignal.create(
        user_id="u1",
        window_end_ms=1_569_888_000_000,
        churn_probability=0.75,
        thresholds=THRESHOLDS,
        days_since_last_order=None,
        trigger="activity",
        model_version="v1",
        emitted_at_ms=1_569_888_000_000,
    )
    d = sig.to_dict()
    assert d["risk_level"] == "high"
    assert d["days_since_last_order"] is None
    assert d["signal_id"] == signal_id("churn", "u1", 1_569_888_000_000, "activity", "v1")
    assert json.loads(json.dumps(d)) == d
    # The same inputs for demand and churn never share an id.
    assert d["signal_id"] != signal_id("demand", "u1", 1_569_888_000_000, "activity", "v1")


def test_dead_letter_from_invalid() -> None:
    raw = b'{"user_id": "\xff"}'
    letter = DeadLetter.from_invalid(
        Invalid("not_utf8", None, "invalid UTF-8 at byte 13"),
        raw,
        source_topic="clickstream",
        partition=2,
        offset=41,
        received_at_ms=0,
    )
    d = letter.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert base64.b64decode(d["raw_b64"]) == raw
    assert d["preview"] == '{"user_id": "\ufffd"}'
    assert (d["reason"], d["field"], d["partition"], d["offset"]) == ("not_utf8", None, 2, 41)
    assert d["raw_size"] == len(raw) and d["raw_truncated"] is False
    assert d["received_at"] == "1970-01-01T00:00:00.000Z"


def test_dead_letter_truncates_huge_raw() -> None:
    raw = b"x" * (DLQ_MAX_RAW_BYTES * 3)
    d = DeadLetter("too_large", None, "big", "clickstream", 0, 0, raw, 0).to_dict()
    assert d["raw_truncated"] is True and d["raw_size"] == len(raw)
    assert len(base64.b64decode(d["raw_b64"])) == DLQ_MAX_RAW_BYTES
    assert len(d["preview"]) == 200


# --- the fast paths against their definitions -------------------------------------------------


def _reference_signal_id(kind: str, user: str, end: int, trigger: str, version: str) -> str:
    import hashlib

    canonical = json.dumps(
        [kind, user, int(end), trigger, version], ensure_ascii=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:32]


def _reference_ms_to_iso(ms: int) -> str:
    from datetime import UTC, datetime, timedelta

    dt = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


_TEXT = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=12),
    st.sampled_from(["u1", "17850", 'a"b', "a\\b", "tab\tx", "\x7f", "é", "", "m-5f322bdeeaa3"]),
)


@settings(max_examples=500)
@given(_TEXT, _TEXT, st.integers(-(2**53), 2**53), _TEXT, _TEXT)
def test_signal_id_fast_path_gives_the_json_definitions_id(
    kind: str, user: str, end: int, trigger: str, version: str
) -> None:
    assert signal_id(kind, user, end, trigger, version) == _reference_signal_id(
        kind, user, end, trigger, version
    )


@settings(max_examples=500)
@given(st.integers(min_value=-62_135_596_800_000 + 86_400_000, max_value=253_402_300_799_999))
def test_ms_to_iso_matches_datetime_for_every_representable_instant(ms: int) -> None:
    assert ms_to_iso(ms) == _reference_ms_to_iso(ms)
