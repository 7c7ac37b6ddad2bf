"""The processor without Kafka: a processor over a dict store, messages from event frames,
runs in micro-batches and synthetic populations. Shared by the processor and worker tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from features.validation import ValidationPolicy
from features.windows import DAY_MS
from ingest.adapters import to_wire_bytes
from stream.processor import DictStore, Processor, RawMessage
from stream.publish import partition_of

MODEL_DIR = Path(__file__).resolve().parents[2] / "onnx_models" / "default"


PARTITIONS = 4


WEEK = 7 * DAY_MS


def make_processor(scorer, store: DictStore | None = None, lateness_ms: int = 0) -> Processor:  # type: ignore[no-untyped-def]
    return Processor(
        scorer,
        store if store is not None else DictStore(),
        partitions=PARTITIONS,
        policy=ValidationPolicy(),
        allowed_lateness_ms=lateness_ms,
        fresh_interval_ms=10**15,  # window-close signals only, unless a test asks
        routed_topics=frozenset({"routed"}),
        clock=lambda: 1_900_000_000_000,
    )


def messages(frame: pd.DataFrame) -> list[RawMessage]:
    """Keyed by user as a well-behaved producer would, offsets per partition."""
    offsets = [0] * PARTITIONS
    out = []
    for key, value in to_wire_bytes(frame):
        p = partition_of(key, PARTITIONS)
        out.append(RawMessage(key, value, "clickstream", p, offsets[p]))
        offsets[p] += 1
    return out


def run(proc: Processor, store: DictStore, msgs: list[RawMessage], batch: int) -> list:  # type: ignore[type-arg]
    signals = []
    for lo in range(0, len(msgs), batch):
        out = proc.process(msgs[lo : lo + batch])
        store.apply(out.writes)
        signals.extend(out.demand)
        signals.extend(out.churn)
    return signals


def synthetic(seed: int = 0, users: int = 60, weeks: int = 30) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = 4000
    start = int(pd.Timestamp("2011-01-03", tz="UTC").value // 1_000_000)
    times = np.sort(rng.integers(0, weeks * WEEK, n)) + start
    kinds = rng.choice(["view", "cart", "purchase", "return"], n, p=[0.5, 0.2, 0.25, 0.05])
    return pd.DataFrame(
        {
            "event_time_ms": times,
            "event_type": kinds,
            "user_id": [f"user-{u}" for u in rng.integers(0, users, n)],
            "product_id": [f"p{x}" for x in rng.integers(0, 90, n)],
            "category": None,
            "brand": None,
            "price": rng.lognormal(1.5, 0.8, n).round(2),
            "quantity": rng.integers(1, 6, n),
            "session_id": None,
            "order_id": [f"o{x}" for x in rng.integers(0, 900, n)],
        }
    )
