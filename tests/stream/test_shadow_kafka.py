"""Shadow models through the real worker (issue 15's acceptance): with promotion after two
window ends, a worse candidate (the demo model with shuffled weights) stays in shadow, a better
one (the demo model, next to a serving model with shuffled weights) is promoted and swapped in
by the hot swap; no signal carries the candidate's version before its promotion."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from ingest.adapters import to_wire_bytes
from ingest.generator import PRESETS, generate_clickstream
from ops import kafka_local
from settings import Settings
from stream.model import CANDIDATE_DIR, PREVIOUS_DIR
from tests.conftest import unique_name
from tests.support.models import shuffled_variant
from tests.support.worker_harness import (
    MODEL_DIR,
    WorkerProcess,
    end_offsets,
    produce,
    read_topic,
    report,
    run_sync,
    wait_until_done,
    worker_settings,
)

pytestmark = pytest.mark.kafka

DEMO_MODEL = MODEL_DIR.parent / "generated"
WorkerFactory = Callable[..., WorkerProcess]


def _version(model_dir: Path) -> str:
    return str(json.loads((model_dir / "manifest.json").read_text())["model_version"])


def _records(settings: Settings, topic: str) -> list[dict[str, Any]]:
    return [r.json() for r in run_sync(read_topic(settings, topic))]


def _run(
    base: Settings,
    name: str,
    model_dir: Path,
    worker_factory: WorkerFactory,
    tmp_path: Path,
    promoted: str | None = None,
) -> tuple[Settings, list[dict[str, Any]], list[dict[str, Any]]]:
    """The demo model's shop (1,500 users, 10 weeks) through a worker serving ``model_dir``
    with promotion after 2 window ends; returns its settings, signals and quality records.

    ``promoted``: the version expected to be promoted; the first 6 weeks go first, and the
    rest once the worker serves that version (so some window closes come after the swap)."""
    s = worker_settings(
        base.isolated(unique_name(name)),
        tmp_path / name,
        model_dir=model_dir,
        promote_after=2,
        model_poll_interval_s=0.5,
    )
    run_sync(kafka_local.ensure_topics(s))
    frame = generate_clickstream(1500, "2024-01-01", 70, seed=7, config=PRESETS["regular"])
    records = to_wire_bytes(frame)
    worker = worker_factory(s, name).start()
    worker.wait_ready()
    cut = int(pd.Timestamp("2024-02-12", tz="UTC").value // 1_000_000)
    first = to_wire_bytes(frame[frame.event_time_ms < cut]) if promoted else records
    run_sync(produce(s, s.topics.clickstream, first))
    if promoted:
        deadline = time.monotonic() + 90.0
        while worker.get_json("/health")[1].get("model_version") != promoted:
            assert worker.alive(), f"worker {name} died"
            assert time.monotonic() < deadline, f"{promoted} not serving after 90 s"
            time.sleep(0.25)
        run_sync(produce(s, s.topics.clickstream, to_wire_bytes(frame[frame.event_time_ms >= cut])))
    wait_until_done(worker, expect_min_source=len(records))
    # The aggregator publishes a window end's quality once its parts are in: until its topic
    # holds one record per evaluable window end (7 here) and stops growing for 3 s.
    deadline = time.monotonic() + 60.0
    count, since = -1, time.monotonic()
    while True:
        now = sum(run_sync(end_offsets(s, [s.topics.quality])).values())
        if now != count:
            count, since = now, time.monotonic()
        elif count >= 7 and time.monotonic() - since > 3.0:
            break
        assert time.monotonic() < deadline, f"{count} model-quality records after 60 s"
        time.sleep(0.2)
    signals = _records(s, s.topics.demand) + _records(s, s.topics.churn)
    return s, signals, _records(s, s.topics.quality)


def test_a_worse_shadow_stays_in_shadow_and_a_better_one_is_promoted(
    kafka_settings: Settings, worker_factory: WorkerFactory, tmp_path: Path
) -> None:
    served = _version(DEMO_MODEL)

    # 1. The demo model serves; its shuffled twin shadows it and loses every window end.
    model_a = tmp_path / "model-a"
    shutil.copytree(DEMO_MODEL, model_a)
    shuffled_variant(DEMO_MODEL, model_a / CANDIDATE_DIR, "m-shuffled")
    _, signals, quality = _run(kafka_settings, "worse", model_a, worker_factory, tmp_path)
    assert {s["model_version"] for s in signals} == {served}
    assert _version(model_a) == served and (model_a / CANDIDATE_DIR).is_dir()
    shadow = [q for q in quality if q["model_version"] == "m-shuffled"]
    assert len(shadow) >= 6 and all(q["promotion"]["beat_serving"] is False for q in shadow)
    assert all(q["promotion"] is None for q in quality if q["model_version"] == served)
    report(f"shadow: the shuffled candidate lost {len(shadow)} window ends of {len(quality)}")

    # 2. The shuffled model serves; the demo model shadows it, wins twice and is promoted.
    model_b = tmp_path / "model-b"
    shuffled_variant(DEMO_MODEL, model_b, "m-shuffled")
    shutil.copytree(DEMO_MODEL, model_b / CANDIDATE_DIR)
    _, signals, quality = _run(
        kafka_settings, "better", model_b, worker_factory, tmp_path, promoted=served
    )
    (promoting,) = [q for q in quality if (q["promotion"] or {}).get("promoted")]
    evidence = promoting["promotion"]
    assert evidence["promoted"] == served and len(evidence["consecutive_window_ends"]) == 2
    assert _version(model_b) == served and not (model_b / CANDIDATE_DIR).exists()
    assert _version(model_b / PREVIOUS_DIR) == "m-shuffled"
    promoted_at = promoting["emitted_at_ms"]
    by_version: dict[str, list[int]] = {}
    for s in signals:
        by_version.setdefault(s["model_version"], []).append(s["emitted_at_ms"])
    # Never before the promotion; and the hot swap did put it in service.
    assert by_version[served] and min(by_version[served]) >= promoted_at
    assert max(by_version["m-shuffled"]) <= max(by_version[served])
    report(
        f"shadow: the demo model beat the shuffled one at {evidence['consecutive_window_ends']}, "
        f"promoted; {len(by_version[served])} of {len(signals)} signals served by it after"
    )
