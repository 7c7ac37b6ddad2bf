"""Harness of the subscribers' Kafka tier: worker subprocesses, topic reads, a webhook receiver.

:class:`SubscriberProcess` runs a subscriber (``clicksignals bidder`` or ``faust -A ...``) from
the repo root with the test's settings as ``CLICKSIGNALS_*`` variables
(:func:`settings.child_environment`), logging to a file; it waits until the worker serves
``/health`` and logged that it is ready, and stops it (SIGTERM, then SIGKILL). Reads of a topic
go up to the end offsets seen when the read starts; :func:`wait_for_records` polls until a topic
holds the expected records, the group has committed the end of its input and the output stayed
unchanged for a while. Every wait is bounded and fails with the worker log's tail.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

from ops.supervise import START_TIMEOUT_S, Supervised
from settings import Settings, child_environment
from tests.conftest import REPO_ROOT, run_sync
from tests.support import kafka_io
from tests.support.kafka_io import Record as Record

READY_LINE = "Worker ready"


class SubscriberError(AssertionError):
    """A subscriber died, did not get ready or did not deliver in time (with its log)."""


class SubscriberProcess(Supervised):
    """One subscriber subprocess and its log file (:mod:`ops.supervise`)."""

    def __init__(
        self, name: str, argv: list[str], settings: Settings, web_port: int, log_path: Path
    ) -> None:
        super().__init__(
            name=name,
            argv=argv,
            env=child_environment(settings),
            log_path=log_path,
            url=f"http://127.0.0.1:{web_port}",
            cwd=REPO_ROOT,
            error=SubscriberError,
        )
        self.settings = settings
        self.web_port = web_port

    def get(self, path: str, timeout_s: float = 5.0) -> tuple[int, Any]:
        return self.get_json(path, timeout_s)

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S, **_: Any) -> float:
        return super().wait_ready(timeout_s, ready_line=READY_LINE)


# --------------------------------------------------------------------------------------------
# Kafka
# --------------------------------------------------------------------------------------------


def produce(settings: Settings, topic: str, records: Sequence[tuple[bytes, bytes]]) -> None:
    """Send ``records`` in order (per key, the test's order) and wait until Kafka has them."""
    run_sync(kafka_io.produce(settings, topic, records))


def read_topic(settings: Settings, topic: str, timeout_s: float = 60.0) -> list[Record]:
    """Every record of ``topic`` up to its end offsets when the call starts."""
    return run_sync(kafka_io.read_topic(settings, topic, timeout_s))


def wait_for_records(
    worker: SubscriberProcess,
    *,
    group: str,
    source: str,
    output: str,
    expected: int,
    idle_s: float = 3.0,
    timeout_s: float = 120.0,
) -> list[Record]:
    """Until ``output`` holds ``expected`` records, ``group`` has no lag on ``source`` and the
    output did not grow for ``idle_s``; returns the output's records (more than ``expected``
    if more arrived -- the caller asserts the count)."""
    t0 = time.monotonic()
    last = -1
    stable_since = t0
    while True:
        if not worker.alive():
            raise worker.fail(f"{worker.name} died (code {worker.proc.returncode})")  # type: ignore[union-attr]
        records = read_topic(worker.settings, output)
        now = time.monotonic()
        if len(records) != last:
            last, stable_since = len(records), now
        if (
            len(records) >= expected
            and now - stable_since >= idle_s
            and run_sync(kafka_io.lag(worker.settings, group, source)) == 0
        ):
            return records
        if now - t0 > timeout_s:
            raise worker.fail(
                f"{output}: {len(records)} records after {timeout_s:.0f} s, expected {expected}"
            )
        time.sleep(0.5)


async def _topic_config(settings: Settings, topic: str) -> dict[str, str]:
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(**settings.kafka.client_kwargs())
    await admin.start()
    try:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    out: dict[str, str] = {}
    for response in responses:
        for resource in response.resources:
            for entry in resource[4]:
                out[entry[0]] = entry[1]
    return out


def topic_config(settings: Settings, topic: str) -> dict[str, str]:
    return run_sync(_topic_config(settings, topic))


# --------------------------------------------------------------------------------------------
# A webhook receiver
# --------------------------------------------------------------------------------------------


@dataclass
class Webhook:
    url: str
    received: list[dict[str, Any]]
    fail_first: int


@contextlib.contextmanager
def webhook_receiver(path: str = "/hook/secret-token", fail_first: int = 0) -> Iterator[Webhook]:
    """A local HTTP server recording JSON POSTs; the first ``fail_first`` get HTTP 500."""
    received: list[dict[str, Any]] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                received.append(
                    {
                        "path": self.path,
                        "content_type": self.headers.get("Content-Type"),
                        "body": json.loads(body),
                    }
                )
                status = 500 if len(received) <= fail_first else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Webhook(f"http://127.0.0.1:{server.server_port}{path}", received, fail_first)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def wait_until(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)
