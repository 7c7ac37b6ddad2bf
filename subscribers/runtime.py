"""Faust plumbing shared by the subscriber apps (the logic lives in the pure modules).

Both apps: raw-bytes topics and a raw-bytes table (the pure modules do their own JSON), their own
app id (``settings.bidder_app_id`` / ``alerter_app_id``: consumer group and changelog prefix),
their own web port on ``settings.worker.web_host``, and data under
``settings.worker.data_dir / <name>``.

Micro-batches are handled like the worker's: outputs are sent, Kafka's acknowledgement is
awaited, and only then is the table written -- state that exists implies its outputs were
delivered. :class:`TableFocus` makes the event of the key's partition current before each
table read or write, because Faust files a key under the *current event's* partition.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import faust
from faust.types import EventT

from settings import Settings
from stream import faust_runtime
from stream.faust_app import RAW, faust_app

log = logging.getLogger(__name__)

_S = TypeVar("_S")
_T = TypeVar("_T")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def make_app(settings: Settings, *, app_id: str, web_port: int, name: str) -> faust.App:
    """A Faust app for one subscriber (:func:`stream.faust_app.faust_app`, data under
    ``settings.worker.data_dir / name``); a TLS/SASL setting that cannot make a client ends the
    process with the reason."""
    app = config_or_exit(
        lambda s: faust_app(s, app_id=app_id, web_port=web_port, datadir=s.worker.data_dir / name),
        settings,
        name,
    )
    return app


def config_or_exit(build: Callable[[_S], _T], source: _S, what: str) -> _T:
    """``build(source)``, or end the process with the reason (bad subscriber settings)."""
    try:
        return build(source)
    except (ValueError, TypeError) as exc:
        log.critical("refusing to start the %s: %s", what, exc)
        print(f"clicksignals {what}: refusing to start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


class TableFocus:
    """Make an event current before touching a table key (see the module doc)."""

    def __init__(self, table: Any) -> None:
        self.table = table

    @staticmethod
    def focus(event: EventT[Any]) -> None:
        faust_runtime.set_current_event(event)

    def get(self, event: EventT[Any], key: str) -> bytes | None:
        self.focus(event)
        value: bytes | None = self.table.get(key)
        return value

    def set(self, event: EventT[Any], key: str, value: bytes) -> None:
        self.focus(event)
        self.table[key] = value


__all__ = ["RAW", "TableFocus", "config_or_exit", "make_app", "now_ms"]
