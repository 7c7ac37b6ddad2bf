"""Give an exported model its input reference (the drift check's training distribution).

``train-and-export`` writes the reference into every manifest it makes. A model exported
before that has none, and the worker then measures no drift for it. This command fits the
reference from the model's own training data, with the manifest's window grid (its origin is
the training cutoff), exactly as ``train-and-export`` does (:func:`training.dataset.
fit_input_reference`), and writes it into ``manifest.json``. The ONNX file is not touched, so
the model version stays the same::

    python -m training.reference onnx_models/default \\
        --events ../shared/data/online_retail.csv.gz --format transactions

No TensorFlow.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

from features.manifest import Manifest
from ingest.adapters import read_events
from training.cli import OFFLINE_MIN_EVENT_TIME_MS
from training.dataset import build_tensor, fit_input_reference, to_event_arrays

log = logging.getLogger(__name__)


def add_reference(model_dir: Path, events_path: Path, fmt: str | None) -> Manifest:
    """Fit the reference on ``events_path`` (the model's training data) and write it into
    ``model_dir/manifest.json``; returns the new manifest."""
    path = model_dir / "manifest.json"
    manifest = Manifest.from_dict(json.loads(path.read_text()))
    spec = manifest.spec
    events = read_events(
        events_path, fmt or "auto", min_event_time_ms=OFFLINE_MIN_EVENT_TIME_MS
    ).events
    arrays, _ = to_event_arrays(events)
    tensor = build_tensor(arrays, spec, -1)
    reference = fit_input_reference(tensor, -1)
    updated = dataclasses.replace(manifest, input_reference=reference)
    path.write_text(json.dumps(updated.to_dict(), indent=2))
    log.info("%s: input reference of %d rows written", path, reference.rows)
    return updated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.reference", description=__doc__)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--events", type=Path, required=True, help="the model's training data")
    parser.add_argument("--format", default=None, help="input format (default: detected)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    add_reference(args.model_dir, args.events, args.format)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
