"""Tests of ``ops.kafka_local`` and ``ops.cli``: unit tests without a broker, then the Kafka
tier against the session's real broker (``@pytest.mark.kafka``)."""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ops import cli, kafka_local
from settings import Settings
from tests.conftest import REPO_ROOT, KafkaTestBroker, run_sync, unique_name

# --------------------------------------------------------------------------------------------
# Unit tests (no broker)
# --------------------------------------------------------------------------------------------


def _parse(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {k: v for k, v in pairs}


def test_server_properties_is_single_node_kraft_on_loopback(tmp_path: Path) -> None:
    props = kafka_local.server_properties(
        Settings.from_flat(partitions=6), tmp_path, port=19092, controller_port=19093
    )
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert Path(props["log.dirs"]).parent == tmp_path.resolve()
    assert props["num.partitions"] == "6"
    assert props["auto.create.topics.enable"] == "false"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
    ):
        assert props[key] == "1", key
    # Every listener binds to loopback only.
    for listener in props["listeners"].split(","):
        assert "//127.0.0.1:" in listener


def test_rendered_properties_round_trip(tmp_path: Path) -> None:
    props = kafka_local.server_properties(Settings(), tmp_path, 1, 2)
    assert _parse(kafka_local.render_properties(props)) == props


def test_pom_pins_kafka_4() -> None:
    assert kafka_local.kafka_version() == "4.1.1"
    pom = kafka_local.POM_PATH.read_text()
    assert "<artifactId>kafka_2.13</artifactId>" in pom
    assert "log4j-slf4j-impl" in pom  # without a binding the broker log stays empty


def test_cluster_id_is_a_kafka_uuid() -> None:
    for _ in range(200):
        cid = kafka_local.new_cluster_id()
        assert len(cid) == 22 and not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def test_topic_specs_cover_the_application_topics() -> None:
    settings = Settings.from_flat(partitions=3)
    specs = kafka_local.topic_specs(settings)
    assert specs == {
        settings.topics.clickstream: 3,
        settings.topics.demand: 3,
        settings.topics.churn: 3,
        settings.topics.dead_letter: 3,
        settings.topics.bid_adjustments: 3,
        settings.topics.churn_alerts: 3,
        settings.topics.outcomes: 3,
        settings.topics.quality: 3,
        # The worker's re-keying topic is created up front too, with the same count.
        settings.topics.routed: 3,
        # And the online evaluation's parts topic, with one partition (sent in close order).
        settings.topics.quality_parts: 1,
        # The category demand's parts topic likewise, and its output topic.
        settings.topics.category_parts: 1,
        settings.topics.category_demand: 3,
        # The planner's input (stock) and output.
        settings.topics.stock_levels: 3,
        settings.topics.reorder_suggestions: 3,
    }


def test_free_port_is_free() -> None:
    assert kafka_local.port_is_free(kafka_local.free_port())


def test_fetch_is_skipped_when_marker_matches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings.from_flat(kafka_home=tmp_path)
    libs = kafka_local.libs_dir(settings)
    libs.mkdir(parents=True)
    (libs / "kafka_2.13-4.1.1.jar").write_bytes(b"")
    assert not kafka_local.artifacts_ready(settings)
    digest = kafka_local.artifacts._pom_digest(kafka_local.POM_PATH)
    (libs / kafka_local.MARKER_NAME).write_text(
        f'{{"kafka_version": "4.1.1", "pom_sha256": "{digest}"}}'
    )
    assert kafka_local.artifacts_ready(settings)
    monkeypatch.setattr(shutil, "which", lambda _name: None)  # mvn would fail
    assert kafka_local.fetch_artifacts(settings) == libs


def test_status_and_stop_without_a_broker(tmp_path: Path) -> None:
    found = kafka_local.status(tmp_path)
    assert not found.running and found.state is None
    assert "no broker" in found.describe()
    assert kafka_local.stop(tmp_path) is False


def test_stop_never_signals_a_pid_that_is_not_its_broker(tmp_path: Path) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / kafka_local.PID_FILE).write_text(f"{other.pid}\n")
        with pytest.raises(kafka_local.KafkaLocalError, match="not this data dir's broker"):
            kafka_local.stop(tmp_path)
        assert other.poll() is None  # still running: untouched
        assert not (tmp_path / kafka_local.PID_FILE).exists()
    finally:
        other.kill()
        other.wait()


# --------------------------------------------------------------------------------------------
# Kafka tier (real broker)
# --------------------------------------------------------------------------------------------


