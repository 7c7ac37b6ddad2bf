"""Fixtures of the subscribers' Kafka tier: subscriber subprocesses that are always stopped.

``subscriber_factory(name, argv, settings, web_port)`` returns a (not started)
:class:`~tests.support.subscriber_harness.SubscriberProcess` logging to ``tmp_path/<name>.log``;
every one it made is stopped when the test ends, and a failed test's report carries the tail of
each one's log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from settings import Settings
from tests.support.subscriber_harness import SubscriberProcess

_PROCESSES = pytest.StashKey[list[SubscriberProcess]]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed:
        for proc in item.stash.get(_PROCESSES, []):
            report.sections.append((f"{proc.name} log tail ({proc.log_path})", proc.log_tail(80)))


@pytest.fixture
def subscriber_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., SubscriberProcess]]:
    made: list[SubscriberProcess] = []
    request.node.stash[_PROCESSES] = made

    def make(name: str, argv: list[str], settings: Settings, web_port: int) -> SubscriberProcess:
        proc = SubscriberProcess(name, argv, settings, web_port, tmp_path / f"{name}.log")
        made.append(proc)
        return proc

    try:
        yield make
    finally:
        for proc in made:
            proc.stop()
