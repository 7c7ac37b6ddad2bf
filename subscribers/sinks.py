"""Where churn alerts go besides the churn-alerts topic: the log, and optionally a webhook.

* :func:`log_alert` writes one WARNING line per alert on the ``clicksignals.alerts`` logger,
  ``churn alert {json}`` -- greppable, and structured when ``CLICKSIGNALS_LOG_FORMAT=json``.
* :class:`WebhookSink` POSTs each alert as JSON to ``CLICKSIGNALS_ALERT_WEBHOOK_URL``. Posting
  never blocks or breaks the alerter: :meth:`WebhookSink.submit` only queues (a full queue drops
  the alert with a warning), :meth:`WebhookSink.run` posts in the background with a timeout,
  and every failure -- refused connection, timeout, a non-2xx answer -- is logged and dropped
  (one attempt; the alert is on Kafka regardless). The URL may hold a token, so logs name only
  its scheme, host and port.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import orjson
from yarl import URL

from subscribers.alerting import ChurnAlert

alert_log = logging.getLogger("clicksignals.alerts")
log = logging.getLogger(__name__)


def log_alert(alert: ChurnAlert) -> None:
    """The log sink: one WARNING line holding the alert's JSON."""
    alert_log.warning("churn alert %s", orjson.dumps(alert.to_dict()).decode())


def redact(url: str) -> str:
    """``https://hooks.example/T0/B1/secret`` -> ``https://hooks.example:443`` (for logs)."""
    try:
        u = URL(url)
        return f"{u.scheme}://{u.host}:{u.port}" if u.host else "<url>"
    except (ValueError, TypeError):
        return "<url>"


class WebhookSink:
    """Background JSON POSTs of alerts to one URL; failures are logged, never raised."""

    def __init__(self, url: str, *, timeout_s: float = 5.0, max_pending: int = 1000) -> None:
        self.url = url
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=max_pending)
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._session: aiohttp.ClientSession | None = None

    def submit(self, payload: dict[str, Any]) -> bool:
        """Queue ``payload`` for posting; ``False`` (and a warning) when the queue is full."""
        try:
            self.queue.put_nowait(payload)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning(
                "alert webhook %s: %d alerts pending, dropping alert %s",
                redact(self.url),
                self.queue.qsize(),
                payload.get("alert_id"),
            )
            return False
        return True

    async def post(self, payload: dict[str, Any]) -> bool:
        """POST one payload now; ``True`` on a 2xx answer. Never raises (except cancellation)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        try:
            async with self._session.post(
                self.url,
                data=orjson.dumps(payload),
                headers={"Content-Type": "application/json"},
            ) as response:
                if 200 <= response.status < 300:
                    self.sent += 1
                    return True
                detail = f"HTTP {response.status}"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # refused, DNS, timeout, TLS, ... -- all non-fatal
            detail = f"{type(exc).__name__}: {exc}"[:200]
        self.failed += 1
        log.warning(
            "alert webhook %s failed for alert %s: %s",
            redact(self.url),
            payload.get("alert_id"),
            detail,
        )
        return False

    async def run(self) -> None:
        """Post queued payloads until cancelled."""
        try:
            while True:
                payload = await self.queue.get()
                try:
                    await self.post(payload)
                finally:
                    self.queue.task_done()
        finally:
            await self.close()

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


__all__ = ["WebhookSink", "alert_log", "log_alert", "redact"]
