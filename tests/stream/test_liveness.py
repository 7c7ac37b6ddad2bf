"""No zombie workers, without a broker: :class:`stream.liveness.Liveness` and the subscribers'
agents.

The worker's own end-to-end check (a real worker answering 503 and exiting 70) is in
``test_poison_kafka.py``. Here: the health and ready answers, the watchdog's view of agents
whose tasks finished, that a failure ends the process only once armed (never under Faust's
``test_context``), a timer's guarded tick, and -- in a child process each -- that a
subscriber agent that raises makes its app unhealthy and ends the process with status 70.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from settings import Settings, child_environment
from stream.liveness import EXIT_AGENT_STOPPED, Liveness, agent_stopped, hold_back
from tests.conftest import REPO_ROOT
from tests.support.factories import churn, demand


class FakeActor:
    def __init__(self, task: asyncio.Future[Any] | None, crash: BaseException | None = None):
        self.actor_task = task
        self.crash_reason = crash


class FakeAgent:
    def __init__(self, name: str, actors: list[FakeActor]) -> None:
        self.name = f"module.{name}"
        self._actors = set(actors)


def test_health_and_ready_say_why_with_503() -> None:
    exits: list[int] = []
    live = Liveness("test", exit=exits.append)
    assert live.health({"x": 1}) == ({"status": "ok", "x": 1}, 200)
    assert live.ready(False) == ({"ready": True}, 200)
    assert live.ready(True) == ({"ready": False, "reason": "rebalancing"}, 503)
    live.fail("agent a crashed: KeyError: 'k'")
    live.fail("a second reason is not kept")
    assert live.health({"x": 1}) == (
        {"status": "failed", "reason": "agent a crashed: KeyError: 'k'", "x": 1},
        503,
    )
    assert live.ready(False) == ({"ready": False, "reason": "agent a crashed: KeyError: 'k'"}, 503)
    assert exits == []  # not armed: a test context never ends the process


def test_an_armed_failure_exits_non_zero_after_the_grace() -> None:
    exits: list[int] = []

    async def scenario() -> None:
        live = Liveness("test", grace_s=0.05, exit=exits.append)
        live.arm()
        live.fail("boom")
        await asyncio.sleep(0.01)
        assert exits == []  # the grace lets a probe see the 503
        await asyncio.sleep(0.1)

    asyncio.run(scenario())
    assert exits == [EXIT_AGENT_STOPPED]

    # Failed before the worker ran: arming exits (no loop here: at once).
    late: list[int] = []
    live = Liveness("test", exit=late.append)
    live.fail("early")
    live.arm()
    assert late == [EXIT_AGENT_STOPPED]


def test_the_watchdog_fails_on_an_agent_whose_tasks_all_finished() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        running: asyncio.Future[None] = loop.create_future()
        done: asyncio.Future[None] = loop.create_future()
        done.set_result(None)
        crashed = FakeAgent("scorer", [FakeActor(done, ValueError("bad"))])
        returned = FakeAgent("bidder", [FakeActor(done)])
        alive = FakeAgent("alerter", [FakeActor(running), FakeActor(done)])
        unstarted = FakeAgent("idle", [])
        assert agent_stopped(crashed) == "ValueError: bad"
        assert agent_stopped(returned) == "its loop returned"
        assert agent_stopped(alive) is None and agent_stopped(unstarted) is None

        live = Liveness("test", exit=lambda code: None)
        live.check([alive, crashed], stopping=True, rebalancing=False)
        live.check([alive, crashed], stopping=False, rebalancing=True)
        live.check([alive, crashed], stopping=False, rebalancing=False)
        assert live.ok  # seen once: could be transient
        live.check([alive, crashed], stopping=False, rebalancing=False)
        assert live.reason == "agent scorer stopped: ValueError: bad"
        running.cancel()

    asyncio.run(scenario())


def test_a_guarded_timer_tick_fails_or_logs_and_lets_a_cancel_through() -> None:
    exits: list[int] = []
    errors: list[str] = []

    async def broken() -> None:
        raise KeyError("k")

    async def cancelled() -> None:
        raise asyncio.CancelledError

    async def scenario() -> None:
        live = Liveness("test", grace_s=0.01, exit=exits.append)
        live.arm()
        lag = live.guard_timer("lag", broken, essential=False, on_error=errors.append)
        await lag()
        await lag()
        assert live.ok and errors == ["lag", "lag"]
        closes = live.guard_timer("closes", broken, essential=True, on_error=errors.append)
        await closes()
        assert live.reason == "timer closes crashed: KeyError: 'k'"
        with pytest.raises(asyncio.CancelledError):  # a stopping app cancels its timers
            await live.guard_timer("closes", cancelled, essential=True)()
        await asyncio.sleep(0.05)

    asyncio.run(scenario())
    assert errors == ["lag", "lag", "closes"]
    assert exits == [EXIT_AGENT_STOPPED]


def test_hold_back_keeps_a_failed_batch_from_being_committed() -> None:
    class Message:
        acked = False

    class Event:
        def __init__(self) -> None:
            self.message = Message()

    events = [Event(), Event()]
    hold_back(events)
    # Faust's Message.ack() does nothing for an acked message: the consumer never learns
    # these offsets, and commits stop below them.
    assert all(e.message.acked for e in events)
    # A bulk agent's batch is the messages themselves.
    messages = [Message(), Message()]
    hold_back(messages)
    assert all(m.acked for m in messages)


CHILD = """
import asyncio, json, sys
entry = __import__(sys.argv[1], fromlist=["app"])  # the faust -A module
built = getattr(entry, sys.argv[2])  # the Bidder / Alerter it built
agent = getattr(built, sys.argv[3])
pure = __import__(sys.argv[4], fromlist=["app"])  # where the decision function lives
record = sys.argv[6].encode()

