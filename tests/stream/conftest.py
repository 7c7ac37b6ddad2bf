"""Fixtures of the worker tests: a factory of real worker subprocesses that are always stopped.

``worker_factory(settings, name)`` returns a :class:`~tests.support.worker_harness.WorkerProcess`
(not started) logging to ``tmp_path/<name>.log``. Every worker it made is stopped (SIGTERM, then
SIGKILL) when the test ends, pass or fail, and a failed test's report carries the tail of each
worker's log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from settings import Settings
from tests.support.agent import load_app, run_worker
from tests.support.worker_harness import WorkerProcess

__all__ = ["load_app", "run_worker"]  # the agent tests' fixtures (tests.support.agent)

_WORKERS = pytest.StashKey[list[WorkerProcess]]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed:
        for worker in item.stash.get(_WORKERS, []):
            report.sections.append(
                (f"worker {worker.name} log tail ({worker.log_path})", worker.log_tail(80))
            )


@pytest.fixture
def worker_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    workers: list[WorkerProcess] = []
    request.node.stash[_WORKERS] = workers

    def make(
        settings: Settings, name: str = "worker", faust_env: dict[str, str] | None = None
    ) -> WorkerProcess:
        worker = WorkerProcess(name, settings, tmp_path / f"{name}.log", faust_env=faust_env or {})
        workers.append(worker)
        return worker

    try:
        yield make
    finally:
        for worker in workers:
            worker.stop()
