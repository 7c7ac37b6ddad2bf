"""``clicksignals export-events``: the clickstream topic back as a canonical file to retrain on
(issue 15, retraining from the stream). A generated shop with hostile records among its events
goes to Kafka; the export holds exactly the shop's events, the hostile ones counted by the
worker's dead-letter reasons, and the DuckDB engine builds from it the window features the
batch path builds from the original frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.windows import DAY_MS, WindowSpec
from ingest.adapters import read_events, to_wire_bytes
from ingest.generator import generate_clickstream
from ops.export_events import export_events
from settings import Settings
from tests.support.worker_harness import produce, run_sync

pytestmark = pytest.mark.kafka

HOSTILE = [
    (b"u-x", b"not json"),
    (b"u-x", b'{"event_time": 1704067200000, "event_type": "teleport", "user_id": "u-x"}'),
    (b"u-x", b'{"event_type": "view", "user_id": "u-x"}'),
]


def _canonical(frame: pd.DataFrame) -> pd.DataFrame:
    cols = ["event_time_ms", "event_type", "user_id", "product_id", "price", "quantity"]
    out = frame[cols].astype({"user_id": str, "product_id": str, "event_type": str})
    return out.sort_values(cols[:4], kind="stable").reset_index(drop=True)


def test_the_exported_topic_trains_on_the_features_of_the_original_events(
    isolated_kafka_settings: Settings, tmp_path: Path
) -> None:
    from training.dataset import build_tensor, first_window, to_event_arrays
    from training.outofcore import open_events

    s = isolated_kafka_settings
    frame = generate_clickstream(400, "2024-01-01", 35, seed=3)
    records = to_wire_bytes(frame)
    run_sync(produce(s, s.topics.clickstream, records[:500] + HOSTILE + records[500:]))
    now_ms = int(pd.Timestamp("2024-03-01", tz="UTC").value // 1_000_000)

    csv = tmp_path / "clickstream.csv.gz"
    summary = export_events(s, csv, now_ms=now_ms)
    assert summary.records == len(records) + len(HOSTILE)
    assert summary.events == len(records)
    assert summary.refused == {"not_json": 1, "unknown_event_type": 1, "missing_field": 1}
    exported = read_events(csv, "canonical").events
    pd.testing.assert_frame_equal(_canonical(exported), _canonical(frame), check_dtype=False)

    parquet = tmp_path / "clickstream.parquet"
    assert export_events(s, parquet, now_ms=now_ms).events == len(records)
    spec = WindowSpec(7 * DAY_MS, int(frame.event_time_ms.min()) // DAY_MS * DAY_MS, 4, 1, 4)
    arrays, user_ids = to_event_arrays(read_events(csv, "canonical").events)
    first = first_window(arrays, spec)
    last = spec.index(int(arrays.time_ms.max())) - 1
    expected = build_tensor(arrays, spec, last)
    with open_events([parquet]) as store:
        got, got_ids = store.window_tensor(spec, first, last)
    assert sorted(got_ids.tolist()) == sorted(user_ids.tolist())
    order = {u: i for i, u in enumerate(got_ids.tolist())}
    rows = [order[u] for u in user_ids.tolist()]
    # Sums (spend) in another order: float32 features to 1e-6; everything else exactly.
    np.testing.assert_allclose(got.features[rows], expected.features, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(got.orders[rows], expected.orders)
    assert expected.orders.sum() > 0
