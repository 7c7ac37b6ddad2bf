"""Faust plumbing shared by the subscriber apps (the logic lives in the pure modules).

Both apps: raw-bytes topics and a raw-bytes table (the pure modules do their own JSON), their own
app id (``settings.bidder_app_id`` / ``alerter_app_id``: consumer group and changelog prefix),
their own web port on ``settings.web_host``, and data under ``settings.data_dir / <name>``.

Micro-batches are handled like the worker's: outputs are sent, Kafka's acknowledgement is
awaited, and only then is the table written -- state that exists implies its outputs were
delivered. :class:`TableFocus` makes the event of the key's partition current before each
table read or write, because Faust files a key under the *current event's* partition.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Final

import faust
from faust.types import EventT

from settings import Settings
from settings.kafka import faust_credentials
from settings.logs import faust_logging_config
from stream import faust_runtime

log = logging.getLogger(__name__)

RAW: Final[dict[str, Any]] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def broker_credentials(settings: Settings) -> Any:
    """Faust credentials for ``settings`` (``None`` for PLAINTEXT): :mod:`settings.kafka`'s,
    the one place that builds every Kafka client's connection options."""
    return faust_credentials(settings)


def make_app(settings: Settings, *, app_id: str, web_port: int, name: str) -> faust.App:
    """A Faust app for one subscriber (see the module doc)."""
    datadir = settings.data_dir / name
    datadir.parent.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    # Faust re-configures logging at worker start; CLICKSIGNALS_LOG_FORMAT=json goes through
    # its logging_config (settings.logs), and text keeps Faust's own console format.
    logging_config = faust_logging_config(settings)
    extra: dict[str, Any] = {} if logging_config is None else {"logging_config": logging_config}
    return faust.App(
        app_id,
        broker=settings.broker_url,
        # A TLS/SASL setting that cannot make a client ends the process with the reason.
        broker_credentials=config_or_exit(broker_credentials, settings, name),
        store=settings.store_url,
        datadir=str(datadir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=web_port,
        producer_linger_ms=5,
        key_serializer="raw",
        value_serializer="raw",
        **extra,
    )


def config_or_exit(build: Any, settings: Settings, what: str) -> Any:
    """``build(settings)``, or end the process with the reason (bad subscriber settings)."""
    try:
        return build(settings)
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


__all__ = ["RAW", "TableFocus", "broker_credentials", "config_or_exit", "make_app", "now_ms"]
