"""No zombie workers: when an agent stops, say why on /health and /ready and exit non-zero.

Shared by the worker (:mod:`stream.app`) and the subscribers (:mod:`subscribers.runtime`).
Faust keeps a process running after its agent crashed (the supervisor "restarts" an actor
whose task has finished, which runs nothing), so without this the process answers its health
checks, holds its partitions and lets the lag grow. :class:`Liveness` makes that state loud:

* :meth:`Liveness.fail` records the first reason; the health views answer 503 with it;
* once armed (:meth:`Liveness.arm`, called from a task of the running worker), a failure ends
  the process after ``grace_s`` with :data:`EXIT_AGENT_STOPPED` (70, ``EX_SOFTWARE``), so a
  supervisor (systemd ``Restart=on-failure``, a Kubernetes restart policy) starts it again and
  the consumer group moves its partitions;
* :meth:`Liveness.watch` notices an agent that stopped without an error reaching us (its
  actor tasks all finished while the app was not stopping), checked every ``interval_s``.

The exit is ``os._exit``, like a kill: a graceful Faust stop would commit the offsets of the
micro-batch that failed (``take_events`` acknowledges a batch even when the agent raised).
:func:`hold_back` marks those messages so they are never committed: whichever worker takes the
partition next gets them again (at least once; the processor skips what state already holds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

EXIT_AGENT_STOPPED = 70
"""Exit status of a process whose agent stopped (``EX_SOFTWARE`` of sysexits.h)."""


def hold_back(batch: Iterable[Any]) -> None:
    """Keep the offsets of ``batch`` (a micro-batch that failed: Faust events, or the consumer
    messages of a bulk agent) from ever being committed.

    Faust commits the highest offset below the first gap in what was acknowledged. Marking a
    message acknowledged *without* telling the consumer (``Message.ack`` then skips it) leaves
    such a gap at the batch: nothing from there on is committed by this process.
    """
    for item in batch:
        getattr(item, "message", item).acked = True


class Liveness:
    """Whether this process's agents still run, and the process's exit when they do not."""

    def __init__(
        self,
        name: str,
        *,
        grace_s: float = 1.0,
        exit_code: int = EXIT_AGENT_STOPPED,
        exit: Callable[[int], Any] = os._exit,
    ) -> None:
        self.name = name
        self.grace_s = grace_s
        self.exit_code = exit_code
        self._exit = exit
        self.reason: str | None = None
        self._armed = False
        self._exit_scheduled = False
        self._suspects: set[str] = set()

    @property
    def ok(self) -> bool:
        return self.reason is None

    def arm(self) -> None:
        """From now on a failure ends the process (called once the worker runs: never under
        Faust's ``test_context``, where ending the process would end the test run)."""
        self._armed = True
        if self.reason is not None:
            self._schedule_exit()

    def fail(self, reason: str) -> None:
        """Record why the process can no longer do its work (the first reason is kept)."""
        if self.reason is None:
            self.reason = reason
            log.critical(
                "%s: %s; /health and /ready answer 503%s",
                self.name,
                reason,
                f", exiting with status {self.exit_code} in {self.grace_s:g} s"
                if self._armed
                else "",
            )
        if self._armed:
            self._schedule_exit()

    async def run_batch(
        self,
        agent: str,
        events: list[Any],
        handle: Callable[[list[Any]], Awaitable[None]],
    ) -> None:
        """Run one micro-batch of ``agent``; if it raises, the batch is not done.

        Its offsets are held back (:func:`hold_back`: a restarted worker or the partition's
        next owner processes it again) and, unless the agent is being cancelled, the process
        fails (503, then exit); the exception propagates and ends the agent.
        """
        try:
            await handle(events)
        except BaseException as exc:
            hold_back(events)
            if not isinstance(exc, asyncio.CancelledError):
                self.fail(f"agent {agent} crashed: {type(exc).__name__}: {exc}")
            raise

    def guard_timer(
        self,
        name: str,
        body: Callable[[], Awaitable[None]],
        *,
        essential: bool,
        on_error: Callable[[str], None] | None = None,
    ) -> Callable[[], Awaitable[None]]:
        """``body`` as one tick of the timer ``name``, whose exception never reaches Faust.

        Left to Faust, an exception from a timer crashes the whole app: a graceful stop that
        says nothing on ``/health`` and ends with whatever status the re-raised exception
        gives. Instead an ``essential`` timer (its work is the stream's: announcements and
        closes, the model swap) fails the process, as an agent does (503, then exit 70);
        any other (a metric, a memory trim) logs the error and runs again at the next tick.
        ``on_error`` is told the timer's name either way (a metric).
        """

        async def tick() -> None:
            try:
                await body()
            except Exception as exc:
                if on_error is not None:
                    on_error(name)
                if essential:
                    self.fail(f"timer {name} crashed: {type(exc).__name__}: {exc}")
                else:
                    log.exception("timer %s failed; it runs again at its next tick", name)

        tick.__name__ = tick.__qualname__ = name
        return tick

    async def on_agent_error(self, agent: Any, exc: BaseException) -> None:
        """Faust's per-agent ``on_error`` hook: an exception ended the agent."""
        self.fail(f"agent {_agent_name(agent)} crashed: {type(exc).__name__}: {exc}")

    def check(self, agents: Iterable[Any], *, stopping: bool, rebalancing: bool) -> None:
        """Fail if an agent's actors have all finished while the app is not stopping.

        An agent must be seen stopped on two checks in a row (and never while rebalancing),
        so a transient state of Faust's is not mistaken for a dead agent.
        """
        if stopping or rebalancing or self.reason is not None:
            return
        for agent in agents:
            name = _agent_name(agent)
            why = agent_stopped(agent)
            if why is None:
                self._suspects.discard(name)
            elif name in self._suspects:
                self.fail(f"agent {name} stopped: {why}")
            else:
                self._suspects.add(name)

    def watch(self, app: Any, agents: list[Any], *, interval_s: float = 1.0) -> None:
        """Register on ``app`` the task that arms this and the timer that checks ``agents``."""

        for agent in agents:
            # Faust gives every agent the app's own error hook (it tells the consumer); ours
            # runs after it, so the failure is known at once, not at the next check.
            app_hook = agent._on_error

            async def on_error(agent: Any, exc: BaseException, app_hook: Any = app_hook) -> None:
                try:
                    if app_hook is not None:
                        await app_hook(agent, exc)
                finally:
                    await self.on_agent_error(agent, exc)

            agent._on_error = on_error

        @app.task
        async def arm_liveness() -> None:
            self.arm()

        @app.timer(interval=interval_s)
        async def check_agents() -> None:
            self.check(agents, stopping=bool(app.should_stop), rebalancing=bool(app.rebalancing))

    def health(self, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """The ``/health`` answer: ``body`` with status ok (200), or failed + reason (503)."""
        if self.reason is None:
            return {"status": "ok", **body}, 200
        return {"status": "failed", "reason": self.reason, **body}, 503

    def ready(self, rebalancing: bool) -> tuple[dict[str, Any], int]:
        """The ``/ready`` answer: 503 with the reason when failed or rebalancing."""
        if self.reason is not None:
            return {"ready": False, "reason": self.reason}, 503
        if rebalancing:
            return {"ready": False, "reason": "rebalancing"}, 503
        return {"ready": True}, 200

    def _schedule_exit(self) -> None:
        if self._exit_scheduled:
            return
        self._exit_scheduled = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._exit_now()
            return
        # The grace lets the last log lines and a probe's 503 out before the process goes.
        loop.call_later(self.grace_s, self._exit_now)

    def _exit_now(self) -> None:
        log.critical("%s: exiting with status %d: %s", self.name, self.exit_code, self.reason)
        # A broken handler or stream must not keep a dead process alive.
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        self._exit(self.exit_code)


def _agent_name(agent: Any) -> str:
    name = getattr(agent, "name", None) or repr(agent)
    return str(name).rsplit(".", 1)[-1]


def agent_stopped(agent: Any) -> str | None:
    """Why ``agent`` no longer runs (its actor tasks all finished), or ``None`` if it runs or
    has not started."""
    actors = list(getattr(agent, "_actors", None) or ())
    if not actors:
        return None
    reasons: list[str] = []
    for aref in actors:
        task = getattr(aref, "actor_task", None)
        if task is None or not task.done():
            return None
        crash = getattr(aref, "crash_reason", None)
        if crash is not None:
            reasons.append(f"{type(crash).__name__}: {crash}")
        elif task.cancelled():
            reasons.append("cancelled")
    return "; ".join(reasons) if reasons else "its loop returned"


__all__ = ["EXIT_AGENT_STOPPED", "Liveness", "agent_stopped", "hold_back"]
