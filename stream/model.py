"""The worker's model in service and its hot swap (the scorer itself is :mod:`serving.scorer`).

:class:`ModelHolder` is the hot swap: it holds the model in service and, polled, checks
whether the model directory changed (:func:`directory_fingerprint`: manifest and ONNX files
hashed) and, if so, loads the new files with every check of :func:`load_model` plus "same
window grid as the served model". Only a model passing all of them replaces the served one;
otherwise the reason is logged and the old model keeps serving. To deploy a new version,
write its ``model.onnx`` (or a new file the manifest names) first and replace
``manifest.json`` last, each by rename: a poll between the two sees a sha256 mismatch,
refuses it, and takes the complete pair on the next poll.

:class:`ShadowHolder` holds a candidate dropped into ``<model_dir>/candidate/``: scored next to
the serving model for the online evaluation only (issue 15's shadow models).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
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
    try:
        onnx_files = sorted(model_dir.glob("*.onnx"))
    except OSError as exc:
        # The directory went away while it was listed: a promotion removes the candidate
        # directory while the model timer may be polling it (a CI run crashed the worker so).
        onnx_files = []
        digest.update(f"unlistable: {type(exc).__name__}\0".encode())
    paths = [model_dir / "manifest.json", *onnx_files]
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
        if not self.scorer.manifest.spec.same_grid(candidate.manifest.spec):
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


CANDIDATE_DIR = "candidate"
"""Where a shadow model is dropped: ``<model_dir>/candidate/`` (manifest and ONNX file)."""


class ShadowHolder:
    """The shadow model: whatever valid candidate sits in ``<model_dir>/candidate/``.

    Polled like :class:`ModelHolder` (blocking, for a worker thread). A candidate must pass
    every check of :func:`load_model`, keep the served window grid (it is scored on the same
    per-user state) and be another version than the one serving; otherwise it is refused with
    the reason, once per distinct content. An emptied or removed directory ends the shadow.
    """

    def __init__(self, model_dir: Path, intra_op_threads: int = 1) -> None:
        self.dir = Path(model_dir) / CANDIDATE_DIR
        self.intra_op_threads = intra_op_threads
        self.scorer: Scorer | None = None
        self._seen: str | None = None

    def release(self) -> None:
        """Forget the shadow (promoted): the next poll looks at the directory afresh."""
        self.scorer, self._seen = None, None

    def poll(self, serving: Scorer) -> Reload:
        """Look once; ``swapped``: a new shadow (or none any more), else as ModelHolder."""
        current = self.scorer.version if self.scorer is not None else "none"
        if self.scorer is not None and self.scorer.version == serving.version:
            # Promoted (or deployed) meanwhile: it serves now, there is nothing to shadow.
            self.scorer, self._seen = None, None
            return Reload("swapped", "none")
        if not (self.dir / "manifest.json").is_file():
            if self.scorer is None:
                return Reload("unchanged", current)
            log.warning("shadow model %s removed", current)
            self.scorer, self._seen = None, None
            return Reload("swapped", "none")
        fingerprint = directory_fingerprint(self.dir)
        if fingerprint == self._seen and (
            self.scorer is None or serving.manifest.spec.same_grid(self.scorer.manifest.spec)
        ):
            return Reload("unchanged", current)
        self._seen = fingerprint
        try:
            candidate = load_model(self.dir, self.intra_op_threads)
        except ModelLoadError as exc:
            log.error("shadow model in %s rejected: %s", self.dir, exc)
            self.scorer = None
            return Reload("failed", "none", _manifest_version(self.dir), str(exc))
        error = None
        if not serving.manifest.spec.same_grid(candidate.manifest.spec):
            error = f"window spec {candidate.manifest.spec} differs from the served one"
        elif candidate.version == serving.version:
            error = f"it is the serving version {serving.version}"
        if error is not None:
            log.error("shadow model %s in %s rejected: %s", candidate.version, self.dir, error)
            self.scorer = None
            return Reload("failed", "none", candidate.version, error)
        if self.scorer is not None and self.scorer.version == candidate.version:
            return Reload("same_version", current, candidate.version)
        self.scorer = candidate
        log.warning("shadow model %s scored next to %s", candidate.version, serving.version)
        return Reload("swapped", candidate.version, candidate.version)


PREVIOUS_DIR = "previous"
"""Where a promotion keeps the model it replaced: ``<model_dir>/previous/``, for a rollback."""


def promote(model_dir: Path) -> str:
    """Make the shadow model in ``<model_dir>/candidate/`` the one ``model_dir`` serves, the
    way a deploy should (the ONNX file first, the manifest last, each by rename: a poll in
    between refuses the half-written pair and takes the whole on the next), keeping the
    replaced files in ``<model_dir>/previous/``. Returns the promoted version; the worker's
    :class:`ModelHolder` swaps it in at its next poll. Blocking (file copies)."""
    model_dir = Path(model_dir)
    candidate = model_dir / CANDIDATE_DIR
    manifest = json.loads((candidate / "manifest.json").read_text())
    onnx_file = str(manifest.get("onnx_file", "model.onnx"))
    previous = model_dir / PREVIOUS_DIR
    shutil.rmtree(previous, ignore_errors=True)
    previous.mkdir()
    for path in [model_dir / "manifest.json", *model_dir.glob("*.onnx")]:
        if path.is_file():
            shutil.copy2(path, previous / path.name)
    for name in (onnx_file, "manifest.json"):
        tmp = model_dir / f".{name}.promoting"
        shutil.copy2(candidate / name, tmp)
        os.replace(tmp, model_dir / name)
    shutil.rmtree(candidate)
    return str(manifest["model_version"])


def _manifest_version(model_dir: Path) -> str | None:
    """The ``model_version`` a manifest claims, for messages about a rejected one."""
    try:
        version = json.loads((model_dir / "manifest.json").read_text()).get("model_version")
    except (OSError, ValueError, AttributeError):
        return None
    return str(version) if version is not None else None
