"""The exported model in ONNX Runtime: the only scorer the system has, and its home.

Owns :func:`load_model` (files present, sha256 matches the manifest, manifest matches this
code's feature definition, ONNX inputs/outputs have the shapes the manifest promises — any
failure is a :class:`ModelLoadError` naming what does not match) and :class:`Scorer`, which
normalises raw window sequences with the manifest's stats and scores a batch in one call.

The scorer is the serving artefact that training and the stream both stand on: the worker
(:mod:`stream`) serves it, and ``train-and-export`` (:mod:`training`) scores its own
predictions and verifies its export with it, so both score identically. numpy + onnxruntime
only: TensorFlow is never imported here, and neither is Faust.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from features.forecast import posterior_shape, quantile_forecast
from features.manifest import (
    INPUT_NAME,
    OUTPUT_NAMES,
    SUMMARY_INPUT_NAME,
    Manifest,
    ManifestError,
    check_compatible,
)
from features.summary import N_SUMMARY, summarize
from features.windows import DAY_MS, N_FEATURES, Float32Array, lifetime_summary

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The model directory cannot be served; the message says what does not match."""


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (the manifest pins the ONNX file by it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


MAX_SCORE_ROWS = 1024
"""Rows per ONNX Runtime call (:meth:`Scorer.score` splits larger requests).

Measured on the default model (2 cores): 16,384-row requests scored in chunks of 4,096 peaked
at +175 MiB RSS and ran at 21k rows/s, in chunks of 1,024 at +94 MiB and 26k rows/s (the
intermediate tensors of a chunk stay in cache and ONNX Runtime's arena keeps a smaller peak)."""


@dataclass(frozen=True)
class Scores:
    """One batch's scores. ``expected_orders`` is the served order forecast (the manifest's
    quantile of each customer's predictive distribution, :mod:`features.forecast`, or the mean
    for a model without one); ``mean_orders`` is the model's expectation, ``None`` when that is
    what ``expected_orders`` serves."""

    expected_orders: np.ndarray
    expected_spend: np.ndarray
    churn_probability: np.ndarray
    mean_orders: np.ndarray | None = None

    def means(self) -> np.ndarray:
        """The model's expected orders, whichever forecast is served."""
        return self.expected_orders if self.mean_orders is None else self.mean_orders


class Scorer:
    """A loaded, checked model. ``score`` takes raw (un-normalised) sequences."""

    def __init__(self, manifest: Manifest, session: ort.InferenceSession, path: Path) -> None:
        self.manifest = manifest
        self.session = session
        self.path = path
        self.session_seconds = 0.0
        """Wall time spent in ``session.run`` so far: ONNX Runtime's own share of
        :meth:`score`, besides the inputs' features and the served forecast."""

    @property
    def version(self) -> str:
        return self.manifest.model_version

    def feeds(self, raw: Float32Array) -> dict[str, Float32Array]:
        """The ONNX inputs for raw sequences: the normalised sequence, and the summary when the
        model has a prior (it reads the raw sequence's last vector, exactly as training did)."""
        feeds = {INPUT_NAME: self.manifest.norm.apply(raw)}
        prior = self.manifest.prior
        if prior is not None:
            feeds[SUMMARY_INPUT_NAME] = summarize(raw, prior, self.manifest.spec)
        return feeds

    def score(self, raw: Float32Array) -> Scores:
        if raw.shape[0] == 0:
            empty = np.zeros(0, dtype=np.float32)
            return Scores(empty, empty, empty)
        if raw.shape[0] > MAX_SCORE_ROWS:
            # A burst of window closes (every user of several partitions, several windows)
            # must not size ONNX Runtime's memory arena, which keeps its peak for good.
            parts = [
                self.score(raw[i : i + MAX_SCORE_ROWS])
                for i in range(0, raw.shape[0], MAX_SCORE_ROWS)
            ]
            means = [p.means() for p in parts]
            return Scores(
                np.concatenate([p.expected_orders for p in parts]),
                np.concatenate([p.expected_spend for p in parts]),
                np.concatenate([p.churn_probability for p in parts]),
                None if self.manifest.orders_level is None else np.concatenate(means),
            )
        feeds = self.feeds(raw)
        started = time.perf_counter()
        outputs = self.session.run(list(OUTPUT_NAMES), feeds)
        self.session_seconds += time.perf_counter() - started
        mean, spend, churn = (np.asarray(o, dtype=np.float32).reshape(-1) for o in outputs)
        return served(self.manifest, mean, spend, churn, raw[:, -1, :])


def orders_shape(manifest: Manifest, last: np.ndarray | None) -> np.ndarray | None:
    """The NB shape of each row's served forecast (``None``: the ZIP's), from the rows' raw
    last window vectors: the prior's ``r`` plus the customer's repeat order days."""
    if manifest.orders_kind != "zinb_quantile":
        return None
    if manifest.prior is None or last is None:
        raise ValueError("a zinb_quantile forecast needs the prior and the rows' last vectors")
    repeat_days = lifetime_summary(np.asarray(last, dtype=np.float64))[0]
    return posterior_shape(manifest.prior.customer_base.r, repeat_days)


def served(
    manifest: Manifest,
    mean: np.ndarray,
    spend: np.ndarray,
    churn: np.ndarray,
    last: np.ndarray | None = None,
) -> Scores:
    """What a model serves from its graph's raw outputs: the manifest's churn recalibration,
    then its order forecast (each element on its own, so any batching gives the same).
    ``last`` is each row's raw last window vector, which a ``zinb_quantile`` forecast reads
    for the customer's shape."""
    calibration = manifest.churn_calibration
    if calibration is not None:
        churn = calibration.apply(churn, mean).astype(np.float32)
    level = manifest.orders_level
    if level is None:
        return Scores(mean, spend, churn)
    shape = orders_shape(manifest, last)
    point = quantile_forecast(mean, churn, level, shape).astype(np.float32)
    return Scores(point, spend, churn, mean)


def _check_io(session: ort.InferenceSession, manifest: Manifest) -> list[str]:
    problems: list[str] = []
    inputs = {i.name: i for i in session.get_inputs()}
    if INPUT_NAME not in inputs:
        problems.append(f"ONNX model has no input {INPUT_NAME!r} (has {sorted(inputs)})")
    else:
        shape = list(inputs[INPUT_NAME].shape)
        want = [manifest.spec.seq_len, N_FEATURES]
        if len(shape) != 3 or [d if isinstance(d, int) else None for d in shape[1:]] != want:
            problems.append(f"ONNX input shape {shape}, manifest/features need [batch, {want}]")
    if manifest.prior is not None:
        if SUMMARY_INPUT_NAME not in inputs:
            problems.append(
                f"manifest has a prior but the ONNX model has no input {SUMMARY_INPUT_NAME!r}"
            )
        else:
            shape = list(inputs[SUMMARY_INPUT_NAME].shape)
            if len(shape) != 2 or shape[1] != N_SUMMARY:
                problems.append(f"ONNX summary input shape {shape}, need [batch, {N_SUMMARY}]")
    elif SUMMARY_INPUT_NAME in inputs:
        problems.append(
            f"ONNX model takes a {SUMMARY_INPUT_NAME!r} input but the manifest has no prior"
        )
    outputs = {o.name for o in session.get_outputs()}
    missing = [n for n in OUTPUT_NAMES if n not in outputs]
    if missing:
        problems.append(f"ONNX model lacks outputs {missing} (has {sorted(outputs)})")
    return problems


def pinned_session(onnx_path: Path, sha256: str, intra_op_threads: int = 1) -> ort.InferenceSession:
    """An ONNX Runtime session of ``onnx_path``, whose bytes must hash to ``sha256`` (the
    manifest's pin); a missing, changed or unloadable file is a :class:`ModelLoadError`."""
    if not onnx_path.is_file():
        raise ModelLoadError(f"manifest names {onnx_path.name}, not found in {onnx_path.parent}")
    try:
        actual = sha256_file(onnx_path)
    except OSError as exc:  # removed or replaced since the check above
        raise ModelLoadError(f"{onnx_path} cannot be read: {exc}") from None
    if actual != sha256:
        raise ModelLoadError(
            f"{onnx_path} sha256 {actual[:16]}… does not match the manifest's "
            f"{sha256[:16]}…: the file was changed or belongs to another model"
        )
    options = ort.SessionOptions()
    # One intra-op thread by default: the worker's event loop shares the core, and micro-
    # batches are small enough that more threads mostly add synchronisation.
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(
            str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own opaque types for corrupt files
        raise ModelLoadError(f"{onnx_path} cannot be loaded by ONNX Runtime: {exc}") from None


def load_model(model_dir: Path, intra_op_threads: int = 1) -> Scorer:
    """Load and check ``model_dir/manifest.json`` and the ONNX file it names."""
    manifest_path = model_dir / "manifest.json"
    if not manifest_path.is_file():
        raise ModelLoadError(f"no manifest.json in model directory {model_dir}")
    try:
        manifest = Manifest.from_dict(json.loads(manifest_path.read_text()))
        check_compatible(manifest)
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{manifest_path} is not valid JSON: {exc}") from None
    except OSError as exc:  # removed or replaced since the check above (a promotion, a deploy)
        raise ModelLoadError(f"{manifest_path} cannot be read: {exc}") from None
    except ManifestError as exc:
        raise ModelLoadError(f"{manifest_path}: {exc}") from None
    onnx_path = model_dir / manifest.onnx_file
    session = pinned_session(onnx_path, manifest.onnx_sha256, intra_op_threads)
    problems = _check_io(session, manifest)
    if problems:
        raise ModelLoadError(f"{onnx_path}: " + "; ".join(problems))
    log.info(
        "loaded model %s from %s (seq_len=%d, window=%.1fd, horizon=%d)",
        manifest.model_version,
        model_dir,
        manifest.spec.seq_len,
        manifest.spec.length_ms / DAY_MS,
        manifest.spec.horizon,
    )
    return Scorer(manifest, session, onnx_path)


__all__ = [
    "ModelLoadError",
    "Scorer",
    "Scores",
    "load_model",
    "orders_shape",
    "pinned_session",
    "served",
    "sha256_file",
]
