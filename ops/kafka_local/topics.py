"""The application's topics and ACLs on any broker the settings name (see
:mod:`ops.kafka_local`)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ops.kafka_local.artifacts import libs_dir
from ops.kafka_local.broker import _java
from ops.kafka_local.config import (
    SCRAM,
    KafkaLocalError,
    SaslConfig,
    TlsConfig,
    _jaas,
    client_protocol,
)
from settings import Settings

log = logging.getLogger(__name__)

ACLS_JAVA = Path(__file__).resolve().parent.parent / "kafka" / "Acls.java"
# Kafka error codes met when creating topics.
_TOPIC_ALREADY_EXISTS = 36


@dataclass(frozen=True)
class TopicResult:
    """Outcome for one topic: ``created``, ``exists`` or ``mismatch`` (wrong partition count)."""

    name: str
    partitions: int
    actual_partitions: int
    outcome: str

    def describe(self) -> str:
        if self.outcome == "mismatch":
            return (
                f"{self.name}: EXISTS WITH {self.actual_partitions} PARTITIONS, settings want "
                f"{self.partitions} (keyed state needs the configured count; delete and "
                "recreate the topic, or set CLICKSIGNALS_PARTITIONS to match)"
            )
        return f"{self.name}: {self.outcome} ({self.actual_partitions} partitions)"


def topic_specs(settings: Settings) -> dict[str, int]:
    """The application's topics (:meth:`settings.Topics.names`) and their partition counts."""
    return {name: settings.topics.partitions_of(name) for name in settings.topics.names()}


async def _partition_counts(
    admin: AIOKafkaAdminClient, names: Iterable[str], timeout_s: float
) -> dict[str, int]:
    """Partition counts of ``names`` once each is in the broker's metadata with leaders.

    The controller acknowledges CreateTopics before the broker's metadata cache has applied
    the new records, so right after a create a topic can be listed yet not describable; poll
    (bounded by ``timeout_s``) until every topic is fully visible. Topics still not visible
    at the deadline are left out.
    """
    wanted = list(names)
    counts: dict[str, int] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        for topic in await admin.describe_topics([n for n in wanted if n not in counts]):
            partitions = topic.get("partitions") or []
            if (
                topic.get("error_code", 0) == 0
                and partitions
                and all(p.get("leader", -1) >= 0 for p in partitions)
            ):
                counts[topic["topic"]] = len(partitions)
        if len(counts) == len(wanted) or time.monotonic() >= deadline:
            return counts
        await asyncio.sleep(0.1)


async def ensure_topics(
    settings: Settings,
    specs: Mapping[str, int] | None = None,
    *,
    replication_factor: int | None = None,
    timeout_s: float = 30.0,
) -> list[TopicResult]:
    """Create the topics in ``specs`` (default: :func:`topic_specs`) that do not exist yet.

    Existing topics are fine; one whose partition count differs from the wanted count is
    reported as ``mismatch`` (and logged as a warning), never altered.
    """
    specs = dict(topic_specs(settings) if specs is None else specs)
    rf = settings.topics.replication_factor if replication_factor is None else replication_factor
    admin = AIOKafkaAdminClient(
        **settings.kafka.client_kwargs(), request_timeout_ms=int(timeout_s * 1000)
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in specs if name not in existing]
        created: set[str] = set()
        if missing:
            response = await admin.create_topics(
                [NewTopic(name, specs[name], rf) for name in missing],
                timeout_ms=int(timeout_s * 1000),
            )
            failures = []
            for entry in response.topic_errors:
                name, code = entry[0], entry[1]
                message = entry[2] if len(entry) > 2 else None
                if code == 0:
                    created.add(name)
                elif code != _TOPIC_ALREADY_EXISTS:  # lost a race: someone else created it
                    failures.append(f"{name}: error {code} {message or ''}".strip())
            if failures:
                raise KafkaLocalError("creating topics failed: " + "; ".join(failures))
        counts = await _partition_counts(admin, specs, timeout_s)
    finally:
        await admin.close()

    invisible = sorted(set(specs) - set(counts))
    if invisible:
        raise KafkaLocalError(
            f"topics not visible in the broker's metadata after {timeout_s} s: "
            + ", ".join(invisible)
        )
    results = []
    for name, wanted in specs.items():
        actual = counts[name]
        if name in created:
            outcome = "created"
        elif actual == wanted:
            outcome = "exists"
        else:
            outcome = "mismatch"
        result = TopicResult(name, wanted, actual, outcome)
        if outcome == "mismatch":
            log.warning("topic %s", result.describe())
        else:
            log.info("topic %s", result.describe())
        results.append(result)
    return results


@dataclass(frozen=True)
class AclSpec:
    """One ALLOW ACL: ``operation`` (e.g. ``ALL``, ``READ``) on a resource for ``principal``."""

    resource_type: str
    """``TOPIC``, ``GROUP``, ``CLUSTER``, ``TRANSACTIONAL_ID``."""
    name: str
    principal: str
    """``User:<name>``."""
    operation: str
    pattern: str = "LITERAL"
    """``LITERAL`` or ``PREFIXED``."""

    def arg(self) -> str:
        return f"{self.resource_type},{self.pattern},{self.name},{self.principal},{self.operation}"


def create_acls(
    settings: Settings,
    sasl: SaslConfig,
    bootstrap: str,
    acls: Iterable[AclSpec],
    tls: TlsConfig | None = None,
) -> None:
    """Grant ``acls`` on the broker at ``bootstrap`` as the admin user of ``sasl``.

    Runs ``ops/kafka/Acls.java`` (Kafka's Admin client) with the broker's jars; the admin's
    credentials go to it on stdin, so they are in no process listing. ``tls``: the broker was
    started with it (SASL_SSL); the tool trusts its CA (and shows the probe's certificate).
    """
    specs = [a.arg() for a in acls]
    jaas = _jaas(
        "org.apache.kafka.common.security.scram.ScramLoginModule",
        sasl.admin_user,
        sasl.admin_password,
    )
    protocol = client_protocol(sasl, tls)
    client = f"security.protocol={protocol}\nsasl.mechanism={SCRAM}\nsasl.jaas.config={jaas}\n"
    if tls is not None:
        ca_file = Path(tls.ca_file).resolve()
        client += f"ssl.truststore.type=PEM\nssl.truststore.location={ca_file}\n"
        if tls.probe_certfile is not None:
            client += (
                "ssl.keystore.type=PEM\n"
                f"ssl.keystore.location={Path(tls.probe_certfile).resolve()}\n"
            )
    cmd = [_java(), "-cp", str(libs_dir(settings).resolve() / "*"), str(ACLS_JAVA), bootstrap]
    proc = subprocess.run(
        [*cmd, *specs], input=client, capture_output=True, text=True, check=False, timeout=120
    )
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).replace(sasl.admin_password.reveal(), "***")
        raise KafkaLocalError(f"creating ACLs failed (exit {proc.returncode}):\n{output[-3000:]}")
    log.info("created %d ACLs on %s", len(specs), bootstrap)


def create_topics(settings: Settings) -> list[TopicResult]:
    """Create the application's topics (see :func:`ensure_topics`) from synchronous code."""
    return asyncio.run(ensure_topics(settings))
