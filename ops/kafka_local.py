"""The project's own single-node Apache Kafka broker (KRaft combined mode) and its topics.

This module owns everything about the *local* broker: fetching its jars from Maven Central
(:func:`fetch_artifacts`, driven by ``ops/kafka/pom.xml``), writing its ``server.properties``
and log4j2 configuration, formatting its storage, starting it as a detached JVM in its own
process group (:func:`start`), reporting on it (:func:`status`), ending exactly the process it
started (:func:`stop`), and creating the application's topics on any broker named by the
settings (:func:`create_topics` / :func:`ensure_topics`).

Files kept in a broker's data directory::

    server.properties   log4j2.properties   broker.log   kafka.pid   state.json
    kraft-logs/         (log.dirs: the KRaft metadata log and all topic partitions)

The quorum is a *static* single voter (``controller.quorum.voters=1@127.0.0.1:<cport>``),
not a ``--standalone`` dynamic quorum: with a dynamic quorum the controller endpoint is
recorded in the metadata log, so a restart on different ports would not find its controller.
With static voters the configuration is the source of truth and any free ports work.

Access control (opt-in, ``start(..., sasl=SaslConfig(...))``): the client listener becomes
``SASL_PLAINTEXT`` with SCRAM-SHA-256, the controller listener SASL/PLAIN (KRaft cannot
authenticate controllers with SCRAM: its credentials live in the metadata log the controller
serves), ``StandardAuthorizer`` with no ACL meaning no access, and only the admin user a super
user. SCRAM users are written into the metadata log when the storage is formatted
(``--add-scram``); :func:`create_acls` grants access with Kafka's own Admin client
(``ops/kafka/Acls.java``, run as a single-file Java program, credentials on stdin). Passwords
are kept in ``server.properties`` (mode 0600) and passed to the one-off format process on its
command line: fine for a loopback test broker, not a production set-up.

TLS (opt-in, ``start(..., tls=TlsConfig(...))``): the client listener speaks TLS -- ``SSL``, or
``SASL_SSL`` when ``sasl`` is given too (what managed Kafka services offer) -- with the broker's
key and certificate chain and its trusted CAs read from PEM files the caller made (the tests make
them at test time; nothing secret is kept in the repository), and client certificates
``required`` or not. A plaintext client is refused on that listener. The controller listener
stays unencrypted on loopback: only the broker's own controller talks to it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from settings import Secret, Settings

log = logging.getLogger(__name__)

POM_PATH = Path(__file__).resolve().parent / "kafka" / "pom.xml"
ACLS_JAVA = Path(__file__).resolve().parent / "kafka" / "Acls.java"
SCRAM = "SCRAM-SHA-256"
MARKER_NAME = ".fetched.json"
PID_FILE = "kafka.pid"
STATE_FILE = "state.json"
LOG_FILE = "broker.log"
SERVER_PROPERTIES = "server.properties"
LOG4J_PROPERTIES = "log4j2.properties"
LOG_DIRS = "kraft-logs"
NODE_ID = 1
HOST = "127.0.0.1"
DEFAULT_START_TIMEOUT_S = 60.0
DEFAULT_STOP_TIMEOUT_S = 30.0
JVM_HEAP = ("-Xms256m", "-Xmx512m")
# The JVM options kafka-run-class.sh uses for the broker, minus GC logging.
JVM_OPTS = (
    "-server",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
)
# Kafka error codes met when creating topics.
_TOPIC_ALREADY_EXISTS = 36


class KafkaLocalError(RuntimeError):
    """The local broker could not be fetched, started, or stopped; the message says why."""


# --------------------------------------------------------------------------------------------
# Artifacts
# --------------------------------------------------------------------------------------------


def kafka_version(pom: Path = POM_PATH) -> str:
    """The Kafka version ``ops/kafka/pom.xml`` pins (its ``kafka.version`` property)."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(pom).getroot().find("m:properties/m:kafka.version", ns)
    if node is None or not (node.text or "").strip():
        raise KafkaLocalError(f"{pom}: no <kafka.version> property")
    return (node.text or "").strip()


def libs_dir(settings: Settings) -> Path:
    return Path(settings.kafka_home) / "libs"


def _pom_digest(pom: Path) -> str:
    return hashlib.sha256(pom.read_bytes()).hexdigest()


