"""Logging from settings: the one JSON log formatter and the two ways processes install it.

Owns how ``settings.logs.format`` (``text`` | ``json``) and ``settings.logs.level`` become logging
configuration, for every process of the project:

* :func:`configure_root` -- plain processes (the ``clicksignals`` CLI, the demo): one stderr
  handler on the root logger.
* :func:`faust_logging_config` -- Faust workers (``faust -A stream.app worker``, the
  subscribers). A Faust worker re-configures logging when it starts (``mode.Worker`` clears the
  root handlers and applies a dictConfig), so a handler installed at import would be thrown
  away; instead the app passes this as ``faust.App(logging_config=...)``. It *merges* into
  mode's own configuration and replaces only its two formatters, so ``-l LEVEL``,
  ``--logfile`` and the destination keep working; ``None`` for ``text`` keeps Faust's default.

JSON lines carry ``ts`` (ISO-8601 UTC, milliseconds, ``Z``), ``level``, ``logger``,
``message`` and, when the record has one, ``exc_info`` (the formatted traceback). The values
of the settings' secrets (every :class:`settings.Secret` field: the SASL password, the TLS key
password, the alert webhook URL) are replaced by ``***`` wherever they would appear in a message
or traceback, so a client library that echoes its configuration cannot leak them.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any

from settings import Secret, Settings

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED = "***"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (module doc); ``secrets`` are masked in the text fields."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Longest first, so a secret containing another is masked whole.
        self._secrets = sorted({str.__str__(s) for s in secrets if s}, key=lambda s: (-len(s), s))

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # Always UTC with milliseconds: log shippers sort and join on this field.
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{seconds}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": self._redact(record.getMessage()),
        }
        if record.exc_info and not record.exc_text:
            # Cached like logging.Formatter does, so several handlers format it once.
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            payload["exc_info"] = self._redact(record.exc_text)
        if record.stack_info:
            payload["stack_info"] = self._redact(self.formatStack(record.stack_info))
        # default=str: a message is already a str, but `extra` fields never crash a log line.
        return json.dumps(payload, ensure_ascii=False, default=str)


def secret_values(settings: Settings) -> list[Secret]:
    """The non-empty :class:`Secret` values held by ``settings`` (still masked in ``repr``)."""
    return [v for v in settings.flat().values() if isinstance(v, Secret) and v]


def check_log_format(settings: Settings) -> str:
    """``settings.logs.format`` lower-cased, or ValueError naming the accepted values."""
    fmt = settings.logs.format.strip().lower()
    if fmt not in LOG_FORMATS:
        raise ValueError(f"CLICKSIGNALS_LOG_FORMAT={settings.logs.format!r}: use text or json")
    return fmt


def make_formatter(settings: Settings) -> logging.Formatter:
    """The formatter ``settings.logs.format`` asks for."""
    if check_log_format(settings) == "json":
        return JsonFormatter(secret_values(settings))
    return logging.Formatter(TEXT_FORMAT)


def configure_root(settings: Settings, *, verbose: bool = False) -> None:
    """Root logging to stderr per ``settings`` (for non-Faust processes such as the CLI).

    Adds a handler only when the root logger has none (a host such as pytest keeps its own).
    """
    formatter = make_formatter(settings)  # checks the format even when a host has handlers
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else settings.logs.level.upper())


def faust_logging_config(settings: Settings) -> dict[str, Any] | None:
    """``faust.App(logging_config=...)`` for ``settings`` (module doc); ``None`` for text.

    ``merge`` makes mode combine this with the configuration it builds from the worker's
    ``-l``/``--logfile`` options; its handlers refer to the formatters ``default`` (file) and
    ``colored`` (console), so replacing those two puts every handler on JSON.
    """
    if check_log_format(settings) != "json":
        return None
    # A factory rather than a "secrets" kwarg: dictConfig would walk (and try to convert) a
    # list of strings, and the partial's repr shows only masked Secret values.
    factory = functools.partial(JsonFormatter, tuple(secret_values(settings)))
    return {
        "merge": True,
        "formatters": {"default": {"()": factory}, "colored": {"()": factory}},
    }


__all__ = [
    "LOG_FORMATS",
    "JsonFormatter",
    "check_log_format",
    "configure_root",
    "faust_logging_config",
    "make_formatter",
    "secret_values",
]
