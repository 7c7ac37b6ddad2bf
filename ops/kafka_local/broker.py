"""The local broker's process: its bookkeeping files, readiness, start, stop and status (see
:mod:`ops.kafka_local`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

from ops.kafka_local.artifacts import fetch_artifacts, kafka_version, libs_dir
from ops.kafka_local.config import (
    HOST,
    LOG4J2_CONFIG,
    LOG4J_PROPERTIES,
    LOG_DIRS,
    SCRAM,
    SERVER_PROPERTIES,
    KafkaLocalError,
    SaslConfig,
    TlsConfig,
    client_protocol,
    free_port,
    new_cluster_id,
    port_is_free,
    probe_settings,
    render_properties,
    server_properties,
)
from settings import Settings

log = logging.getLogger(__name__)

PID_FILE = "kafka.pid"
STATE_FILE = "state.json"
LOG_FILE = "broker.log"
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


def answers(
    bootstrap: str, timeout_s: float = 5.0, client_kwargs: Mapping[str, Any] | None = None
) -> bool:
    """Whether a broker answers at ``bootstrap`` (a TCP connect, then a metadata request)."""
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
        if answers(state.bootstrap, min(5.0, max(remaining, 0.5)), client_kwargs):
            return
        time.sleep(0.25)


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
        probe = probe_settings(settings, existing.bootstrap, sasl, tls).kafka.client_kwargs()
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
    probe = probe_settings(settings, state.bootstrap, sasl, tls).kafka.client_kwargs()
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
    answering = bool(alive and state is not None and probe and answers(state.bootstrap, 3.0))
    return BrokerStatus(str(data_dir), state, alive, answering)
