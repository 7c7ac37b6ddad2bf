"""The category demand model: found under the model directory, checked, and refused with a
reason that names what does not match; the worker takes it only on the user model's windows.

Shapes named: the shipped default (a stock-code family model beside a dense-products one), a
model directory without demand models, a changed ONNX file, a manifest of inputs this code does
not compute, and a category model on another window grid than the user model's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from serving.demand import find_category_model, load_demand_model
from serving.scorer import ModelLoadError, load_model
from settings import Settings
from stream.worker import StartupError, category_model
from tests.support.processor import MODEL_DIR


def copy_model(tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(MODEL_DIR, target)
    return target


def test_the_shipped_default_has_a_family_model_found_beside_the_dense_products() -> None:
    directory = find_category_model(MODEL_DIR)
    assert directory is not None and directory.name == "family3"
    model = load_demand_model(directory)
    assert str(model.level) == "family:3" and model.manifest.group == "family:3"
    m = model.manifest
    q = model.forecast(
        np.zeros((2, m.seq_len, 7), np.float32),
        np.zeros((2, m.horizon, 2), np.float32),
        np.array([[0.0, 0.0], [10.0, 25.0]]),
    )
    assert q.shape == (2, m.horizon, 2, 3)
    assert not q[0].any() and (np.diff(q[1], axis=-1) >= 0).all()


def test_a_model_directory_without_demand_models_has_no_category_model(tmp_path: Path) -> None:
    assert find_category_model(tmp_path) is None
    (tmp_path / "demand" / "x").mkdir(parents=True)
    (tmp_path / "demand" / "x" / "manifest.json").write_text("{broken")
    assert find_category_model(tmp_path) is None


def test_a_changed_onnx_file_or_foreign_inputs_are_refused_by_name(tmp_path: Path) -> None:
    directory = find_category_model(copy_model(tmp_path))
    assert directory is not None
    manifest = json.loads((directory / "manifest.json").read_text())
    with open(directory / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelLoadError, match="does not match the manifest"):
        load_demand_model(directory)
    manifest["inputs"]["sequence"][0] = "clicks"
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="sequence inputs"):
        load_demand_model(directory)


def test_the_worker_takes_a_category_model_only_on_the_user_model_s_windows(
    tmp_path: Path,
) -> None:
    model_dir = copy_model(tmp_path)
    scorer = load_model(model_dir)
    settings = Settings.from_flat(model_dir=model_dir)
    got = category_model(settings, scorer)
    assert got is not None and got.version.startswith("d-")
    assert category_model(settings.with_overrides(category_demand=False), scorer) is None
    directory = find_category_model(model_dir)
    assert directory is not None
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["window"]["origin_ms"] += 86_400_000  # a day off the user model's grid
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StartupError, match="are not the user model's") as exc:
        category_model(settings, scorer)
    assert exc.value.exit_code == 3
    assert "CLICKSIGNALS_CATEGORY_DEMAND=false" in str(exc.value)
