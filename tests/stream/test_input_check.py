"""``stream.input_check``: one loud warning per model version when order-lines meets views."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from features.manifest import Manifest
from stream.input_check import InputCheck
from stream.metrics import REGISTRY
from stream.worker import Worker as StreamWorker
from tests.support.agent import click

REPO = Path(__file__).resolve().parents[2]


def _manifest(training_data: dict[str, object], version: str = "m-test") -> Manifest:
    base = Manifest.from_dict(
        orjson.loads((REPO / "onnx_models/default/manifest.json").read_bytes())
    )
    return dataclasses.replace(
        base, model_version=version, extra={**base.extra, "training_data": training_data}
    )


def _event(kind: str, user: str = "u1") -> bytes:
    return orjson.dumps({"event_time": 1_700_000_000_000, "event_type": kind, "user_id": user})


def _gauge(version: str) -> float | None:
    return REGISTRY.get_sample_value("clicksignals_model_input_mismatch", {"version": version})


ORDER_LINES = {"input_kind": "order_lines"}


def test_an_order_lines_model_warns_once_on_the_first_view(
    caplog: pytest.LogCaptureFixture,
) -> None:
    check = InputCheck(_manifest(ORDER_LINES, "m-ol1"))
    caplog.set_level(logging.WARNING, logger="stream.input_check")
    # A product called "viewfinder" passes the byte hint but is no browsing event.
    quiet = [_event("purchase"), _event("return"), None, b"not json view", _event("purchase")]
    quiet.append(orjson.dumps({"event_type": "purchase", "product_id": "viewfinder"}))
    check.observe(quiet)
    assert not caplog.records and check.status() == {"trained_on": "order_lines", "mismatch": False}
    assert _gauge("m-ol1") == 0
    check.observe([_event("purchase"), _event("cart"), _event("view")])
    check.observe([_event("view")] * 5)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "m-ol1" in warnings[0].getMessage() and "'cart'" in warnings[0].getMessage()
    assert check.status() == {
        "trained_on": "order_lines",
        "mismatch": True,
        "browsing_event_seen": "cart",
    }
    assert _gauge("m-ol1") == 1


def test_a_new_model_version_is_checked_again(caplog: pytest.LogCaptureFixture) -> None:
    check = InputCheck(_manifest(ORDER_LINES, "m-ol2"))
    caplog.set_level(logging.WARNING, logger="stream.input_check")
    check.observe([_event("view")])
    check.reset(_manifest(ORDER_LINES, "m-ol3"))
    assert _gauge("m-ol2") is None  # only the serving version's series
    assert check.status()["mismatch"] is False
    check.observe([_event("view")])
    assert len(caplog.records) == 2 and _gauge("m-ol3") == 1


def test_clickstream_and_unknown_models_are_not_watched(caplog: pytest.LogCaptureFixture) -> None:
    for data, kind in (({"input_kind": "clickstream"}, "clickstream"), ({}, "unknown")):
        check = InputCheck(_manifest(data, f"m-{kind}"))
        check.observe([_event("view"), _event("cart")])
        assert check.status() == {"trained_on": kind, "mismatch": False}
        assert _gauge(f"m-{kind}") is None
    assert not caplog.records


def test_the_worker_warns_about_the_shipped_model_on_a_view(
    load_app: Callable[..., StreamWorker], run_worker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = load_app()  # the shipped Online Retail model: order lines only
    caplog.set_level(logging.WARNING, logger="stream.input_check")

    async def scenario() -> None:
        async with run_worker(app) as worker:
            await worker.put(click("u1", "2011-03-01T10:00:00Z", "purchase"), key=b"u1")
            await worker.settle()
            assert app.input_check.status()["mismatch"] is False
            await worker.put(click("u1", "2011-03-01T11:00:00Z", "view"), key=b"u1")
            await worker.settle()

    asyncio.run(scenario())
    version = app.processor().scorer.version
    assert app.input_check.status() == {
        "trained_on": "order_lines",
        "mismatch": True,
        "browsing_event_seen": "view",
    }
    # Only the check's own lines: the worker may log other warnings meanwhile.
    warned = [r for r in caplog.records if r.name == "stream.input_check"]
    assert [r.getMessage().split()[1] for r in warned] == [version]
    assert _gauge(version) == 1


def test_the_generated_default_model_loads_and_says_clickstream() -> None:
    from serving.scorer import load_model

    scorer = load_model(REPO / "onnx_models" / "generated")
    data = scorer.manifest.extra["training_data"]
    assert data["input_kind"] == "clickstream" and data["event_types"]["view"] > 0
    # The demo's shop ("regular", written by `clicksignals generate`, README "The demo's
    # model") over the demo's span (56 days from 2024-01-01, ops.demo), another seed (11).
    assert data["events"] == "var/train/regular-10k-s11.csv"
    assert data["cutoff"] == "2024-02-12T00:00:00+00:00"
    assert data["train_origins"][0] == "2024-01-08T00:00:00+00:00"
    assert InputCheck(scorer.manifest).status() == {"trained_on": "clickstream", "mismatch": False}
