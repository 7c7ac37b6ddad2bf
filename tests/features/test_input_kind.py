"""``features.input_kind``: the kind of input behind a model, and when a stream contradicts it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from features.input_kind import input_kind_of, is_mismatch, trained_input_kind

REPO = Path(__file__).resolve().parents[2]


def test_browsing_events_make_a_clickstream() -> None:
    assert input_kind_of({"purchase": 10, "return": 1}) == "order_lines"
    assert input_kind_of({"purchase": 10, "view": 0}) == "order_lines"
    assert input_kind_of({"purchase": 10, "view": 3}) == "clickstream"
    assert input_kind_of({"wishlist": 1}) == "clickstream"
    assert input_kind_of({}) == "order_lines"


@pytest.mark.parametrize(
    ("training_data", "kind"),
    [
        (None, None),
        ({}, None),
        ({"input_kind": "clickstream", "ingest": {"format": "transactions"}}, "clickstream"),
        ({"event_types": {"purchase": 5, "cart": 2}}, "clickstream"),
        ({"event_types": {"purchase": 5}}, "order_lines"),
        # Written before the field existed: the ingest format says order lines ...
        ({"ingest": {"format": "transactions", "rows_read": 9}}, "order_lines"),
        # ... the generator always makes clickstream; a canonical file could be either.
        ({"generator": {"users": 10, "days": 7, "seed": 1}}, "clickstream"),
        ({"ingest": {"format": "canonical"}}, None),
    ],
)
def test_trained_kind_from_the_manifest_or_derived(
    training_data: dict[str, object] | None, kind: str | None
) -> None:
    assert trained_input_kind(training_data) == kind


def test_the_shipped_online_retail_model_counts_as_order_lines() -> None:
    manifest = json.loads((REPO / "onnx_models/default/manifest.json").read_text())
    assert trained_input_kind(manifest["training_data"]) == "order_lines"


def test_only_an_order_lines_model_on_browsing_events_is_a_mismatch() -> None:
    assert is_mismatch("order_lines", ["purchase", "view"])
    assert is_mismatch("order_lines", ["remove_from_cart"])
    assert not is_mismatch("order_lines", ["purchase", "return"])
    assert not is_mismatch("clickstream", ["view", "purchase"])
    assert not is_mismatch(None, ["view"])  # unknown: nothing is claimed
