"""``ops.demo_truth`` and the dashboard's truth panel, with a truth table made by hand."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import orjson
import pandas as pd
import pytest

from ops.dashboard import render_dashboard
from ops.demo_truth import Truth, evaluate
from ops.demo_view import Tally, summary_record
from tests.support.factories import churn

SVG = "{http://www.w3.org/2000/svg}"
# Ten users: u0..u4 churn, u5..u9 stay. Scores rank all churners but u4 above the stayers.
TRUTH = Truth({f"u{i}": (1_000 + i if i < 5 else None) for i in range(10)}, span_end_ms=5_000)
SCORES = {
    "u0": 0.95,
    "u1": 0.92,
    "u2": 0.85,
    "u3": 0.81,
    "u4": 0.12,  # a churner the model misses
    "u5": 0.55,
    "u6": 0.35,
    "u7": 0.15,
    "u8": 0.11,
    "u9": 0.05,
}


def test_evaluate_against_a_known_truth() -> None:
    result = evaluate({**SCORES, "stranger": 0.5}, ["u0", "u1", "u5", "stranger"], TRUTH)
    assert result["users_scored"] == 10 and result["unknown_users"] == 1
    assert result["true_churners"] == 5 and result["base_rate"] == 0.5
    # Pairs churner > stayer: u0..u3 beat all 5 (20), u4 beats u8, u9 (2) -> 22/25.
    assert result["roc_auc"] == pytest.approx(22 / 25)
    assert result["alerted_users"] == 3 and result["alerted_true_churners"] == 2
    assert result["alerted_precision"] == pytest.approx(2 / 3, abs=1e-4)
    # Ten equal bins, empty ones left out; 0.1-0.2 holds u4 (a churner), u7 and u8.
    assert [(b["mean_score"], b["churn_rate"], b["users"]) for b in result["calibration"]] == [
        (0.05, 0.0, 1),
        (0.1267, 0.3333, 3),
        (0.35, 0.0, 1),
        (0.55, 0.0, 1),
        (0.83, 1.0, 2),
        (0.935, 1.0, 2),
    ]
    assert result["score_quantiles"]["p50"] == pytest.approx(0.35 + (0.55 - 0.35) * 0.5)
    assert orjson.loads(orjson.dumps(result)) == result  # JSON-ready for summary.json


def test_one_class_or_nothing_gives_no_auc_instead_of_a_number() -> None:
    assert evaluate({}, [], TRUTH)["roc_auc"] is None
    only_stayers = evaluate({"u5": 0.2, "u6": 0.3}, [], TRUTH)
    assert only_stayers["roc_auc"] is None and only_stayers["alerted_precision"] is None


def test_truth_round_trips_through_truth_jsonl_and_comes_from_the_generator(
    tmp_path: Path,
) -> None:
    TRUTH.write(tmp_path / "truth.jsonl")
    lines = (tmp_path / "truth.jsonl").read_bytes().splitlines()
    assert orjson.loads(lines[0]) == {"user_id": "u0", "churned": True, "churn_ms": 1000}
    assert Truth.read(tmp_path / "truth.jsonl", 5_000) == TRUTH
    users = pd.DataFrame({"user_id": ["a", "b"], "churn_ms": [-1, 77]})
    assert Truth.from_users(users, 9).churn_ms == {"a": None, "b": 77}


def _tally() -> Tally:
    tally = Tally()
    for user, p in SCORES.items():
        tally.add("churn", orjson.dumps(churn(user, p=p).to_dict()))
    for user in ("u0", "u1", "u5"):
        tally.add("alerts", orjson.dumps({"user_id": user, "raised_at_ms": 1}))
    return tally


def test_the_dashboard_panel_shows_auc_calibration_and_alert_precision() -> None:
    tally = _tally()
    truth = evaluate({u: p for u, (_, p) in tally.churn.items()}, tally.alerted, TRUTH)
    summary = summary_record(
        tally,
        events=10,
        events_sent=10,
        replay_seconds=1.0,
        wall_seconds=2.0,
        interrupted=False,
        outputs={},
        truth=truth,
    )
    assert summary["truth"]["roc_auc"] == pytest.approx(0.88)
    html = render_dashboard(tally, summary, title="generated traffic")
    assert "<h2>Predictions vs the generator's truth</h2>" in html
    assert "churn ROC-AUC<b>0.880</b>" in html
    assert "alerted who churn<b>66.7% (2/3)</b>" in html
    charts = [ET.fromstring(s) for s in re.findall(r"<svg\b.*?</svg>", html, flags=re.S)]
    calibration = next(
        c for c in charts if c.get("aria-label") == "calibration against the generator's truth"
    )
    points = calibration.findall(f"{SVG}circle")
    assert len(points) == len(truth["calibration"])
    assert all("churned" in (p.findtext(f"{SVG}title") or "") for p in points)
    # Without a truth (a replayed file) there is no panel.
    plain = render_dashboard(tally, {**summary, "truth": None}, title="file")
    assert "Predictions vs" not in plain
