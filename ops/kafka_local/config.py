"""The local broker's configuration: free ports, cluster id, SASL and TLS options, and the
``server.properties`` they make (see :mod:`ops.kafka_local`)."""

from __future__ import annotations

import base64
import logging
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from settings import Secret, Settings

log = logging.getLogger(__name__)

SCRAM = "SCRAM-SHA-256"
SERVER_PROPERTIES = "server.properties"
LOG4J_PROPERTIES = "log4j2.properties"
LOG4J_PROPERTIES = "log4j2.properties"
LOG_DIRS = "kraft-logs"
NODE_ID = 1
HOST = "127.0.0.1"


class KafkaLocalError(RuntimeError):
    """The local broker could not be fetched, started, or stopped; the message says why."""


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` nothing listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = HOST) -> bool:
    """Whether ``host:port`` can be listened on (SO_REUSEADDR, as the JVM's acceptor uses)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def new_cluster_id() -> str:
    """A Kafka ``Uuid`` string (22 chars of URL-safe base64), never starting with ``-``."""
    while True:
        raw = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not raw.startswith("-"):
            return raw


@dataclass(frozen=True)
class SaslConfig:
    """Opt-in access control of a local broker: SCRAM users and the admin (super user)."""

    admin_user: str
    admin_password: Secret
    users: Mapping[str, Secret]
    """Further SCRAM-SHA-256 users (no rights until :func:`create_acls` grants them some)."""

    def client_kwargs(self, bootstrap: str) -> dict[str, Any]:
        """aiokafka connection options of the admin user."""
        return {
            "bootstrap_servers": bootstrap,
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": SCRAM,
            "sasl_plain_username": self.admin_user,
            "sasl_plain_password": self.admin_password.reveal(),
        }


TLS_CLIENT_AUTH = ("required", "requested", "none")


@dataclass(frozen=True)
class TlsConfig:
    """Opt-in TLS on a local broker's client listener (see the module doc); PEM files."""

    keystore: Path
    """The broker's private key (unencrypted PKCS#8) followed by its certificate chain. The
    certificate must name 127.0.0.1 (a SAN): clients check the host they dialled."""
    ca_file: Path
    """CA certificate(s): the broker trusts client certificates they signed, and the readiness
    probe trusts the broker's certificate through them."""
    client_auth: str = "none"
    """``required`` (mutual TLS: a client without a certificate the CA signed is refused),
    ``requested`` or ``none``."""
    probe_certfile: Path | None = None
    """Client certificate and key (one PEM file) of the readiness probe, needed when
    ``client_auth`` is ``required``."""

    def __post_init__(self) -> None:
        if self.client_auth not in TLS_CLIENT_AUTH:
            raise ValueError(f"client_auth={self.client_auth!r}: use one of {TLS_CLIENT_AUTH}")


def client_protocol(sasl: SaslConfig | None, tls: TlsConfig | None) -> str:
    """The security protocol of the client listener :func:`start` opens for these options."""
    if sasl is not None:
        return "SASL_SSL" if tls is not None else "SASL_PLAINTEXT"
    return "SSL" if tls is not None else "PLAINTEXT"


def probe_settings(
    settings: Settings, bootstrap: str, sasl: SaslConfig | None, tls: TlsConfig | None
) -> Settings:
    """Settings of a client that can reach a broker started with ``sasl``/``tls`` (the admin).

    Connection options then come from :mod:`settings.kafka`, as every other client's do.
    """
    # Whatever the caller's settings say about security is replaced: the probe speaks exactly
    # the listener's protocol (a CA file left in the environment must not break a plain start).
    changes: dict[str, Any] = {
        "broker_url": f"kafka://{bootstrap}",
        "security_protocol": client_protocol(sasl, tls),
        "sasl_username": "",
        "sasl_password": Secret(""),
        "ssl_cafile": None,
        "ssl_certfile": None,
        "ssl_keyfile": None,
        "ssl_key_password": Secret(""),
    }
    if sasl is not None:
        changes.update(
            sasl_mechanism=SCRAM, sasl_username=sasl.admin_user, sasl_password=sasl.admin_password
        )
    if tls is not None:
        changes.update(ssl_cafile=tls.ca_file, ssl_certfile=tls.probe_certfile)
    return settings.with_overrides(**changes)


def _tls_properties(tls: TlsConfig) -> dict[str, str]:
    return {
        # PEM stores straight from files: no keytool step, no keystore password to keep.
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(Path(tls.keystore).resolve()),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(Path(tls.ca_file).resolve()),
        "ssl.client.auth": tls.client_auth,
        "ssl.enabled.protocols": "TLSv1.3,TLSv1.2",
        # The broker's own connections to its inter-broker listener check the name too.
        "ssl.endpoint.identification.algorithm": "https",
    }


def _jaas(module: str, user: str, password: Secret, extra: str = "") -> str:
    quoted = password.reveal().replace("\\", "\\\\").replace('"', '\\"')
    return f'{module} required username="{user}" password="{quoted}"{extra};'


def _sasl_properties(sasl: SaslConfig, listener: str) -> dict[str, str]:
    """SCRAM on the client listener ``listener`` (its name is its protocol), PLAIN on the
    controller's, and the authorizer (see the module doc)."""
    plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
    admin_pw = sasl.admin_password.reveal().replace('"', '\\"')
    return {
        "sasl.enabled.mechanisms": SCRAM,
        "sasl.mechanism.inter.broker.protocol": SCRAM,
        "sasl.mechanism.controller.protocol": "PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
        "listener.name.controller.plain.sasl.jaas.config": _jaas(
            plain,
            sasl.admin_user,
            sasl.admin_password,
            f' user_{sasl.admin_user}="{admin_pw}"',
        ),
        f"listener.name.{listener.lower()}.scram-sha-256.sasl.jaas.config": _jaas(
            scram, sasl.admin_user, sasl.admin_password
        ),
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": f"User:{sasl.admin_user}",
        "allow.everyone.if.no.acl.found": "false",
    }


def server_properties(
    settings: Settings,
    data_dir: Path,
    port: int,
    controller_port: int,
    sasl: SaslConfig | None = None,
    tls: TlsConfig | None = None,
) -> dict[str, str]:
    """The broker's ``server.properties`` as an ordered mapping (loopback-only, KRaft).

    The client listener is named after its protocol (:func:`client_protocol`).
    """
    data_dir = Path(data_dir).resolve()
    props = {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        "controller.quorum.voters": f"{NODE_ID}@{HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir / LOG_DIRS),
        "num.partitions": str(settings.topics.partitions),
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "delete.topic.enable": "true",
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
        "log.retention.hours": "168",
        "log.segment.bytes": str(64 * 1024 * 1024),
        "log.retention.check.interval.ms": "300000",
    }
    listener = client_protocol(sasl, tls)
    controller = "SASL_PLAINTEXT" if sasl is not None else "PLAINTEXT"
    props.update(
        {
            "listeners": f"{listener}://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
            "advertised.listeners": f"{listener}://{HOST}:{port}",
            "inter.broker.listener.name": listener,
            "listener.security.protocol.map": f"CONTROLLER:{controller},{listener}:{listener}",
        }
    )
    if sasl is not None:
        props.update(_sasl_properties(sasl, listener))
    if tls is not None:
        props.update(_tls_properties(tls))
    return props


def render_properties(props: Mapping[str, str]) -> str:
    lines = ["# Generated by clicksignals (ops/kafka_local); rewritten on every start."]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


LOG4J2_CONFIG = """\
# Generated by clicksignals (ops/kafka_local): everything to stdout, which start()
# redirects to broker.log in the data directory.
status = warn
name = clicksignals-local-kafka
appender.out.type = Console
appender.out.name = STDOUT
appender.out.target = SYSTEM_OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
"""
