"""The worker's check that the stream it scores is the kind of input its model was trained on.

Warn, not refuse (README, *The model's input kind*): an order-lines model on a clickstream
still scores every purchase correctly by its own definition, and a worker that stopped on the
first view would take a running pipeline down over a deployment choice. So the mismatch is
made loud instead, once per model version:

* one WARNING log line naming the model version, what it was trained on and what arrived;
* the gauge ``clicksignals_model_input_mismatch{version}`` (1 while that version serves a
  mismatching stream) for alerting;
* ``/health`` and ``/model`` show :meth:`InputCheck.status`.

The decision itself is :func:`features.input_kind.is_mismatch`; this module only watches raw
message values. Cost: nothing for a model not trained on order lines; otherwise a substring
test per message, and a JSON decode only for a message that might be a browsing event, until
the first one is confirmed (then the check is done for that version).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from typing import Any, Final

import orjson
from prometheus_client import Gauge

from features.input_kind import ORDER_LINES, is_mismatch, trained_input_kind
from features.manifest import Manifest
from stream.metrics import REGISTRY

log = logging.getLogger(__name__)

INPUT_MISMATCH: Final = Gauge(
    "clicksignals_model_input_mismatch",
    "1 while the serving model (trained on order lines only) scores a stream with views/carts",
    ["version"],
    registry=REGISTRY,
)
# Every browsing event type contains one of these; a value without any cannot be one.
_HINTS: Final = (b"view", b"cart", b"wishlist")


def _event_type(value: bytes) -> str | None:
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None  # the processor dead-letters it; not this check's business
    kind = record.get("event_type") if isinstance(record, dict) else None
    return kind if isinstance(kind, str) else None


class InputCheck:
    """Watches one model version's input (module doc); :meth:`reset` on a model swap."""

    def __init__(self, manifest: Manifest) -> None:
        self.reset(manifest)

    def reset(self, manifest: Manifest) -> None:
        """Start over for ``manifest`` (a new version warns again if it mismatches too)."""
        previous = getattr(self, "version", None)
        if previous is not None and previous != manifest.model_version:
            # Only the serving version's series stays; 0 would suggest it was checked and fine.
            with contextlib.suppress(KeyError):
                INPUT_MISMATCH.remove(previous)
        self.version = manifest.model_version
        data = manifest.extra.get("training_data")
        self.trained = trained_input_kind(data if isinstance(data, dict) else None)
        self.seen: str | None = None
        """The first browsing event type seen while the model is an order-lines one."""
        if self.trained == ORDER_LINES:
            INPUT_MISMATCH.labels(version=self.version).set(0)

    @property
    def watching(self) -> bool:
        return self.trained == ORDER_LINES and self.seen is None

    def observe(self, values: Iterable[bytes | None]) -> None:
        """Look at a batch's raw message values (no-op unless :attr:`watching`)."""
        if not self.watching:
            return
        for value in values:
            if value is None or not any(h in value for h in _HINTS):
                continue
            kind = _event_type(value)
            if kind is not None and is_mismatch(self.trained, [kind]):
                self._trip(kind)
                return

    def _trip(self, kind: str) -> None:
        self.seen = kind
        INPUT_MISMATCH.labels(version=self.version).set(1)
        log.warning(
            "model %s was trained on order lines only (no views or carts) but the stream has "
            "%r events: its scores ignore browsing and are not calibrated for this traffic; "
            "serve a model trained on clickstream (README, The model's input kind)",
            self.version,
            kind,
        )

    def status(self) -> dict[str, Any]:
        """For ``/health`` and ``/model``: the trained kind, and the mismatch if one was seen."""
        return {
            "trained_on": self.trained or "unknown",
            "mismatch": self.seen is not None,
            **({"browsing_event_seen": self.seen} if self.seen is not None else {}),
        }


__all__ = ["INPUT_MISMATCH", "InputCheck"]
