"""Shared test fixtures: the Kafka tier's broker and topics, and the real-data tier's directory.

Kafka tier (tests marked ``@pytest.mark.kafka``): the session fixture ``kafka_bootstrap`` uses
the broker named by ``CLICKSIGNALS_TEST_BOOTSTRAP`` (``host:port``, PLAINTEXT) when set, else
starts the project's own single-node broker (``ops.kafka_local``) on a free port in a temporary
directory and stops it when the session ends. If no broker can be had the Kafka tests *skip*
with the reason locally, and *fail* when ``CI=true``: a CI run must never pass without them.

Real-data tier (``@pytest.mark.realdata``): ``shared_data`` is ``<repo>/../shared/data`` or a
skip saying the tier was not run.

The two variables above are test-harness switches, not application settings, so they are read
here through :func:`_harness_env` -- the one place outside ``settings`` that reads the
environment, and only in tests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest

from ops import kafka_local
from settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
BROKER_START_TIMEOUT_S = 90.0

T = TypeVar("T")


def _harness_env(name: str) -> str | None:
    """Test-harness switches only (``CI``, ``CLICKSIGNALS_TEST_BOOTSTRAP``); see module doc."""
    return os.environ.get(name)


def in_ci() -> bool:
    return (_harness_env("CI") or "").strip().lower() in {"1", "true", "yes"}


def _unavailable(reason: str) -> NoReturn:
    """Fail (CI) or skip (locally) the Kafka tier with ``reason``."""
    if in_ci():
        pytest.fail(f"Kafka tier cannot run in CI: {reason}", pytrace=False)
    pytest.skip(f"Kafka tier not run: {reason}")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a fresh loop in a worker thread.

    Works from plain tests and from code already inside a running event loop.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


@dataclass(frozen=True)
class KafkaTestBroker:
    """The session's broker: its bootstrap, and its data dir when the project started it."""

    bootstrap: str
    data_dir: Path | None

    @property
    def own(self) -> bool:
        return self.data_dir is not None


def _base_settings() -> Settings:
    """Hermetic settings for tests (defaults, never the developer's CLICKSIGNALS_* values)."""
    return Settings.from_flat(kafka_home=REPO_ROOT / ".cache" / "kafka")


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaTestBroker]:
    external = (_harness_env("CLICKSIGNALS_TEST_BOOTSTRAP") or "").strip()
    if external:
        kwargs = {"bootstrap_servers": external, "security_protocol": "PLAINTEXT"}
        if not run_sync(kafka_local.broker_answers(kwargs, timeout_s=10.0)):
            _unavailable(f"CLICKSIGNALS_TEST_BOOTSTRAP={external} does not answer")
        yield KafkaTestBroker(external, None)
        return

    data_dir = tmp_path_factory.mktemp("kafka")
    try:
        state = kafka_local.start(
            _base_settings(), data_dir, port=None, timeout_s=BROKER_START_TIMEOUT_S
        )
    except Exception as exc:  # missing java/mvn/network, port trouble, broker crash
        with contextlib.suppress(Exception):
            kafka_local.stop(data_dir)
        _unavailable(f"could not start the project's broker: {exc}")
    try:
        yield KafkaTestBroker(state.bootstrap, data_dir)
    finally:
        kafka_local.stop(data_dir)


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaTestBroker) -> str:
    """``host:port`` of a broker that answers (see module doc for where it comes from)."""
    return kafka_broker.bootstrap


@pytest.fixture
def own_kafka_broker(kafka_broker: KafkaTestBroker) -> KafkaTestBroker:
    """The session broker when the project started it (skips for an external broker)."""
    if not kafka_broker.own:
        pytest.skip("needs the project's own broker, not CLICKSIGNALS_TEST_BOOTSTRAP")
    return kafka_broker


@pytest.fixture(scope="session")
def kafka_settings(kafka_bootstrap: str) -> Settings:
    """Default settings with ``broker_url`` pointing at the session broker."""
    return _base_settings().with_overrides(broker_url=f"kafka://{kafka_bootstrap}")


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_topic(kafka_settings: Settings) -> Callable[..., str]:
    """Factory: ``make_topic(prefix="t", partitions=1) -> name`` creates a uniquely named topic."""

    def make(prefix: str = "t", partitions: int = 1) -> str:
        name = unique_name(prefix)
        run_sync(kafka_local.ensure_topics(kafka_settings, {name: partitions}))
        return name

    return make


@pytest.fixture
def isolated_kafka_settings(kafka_settings: Settings) -> Settings:
    """``kafka_settings`` whose six application topics have names unique to this test, created
    with ``settings.topics.partitions`` partitions (so tests never read each other's records)."""
    suffix = uuid.uuid4().hex[:10]
    settings = kafka_settings.isolated(suffix)
    run_sync(kafka_local.ensure_topics(settings))
    return settings


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``<repo>/../shared/data`` (the real-data tier's input), or skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real-data tier not run: ../shared/data not found ({SHARED_DATA})")
    return SHARED_DATA
