"""subscribers.sinks: the log sink and the webhook (a real local HTTP server, no broker)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from subscribers.alerting import AlertConfig, ChurnAlert, apply_churn
from subscribers.sinks import WebhookSink, log_alert, redact
from tests.support.factories import churn

SECRET_PATH = "/hooks/T000/very-secret-token"


def make_alert(user: str = "u1") -> ChurnAlert:
    alert = apply_churn(None, churn(user, p=0.9), AlertConfig(), 1_700_000_000_000).alert
    assert alert is not None
    return alert


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def hook_server(status: int = 200, delay_s: float = 0.0) -> AsyncIterator[tuple[str, list]]:
    received: list[Any] = []

    async def handle(request: web.Request) -> web.Response:
        received.append(
            {"content_type": request.content_type, "body": json.loads(await request.read())}
        )
        await asyncio.sleep(delay_s)
        return web.Response(status=status)

    server = web.Application()
    server.router.add_post(SECRET_PATH, handle)
    runner = web.AppRunner(server)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}{SECRET_PATH}", received
    finally:
        await runner.cleanup()


def arun(factory: Callable[[], Any]) -> Any:
    return asyncio.run(factory())


def test_log_sink_writes_the_alert_json(caplog: pytest.LogCaptureFixture) -> None:
    alert = make_alert()
    with caplog.at_level(logging.WARNING, logger="clicksignals.alerts"):
        log_alert(alert)
    (record,) = caplog.records
    assert record.name == "clicksignals.alerts" and record.levelno == logging.WARNING
    prefix, _, payload = record.getMessage().partition(" {")
    assert prefix == "churn alert"
    assert json.loads("{" + payload) == alert.to_dict()


def test_webhook_posts_the_alert_as_json() -> None:
    alert = make_alert()

    async def go() -> tuple[bool, list[Any], WebhookSink]:
        async with hook_server() as (url, received):
            sink = WebhookSink(url, timeout_s=5)
            ok = await sink.post(alert.to_dict())
            await sink.close()
            return ok, received, sink

    ok, received, sink = arun(go)
    assert ok and sink.sent == 1 and sink.failed == 0
    assert received == [{"content_type": "application/json", "body": alert.to_dict()}]


@pytest.mark.parametrize("case", ["refused", "http_500", "timeout"])
def test_webhook_failures_are_logged_not_raised(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    alert = make_alert()

    async def go() -> tuple[bool, WebhookSink]:
        if case == "refused":
            sink = WebhookSink(f"http://127.0.0.1:{free_port()}{SECRET_PATH}", timeout_s=2)
            ok = await sink.post(alert.to_dict())
        else:
            status, delay = (500, 0.0) if case == "http_500" else (200, 2.0)
            async with hook_server(status, delay) as (url, _):
                sink = WebhookSink(url, timeout_s=0.3)
                ok = await sink.post(alert.to_dict())
        await sink.close()
        return ok, sink

    with caplog.at_level(logging.WARNING, logger="subscribers.sinks"):
        ok, sink = arun(go)
    assert not ok and sink.failed == 1 and sink.sent == 0
    text = caplog.text
    assert "alert webhook" in text and alert.alert_id in text
    assert "very-secret-token" not in text  # the URL's path may be a credential


def test_background_run_posts_queued_alerts_and_a_full_queue_drops() -> None:
    alerts = [make_alert(f"u{i}") for i in range(3)]

    async def go() -> tuple[list[Any], WebhookSink, bool]:
        async with hook_server() as (url, received):
            sink = WebhookSink(url, max_pending=3)
            accepted = [sink.submit(a.to_dict()) for a in alerts]
            overflow = sink.submit(make_alert("u9").to_dict())
            task = asyncio.create_task(sink.run())
            await asyncio.wait_for(sink.queue.join(), timeout=10)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert accepted == [True, True, True]
            return received, sink, overflow

    received, sink, overflow = arun(go)
    assert not overflow and sink.dropped == 1
    assert [r["body"]["user_id"] for r in received] == ["u0", "u1", "u2"]
    assert sink.sent == 3


def test_redact_keeps_only_scheme_host_and_port() -> None:
    assert redact("https://hooks.example.com/services/T0/B1/XYZ?token=1") == (
        "https://hooks.example.com:443"
    )
    assert redact("not a url") == "<url>"
