"""Model variants for tests of model handling: a copy under another version, and one whose
weights are shuffled (a model that loads and scores, and predicts badly)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np


def _write_manifest(model_dir: Path, **changes: object) -> None:
    path = model_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, path)


def shuffled_variant(source: Path, target: Path, version: str, seed: int = 0) -> Path:
    """``source`` with every float weight tensor of its ONNX graph permuted (same shapes, same
    values, wrong places), under ``version``: what "a candidate with shuffled weights" means."""
    import onnx
    from onnx import numpy_helper

    from serving.scorer import sha256_file

    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    onnx_path = target / manifest.get("onnx_file", "model.onnx")
    model = onnx.load(str(onnx_path))
    rng = np.random.default_rng(seed)
    for init in model.graph.initializer:
        values = numpy_helper.to_array(init)
        if values.dtype.kind == "f" and values.size > 1:
            shuffled = rng.permutation(values.reshape(-1)).reshape(values.shape)
            init.CopyFrom(numpy_helper.from_array(shuffled.astype(values.dtype), init.name))
    onnx.save(model, str(onnx_path))
    _write_manifest(target, model_version=version, onnx_sha256=sha256_file(onnx_path))
    return target