def artifacts_ready(settings: Settings, pom: Path = POM_PATH) -> bool:
    """True when ``<kafka_home>/libs`` holds a complete fetch of exactly this pom."""
    marker = libs_dir(settings) / MARKER_NAME
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return bool(
        recorded.get("kafka_version") == kafka_version(pom)
        and recorded.get("pom_sha256") == _pom_digest(pom)
        and any(libs_dir(settings).glob("kafka_2.13-*.jar"))
    )


def fetch_artifacts(settings: Settings, *, force: bool = False, pom: Path = POM_PATH) -> Path:
    """Copy the broker's runtime jars from Maven Central into ``<kafka_home>/libs``.

    Idempotent: a marker file records the Kafka version and pom digest of the last complete
    fetch, and a matching marker skips Maven entirely. Returns the libs directory.
    """
    libs = libs_dir(settings)
    version = kafka_version(pom)
    if not force and artifacts_ready(settings, pom):
        log.info("Kafka %s jars already in %s", version, libs)
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaLocalError("Maven (mvn) not found on PATH; it fetches the Kafka jars")
    libs.mkdir(parents=True, exist_ok=True)
    (libs / MARKER_NAME).unlink(missing_ok=True)
    for old in libs.glob("*.jar"):  # a version change must not leave two kafka-clients
        old.unlink()
    cmd = [
        mvn,
        "-q",
        "-B",
        "-Dstyle.color=never",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={libs.resolve()}",
        "-DincludeScope=runtime",
    ]
    log.info("fetching Kafka %s jars from Maven Central into %s", version, libs)
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise KafkaLocalError(f"mvn failed (exit {proc.returncode}):\n{tail}")
    jars = sorted(p.name for p in libs.glob("*.jar"))
    if not any(j.startswith("kafka_2.13-") for j in jars):
        raise KafkaLocalError(f"mvn succeeded but no kafka_2.13 jar landed in {libs}")
    marker = {"kafka_version": version, "pom_sha256": _pom_digest(pom), "jars": jars}
    (libs / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n")
    log.info("fetched %d jars in %.1f s", len(jars), time.monotonic() - started)
    return libs


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


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
        "num.partitions": str(settings.partitions),
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
    lines = ["# Generated by clicksignals (ops/kafka_local.py); rewritten on every start."]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


LOG4J2_CONFIG = """\
# Generated by clicksignals (ops/kafka_local.py): everything to stdout, which start()
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


# --------------------------------------------------------------------------------------------
# Process bookkeeping
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerState:
    """What :func:`start` recorded about a running broker (``state.json``)."""

    pid: int
    port: int
    controller_port: int
    bootstrap: str
    data_dir: str
    cluster_id: str
    kafka_version: str
    started_at: float
    security_protocol: str = "PLAINTEXT"

    @property
    def broker_url(self) -> str:
        return f"kafka://{self.bootstrap}"


@dataclass(frozen=True)
class BrokerStatus:
    """What :func:`status` found in a data directory."""

    data_dir: str
    state: BrokerState | None
    pid_alive: bool
    answering: bool

    @property
    def running(self) -> bool:
        return self.state is not None and self.pid_alive

    def describe(self) -> str:
        if self.state is None:
            return f"no broker recorded in {self.data_dir}"
        s = self.state
        if not self.pid_alive:
            return f"broker pid {s.pid} from {self.data_dir} is not running (stale state)"
        health = "answering" if self.answering else "NOT answering metadata requests"
        return (
            f"broker running: pid {s.pid}, bootstrap {s.bootstrap}, controller port "
            f"{s.controller_port}, Kafka {s.kafka_version}, data dir {s.data_dir}, {health}"
        )


def _read_state(data_dir: Path) -> BrokerState | None:
    try:
        raw = json.loads((data_dir / STATE_FILE).read_text())
        return BrokerState(**raw)
    except (OSError, ValueError, TypeError):
        return None


def _read_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process; reaps it if it is our exited child."""
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _is_our_broker(pid: int, data_dir: Path) -> bool:
    """Guard against pid reuse: the process must be kafka.Kafka on this data dir's config."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return _pid_alive(pid)  # no procfs: cannot tell, trust the pid file
    args = [a.decode(errors="replace") for a in cmdline]
    config = str((data_dir / SERVER_PROPERTIES).resolve())
    return "kafka.Kafka" in args and config in args


def _log_tail(data_dir: Path, lines: int = 40) -> str:
    try:
        text = (data_dir / LOG_FILE).read_text(errors="replace")
    except OSError:
        return "(no broker.log)"
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------------------------
# Readiness
# --------------------------------------------------------------------------------------------


def _tcp_open(bootstrap: str, timeout: float = 0.5) -> bool:
    host, _, port = bootstrap.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


async def broker_answers(client_kwargs: Mapping[str, Any], timeout_s: float = 5.0) -> bool:
    """Whether the broker answers a metadata request listing at least one live broker."""
    admin = AIOKafkaAdminClient(
        **client_kwargs, request_timeout_ms=int(timeout_s * 1000), retry_backoff_ms=100
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        cluster = await asyncio.wait_for(admin.describe_cluster(), timeout_s)
        return bool(cluster.get("brokers"))
    except Exception as exc:  # any failure means "not (yet) answering"
        log.debug("metadata probe of %s failed: %r", client_kwargs.get("bootstrap_servers"), exc)
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


def _answers(
    bootstrap: str, timeout_s: float = 5.0, client_kwargs: Mapping[str, Any] | None = None
) -> bool:
    if not _tcp_open(bootstrap):
        return False
    kwargs = client_kwargs or {"bootstrap_servers": bootstrap, "security_protocol": "PLAINTEXT"}
    return asyncio.run(broker_answers(kwargs, timeout_s))


def _wait_ready(
    state: BrokerState,
    data_dir: Path,
    timeout_s: float,
    *,
    check_pid: bool = True,
    client_kwargs: Mapping[str, Any] | None = None,
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if check_pid and not _pid_alive(state.pid):
            raise KafkaLocalError(
                f"broker pid {state.pid} exited during start-up; tail of "
                f"{data_dir / LOG_FILE}:\n{_log_tail(data_dir)}"
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"broker at {state.bootstrap} did not answer within {timeout_s} s")
        if _answers(state.bootstrap, min(5.0, max(remaining, 0.5)), client_kwargs):
            return
        time.sleep(0.25)


# --------------------------------------------------------------------------------------------
# Start / stop / status
# --------------------------------------------------------------------------------------------


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise KafkaLocalError("java not found on PATH (Kafka 4.1 needs Java 17+)")
    return java


def _format_storage(
    java: str, classpath: str, data_dir: Path, cluster_id: str, sasl: SaslConfig | None = None
) -> None:
    """Run Kafka's StorageTool once per data dir (``meta.properties`` marks it done)."""
    if (data_dir / LOG_DIRS / "meta.properties").exists():
        log.info("storage in %s already formatted; keeping its data", data_dir / LOG_DIRS)
        return
    cmd = [
        java,
        *JVM_HEAP,
        f"-Dlog4j2.configurationFile={data_dir / LOG4J_PROPERTIES}",
        "-cp",
        classpath,
        "kafka.tools.StorageTool",
        "format",
        "--cluster-id",
        cluster_id,
        "--config",
        str(data_dir / SERVER_PROPERTIES),
    ]
    if sasl is not None:
        users = {sasl.admin_user: sasl.admin_password, **sasl.users}
        for user, password in users.items():
            cmd += ["--add-scram", f"{SCRAM}=[name={user},password={password.reveal()}]"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=data_dir)
    if proc.returncode != 0:
        raise KafkaLocalError(
            f"kafka.tools.StorageTool format failed (exit {proc.returncode}):\n"
            f"{(proc.stdout + proc.stderr).strip()}"
        )
    log.info("formatted KRaft storage: %s", proc.stdout.strip().splitlines()[-1:])


def _cluster_id(data_dir: Path) -> str:
    """The cluster id already formatted into ``data_dir`` or a new one."""
    meta = data_dir / LOG_DIRS / "meta.properties"
    with contextlib.suppress(OSError):
        for line in meta.read_text().splitlines():
            if line.startswith("cluster.id="):
                return line.split("=", 1)[1].strip()
    return new_cluster_id()


def _clear_records(data_dir: Path) -> None:
    (data_dir / PID_FILE).unlink(missing_ok=True)
    (data_dir / STATE_FILE).unlink(missing_ok=True)


def start(
    settings: Settings,
    data_dir: Path,
    port: int | None = None,
    *,
    timeout_s: float = DEFAULT_START_TIMEOUT_S,
    fetch: bool = True,
    sasl: SaslConfig | None = None,
    tls: TlsConfig | None = None,
) -> BrokerState:
    """Start the local broker on ``127.0.0.1:port`` (a free port if None) with data in ``data_dir``.

    Returns once the broker answers a metadata request (bounded by ``timeout_s``). If this data
    directory's recorded broker is alive and answering, nothing is started and its state is
    returned. On failure the new process is killed and :class:`KafkaLocalError` carries the tail
    of ``broker.log``. ``fetch`` runs :func:`fetch_artifacts` first (a no-op when done).

    ``sasl`` turns on SCRAM authentication and ACLs (see the module doc); it must be given on
    every start of that data dir (SCRAM users are created only when the storage is formatted).
    ``tls`` puts the client listener on TLS (``SSL``, or ``SASL_SSL`` with ``sasl``); the
    readiness probe then connects as a TLS client (:func:`probe_settings`).

    Synchronous (the readiness probe runs its own event loop): call it from plain code, not
    from inside a running event loop.
    """
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)

    existing = _read_state(data_dir)
    if existing is not None and _pid_alive(existing.pid) and _is_our_broker(existing.pid, data_dir):
        if port is not None and port != existing.port:
            raise KafkaLocalError(
                f"a broker from {data_dir} already runs on {existing.bootstrap} (pid "
                f"{existing.pid}); stop it before starting on port {port}"
            )
        probe = probe_settings(settings, existing.bootstrap, sasl, tls).kafka_client_kwargs()
        _wait_ready(existing, data_dir, timeout_s, client_kwargs=probe)
        log.info(
            "broker already running: pid %d, bootstrap %s (nothing started)",
            existing.pid,
            existing.bootstrap,
        )
        return existing
    if existing is not None or (data_dir / PID_FILE).exists():
        log.info("clearing stale broker records in %s", data_dir)
        _clear_records(data_dir)

    libs = fetch_artifacts(settings) if fetch else libs_dir(settings)
    if not any(libs.glob("kafka_2.13-*.jar")):
        raise KafkaLocalError(f"no Kafka jars in {libs}; run `clicksignals kafka fetch` first")
    classpath = str(libs.resolve() / "*")

    if port is None:
        port = free_port()
    elif not port_is_free(port):
        raise KafkaLocalError(f"port {HOST}:{port} is already in use")
    controller_port = free_port()
    while controller_port == port:
        controller_port = free_port()

    props = server_properties(settings, data_dir, port, controller_port, sasl, tls)
    config_path = data_dir / SERVER_PROPERTIES
    config_path.touch(mode=0o600)
    config_path.chmod(0o600)  # it holds the admin password when sasl is on
    config_path.write_text(render_properties(props))
    (data_dir / LOG4J_PROPERTIES).write_text(LOG4J2_CONFIG)

    java = _java()
    cluster_id = _cluster_id(data_dir)
    _format_storage(java, classpath, data_dir, cluster_id, sasl)

    cmd = [
        java,
        *JVM_HEAP,
        *JVM_OPTS,
        f"-Dlog4j2.configurationFile={data_dir / LOG4J_PROPERTIES}",
        f"-Dkafka.logs.dir={data_dir}",
        "-cp",
        classpath,
        "kafka.Kafka",
        str(data_dir / SERVER_PROPERTIES),
    ]
    started_at = time.time()
    t0 = time.monotonic()
    with (data_dir / LOG_FILE).open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=data_dir,
            start_new_session=True,  # own session and process group: no terminal signals
            close_fds=True,
        )
    state = BrokerState(
        pid=proc.pid,
        port=port,
        controller_port=controller_port,
        bootstrap=f"{HOST}:{port}",
        data_dir=str(data_dir),
        cluster_id=cluster_id,
        kafka_version=kafka_version(),
        started_at=started_at,
        security_protocol=client_protocol(sasl, tls),
    )
    (data_dir / PID_FILE).write_text(f"{proc.pid}\n")
    (data_dir / STATE_FILE).write_text(json.dumps(asdict(state), indent=2) + "\n")
    log.info("started broker pid %d on %s; waiting for it to answer", proc.pid, state.bootstrap)
    probe = probe_settings(settings, state.bootstrap, sasl, tls).kafka_client_kwargs()
    try:
        _wait_ready(state, data_dir, timeout_s, client_kwargs=probe)
    except (KafkaLocalError, TimeoutError) as exc:
        _terminate(proc.pid, timeout_s=10.0)
        _clear_records(data_dir)
        with contextlib.suppress(Exception):
            proc.wait(timeout=1)
        if isinstance(exc, KafkaLocalError):
            raise
        raise KafkaLocalError(
            f"{exc}; killed it. Tail of {data_dir / LOG_FILE}:\n{_log_tail(data_dir)}"
        ) from None
    log.info("broker ready on %s after %.1f s", state.bootstrap, time.monotonic() - t0)
    return state