async def _round_trip(bootstrap: str, topic: str, n: int) -> list[tuple[bytes, bytes]]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(n):
            await producer.send(topic, key=f"user-{i % 3}".encode(), value=f"click-{i}".encode())
        await producer.flush()
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        got: list[tuple[bytes, bytes]] = []
        deadline = time.monotonic() + 20
        while len(got) < n and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                got += [(r.key or b"", r.value or b"") for r in records]
        return got
    finally:
        await consumer.stop()


@pytest.mark.kafka
def test_produce_consume_round_trip(kafka_bootstrap: str, make_topic: Callable[..., str]) -> None:
    topic = make_topic("roundtrip", 1)
    got = run_sync(_round_trip(kafka_bootstrap, topic, 25))
    assert got == [(f"user-{i % 3}".encode(), f"click-{i}".encode()) for i in range(25)]


@pytest.mark.kafka
def test_create_topics_is_idempotent_and_reports_mismatch(kafka_settings: Settings) -> None:
    # The app id too: it names the worker's re-keying topic.
    settings = kafka_settings.isolated(unique_name("x"), partitions=2)
    n = len(kafka_local.topic_specs(settings))
    first = run_sync(kafka_local.ensure_topics(settings))
    assert [r.outcome for r in first] == ["created"] * n
    assert {r.name for r in first} == set(kafka_local.topic_specs(settings))
    specs = kafka_local.topic_specs(settings)
    second = run_sync(kafka_local.ensure_topics(settings))
    assert {r.name: (r.outcome, r.actual_partitions) for r in second} == {
        name: ("exists", count) for name, count in specs.items()
    }
    # Another partition count: every keyed topic mismatches; the one-partition quality and
    # category parts topics keep their one.
    third = run_sync(kafka_local.ensure_topics(settings.with_overrides(partitions=3)))
    single = {settings.topics.quality_parts, settings.topics.category_parts}
    assert {r.name: (r.outcome, r.actual_partitions) for r in third} == {
        name: ("exists", 1) if name in single else ("mismatch", 2) for name in specs
    }
    assert len(third) == n
    assert "EXISTS WITH 2 PARTITIONS" in third[0].describe()


@pytest.mark.kafka
def test_isolated_settings_topics_exist(isolated_kafka_settings: Settings) -> None:
    again = run_sync(kafka_local.ensure_topics(isolated_kafka_settings))
    assert {r.outcome for r in again} == {"exists"}


@pytest.mark.kafka
def test_status_reports_running(
    own_kafka_broker: KafkaTestBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    assert own_kafka_broker.data_dir is not None
    found = kafka_local.status(own_kafka_broker.data_dir)
    assert found.running and found.answering
    assert found.state is not None and found.state.bootstrap == own_kafka_broker.bootstrap
    assert cli.main(["kafka", "status", "--data-dir", str(own_kafka_broker.data_dir)]) == 0
    out = capsys.readouterr().out
    assert "broker running" in out
    assert f"export CLICKSIGNALS_BROKER_URL=kafka://{own_kafka_broker.bootstrap}" in out


@pytest.mark.kafka
def test_second_start_is_a_noop(own_kafka_broker: KafkaTestBroker) -> None:
    assert own_kafka_broker.data_dir is not None
    before = kafka_local.status(own_kafka_broker.data_dir, probe=False).state
    assert before is not None
    started = time.monotonic()
    again = kafka_local.start(Settings(), own_kafka_broker.data_dir, fetch=False)
    assert again == before
    assert time.monotonic() - started < 10
    with pytest.raises(kafka_local.KafkaLocalError, match="stop it before"):
        kafka_local.start(Settings(), own_kafka_broker.data_dir, port=before.port + 1, fetch=False)


@pytest.mark.kafka
def test_failed_start_reports_the_broker_log(
    own_kafka_broker: KafkaTestBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A JVM option the JVM rejects: storage formats fine, then the broker process dies at once.
    monkeypatch.setattr(kafka_local.broker, "JVM_OPTS", ("-XX:+NoSuchOptionForThisTest",))
    settings = Settings.from_flat(kafka_home=REPO_ROOT / ".cache" / "kafka")
    with pytest.raises(kafka_local.KafkaLocalError, match="NoSuchOptionForThisTest"):
        kafka_local.start(settings, tmp_path, fetch=False, timeout_s=30)
    assert not (tmp_path / kafka_local.PID_FILE).exists()
    assert not kafka_local.status(tmp_path).running
