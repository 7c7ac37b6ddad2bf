"""The subscribers are built by factories (``create_bidder``, ``create_alerter``): importing
their modules does nothing, and two shops' subscribers live side by side in one process with
nothing shared -- the apps, tables, counters and liveness are each its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from settings import Settings
from subscribers.alerter import create_alerter
from subscribers.bidder import create_bidder

REPO = Path(__file__).resolve().parents[2]


def _shop(tmp_path: Path, name: str, **extra: object) -> Settings:
    return Settings.from_flat(
        app_id=name,
        data_dir=tmp_path / name,
        store_url="memory://",
        broker_url="kafka://127.0.0.1:1",
        **extra,
    )


def test_importing_the_factories_builds_no_app() -> None:
    code = (
        "import faust, subscribers.bidder, subscribers.alerter;"
        "assert not [o for o in __import__('gc').get_objects() if isinstance(o, faust.App)]"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "CLICKSIGNALS_PARTITIONS": "not a number"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr


def test_two_shops_bidders_and_alerters_share_nothing(tmp_path: Path) -> None:
    eu = _shop(tmp_path, "shop-eu", topic_demand="eu.demand", bid_cap=3.0)
    us = _shop(tmp_path, "shop-us", topic_churn="us.churn", partitions=2)
    bidders = create_bidder(eu), create_bidder(us)
    alerters = create_alerter(eu), create_alerter(us)
    assert [b.app.conf.id for b in bidders] == ["shop-eu-bidder", "shop-us-bidder"]
    assert [a.app.conf.id for a in alerters] == ["shop-eu-alerter", "shop-us-alerter"]
    assert bidders[0].demand_topic.get_topic_name() == "eu.demand"
    assert alerters[1].churn_topic.get_topic_name() == "us.churn"
    assert (bidders[0].config.cap, bidders[1].config.cap) == (3.0, 2.0)
    bidders[0].counters["adjustments"] += 1
    assert bidders[1].counters["adjustments"] == 0
    for first, second in (bidders, alerters):
        assert first.app is not second.app
        assert first.liveness is not second.liveness
    assert bidders[0].bid_on_demand is not bidders[1].bid_on_demand
    assert alerters[1].alert_state.changelog_topic.get_topic_name() == (
        "shop-us-alerter-alert-state-changelog"
    )
