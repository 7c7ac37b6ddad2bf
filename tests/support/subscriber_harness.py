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
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from ops.supervise import START_TIMEOUT_S, Supervised
from settings import Settings, child_environment
from tests.conftest import REPO_ROOT, run_sync

READY_LINE = "Worker ready"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes

    def json(self) -> Any:
        return orjson.loads(self.value)


async def _produce(settings: Settings, topic: str, records: Sequence[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(**settings.kafka.client_kwargs(), acks="all")
    await producer.start()
    try:
        for key, value in records:  # one at a time: per-key order is the test's order
            await (await producer.send(topic, value, key=key))
    finally:
        await producer.stop()


def produce(settings: Settings, topic: str, records: Sequence[tuple[bytes, bytes]]) -> None:
    run_sync(_produce(settings, topic, records))


async def _ends(consumer: AIOKafkaConsumer, topic: str) -> dict[TopicPartition, int]:
    parts = consumer.partitions_for_topic(topic)
    if not parts:
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    ends: dict[TopicPartition, int] = await consumer.end_offsets(tps) if tps else {}
    return ends


async def _read(settings: Settings, topic: str, timeout_s: float) -> list[Record]:
    consumer = AIOKafkaConsumer(
        **settings.kafka.client_kwargs(), enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    out: list[Record] = []
    try:
        ends = {tp: end for tp, end in (await _ends(consumer, topic)).items() if end > 0}
        if not ends:
            return out
        consumer.assign(list(ends))
        await consumer.seek_to_beginning(*ends)
        deadline = time.monotonic() + timeout_s
        remaining = set(ends)
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: {len(out)} records after {timeout_s} s")
            batch = await consumer.getmany(*remaining, timeout_ms=500)
            for tp, messages in batch.items():
                out += [
                    Record(tp.partition, m.offset, m.key, m.value)
                    for m in messages
                    if m.offset < ends[tp]
                ]
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return out


def read_topic(settings: Settings, topic: str, timeout_s: float = 60.0) -> list[Record]:
    """Every record of ``topic`` up to its end offsets when the call starts."""
    return run_sync(_read(settings, topic, timeout_s))


async def _lag(settings: Settings, group: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(**settings.kafka.client_kwargs(), enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await _ends(consumer, topic)
    finally:
        await consumer.stop()
    admin = AIOKafkaAdminClient(**settings.kafka.client_kwargs())
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    done = {tp: meta.offset for tp, meta in committed.items() if tp.topic == topic}
    return sum(end - max(done.get(tp, 0), 0) for tp, end in ends.items())


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
            and run_sync(_lag(worker.settings, group, source)) == 0
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
