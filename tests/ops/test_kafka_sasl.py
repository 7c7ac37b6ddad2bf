"""Access control: a dedicated local broker with SASL/SCRAM-SHA-256 and ACLs, and the worker on it.

The broker (``ops.kafka_local.start(..., sasl=...)``) knows three SCRAM users: the admin (super
user), the worker's user, whose ACLs cover exactly its app id's topics and consumer group, and
an intruder with a password but no ACLs. Checked: the worker connects with the credentials from
its settings and processes a stream; a client without credentials, with a wrong password, or
without ACLs is refused; the password never appears in the worker's log. Also, without a broker:
the worker's web views bind to 127.0.0.1 by default, and the user view is read-only and refuses
oversized ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from ingest.adapters import to_wire_bytes
from ingest.generator import generate_clickstream
from ops import kafka_local
from settings import Secret, Settings, child_environment
from tests.conftest import _base_settings, _unavailable, run_sync, unique_name
from tests.support.worker_harness import (
    REPO_ROOT,
    WorkerProcess,
    produce,
    read_topic,
    report,
    wait_until_done,
    worker_settings,
)

WorkerFactory = Callable[..., WorkerProcess]


@contextlib.contextmanager
def sasl_broker(data_dir: Path, sasl: kafka_local.SaslConfig) -> Iterator[kafka_local.BrokerState]:
    try:
        state = kafka_local.start(_base_settings(), data_dir, timeout_s=90.0, sasl=sasl)
    except Exception as exc:  # no java, ports: the conftest's rule (fail in CI, skip locally)
        with contextlib.suppress(Exception):
            kafka_local.stop(data_dir)
        _unavailable(f"could not start a SASL broker: {exc}")
    try:
        yield state
    finally:
        kafka_local.stop(data_dir)


async def _refused(kwargs: dict[str, Any], topic: str) -> str:
    """Try to read ``topic``; returns why it failed (raises if it worked)."""
    consumer = AIOKafkaConsumer(
        topic,
        **kwargs,
        group_id=unique_name("probe"),
        auto_offset_reset="earliest",
        request_timeout_ms=5000,
        metadata_max_age_ms=1000,
    )
    try:
        await asyncio.wait_for(consumer.start(), 15)
        records = await asyncio.wait_for(consumer.getmany(timeout_ms=3000), 15)
        if consumer.partitions_for_topic(topic) and any(records.values()):
            raise AssertionError(f"read {topic} with {kwargs.get('security_protocol')}")
        return "no records / no metadata"
    except (KafkaError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()


@pytest.mark.kafka
def test_worker_on_a_sasl_broker_with_acls(worker_factory: WorkerFactory, tmp_path: Path) -> None:
    # Fixtures of tests/stream/conftest.py are not visible here; the factory below is local.
    sasl = kafka_local.SaslConfig(
        admin_user="admin",
        admin_password=Secret(secrets.token_hex(16)),
        users={
            "clicksignals": Secret(secrets.token_hex(16)),
            "intruder": Secret(secrets.token_hex(16)),
        },
    )
    worker_pw = sasl.users["clicksignals"]
    t0 = time.monotonic()
    with sasl_broker(tmp_path / "broker", sasl) as broker:
        started = time.monotonic() - t0
        app_id = f"clicksignals-{unique_name('sasl')}"
        # Every topic under the app id, so one prefixed ACL covers them and Faust's own.
        worker = _base_settings().with_overrides(
            broker_url=broker.broker_url,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-256",
            sasl_username="clicksignals",
            sasl_password=worker_pw,
            app_id=app_id,
            topic_clickstream=f"{app_id}-clickstream",
            topic_demand=f"{app_id}-demand",
            topic_churn=f"{app_id}-churn",
            topic_dead_letter=f"{app_id}-dlq",
            topic_bid_adjustments=f"{app_id}-bids",
            topic_churn_alerts=f"{app_id}-alerts",
        )
        admin = worker.with_overrides(
            sasl_username=sasl.admin_user, sasl_password=sasl.admin_password
        )
        run_sync(kafka_local.ensure_topics(admin))
        principal = "User:clicksignals"
        kafka_local.create_acls(
            _base_settings(),
            sasl,
            broker.bootstrap,
            [
                kafka_local.AclSpec("TOPIC", app_id, principal, "ALL", "PREFIXED"),
                kafka_local.AclSpec("GROUP", app_id, principal, "ALL", "PREFIXED"),
                kafka_local.AclSpec("CLUSTER", "kafka-cluster", principal, "DESCRIBE"),
            ],
        )

        s = worker_settings(worker, tmp_path / "w", log_level="DEBUG")
        proc = worker_factory(s, "sasl")
        proc.start()
        proc.wait_ready()
        records = to_wire_bytes(generate_clickstream(n_users=50, days=30, seed=26))
        run_sync(produce(s, s.topics.clickstream, records))
        wait_until_done(proc, expect_min_source=len(records))
        demand = run_sync(read_topic(s, s.topics.demand))
        assert len(demand) > 100

        bootstrap = broker.bootstrap
        refusals = {
            "no credentials": run_sync(
                _refused(
                    {"bootstrap_servers": bootstrap, "security_protocol": "PLAINTEXT"},
                    s.topics.demand,
                )
            ),
            "wrong password": run_sync(
                _refused(
                    worker.with_overrides(sasl_password=Secret("wrong")).kafka.client_kwargs(),
                    s.topics.demand,
                )
            ),
            "no ACLs": run_sync(
                _refused(
                    worker.with_overrides(
                        sasl_username="intruder", sasl_password=sasl.users["intruder"]
                    ).kafka.client_kwargs(),
                    s.topics.demand,
                )
            ),
        }
        report(
            f"sasl: broker up in {started:.1f} s; {len(records)} events -> {len(demand)} "
            f"demand signals; refusals: {refusals}"
        )
        assert "KafkaConnectionError" in refusals["no credentials"]
        assert "KafkaConnectionError" in refusals["wrong password"]
        assert "TopicAuthorizationFailed" in refusals["no ACLs"]

        # The user view: read-only, bounded ids (against the running worker).
        user = records[0][0].decode()  # type: ignore[union-attr]
        assert _http(proc, "GET", f"/users/{user}")[0] in {200, 404}
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            assert _http(proc, method, f"/users/{user}")[0] == 405, method
        assert _http(proc, "GET", "/users/" + "u" * 300)[0] == 400
        proc.stop()
        log_text = proc.log_text()
        assert "SASL" in log_text or "sasl" in log_text  # DEBUG logs talk about the handshake
        for secret in (worker_pw, sasl.admin_password, sasl.users["intruder"]):
            assert secret.reveal() not in log_text
        broker_log = (tmp_path / "broker" / kafka_local.LOG_FILE).read_text(errors="replace")
        for secret in (worker_pw, sasl.admin_password):
            assert secret.reveal() not in broker_log


def _http(worker: WorkerProcess, method: str, path: str) -> tuple[int, bytes]:
    request = urllib.request.Request(worker.url + path, method=method, data=b"{}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_web_views_bind_to_loopback_unless_configured(tmp_path: Path) -> None:
    """Default settings: the web server binds 127.0.0.1 (checked on the app's own config)."""
    code = "import stream.app as a; print(a.app.conf.web_bind, a.app.conf.web_host)"
    for env_host, expected in ((None, "127.0.0.1 127.0.0.1"), ("0.0.0.0", "0.0.0.0 0.0.0.0")):
        settings = Settings.from_flat(broker_url="kafka://127.0.0.1:9", data_dir=tmp_path / "d")
        env = child_environment(settings)
        if env_host is None:
            env.pop("CLICKSIGNALS_WEB_HOST")
        else:
            env["CLICKSIGNALS_WEB_HOST"] = env_host
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert out.stdout.strip() == expected, out.stdout


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[WorkerFactory]:
    workers: list[WorkerProcess] = []

    def make(settings: Settings, name: str = "worker") -> WorkerProcess:
        w = WorkerProcess(name, settings, tmp_path / f"{name}.log")
        workers.append(w)
        return w

    try:
        yield make
    finally:
        for w in workers:
            w.stop()