def _terminate(pid: int, timeout_s: float) -> bool:
    """SIGTERM ``pid``, wait up to ``timeout_s``, then SIGKILL. True if it had to be killed."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return False
        time.sleep(0.1)
    log.warning("broker pid %d ignored SIGTERM for %.0f s; sending SIGKILL", pid, timeout_s)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(50):
        if not _pid_alive(pid):
            break
        time.sleep(0.1)
    return True


def stop(data_dir: Path, *, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> bool:
    """End the broker :func:`start` recorded in ``data_dir`` (that pid only).

    Returns True if a running broker was stopped, False if none was running. Removes the pid
    and state files either way; the data (``kraft-logs``) stays for the next start.
    """
    data_dir = Path(data_dir).resolve()
    pid = _read_pid(data_dir)
    if pid is None:
        log.info("no broker pid file in %s; nothing to stop", data_dir)
        _clear_records(data_dir)
        return False
    if not _pid_alive(pid):
        log.info("broker pid %d is not running; removing stale records", pid)
        _clear_records(data_dir)
        return False
    if not _is_our_broker(pid, data_dir):
        _clear_records(data_dir)
        raise KafkaLocalError(
            f"pid {pid} recorded in {data_dir} is alive but is not this data dir's broker "
            "(pid reused?); not signalling it, removed the stale pid file"
        )
    t0 = time.monotonic()
    killed = _terminate(pid, timeout_s)
    _clear_records(data_dir)
    log.info(
        "broker pid %d %s after %.1f s",
        pid,
        "killed" if killed else "stopped",
        time.monotonic() - t0,
    )
    return True


def status(data_dir: Path, *, probe: bool = True) -> BrokerStatus:
    """What runs where: the recorded broker, whether its pid lives, whether it answers."""
    data_dir = Path(data_dir).resolve()
    state = _read_state(data_dir)
    alive = state is not None and _pid_alive(state.pid) and _is_our_broker(state.pid, data_dir)
    answering = bool(alive and state is not None and probe and _answers(state.bootstrap, 3.0))
    return BrokerStatus(str(data_dir), state, alive, answering)


# --------------------------------------------------------------------------------------------
# Topics
# --------------------------------------------------------------------------------------------


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
    """The application's topics and their partition counts, all from settings."""
    names = (
        settings.topic_clickstream,
        settings.topic_demand,
        settings.topic_churn,
        settings.topic_dead_letter,
        settings.topic_bid_adjustments,
        settings.topic_churn_alerts,
        settings.topic_routed,
    )
    return dict.fromkeys(names, settings.partitions)


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
    rf = settings.replication_factor if replication_factor is None else replication_factor
    admin = AIOKafkaAdminClient(
        **settings.kafka_client_kwargs(), request_timeout_ms=int(timeout_s * 1000)
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


__all__ = [
    "AclSpec",
    "BrokerState",
    "BrokerStatus",
    "KafkaLocalError",
    "SaslConfig",
    "TlsConfig",
    "TopicResult",
    "artifacts_ready",
    "broker_answers",
    "client_protocol",
    "create_acls",
    "create_topics",
    "ensure_topics",
    "fetch_artifacts",
    "free_port",
    "kafka_version",
    "port_is_free",
    "probe_settings",
    "server_properties",
    "start",
    "status",
    "stop",
    "topic_specs",
]