def broken(*args, **kwargs):
    raise RuntimeError("forced failure")

setattr(pure, sys.argv[5], broken)
module = built

async def main():
    module.liveness.arm()  # what the running worker's task does
    async with agent.test_context() as wrapped:
        try:
            await wrapped.put(record, key=b"u1")
        except Exception:
            pass
        for _ in range(200):
            if module.liveness.reason is not None:
                break
            await asyncio.sleep(0.01)
        print(json.dumps([module.liveness.health({}), module.liveness.ready(False)]), flush=True)
        await asyncio.sleep(30)  # the armed liveness ends the process long before this

asyncio.run(main())
print("still running", flush=True)
"""


@pytest.mark.parametrize(
    ("module", "built", "agent", "pure", "broken", "record"),
    [
        (
            "subscribers.bidding_app",
            "bidder",
            "bid_on_demand",
            "subscribers.bidding",
            "apply_demand",
            demand().to_dict(),
        ),
        (
            "subscribers.alerting_app",
            "alerter",
            "alert_on_churn",
            "subscribers.alerting",
            "apply_churn",
            churn(p=0.99).to_dict(),
        ),
    ],
)
def test_a_subscriber_agent_that_raises_answers_503_and_ends_the_process(
    module: str,
    built: str,
    agent: str,
    pure: str,
    broken: str,
    record: dict[str, Any],
    tmp_path: Path,
) -> None:
    settings = Settings.from_flat(data_dir=tmp_path, store_url="memory://", batch_timeout_s=0.01)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            module,
            built,
            agent,
            pure,
            broken,
            orjson.dumps(record).decode(),
        ],
        cwd=REPO_ROOT,
        env=child_environment(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == EXIT_AGENT_STOPPED, done.stderr[-3000:]
    assert "still running" not in done.stdout
    (health, health_status), (ready, ready_status) = json.loads(done.stdout.splitlines()[-1])
    assert (health_status, ready_status) == (503, 503)
    assert health["status"] == "failed" and ready["ready"] is False
    for body in (health, ready):
        assert body["reason"] == f"agent {agent} crashed: RuntimeError: forced failure"
    assert f"exiting with status {EXIT_AGENT_STOPPED}" in done.stderr
