"""The manifest pins the feature contract: it reads back what it wrote, and every way a model's
manifest differs from this code's feature definition is named, all at once."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from features.manifest import Manifest, ManifestError, check_compatible

SHIPPED = Path(__file__).resolve().parents[2] / "onnx_models" / "default" / "manifest.json"


@pytest.fixture
def shipped() -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(SHIPPED.read_bytes())
    return data


def test_the_shipped_manifest_reads_back_what_it_writes_and_matches_this_code(
    shipped: dict[str, Any],
) -> None:
    manifest = Manifest.from_dict(shipped)
    check_compatible(manifest)  # does not raise
    again = Manifest.from_dict(orjson.loads(orjson.dumps(manifest.to_dict())))
    assert again == manifest
    assert manifest.prior is not None  # the shipped model reads the BG/NBD summary


def test_a_model_trained_on_another_feature_definition_is_refused_with_every_difference(
    shipped: dict[str, Any],
) -> None:
    data = copy.deepcopy(shipped)
    names = data["features"]["names"]
    data["features"]["names"] = [*names[:-1], "page_dwell_seconds"]  # one renamed feature
    data["features"]["definition_version"] += 1
    data["features"]["fingerprint"] = "0" * 16
    data["normalisation"]["std"][0] = 0.0
    with pytest.raises(ManifestError) as refused:
        check_compatible(Manifest.from_dict(data))
    message = str(refused.value)
    assert f"missing ['{names[-1]}'], unknown ['page_dwell_seconds']" in message
    assert "feature definition version" in message
    assert "feature fingerprint" in message
    assert "non-positive" in message


def test_features_in_another_order_are_named_as_such(shipped: dict[str, Any]) -> None:
    data = copy.deepcopy(shipped)
    names = data["features"]["names"]
    names[0], names[1] = names[1], names[0]
    with pytest.raises(ManifestError, match="order differs"):
        check_compatible(Manifest.from_dict(data))


def test_a_normalisation_of_another_width_is_refused(shipped: dict[str, Any]) -> None:
    data = copy.deepcopy(shipped)
    data["normalisation"]["mean"] = data["normalisation"]["mean"][:-1]
    with pytest.raises(ManifestError, match="normalisation has"):
        check_compatible(Manifest.from_dict(data))


@pytest.mark.parametrize(
    ("medium", "high", "reason"),
    [
        (0.9, 0.5, "malformed"),  # not a risk scale at all: refused while reading
        (0.5, 1.0, "are not 0 < medium <= high < 1"),  # nobody could ever be high risk
        (0.0, 0.8, "are not 0 < medium <= high < 1"),  # everybody at least medium
    ],
)
def test_risk_thresholds_that_cannot_serve_are_refused(
    shipped: dict[str, Any], medium: float, high: float, reason: str
) -> None:
    data = copy.deepcopy(shipped)
    data["thresholds"] = {"medium": medium, "high": high}
    with pytest.raises(ManifestError, match=reason):
        check_compatible(Manifest.from_dict(data))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda d: d.update(format=2), "manifest format 2, this code reads 1"),
        (lambda d: d.pop("window"), "malformed: KeyError"),
        (lambda d: d["window"].update(seq_len="many"), "malformed: ValueError"),
    ],
)
def test_a_manifest_that_is_not_one_this_code_reads_says_why(
    shipped: dict[str, Any], change: Any, reason: str
) -> None:
    data = copy.deepcopy(shipped)
    change(data)
    with pytest.raises(ManifestError, match=reason):
        Manifest.from_dict(data)
