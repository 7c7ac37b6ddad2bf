"""The subscriber Faust apps are wired from settings, and refuse bad settings at start-up.

Each import happens in a child process with hermetic settings (the apps read the environment
at import, as ``faust -A`` needs), so nothing here depends on the developer's variables and no
broker is needed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from settings import Settings, child_environment
from tests.conftest import REPO_ROOT

PROBE = """
import json, sys
module = __import__(sys.argv[1], fromlist=["app"])
app = module.app
print(json.dumps({
    "id": app.conf.id,
    "web_port": app.conf.web_port,
    "web_bind": app.conf.web_bind,
    "datadir": str(app.conf.datadir),
    "topics": sorted(t for agent in app.agents.values() for t in agent.channel.topics),
    "tables": {name: t.changelog_topic.get_topic_name() for name, t in app.tables.items()},
    "pages": sorted(str(r.resource.canonical) for r in app.web.web_app.router.routes()
                    if hasattr(r, "resource") and r.resource is not None),
}))
"""


def probe(module: str, settings: Settings) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROBE, module],
        cwd=REPO_ROOT,
        env=child_environment(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )


def wiring(module: str, settings: Settings) -> dict[str, Any]:
    done = probe(module, settings)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_bidder_wiring(tmp_path: Path) -> None:
    settings = Settings.from_flat(
        app_id="t", topic_demand="d-in", bidder_web_port=7123, data_dir=tmp_path
    )
    w = wiring("subscribers.bidding_app", settings)
    assert w["id"] == "t-bidder" and w["web_port"] == 7123 and w["web_bind"] == "127.0.0.1"
    assert w["datadir"] == str(tmp_path / "bidder")
    assert w["topics"] == ["d-in"]
    assert w["tables"] == {"bids": "t-bidder-bids-changelog"}
    assert {"/bid/{user_id}", "/health"} <= set(w["pages"])


def test_alerter_wiring(tmp_path: Path) -> None:
    settings = Settings.from_flat(
        app_id="t", topic_churn="c-in", alerter_web_port=7124, data_dir=tmp_path
    )
    w = wiring("subscribers.alerting_app", settings)
    assert w["id"] == "t-alerter" and w["web_port"] == 7124
    assert w["datadir"] == str(tmp_path / "alerter")
    assert w["topics"] == ["c-in"]
    assert w["tables"] == {"alert-state": "t-alerter-alert-state-changelog"}
    assert {"/alerts/{user_id}", "/health"} <= set(w["pages"])


def test_planner_wiring(tmp_path: Path) -> None:
    stock = tmp_path / "stock.csv"
    stock.write_text("series,on_hand\n851,10\n")
    settings = Settings.from_flat(
        app_id="t",
        topic_category_demand="cd-in",
        topic_stock_levels="st-in",
        planner_web_port=7125,
        planner_stock_csv=str(stock),
        data_dir=tmp_path,
    )
    w = wiring("subscribers.planning_app", settings)
    assert w["id"] == "t-planner" and w["web_port"] == 7125
    assert w["datadir"] == str(tmp_path / "planner")
    assert w["topics"] == ["cd-in", "st-in"]
    assert w["tables"] == {"plans": "t-planner-plans-changelog"}
    assert {"/forecast/{series}", "/health", "/ready"} <= set(w["pages"])


@pytest.mark.parametrize(
    ("module", "changes", "message"),
    [
        ("subscribers.bidding_app", {"bid_floor": 3.0}, "bid floor <= bid cap"),
        ("subscribers.bidding_app", {"bid_model_baselines": "m-a"}, "model_version=rate"),
        ("subscribers.alerting_app", {"alert_recovery_threshold": 1.5}, "recovery threshold"),
        (
            "subscribers.alerting_app",
            {"alert_recovery_threshold": 0.6, "alert_high_threshold": 0.5},
            "high threshold",
        ),
        ("subscribers.planning_app", {"planner_lead_time_days": -1.0}, "lead_time_days"),
        ("subscribers.planning_app", {"planner_stock_csv": "/nonexistent.csv"}, "cannot be read"),
    ],
)
def test_bad_subscriber_settings_stop_the_worker_with_the_reason(
    module: str, changes: dict[str, Any], message: str, tmp_path: Path
) -> None:
    done = probe(module, Settings.from_flat(data_dir=tmp_path, **changes))
    assert done.returncode == 2
    assert "refusing to start" in done.stderr and message in done.stderr


def test_a_stock_file_with_a_bad_row_stops_the_planner_naming_the_row(tmp_path: Path) -> None:
    stock = tmp_path / "stock.csv"
    stock.write_text("series,on_hand\n851,10\n22A,lots\n")
    done = probe(
        "subscribers.planning_app",
        Settings.from_flat(data_dir=tmp_path, planner_stock_csv=str(stock)),
    )
    assert done.returncode == 2
    assert "refusing to start" in done.stderr and "row 3: on_hand 'lots'" in done.stderr
