"""What kind of input a model was trained on, and whether a live stream is of another kind.

A model trained on order lines only (a transactions export: purchases and returns, no views or
carts) has never seen a browsing feature move; scoring clickstream with it gives scores that
look valid and mean little (issue 20: near-constant churn on the demo's traffic). This module
owns the two pure decisions around that:

* :func:`input_kind_of` -- the kind of a training set from its event-type counts
  (``training/cli.py`` writes it to the manifest as ``training_data.input_kind``);
* :func:`trained_input_kind` -- the kind a manifest says, or derives for manifests written
  before the field existed (``None``: unknown, and then nothing is claimed);
* :func:`is_mismatch` -- whether event types seen live contradict that kind.

The worker's side (one WARNING per model version, a metric, ``/health``) is
:mod:`stream.input_check`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal

from features.events import CART, REMOVE_FROM_CART, VIEW, WISHLIST

InputKind = Literal["order_lines", "clickstream"]

ORDER_LINES: Final = "order_lines"
CLICKSTREAM: Final = "clickstream"
BROWSING_TYPES: Final = frozenset({VIEW, CART, REMOVE_FROM_CART, WISHLIST})
"""Event types only a clickstream has; an order-lines export never produces them."""
ORDER_LINE_FORMATS: Final = frozenset({"transactions"})
"""Ingest formats that carry order lines only (``ingest.adapters.read_transactions``)."""


def input_kind_of(event_type_counts: Mapping[str, int]) -> InputKind:
    """``clickstream`` if any browsing event (view, cart, removal, wishlist) is present."""
    if any(event_type_counts.get(t, 0) > 0 for t in BROWSING_TYPES):
        return CLICKSTREAM
    return ORDER_LINES


def trained_input_kind(training_data: Mapping[str, Any] | None) -> InputKind | None:
    """The kind of input behind a manifest's ``training_data`` block; ``None`` if unknown.

    ``input_kind`` when present; else derived: event-type counts if recorded, an order-lines
    ingest format, or the seeded generator (which always makes clickstream). Any other
    manifest (e.g. a canonical file of unknown content) is unknown: no warning is claimed.
    """
    if not training_data:
        return None
    kind = training_data.get("input_kind")
    if kind in (ORDER_LINES, CLICKSTREAM):
        return kind  # type: ignore[no-any-return]  # narrowed to the Literal by the check
    counts = training_data.get("event_types")
    if isinstance(counts, Mapping) and counts:
        return input_kind_of({str(k): int(v) for k, v in counts.items()})
    ingest = training_data.get("ingest")
    if isinstance(ingest, Mapping) and ingest.get("format") in ORDER_LINE_FORMATS:
        return ORDER_LINES
    if "generator" in training_data:
        return CLICKSTREAM
    return None


def is_mismatch(trained: InputKind | None, seen_types: Iterable[str]) -> bool:
    """True when an order-lines model sees browsing events (the case worth a warning).

    The reverse (a clickstream model on an order-lines stream) is not flagged: the browsing
    features are then zero, which a clickstream model has seen for buyers who never browsed.
    """
    return trained == ORDER_LINES and any(t in BROWSING_TYPES for t in seen_types)


__all__ = [
    "BROWSING_TYPES",
    "CLICKSTREAM",
    "ORDER_LINES",
    "InputKind",
    "input_kind_of",
    "is_mismatch",
    "trained_input_kind",
]
