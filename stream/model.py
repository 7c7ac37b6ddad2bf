"""Loading and running the exported model with ONNX Runtime: the only scorer the system has.

Owns :func:`load_model` (files present, sha256 matches the manifest, manifest matches this
code's feature definition, ONNX inputs/outputs have the shapes the manifest promises — any
failure is a :class:`ModelLoadError` naming what does not match) and :class:`Scorer`, which
normalises raw window sequences with the manifest's stats and scores a batch in one call.
Used by the worker and by offline prediction, so both score identically. numpy +
onnxruntime only: TensorFlow is never imported here.

:class:`ModelHolder` is the hot swap: it holds the model in service and, polled, checks
whether the model directory changed (:func:`directory_fingerprint`: manifest and ONNX files
hashed) and, if so, loads the new files with every check of :func:`load_model` plus "same
window grid as the served model". Only a model passing all of them replaces the served one;
otherwise the reason is logged and the old model keeps serving. To deploy a new version,
write its ``model.onnx`` (or a new file the manifest names) first and replace
``manifest.json`` last, each by rename: a poll between the two sees a sha256 mismatch,
refuses it, and takes the complete pair on the next poll.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from features.manifest import (
    INPUT_NAME,
    OUTPUT_NAMES,
    SUMMARY_INPUT_NAME,
    Manifest,
    ManifestError,
    check_compatible,
)
from features.summary import N_SUMMARY, summarize
from features.windows import DAY_MS, N_FEATURES, Float32Array

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
    expected_orders: np.ndarray
    expected_spend: np.ndarray
    churn_probability: np.ndarray


class Scorer:
    """A loaded, checked model. ``score`` takes raw (un-normalised) sequences."""

    def __init__(self, manifest: Manifest, session: ort.InferenceSession, path: Path) -> None:
        self.manifest = manifest
        self.session = session
        self.path = path

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
            return Scores(
                np.concatenate([p.expected_orders for p in parts]),
                np.concatenate([p.expected_spend for p in parts]),
                np.concatenate([p.churn_probability for p in parts]),
            )
        outputs = self.session.run(list(OUTPUT_NAMES), self.feeds(raw))
        orders, spend, churn = (np.asarray(o, dtype=np.float32).reshape(-1) for o in outputs)
        return Scores(orders, spend, churn)


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
    except ManifestError as exc:
        raise ModelLoadError(f"{manifest_path}: {exc}") from None
    onnx_path = model_dir / manifest.onnx_file
    if not onnx_path.is_file():
        raise ModelLoadError(f"manifest names {manifest.onnx_file}, not found in {model_dir}")
    actual = sha256_file(onnx_path)
    if actual != manifest.onnx_sha256:
        raise ModelLoadError(
            f"{onnx_path} sha256 {actual[:16]}… does not match the manifest's "
            f"{manifest.onnx_sha256[:16]}…: the file was changed or belongs to another model"
        )
    options = ort.SessionOptions()
    # One intra-op thread by default: the worker's event loop shares the core, and micro-
    # batches are small enough that more threads mostly add synchronisation.
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(
            str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own opaque types for corrupt files
        raise ModelLoadError(f"{onnx_path} cannot be loaded by ONNX Runtime: {exc}") from None
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


# --------------------------------------------------------------------------------------------
# Hot swap: a new model version dropped into the model directory while the worker runs
# --------------------------------------------------------------------------------------------


def directory_fingerprint(model_dir: Path) -> str:
    """A digest of what the worker would load from ``model_dir``: ``manifest.json`` and every
    ``*.onnx`` file. Any rewrite of either (a new version, or someone editing the served files
    in place) changes it; an unreadable or missing file is part of the digest, not an error.
    """
    digest = hashlib.sha256()
    paths = [model_dir / "manifest.json", *sorted(model_dir.glob("*.onnx"))]
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        try:
            digest.update(sha256_file(path).encode())
        except OSError as exc:
            digest.update(f"unreadable: {type(exc).__name__}".encode())
        digest.update(b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class Reload:
    """What one :meth:`ModelHolder.poll` did."""

    outcome: str
    """``unchanged`` (nothing new on disk, or a change already judged), ``swapped`` (a new
    version now serves), ``same_version`` (files changed, same model version: nothing to
    switch), or ``failed`` (the new files do not pass the checks; the old model keeps serving)."""
    serving: str
    """The model version serving after the poll."""
    candidate: str | None = None
    """The version found on disk, when the manifest could be read."""
    error: str | None = None


class ModelHolder:
    """The model in service, and the check-and-swap of a new version found in its directory.

    :meth:`poll` is blocking (hashing, ONNX Runtime session creation) and meant for a worker
    thread; it only ever replaces :attr:`scorer` with a model that passed every check of
    :func:`load_model` *and* keeps the served window grid (the table's per-user state is built
    on it, so a model with another window length, origin or sequence length cannot take over
    without rebuilding the state). A failed candidate is logged once per distinct content and
    never retried until the directory changes again, so a broken drop does not flood the log.
    Callers pick up :attr:`scorer` between micro-batches.
    """

    def __init__(
        self,
        model_dir: Path,
        intra_op_threads: int = 1,
        scorer: Scorer | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.intra_op_threads = intra_op_threads
        # The fingerprint is taken before loading: a change racing the first load is seen by
        # the next poll instead of being mistaken for what was loaded.
        self._seen = directory_fingerprint(self.model_dir)
        self.scorer = scorer if scorer is not None else load_model(model_dir, intra_op_threads)

    @property
    def version(self) -> str:
        return self.scorer.version

    def poll(self) -> Reload:
        """Look at the directory once; swap when it holds a new, valid, compatible version."""
        serving = self.scorer.version
        fingerprint = directory_fingerprint(self.model_dir)
        if fingerprint == self._seen:
            return Reload("unchanged", serving)
        self._seen = fingerprint
        try:
            candidate = load_model(self.model_dir, self.intra_op_threads)
        except ModelLoadError as exc:
            log.error(
                "new model in %s rejected, still serving %s: %s", self.model_dir, serving, exc
            )
            return Reload("failed", serving, _manifest_version(self.model_dir), str(exc))
        if candidate.manifest.spec != self.scorer.manifest.spec:
            error = (
                f"window spec {candidate.manifest.spec} differs from the served "
                f"{self.scorer.manifest.spec}; the stored state needs a rebuild for it"
            )
            log.error(
                "new model %s in %s rejected, still serving %s: %s",
                candidate.version,
                self.model_dir,
                serving,
                error,
            )
            return Reload("failed", serving, candidate.version, error)
        if candidate.version == serving:
            log.info("model files in %s changed, version %s unchanged", self.model_dir, serving)
            return Reload("same_version", serving, candidate.version)
        self.scorer = candidate
        log.warning("model swapped: %s -> %s (from %s)", serving, candidate.version, self.model_dir)
        return Reload("swapped", candidate.version, candidate.version)


def _manifest_version(model_dir: Path) -> str | None:
    """The ``model_version`` a manifest claims, for messages about a rejected one."""
    try:
        version = json.loads((model_dir / "manifest.json").read_text()).get("model_version")
    except (OSError, ValueError, AttributeError):
        return None
    return str(version) if version is not None else None
