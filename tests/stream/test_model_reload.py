"""Model hot swap without a broker: :class:`stream.model.ModelHolder`.

A "new version" is the shipped model copied to a temporary directory with another
``model_version`` in its manifest (the sha256 covers ``model.onnx`` only, so the manifest may
change freely); broken drops are the start-up faults (hash mismatch, missing files, another
feature definition) plus one only a running worker has: another window grid.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from features.windows import N_FEATURES
from stream.model import ModelHolder, directory_fingerprint
from tests.support.worker_harness import MODEL_DIR


def edit_manifest(model_dir: Path, **changes: Any) -> None:
    """Rewrite the manifest with ``changes`` (nested keys as ``window__length_ms``), by rename
    as a deployment would."""
    path = model_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    for key, value in changes.items():
        node = manifest
        *parents, leaf = key.split("__")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, path)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(MODEL_DIR, target)
    return target


def test_nothing_changed_nothing_happens(model_dir: Path) -> None:
    holder = ModelHolder(model_dir)
    before = holder.scorer
    assert holder.poll().outcome == "unchanged"
    assert holder.scorer is before


def test_a_new_version_is_swapped_in_and_scores_like_its_files(model_dir: Path) -> None:
    holder = ModelHolder(model_dir)
    old = holder.scorer
    edit_manifest(model_dir, model_version="m-next")
    reload = holder.poll()
    assert (reload.outcome, reload.serving, reload.candidate) == ("swapped", "m-next", "m-next")
    assert holder.version == "m-next" and holder.scorer is not old
    spec = old.manifest.spec
    x = np.random.default_rng(0).random((5, spec.seq_len, N_FEATURES)).astype(np.float32)
    np.testing.assert_allclose(
        holder.scorer.score(x).expected_orders, old.score(x).expected_orders, rtol=1e-6
    )
    assert holder.poll().outcome == "unchanged"


@pytest.mark.parametrize(
    ("fault", "needle"),
    [
        ("hash", "sha256"),
        ("onnx_missing", "not found"),
        ("manifest_missing", "no manifest.json"),
        ("manifest_junk", "not valid JSON"),
        ("feature_names", "feature names"),
        ("window_grid", "window spec"),
        ("corrupt_onnx", "sha256"),
    ],
)
def test_a_broken_drop_is_refused_logged_once_and_the_old_model_keeps_serving(
    model_dir: Path, fault: str, needle: str, caplog: pytest.LogCaptureFixture
) -> None:
    holder = ModelHolder(model_dir)
    served = holder.scorer
    if fault == "hash":
        edit_manifest(model_dir, model_version="m-bad", onnx_sha256="0" * 64)
    elif fault == "onnx_missing":
        edit_manifest(model_dir, model_version="m-bad", onnx_file="other.onnx")
    elif fault == "manifest_missing":
        (model_dir / "manifest.json").unlink()
    elif fault == "manifest_junk":
        (model_dir / "manifest.json").write_text("{ not json")
    elif fault == "feature_names":
        names = json.loads((model_dir / "manifest.json").read_text())["features"]["names"]
        edit_manifest(model_dir, model_version="m-bad", features__names=names[::-1])
    elif fault == "window_grid":
        edit_manifest(model_dir, model_version="m-bad", window__length_ms=86_400_000)
    elif fault == "corrupt_onnx":
        data = bytearray((model_dir / "model.onnx").read_bytes())
        data[len(data) // 3] ^= 0xFF
        (model_dir / "model.onnx").write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR, logger="stream.model"):
        reload = holder.poll()
    assert reload.outcome == "failed"
    assert reload.error is not None and needle in reload.error, reload.error
    assert holder.scorer is served and reload.serving == served.version
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and needle in errors[0].getMessage()
    assert served.version in errors[0].getMessage()
    # The same broken content is judged once, not re-logged on every poll.
    caplog.clear()
    assert holder.poll().outcome == "unchanged"
    assert not caplog.records


def test_a_fixed_drop_after_a_broken_one_is_taken(model_dir: Path) -> None:
    holder = ModelHolder(model_dir)
    edit_manifest(model_dir, model_version="m-next", onnx_sha256="0" * 64)
    assert holder.poll().outcome == "failed"
    sha = json.loads((MODEL_DIR / "manifest.json").read_text())["onnx_sha256"]
    edit_manifest(model_dir, onnx_sha256=sha)
    assert holder.poll().outcome == "swapped"
    assert holder.version == "m-next"


def test_rewritten_files_of_the_same_version_are_not_a_swap(model_dir: Path) -> None:
    holder = ModelHolder(model_dir)
    served = holder.scorer
    manifest = json.loads((model_dir / "manifest.json").read_text())
    (model_dir / "manifest.json").write_text(json.dumps(manifest))  # same content, new layout
    assert holder.poll().outcome == "same_version"
    assert holder.scorer is served


def test_the_fingerprint_covers_manifest_and_onnx_files(model_dir: Path) -> None:
    first = directory_fingerprint(model_dir)
    assert directory_fingerprint(model_dir) == first
    (model_dir / "report.md").write_text("not part of the model")
    assert directory_fingerprint(model_dir) == first
    (model_dir / "extra.onnx").write_bytes(b"x")
    second = directory_fingerprint(model_dir)
    assert second != first
    (model_dir / "manifest.json").unlink()
    assert directory_fingerprint(model_dir) not in {first, second}


def test_a_model_retrained_at_a_later_cutoff_takes_over_and_one_off_the_grid_does_not(
    model_dir: Path,
) -> None:
    """A retrained model's window origin is its own cutoff: whole windows later it lays the
    same boundaries on the same state and swaps in; half a window off it could not."""
    holder = ModelHolder(model_dir)
    spec = holder.scorer.manifest.spec
    edit_manifest(
        model_dir, model_version="m-later", window__origin_ms=spec.origin_ms + 4 * spec.length_ms
    )
    assert holder.poll().outcome == "swapped" and holder.version == "m-later"
    edit_manifest(
        model_dir, model_version="m-off", window__origin_ms=spec.origin_ms + spec.length_ms // 2
    )
    reload = holder.poll()
    assert reload.outcome == "failed" and "window spec" in (reload.error or "")
    assert holder.version == "m-later"
