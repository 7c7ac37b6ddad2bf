"""The real worker (``faust -A stream.app worker`` subprocess) against a real Kafka broker.

* hostile input beside a real REES46 sample: one dead letter per bad record, with its reason
  and coordinates, and signals for every user;
* end-to-end parity: UCI Online Retail replayed through Kafka gives the window-close signals
  offline prediction gives, key for key and score for score, dormant customers under the
  churn floor included, and the online evaluation (``model-quality``) of every window end
  whose horizon passed equals the offline evaluation of the same predictions;
* a worker killed mid-replay (SIGKILL) and restarted — from its RocksDB data dir, and from an
  empty one (changelog restore) — emits what an uninterrupted run emits, category forecasts
  included;
* a model that does not match stops the worker at start-up with the reason;
* importing ``stream.app`` never imports TensorFlow.

Workers come from the ``worker_factory`` fixture (tests/stream/conftest.py), which always stops
them; waits are bounded and fail with the worker log's tail.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from ingest.adapters import read_events, to_wire_bytes
from ingest.generator import generate_clickstream
from ops import kafka_local
from serving.demand import find_category_model
from serving.scorer import load_model
from settings import Settings, child_environment
from stream.categories import quantiles_of
from stream.processor import WATERMARK_PREFIX, decode_watermark
from stream.publish import partition_of
from tests.conftest import unique_name
from tests.support.worker_harness import (
    FAST_REJOIN,
    FAUST,
    MODEL_DIR,
    REPO_ROOT,
    WorkerProcess,
    end_offsets,
    last_event_per_partition,
    persisted_offsets,
    produce,
    read_topic,
    report,
    run_sync,
    same_score,
    wait_until_done,
    window_close,
    worker_settings,
)
from training.offline import evaluate_closes, predict_windows

WorkerFactory = Callable[..., WorkerProcess]
IDLE_S = 4.0  # wait_until_done's default: no output for this long counts as idle
Key = tuple[str, int]


def by_key(signals: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    out = {(s["user_id"], s["window_end_ms"]): s for s in signals}
    assert len(out) == len(signals), "a (user, window end) was emitted more than once"
    return out


# --------------------------------------------------------------------------------------------
# 1. A real sample with hostile records in between
# --------------------------------------------------------------------------------------------


Hostile = tuple[bytes | None, bytes, tuple[str, str | None, str]]


def hostile_records(template: dict[str, Any], keys: list[bytes]) -> list[Hostile]:
    """About fifty bad records ``(key, value, (reason, field, text in detail))``, keyed like
    real traffic (a real user's key) or not keyed at all."""
    good = orjson.dumps(template)
    nan_price = b'{"event_time": %d, "event_type": "view", "user_id": "%s", "price": NaN}' % (
        template["event_time"],
        template["user_id"].encode(),
    )
    kinds: list[tuple[bytes, tuple[str, str | None, str]]] = [
        (b"\xff\xfe\xfa not utf-8", ("not_utf8", None, "UTF-8")),
        (good.replace(b"{", b"{\xc3\x28", 1), ("not_utf8", None, "UTF-8")),
        (good[: len(good) // 2], ("not_json", None, "")),  # truncated
        (b'{"event_time": 1569888000000, "event_type": "vi', ("not_json", None, "")),
        (b"", ("not_json", None, "")),
        (b"[1, 2, 3]", ("not_object", None, "array")),
        (orjson.dumps([template]), ("not_object", None, "array")),
        (b'"just a string"', ("not_object", None, "string")),
        (
            orjson.dumps({k: v for k, v in template.items() if k != "user_id"}),
            ("missing_field", "user_id", ""),
        ),
        (orjson.dumps({**template, "user_id": None}), ("missing_field", "user_id", "")),
        (nan_price, ("bad_value", None, "NaN")),
        (orjson.dumps({**template, "price": -1.5}), ("bad_value", "price", "-1.5")),
        (
            orjson.dumps({**template, "event_time": "1970-01-01T00:00:00Z"}),
            ("time_too_old", "event_time", ""),
        ),
        (orjson.dumps({**template, "event_time": 0}), ("time_too_old", "event_time", "")),
        (
            orjson.dumps({**template, "event_type": "click"}),
            ("unknown_event_type", "event_type", "click"),
        ),
        (orjson.dumps({**template, "pad": "x" * 70_000}), ("too_large", None, "bytes")),
    ]
    out: list[Hostile] = []
    i = 0
    while len(out) < 50:
        value, expected = kinds[i % len(kinds)]
        key = None if i % 3 == 0 else keys[(i * 7919) % len(keys)]
        out.append((key, value, expected))
        i += 1
    return out


@pytest.mark.kafka
@pytest.mark.realdata
def test_rees46_sample_with_hostile_records(
    isolated_kafka_settings: Settings,
    shared_data: Path,
    worker_factory: WorkerFactory,
    tmp_path: Path,
) -> None:
    frame = read_events(shared_data / "rees46_2019oct_head.csv", "rees46").events
    good = to_wire_bytes(frame)
    keys = [k for k, _ in good]
    bad = hostile_records(orjson.loads(good[0][1]), keys)
    # Interleave: one bad record after every `step` good ones.
    step = len(good) // (len(bad) + 1)
    records: list[tuple[bytes | None, bytes]] = []
    expected: dict[int, tuple[str, str | None, str]] = {}  # index in `records` -> dead letter
    stray: set[int] = set()  # valid events sent without a key: the worker re-keys them
    bad_iter = iter(bad)
    for i, (user_key, event) in enumerate(good):
        if i % 20 == 7:
            stray.add(len(records))
        records.append((None if i % 20 == 7 else user_key, event))
        if (i + 1) % step == 0 and len(expected) < len(bad):
            key, value, letter = next(bad_iter)
            expected[len(records)] = letter
            records.append((key, value))

    s = worker_settings(isolated_kafka_settings, tmp_path / "data", fresh_signal_min_interval_s=1.0)
    worker = worker_factory(s, "rees46").start()
    report(f"rees46: worker ready in {worker.wait_ready():.1f} s")
    t0 = time.monotonic()
    coords = run_sync(produce(s, s.topics.clickstream, records))
    wait_until_done(worker, expect_min_source=len(records))
    report(
        f"rees46: {len(records)} records produced and processed in "
        f"{time.monotonic() - t0:.1f} s (incl. {IDLE_S:.0f} s of idle check)"
    )

    on_routed = run_sync(read_topic(s, s.topics.routed))
    # The re-keying topic carries the copies and the workers' watermark records.
    is_mark = [(r.key or b"").startswith(WATERMARK_PREFIX.encode()) for r in on_routed]
    announced = [r for r, mark in zip(on_routed, is_mark, strict=True) if mark]
    routed = [r for r, mark in zip(on_routed, is_mark, strict=True) if not mark]
    assert announced and all(
        decode_watermark(r.value)[0] != r.partition and not r.headers for r in announced
    )
    dlq = [r.json() for r in run_sync(read_topic(s, s.topics.dead_letter))]
    demand = [r.json() for r in run_sync(read_topic(s, s.topics.demand))]
    churn = [r.json() for r in run_sync(read_topic(s, s.topics.churn))]
    report(
        f"rees46: {len(demand)} demand, {len(churn)} churn, {len(dlq)} DLQ, {len(routed)} re-keyed"
    )

    # Every hostile record: exactly one dead letter, with its reason and coordinates.
    letters = Counter((d["source_topic"], d["partition"], d["offset"]) for d in dlq)
    assert all(n == 1 for n in letters.values()), [k for k, n in letters.items() if n > 1]
    wanted = {(s.topics.clickstream, *coords[i]): (i, x) for i, x in expected.items()}
    assert set(letters) == set(wanted), (
        f"{len(set(wanted) - set(letters))} hostile records without a dead letter, "
        f"{len(set(letters) - set(wanted))} dead letters for records that were not hostile"
    )
    for d in dlq:
        index, (reason, field, text) = wanted[(d["source_topic"], d["partition"], d["offset"])]
        assert (d["reason"], d["field"]) == (reason, field), (d, reason, field)
        assert d["detail"] and text in d["detail"], (d["detail"], text)
        raw = records[index][1]
        assert d["raw_size"] == len(raw)
        assert base64.b64decode(d["raw_b64"]) == raw[: len(base64.b64decode(d["raw_b64"]))]

    # Unkeyed events on a partition not their user's were re-sent keyed by user, once each,
    # carrying the coordinates of the original.
    misplaced = {
        coords[i]: records[i][1]
        for i in stray
        if coords[i][0]
        != partition_of(orjson.loads(records[i][1])["user_id"].encode(), s.topics.partitions)
    }
    assert len(misplaced) > 100
    origins = {}
    for r in routed:
        (name, origin), *_ = r.headers
        partition, offset = map(int, origin.decode().split(":"))
        assert name == "clicksignals-origin" and (partition, offset) not in origins
        origins[(partition, offset)] = r
    assert set(origins) == set(misplaced)
    for where, r in origins.items():
        assert r.value == misplaced[where]
        assert r.key == orjson.loads(r.value)["user_id"].encode()
        assert r.key is not None and r.partition == partition_of(r.key, s.topics.partitions)

    # Signals for every user of the sample: activity-triggered (the sample spans < 3 h, so
    # no weekly window closes), from the shipped model, with finite scores.
    users = set(frame.user_id.astype(str))
    version = load_model(MODEL_DIR).version
    for kind, signals in (("demand", demand), ("churn", churn)):
        assert {x["user_id"] for x in signals if x["trigger"] == "activity"} == users, kind
        assert {x["model_version"] for x in signals} == {version}
        assert not any(x["trigger"] == "window_close" for x in signals)
        assert len({x["signal_id"] for x in signals}) == len(signals)
    assert all(np.isfinite(x["expected_orders"]) and x["expected_orders"] >= 0 for x in demand)
    assert all(0.0 <= x["churn_probability"] <= 1.0 for x in churn)


# --------------------------------------------------------------------------------------------
# 2. End-to-end parity with offline prediction
# --------------------------------------------------------------------------------------------


@pytest.mark.kafka
@pytest.mark.realdata
def test_uci_replay_through_kafka_equals_offline_prediction_dormant_customers_included(
    isolated_kafka_settings: Settings,
    shared_data: Path,
    worker_factory: WorkerFactory,
    tmp_path: Path,
) -> None:
    frame = read_events(shared_data / "online_retail.csv.gz", "transactions").events
    records = to_wire_bytes(frame)
    s = worker_settings(isolated_kafka_settings, tmp_path / "data")
    worker = worker_factory(s, "uci").start()
    report(f"uci: worker ready in {worker.wait_ready():.1f} s")
    t0 = time.monotonic()
    run_sync(produce(s, s.topics.clickstream, records))
    produced = time.monotonic() - t0
    # The last windows close once every source is announced idle (2 s here), all of them in
    # one burst: quiet outputs for longer than that.
    wait_until_done(worker, expect_min_source=len(records), timeout_s=240.0, idle_s=8.0)
    processed = time.monotonic() - t0
    status, clocks = worker.get_json("/clocks")
    assert status == 200
    t1 = time.monotonic()
    demand = window_close(run_sync(read_topic(s, s.topics.demand)))
    churn = window_close(run_sync(read_topic(s, s.topics.churn)))
    report(
        f"uci: {len(records)} events produced in {produced:.1f} s; all processed and "
        f"committed {processed:.1f} s after the first was sent (incl. 8 s of idle "
        f"check) ≈ {len(records) / (processed - 8.0):,.0f} events/s; read back "
        f"{len(demand)} + {len(churn)} window-close signals in {time.monotonic() - t1:.1f} s"
    )

    # The last window each partition closed, from the data: the processor closes window w of
    # partition p once (max event time in p) - allowed lateness has passed w's end.
    spec = load_model(MODEL_DIR).manifest.spec
    lateness_ms = int(s.worker.allowed_lateness_s * 1000)
    part = np.array(
        [partition_of(u.encode(), s.topics.partitions) for u in frame.user_id.astype(str)]
    )
    for p in range(s.topics.partitions):
        max_ms = int(frame.event_time_ms[part == p].max())
        assert clocks[str(p)]["max_event_ms"] == max_ms
        assert clocks[str(p)]["closed_through"] == spec.index(max_ms - lateness_ms) - 1
    last_end = spec.end_ms(min(c["closed_through"] for c in clocks.values()))

    t2 = time.monotonic()
    # The worker's floor: the rows are those of the close population it applies.
    offline = predict_windows(frame, MODEL_DIR, dormant_churn_floor=s.worker.dormant_churn_floor)
    offline = offline[offline.window_end_ms <= last_end]
    report(f"uci: offline prediction of {len(offline)} windows in {time.monotonic() - t2:.1f} s")
    # Customers out of the lookback, under the churn floor, are part of the population.
    last_event = (
        frame.assign(user_id=frame.user_id.astype(str)).groupby("user_id").event_time_ms.max()
    )
    lookback_ms = spec.lookback * spec.length_ms
    dormant = (
        offline.window_end_ms.to_numpy() > last_event[offline.user_id].to_numpy() + lookback_ms
    )
    report(f"uci: {int(dormant.sum())} window-close rows of dormant customers under the floor")
    assert dormant.sum() > 100
    stream_demand = {k: v for k, v in by_key(demand).items() if k[1] <= last_end}
    stream_churn = {k: v for k, v in by_key(churn).items() if k[1] <= last_end}
    keys = list(zip(offline.user_id, offline.window_end_ms.astype(int), strict=True))
    assert len(keys) > 50_000
    assert set(stream_demand) == set(keys), (
        len(set(keys) - set(stream_demand)),
        len(set(stream_demand) - set(keys)),
    )
    assert set(stream_churn) == set(keys)
    np.testing.assert_allclose(
        [stream_demand[k]["expected_orders"] for k in keys], offline.expected_orders, atol=1e-4
    )
    np.testing.assert_allclose(
        [stream_churn[k]["churn_probability"] for k in keys], offline.churn_probability, atol=1e-4
    )

    # The online evaluation: every window end whose horizon every partition has closed gets
    # one model-quality record, equal to the offline evaluation of the same predictions.
    t3 = time.monotonic()
    evaluated = evaluate_closes(frame, MODEL_DIR, s.worker.dormant_churn_floor)
    horizon_ms = spec.horizon * spec.length_ms
    expected = {e: q for e, q in evaluated.items() if e + horizon_ms <= last_end}
    assert len(expected) >= 30
    quality = _wait_for_records(worker, s.topics.quality, len(expected), timeout_s=60.0)
    online = {q["window_end_ms"]: q for q in quality}
    assert len(online) == len(quality), "a window end's quality was published twice"
    assert set(online) == set(expected)
    # To 1e-6: the scores themselves move in their last float32 bit between ONNX Runtime
    # calls that batch rows differently (the worker's micro-batches against offline's one
    # batch per close), so a bias near zero or two near-tied scores may differ at ~1e-8.
    for end, want in expected.items():
        got = online[end]
        assert got["population"] == want["n"]
        for group in ("orders", "spend"):
            for key in ("mae", "rmse", "bias"):
                close = pytest.approx(want[group][key], rel=1e-6, abs=1e-6)
                assert got[group][key] == close, (end, group, key)
        for key in ("roc_auc", "pr_auc", "log_loss", "brier"):
            close = pytest.approx(want["churn"][key], rel=1e-6, abs=1e-6)
            assert got["churn"][key] == close, (end, key)
    status, view = worker.get_json("/quality")
    assert status == 200
    (latest,) = view["latest"].values()
    assert latest["window_end_ms"] == max(expected)
    first = online[min(expected)]
    report(
        f"uci: {len(online)} model-quality records equal the offline evaluation "
        f"({time.monotonic() - t3:.1f} s); first window end {first['window_end']}: "
        f"{first['population']} users, orders MAE {first['orders']['mae']:.4f}, "
        f"churn ROC-AUC {first['churn']['roc_auc']:.4f}"
    )

    # Category demand (issue 17): at the shipped cutoff the stream's forecasts are the ones
    # train-and-export wrote (forecasts.csv, from ONNX Runtime on the training panel), to 1e-4.
    t4 = time.monotonic()
    directory = find_category_model(MODEL_DIR)
    assert directory is not None
    cutoff_ms = int(pd.Timestamp("2011-09-05", tz="UTC").value // 1_000_000)
    categories = [r.json() for r in run_sync(read_topic(s, s.topics.category_demand))]
    ids = [c["forecast_id"] for c in categories]
    assert len(ids) == len(set(ids)), "a category forecast was published twice"
    at_cutoff = {c["series"]: c for c in categories if c["window_end_ms"] == cutoff_ms}
    want = pd.read_csv(directory / "forecasts.csv", dtype={"series": str})
    columns = [f"{t}_{q}" for t in ("units", "revenue") for q in ("p10", "p50", "p90")]
    assert set(want.series) <= set(at_cutoff)
    for series, rows in want.groupby("series", sort=False):
        got = quantiles_of([at_cutoff[str(series)]])[0].reshape(len(rows), 6)
        np.testing.assert_allclose(got, rows[columns].to_numpy(), rtol=1e-4, atol=1e-4)
    for series in set(at_cutoff) - set(want.series):
        # Not forecast offline: nothing sold in its scale windows, so nothing to expect.
        assert at_cutoff[series]["scale"]["units"] == 0.0
        assert not quantiles_of([at_cutoff[series]])[0, :, 0].any()
    ends = {c["window_end_ms"] for c in categories}
    report(
        f"uci: {len(categories)} category forecasts over {len(ends)} window ends; the "
        f"{len(at_cutoff)} at the cutoff equal forecasts.csv's {want.series.nunique()} series "
        f"({time.monotonic() - t4:.1f} s)"
    )


def _wait_for_records(
    worker: WorkerProcess, topic: str, count: int, timeout_s: float
) -> list[dict[str, Any]]:
    """The JSON records of ``topic`` once it holds ``count`` (bounded wait)."""
    deadline = time.monotonic() + timeout_s
    while True:
        total = sum(run_sync(end_offsets(worker.settings, [topic])).values())
        if total >= count:
            return [r.json() for r in run_sync(read_topic(worker.settings, topic))]
        if not worker.alive():
            raise worker.fail(f"worker {worker.name} died")
        if time.monotonic() > deadline:
            raise worker.fail(f"{topic} holds {total} < {count} records after {timeout_s} s")
        time.sleep(0.2)


# --------------------------------------------------------------------------------------------
# 3. Restart mid-replay
# --------------------------------------------------------------------------------------------


def _wait_for_output(worker: WorkerProcess, topic: str, at_least: int, timeout_s: float) -> int:
    """Poll the end offsets of ``topic`` until they sum to ``at_least``; returns the sum."""
    deadline = time.monotonic() + timeout_s
    while True:
        total = sum(run_sync(end_offsets(worker.settings, [topic])).values())
        if total >= at_least:
            return total
        if not worker.alive():
            raise worker.fail(f"worker {worker.name} died")
        if time.monotonic() > deadline:
            raise worker.fail(f"{topic} holds {total} < {at_least} records after {timeout_s} s")
        time.sleep(0.1)


@pytest.mark.kafka
def test_worker_killed_mid_replay_emits_what_an_uninterrupted_run_emits(
    isolated_kafka_settings: Settings,
    worker_factory: WorkerFactory,
    tmp_path: Path,
) -> None:
    frame = generate_clickstream(n_users=800, days=140, seed=11)
    records = to_wire_bytes(frame)
    last_event_ms = last_event_per_partition(frame, isolated_kafka_settings.topics.partitions)

    # Run A: uninterrupted, its own topics and app id.
    a = worker_settings(isolated_kafka_settings, tmp_path / "a", store_url="rocksdb://")
    worker_a = worker_factory(a, "run-a").start()
    worker_a.wait_ready()
    t0 = time.monotonic()
    run_sync(produce(a, a.topics.clickstream, records))
    wait_until_done(worker_a, expect_min_source=len(records))
    # How far A closed: run B is done only once it closed as far (its last worker, restored
    # with every record processed, closes only when its watermark records come round).
    _, clocks_a = worker_a.get_json("/clocks")
    closed_a = {int(p): c["closed_through"] for p, c in clocks_a.items()}
    assert all(isinstance(w, int) for w in closed_a.values()), clocks_a
    worker_a.stop()
    # The worker writes its changelog as record batches itself (stream.app, TableStore):
    # its RocksDB store must record each partition's last changelog offset as Faust's own
    # changelog callback would, or a warm restart replays the whole changelog.
    changelog_ends = run_sync(end_offsets(a, [f"{a.worker.app_id}-user-state-changelog"]))
    assert persisted_offsets(a.worker.data_dir) == {
        tp.partition: end - 1 for tp, end in changelog_ends.items() if end > 0
    }
    demand_a = by_key(window_close(run_sync(read_topic(a, a.topics.demand))))
    churn_a = by_key(window_close(run_sync(read_topic(a, a.topics.churn))))
    total_a = sum(1 for _ in run_sync(read_topic(a, a.topics.demand)))
    report(
        f"restart: run A {len(records)} events -> {len(demand_a)} window-close demand signals "
        f"in {time.monotonic() - t0:.1f} s"
    )
    assert len(demand_a) > 3000

    # Run B: the same events, pre-loaded; killed twice while working.
    b = a.isolated(unique_name("b"), data_dir=tmp_path / "b")
    run_sync(kafka_local.ensure_topics(b))
    run_sync(produce(b, b.topics.clickstream, records))
    t0 = time.monotonic()
    first = worker_factory(b, "run-b1", FAST_REJOIN).start()
    seen = _wait_for_output(first, b.topics.demand, total_a // 4, timeout_s=120)
    first.kill()
    report(f"restart: killed B1 at {seen} demand signals ({time.monotonic() - t0:.1f} s)")

    # Same data dir: RocksDB state survives, the changelog tops it up.
    second = worker_factory(b, "run-b2", FAST_REJOIN).start()
    seen = _wait_for_output(second, b.topics.demand, seen + total_a // 4, timeout_s=120)
    second.kill()
    report(f"restart: killed B2 at {seen} demand signals ({time.monotonic() - t0:.1f} s)")

    # A fresh data dir: state comes from the changelog topic alone. After these crashes
    # faust-streaming often leaves some partitions' committed offsets stuck where the last
    # worker left them although every record gets processed (lag never reaches 0), so "done"
    # is also: /clocks shows each partition's last event time and the outputs are idle.
    shutil.rmtree(b.worker.data_dir)
    third = worker_factory(b, "run-b3", FAST_REJOIN).start()
    wait_until_done(
        third,
        expect_min_source=len(records),
        last_event_ms=last_event_ms,
        closed_through=closed_a,
    )
    # Every held partition shows its clock, also one whose records B2 had all processed.
    _, clocks = third.get_json("/clocks")
    assert {int(p): c["max_event_ms"] for p, c in clocks.items()} == dict(last_event_ms)
    report(
        f"restart: B done ({time.monotonic() - t0:.1f} s), consumer lag at the end "
        f"{third.final_lag}"
    )

    assert not run_sync(read_topic(b, b.topics.dead_letter)), "redelivered events dead-lettered"
    for kind, topic, expected, score in (
        ("demand", b.topics.demand, demand_a, "expected_orders"),
        ("churn", b.topics.churn, churn_a, "churn_probability"),
    ):
        signals_b = window_close(run_sync(read_topic(b, topic)))
        keys_b = {(x["user_id"], x["window_end_ms"]) for x in signals_b}
        assert keys_b == set(expected), (
            kind,
            f"{len(set(expected) - keys_b)} of A's signals missing in B, "
            f"{len(keys_b - set(expected))} in B that A lacks",
        )
        copies: dict[str, set[float]] = {}
        for x in signals_b:
            copies.setdefault(x["signal_id"], set()).add(x[score])
        differing = {sid: v for sid, v in copies.items() if not same_score(max(v), min(v))}
        assert not differing, (kind, len(differing), list(differing.items())[:3])
        a_scores = {x["signal_id"]: x[score] for x in expected.values()}
        mismatched = [
            sid for sid, v in copies.items() if not all(same_score(c, a_scores[sid]) for c in v)
        ]
        assert not mismatched, (
            kind,
            len(mismatched),
            [
                (x["user_id"], x["window_end_ms"], sorted(copies[x["signal_id"]]), x[score])
                for x in expected.values()
                if x["signal_id"] in mismatched[:5]
            ],
        )
        report(
            f"restart: {kind}: {len(signals_b)} window-close signals in B, "
            f"{len(signals_b) - len(keys_b)} duplicates"
        )

    # The online evaluation: the predictions waiting in the killed workers' state came back
    # from the changelog and were settled once; a re-sent outcome repeats its id and figures.
    outcomes_a = {o["outcome_id"]: o for o in _records(a, a.topics.outcomes)}
    outcomes_b = _records(b, b.topics.outcomes)
    assert len(outcomes_a) > 1000
    assert {o["outcome_id"] for o in outcomes_b} == set(outcomes_a)
    for o in outcomes_b:
        want = outcomes_a[o["outcome_id"]]
        assert o["actual"] == want["actual"] and o["on_time"] == want["on_time"], o
        assert same_score(
            o["predicted"]["churn_probability"], want["predicted"]["churn_probability"]
        )
    quality_a = {q["window_end_ms"]: q for q in _records(a, a.topics.quality)}
    assert len(quality_a) >= 4
    quality_b = _wait_for_records(third, b.topics.quality, len(quality_a), timeout_s=60.0)
    assert {q["window_end_ms"] for q in quality_b} == set(quality_a)
    for q in quality_b:
        want = quality_a[q["window_end_ms"]]
        assert q["population"] == want["population"], "an outcome counted twice or lost"
        assert q["churn"]["n_pos"] == want["churn"]["n_pos"]
        assert q["orders"]["sum_actual"] == want["orders"]["sum_actual"]
        assert q["orders"]["mae"] == pytest.approx(want["orders"]["mae"], rel=1e-5)
        assert q["churn"]["roc_auc"] == pytest.approx(want["churn"]["roc_auc"], abs=1e-5)
    report(
        f"restart: {len(outcomes_b)} prediction outcomes in B "
        f"({len(outcomes_b) - len(outcomes_a)} re-sent), {len(quality_b)} model-quality records "
        f"equal to A's"
    )

    # Category demand: the partitions' sums came back from the changelog with their users and
    # no event was counted twice or lost, so B's forecasts are A's (a re-sent one repeats its
    # id and its numbers).
    categories_a = {c["forecast_id"]: c for c in _records(a, a.topics.category_demand)}
    assert len(categories_a) >= 10
    categories_b = _wait_for_records(
        third, b.topics.category_demand, len(categories_a), timeout_s=60.0
    )
    assert {c["forecast_id"] for c in categories_b} == set(categories_a)
    for c in categories_b:
        want = categories_a[c["forecast_id"]]
        assert c["scale"] == pytest.approx(want["scale"], rel=1e-9)
        np.testing.assert_allclose(quantiles_of([c]), quantiles_of([want]), rtol=1e-5, atol=1e-6)
    report(
        f"restart: {len(categories_b)} category forecasts in B "
        f"({len(categories_b) - len(categories_a)} re-sent), equal to A's"
    )


def _records(settings: Settings, topic: str) -> list[dict[str, Any]]:
    return [r.json() for r in run_sync(read_topic(settings, topic))]


def test_redelivered_messages_are_not_counted_twice() -> None:
    """The processor-level half of the restart test (no broker): a new processor on the
    stored state gets the tail of the log again, as Kafka redelivers after a crash."""
    from stream.codec import decode_user
    from stream.processor import DictStore, RawMessage
    from tests.support.processor import (
        assert_same_state,
        make_processor,
        messages,
        run,
        synthetic,
    )

    scorer = load_model(MODEL_DIR)
    msgs = messages(synthetic(seed=5))
    whole_store = DictStore()
    whole = run(make_processor(scorer, whole_store), whole_store, msgs, 64)

    store = DictStore()
    cut = len(msgs) // 2
    first = run(make_processor(scorer, store), store, msgs[:cut], 64)
    rest = run(make_processor(scorer, store), store, msgs[cut - 300 :], 64)  # 300 come again
    assert_same_state(store, whole_store)
    scores = {x.signal_id: x.expected_orders for x in whole if hasattr(x, "expected_orders")}
    again: dict[str, set[float]] = {}
    for x in first + rest:
        if hasattr(x, "expected_orders"):
            again.setdefault(x.signal_id, set()).add(x.expected_orders)
    assert set(again) == set(scores)
    assert all(same_score(c, scores[sid]) for sid, v in again.items() for c in v)

    # A re-keyed copy sent twice (the stray was processed again before its offset was
    # committed) carries the same origin both times and is folded once.
    store = DictStore()
    proc = make_processor(scorer, store)
    value = orjson.dumps({"event_time": 1299000000000, "event_type": "view", "user_id": "u1"})
    home = partition_of(b"u1", 4)
    origin = ((home + 1) % 4, 17)
    out = proc.process([RawMessage(b"u1", value, "routed", home, n, origin) for n in (0, 1)])
    store.apply(out.writes)
    assert out.duplicates == 1
    (window,) = decode_user(store.data["u1"]).state.open.values()
    assert window.counts[0] == 1  # one view


# --------------------------------------------------------------------------------------------
# 4. Model faults stop the worker at start-up
# --------------------------------------------------------------------------------------------


def _no_broker_settings(tmp_path: Path, model_dir: Path) -> Settings:
    # Nothing listens on port 9: a worker that got past the model check would hang connecting,
    # and the test would fail on its timeout rather than pass.
    return Settings.from_flat(
        broker_url="kafka://127.0.0.1:9",
        model_dir=model_dir,
        data_dir=tmp_path / "data",
        web_port=kafka_local.free_port(),
    )


def _flip_a_byte(model_dir: Path) -> None:
    onnx = model_dir / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx.write_bytes(bytes(data))


def _rename_a_feature(model_dir: Path) -> None:
    path = model_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["features"]["names"][0] = "n_page_views"
    path.write_text(json.dumps(manifest, indent=2))


@pytest.mark.parametrize(
    ("fault", "needle"),
    [
        ("empty", "no manifest.json"),
        ("byte_flipped", "sha256"),
        ("feature_names", "feature names"),
    ],
)
def test_a_model_that_does_not_match_stops_the_worker(
    fault: str, needle: str, tmp_path: Path
) -> None:
    model_dir = tmp_path / "model"
    if fault == "empty":
        model_dir.mkdir()
    else:
        shutil.copytree(MODEL_DIR, model_dir)
        {"byte_flipped": _flip_a_byte, "feature_names": _rename_a_feature}[fault](model_dir)
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(FAUST), "-A", "stream.app", "worker", "-l", "info"],
        cwd=REPO_ROOT,
        env=child_environment(_no_broker_settings(tmp_path, model_dir)),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    report(f"model fault {fault}: exit {proc.returncode} after {time.monotonic() - t0:.1f} s")
    assert proc.returncode == 3, (proc.returncode, proc.stderr[-2000:])
    assert "refusing to start" in proc.stderr
    assert needle in proc.stderr, proc.stderr[-2000:]
    assert str(model_dir) in proc.stderr


# --------------------------------------------------------------------------------------------
# 5. No TensorFlow in the worker
# --------------------------------------------------------------------------------------------


def test_importing_the_worker_does_not_import_tensorflow(tmp_path: Path) -> None:
    code = (
        "import stream.app, sys; "
        "heavy = sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx')); "
        "assert not heavy, heavy; print('ok', stream.app.worker.processor().scorer.version)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=child_environment(_no_broker_settings(tmp_path, MODEL_DIR)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok m-"), proc.stdout
