"""The category demand model in ONNX Runtime: found, checked and served.

Owns :func:`find_category_model` (which of ``model_dir/demand/*/`` is the model of the level's
series, as ``train-and-export --demand LEVEL`` writes it), :func:`load_demand_model` (files
present, sha256 matches the manifest, the manifest matches this code's inputs and outputs,
the ONNX graph has the shapes it promises; any failure is a
:class:`serving.scorer.ModelLoadError` naming what does not match) and :class:`DemandModel`,
which gives the served quantiles (:func:`features.demand.widened`) of a batch in one call.

numpy + onnxruntime only, like :mod:`serving.scorer`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from features.demand import (
    DEMAND_INPUTS,
    DEMAND_OUTPUT,
    FUTURE_FEATURES,
    INPUT_FEATURES,
    DemandManifest,
    SeriesLevel,
    parse_level,
    widened,
)
from features.windows import Float32Array, FloatArray, WindowSpec
from serving.scorer import ModelLoadError, pinned_session

log = logging.getLogger(__name__)

DEMAND_DIR = "demand"
"""Where ``train-and-export --demand`` puts its groups, under the model directory."""


@dataclass
class DemandModel:
    """A demand group's ONNX graph and manifest."""

    manifest: DemandManifest
    session: ort.InferenceSession
    path: Path

    @property
    def version(self) -> str:
        return self.manifest.model_version

    @property
    def level(self) -> SeriesLevel:
        return parse_level(self.manifest.level)

    @property
    def spec(self) -> WindowSpec:
        m = self.manifest
        # The window grid (index, start, end); a series has no lookback, so one window.
        return WindowSpec(m.window_ms, m.origin_ms, m.seq_len, m.horizon, lookback=1)

    def forecast(
        self, sequence: Float32Array, future: Float32Array, scale: FloatArray
    ) -> FloatArray:
        """``[N, horizon, 2, 3]`` served quantiles (widened by the manifest's interval width)."""
        if len(sequence) == 0:
            return np.zeros((0, self.manifest.horizon, 2, 3))
        name_seq, name_future, name_scale = DEMAND_INPUTS
        (raw,) = self.session.run(
            [DEMAND_OUTPUT],
            {
                name_seq: np.asarray(sequence, dtype=np.float32),
                name_future: np.asarray(future, dtype=np.float32),
                name_scale: np.asarray(scale, dtype=np.float32),
            },
        )
        return widened(np.asarray(raw, dtype=np.float64), self.manifest.interval_width)


def find_category_model(model_dir: Path) -> Path | None:
    """The directory under ``model_dir/demand/`` whose manifest's group is its level (the
    level's series, not the dense products); ``None`` when there is none."""
    root = model_dir / DEMAND_DIR
    if not root.is_dir():
        return None
    for manifest in sorted(root.glob("*/manifest.json")):
        try:
            data = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # load_demand_model names the problem if this one is asked for
        if isinstance(data, dict) and data.get("group") == data.get("level"):
            return manifest.parent
    return None


def _check_io(session: ort.InferenceSession, m: DemandManifest) -> list[str]:
    problems: list[str] = []
    inputs = {i.name: list(i.shape) for i in session.get_inputs()}
    want = dict(
        zip(
            DEMAND_INPUTS,
            ([m.seq_len, len(INPUT_FEATURES)], [m.horizon, len(FUTURE_FEATURES)], [2]),
            strict=True,
        )
    )
    for name, dims in want.items():
        shape = inputs.get(name)
        if shape is None:
            problems.append(f"ONNX model has no input {name!r} (has {sorted(inputs)})")
        elif [d if isinstance(d, int) else None for d in shape[1:]] != dims:
            problems.append(f"ONNX input {name!r} shape {shape}, the manifest needs [N, {dims}]")
    outputs = {o.name for o in session.get_outputs()}
    if DEMAND_OUTPUT not in outputs:
        problems.append(f"ONNX model has no output {DEMAND_OUTPUT!r} (has {sorted(outputs)})")
    return problems


def load_demand_model(directory: Path, intra_op_threads: int = 1) -> DemandModel:
    """Load and check ``directory/manifest.json`` and the ONNX file it names."""
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        raise ModelLoadError(f"no manifest.json in demand model directory {directory}")
    try:
        manifest = DemandManifest.from_dict(json.loads(manifest_path.read_text()))
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{manifest_path} is not valid JSON: {exc}") from None
    except ValueError as exc:
        raise ModelLoadError(f"{manifest_path}: {exc}") from None
    onnx_path = directory / manifest.onnx_file
    session = pinned_session(onnx_path, manifest.onnx_sha256, intra_op_threads)
    problems = _check_io(session, manifest)
    if problems:
        raise ModelLoadError(f"{onnx_path}: " + "; ".join(problems))
    log.info(
        "loaded demand model %s (%s) from %s: %d input windows, horizon %d",
        manifest.model_version,
        manifest.level,
        directory,
        manifest.seq_len,
        manifest.horizon,
    )
    return DemandModel(manifest, session, onnx_path)


__all__ = ["DEMAND_DIR", "DemandModel", "find_category_model", "load_demand_model"]
