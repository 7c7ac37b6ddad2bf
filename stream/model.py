"""The worker's model in service and its hot swap (the scorer itself is :mod:`serving.scorer`).

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

from serving.scorer import ModelLoadError, Scorer, load_model, sha256_file

log = logging.getLogger(__name__)


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
