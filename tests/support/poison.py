"""The poison-message scenario: a clickstream, one poisoned user, and a scorer that fails for
that user's sequence only. Shared by ``tests/stream/test_poison.py`` and ``bench/isolation.py``
(which measures what isolating the poisoned message costs a batch)."""

from __future__ import annotations

import numpy as np
import orjson

from ingest.adapters import to_wire_bytes
from ingest.generator import generate_clickstream
from serving.scorer import Scorer, Scores
from stream.processor import DictStore, RawMessage
from stream.publish import partition_of
from tests.support.hostile import PARTITIONS, make_processor
from tests.support.worker_harness import MODEL_DIR


def keyed_messages(pairs: list[tuple[bytes, bytes]], start: list[int]) -> list[RawMessage]:
    """Messages keyed by user as a well-behaved producer sends them; ``start`` holds the next
    offset per partition and is advanced."""
    out = []
    for key, value in pairs:
        p = partition_of(key, PARTITIONS)
        out.append(RawMessage(key, value, "clickstream", p, start[p]))
        start[p] += 1
    return out


STREAM = to_wire_bytes(generate_clickstream(n_users=150, days=120, seed=11))
POISON_USER = "poison-user"
# A purchase nobody else makes: the scorer below recognises the user's sequence by it.
POISON_EVENT = orjson.dumps(
    {
        "event_time": orjson.loads(STREAM[2899][1])["event_time"],
        "event_type": "purchase",
        "user_id": POISON_USER,
        "price": 12_345.67,
        "quantity": 7,
        "order_id": "poison-order",
    }
)


class FaultyScorer:
    """The real scorer, raising when a batch holds the poison user's first sequence."""

    def __init__(self, inner: Scorer, poison: np.ndarray) -> None:
        self.inner = inner
        self.poison = poison
        self.manifest = inner.manifest
        self.version = inner.version
        self.calls = 0

    @property
    def session_seconds(self) -> float:
        return self.inner.session_seconds

    def score(self, raw: np.ndarray) -> Scores:
        self.calls += 1
        if any(np.array_equal(row, self.poison) for row in raw):
            raise FloatingPointError("scorer fault for one user's sequence")
        return self.inner.score(raw)


def poison_sequence(scorer: Scorer) -> np.ndarray:
    """The sequence the processor asks to score for the poison user's first event."""
    seen: list[np.ndarray] = []

    class Capture:
        manifest, version = scorer.manifest, scorer.version
        session_seconds = 0.0

        def score(self, raw: np.ndarray) -> Scores:
            seen.extend(raw)
            return scorer.score(raw)

    proc = make_processor(Capture(), DictStore())
    proc.process(keyed_messages([(POISON_USER.encode(), POISON_EVENT)], [0] * PARTITIONS))
    assert len(seen) == 1
    return seen[0]


__all__ = [
    "MODEL_DIR",
    "PARTITIONS",
    "POISON_EVENT",
    "POISON_USER",
    "STREAM",
    "FaultyScorer",
    "keyed_messages",
    "make_processor",
    "poison_sequence",
]
