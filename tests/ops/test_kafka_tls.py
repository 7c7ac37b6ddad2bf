"""TLS that really encrypts: every client over SSL and SASL_SSL, and plaintext refused.

Kafka tier: for each protocol a dedicated local broker (``ops.kafka_local.start(..., tls=...)``)
whose only client listener speaks it, with certificates made at test time
(:mod:`tests.support.tls_certs`):

* ``SSL``: mutual TLS -- the broker requires a client certificate signed by the test CA; the
  clients present one whose key is encrypted (``CLICKSIGNALS_SSL_KEY_PASSWORD``);
* ``SASL_SSL``: TLS plus SCRAM-SHA-256 and ACLs, as managed Kafka services run it; the clients
  log in as a user whose ACLs cover exactly the application's topics and groups.

Every client then runs as a separate process configured only through its environment
(``settings.child_environment``): ``clicksignals topics create``, ``clicksignals demo`` (which
runs the worker, the bidder and the alerter as Faust processes and produces and reads with
aiokafka), ``clicksignals replay`` and ``clicksignals tail``. As the broker has no other client
listener, every client that worked spoke TLS; the refusals show the listener speaks nothing else:
the same bytes of a Kafka request get an answer through TLS and a closed connection in the
clear, and plaintext clients, clients that do not verify against the test CA, clients without
(or with a foreign) certificate, and clients without SASL credentials are all refused.

Without a broker: :mod:`settings.kafka` (the one place client options are built) and the Faust
apps' credentials built from the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from ops import demo as demo_module
from ops import kafka_local
from ops.offsets import OffsetReader
from settings import Secret, Settings, child_environment, load_settings
from settings.kafka import KafkaClientConfigError, client_kwargs, faust_credentials, ssl_context
from settings.logs import JsonFormatter, secret_values
from tests.conftest import REPO_ROOT, _base_settings, _unavailable, run_sync, unique_name
from tests.support.tls_certs import TlsFiles, make_tls_files

CLI_TIMEOUT_S = 120.0
DEMO_TIMEOUT_S = 300.0


def report(message: str) -> None:
    """Figures, shown with ``pytest -s`` (and in the captured output of a failure)."""
    print(f"[kafka-tls] {message}", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# settings.kafka without a broker
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def _mtls(files: TlsFiles, **changes: Any) -> Settings:
    return Settings.from_flat(
        security_protocol="SSL",
        ssl_cafile=files.ca_cert,
        ssl_certfile=files.client_cert,
        ssl_keyfile=files.client_key,
        ssl_key_password=files.client_key_password,
    ).with_overrides(**changes)


def test_plaintext_and_sasl_plaintext_options_are_unchanged() -> None:
    assert client_kwargs(Settings().kafka) == {
        "bootstrap_servers": "127.0.0.1:9092",
        "security_protocol": "PLAINTEXT",
    }
    sasl = Settings.from_flat(
        security_protocol="SASL_PLAINTEXT", sasl_username="u", sasl_password=Secret("p")
    )
    assert client_kwargs(sasl.kafka) == {
        "bootstrap_servers": "127.0.0.1:9092",
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "u",
        "sasl_plain_password": "p",
    }
    assert Settings().kafka.client_kwargs() == client_kwargs(Settings().kafka)  # the same place


def test_tls_contexts_verify_the_broker_and_carry_the_client_certificate(
    tls_files: TlsFiles,
) -> None:
    for protocol in ("SSL", "SASL_SSL", "ssl"):
        kwargs = client_kwargs(_mtls(tls_files, security_protocol=protocol).kafka)
        assert kwargs["security_protocol"] == protocol.upper()
        context = kwargs["ssl_context"]
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        # Only the test CA is trusted when a CA file is given.
        assert [c["subject"] for c in context.get_ca_certs()] == [
            (
                (("organizationName", "clicksignals tests"),),
                (("commonName", "clicksignals test CA"),),
            )
        ]
    # Without a CA file: the system's CAs (managed services), still verifying.
    system = ssl_context(Settings.from_flat(security_protocol="SASL_SSL").kafka)
    assert system is not None and system.verify_mode == ssl.CERT_REQUIRED and system.check_hostname


def test_bad_tls_settings_are_refused_with_the_variable_and_no_secret(
    tls_files: TlsFiles, tmp_path: Path
) -> None:
    cases: dict[str, tuple[Settings, str]] = {
        "CA file with PLAINTEXT": (
            Settings.from_flat(ssl_cafile=tls_files.ca_cert),
            "CLICKSIGNALS_SSL_CAFILE set, but CLICKSIGNALS_SECURITY_PROTOCOL=PLAINTEXT",
        ),
        "key password with SASL_PLAINTEXT": (
            Settings.from_flat(security_protocol="SASL_PLAINTEXT", ssl_key_password=Secret("x")),
            "CLICKSIGNALS_SSL_KEY_PASSWORD set",
        ),
        "missing CA file": (
            Settings.from_flat(security_protocol="SSL", ssl_cafile=tmp_path / "nope.pem"),
            "CLICKSIGNALS_SSL_CAFILE=",
        ),
        "key without certificate": (
            Settings.from_flat(security_protocol="SSL", ssl_keyfile=tls_files.client_key),
            "need CLICKSIGNALS_SSL_CERTFILE",
        ),
        "wrong key password": (
            _mtls(tls_files, ssl_key_password=Secret("wrong-" + secrets.token_hex(4))),
            "CLICKSIGNALS_SSL_KEY_PASSWORD",
        ),
        "no key password": (_mtls(tls_files, ssl_key_password=Secret("")), "CLICKSIGNALS_SSL"),
        "unknown protocol": (
            Settings.from_flat(security_protocol="TLS"),
            "CLICKSIGNALS_SECURITY_PROTOCOL",
        ),
    }
    for name, (settings, expected) in cases.items():
        with pytest.raises(KafkaClientConfigError) as info:
            settings.kafka.client_kwargs()
        assert expected in str(info.value), name
        assert tls_files.client_key_password.reveal() not in str(info.value), name
        with pytest.raises(KafkaClientConfigError):  # the Faust apps refuse them the same way
            faust_credentials(settings.kafka)


def test_faust_credentials_carry_the_same_protocol_context_and_login(tls_files: TlsFiles) -> None:
    assert faust_credentials(Settings().kafka) is None
    ssl_only = faust_credentials(_mtls(tls_files).kafka)
    assert isinstance(ssl_only, faust.SSLCredentials)
    auth = credentials_to_aiokafka_auth(ssl_only)
    assert auth["security_protocol"] == "SSL"
    assert auth["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    sasl = Settings.from_flat(
        security_protocol="SASL_SSL",
        ssl_cafile=tls_files.ca_cert,
        sasl_username="u",
        sasl_password=Secret("p"),
    )
    auth = credentials_to_aiokafka_auth(faust_credentials(sasl.kafka))
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-256"
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("u", "p")
    assert auth["ssl_context"].check_hostname
    plain = credentials_to_aiokafka_auth(
        faust_credentials(
            sasl.with_overrides(security_protocol="SASL_PLAINTEXT", ssl_cafile=None).kafka
        )
    )
    assert plain["security_protocol"] == "SASL_PLAINTEXT" and plain["ssl_context"] is None


def test_tls_settings_come_from_the_environment_and_go_to_children(tls_files: TlsFiles) -> None:
    settings = _mtls(tls_files)
    env = child_environment(settings)
    assert env["CLICKSIGNALS_SSL_CAFILE"] == str(tls_files.ca_cert)
    assert env["CLICKSIGNALS_SSL_KEY_PASSWORD"] == tls_files.client_key_password.reveal()
    back = load_settings(env)
    assert back == settings
    assert back.kafka.ssl_certfile == tls_files.client_cert
    empty = load_settings({"CLICKSIGNALS_SSL_CAFILE": "", "CLICKSIGNALS_SSL_KEYFILE": " "})
    assert (
        empty.kafka.ssl_cafile is None and empty.kafka.ssl_keyfile is None
    )  # compose's "${VAR:-}"
    assert "CLICKSIGNALS_SSL_CAFILE" not in child_environment(Settings())


def test_the_key_password_is_masked_in_json_logs(tls_files: TlsFiles) -> None:
    import logging

    settings = _mtls(tls_files)
    password = tls_files.client_key_password.reveal()
    assert password not in repr(settings)
    formatter = JsonFormatter(secret_values(settings))
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, f"pw={password}", None, None)
    assert password not in formatter.format(record)
    assert "***" in formatter.format(record)


_APP_CREDENTIALS = """
import importlib, sys
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
app = importlib.import_module(sys.argv[1]).app
auth = credentials_to_aiokafka_auth(app.conf.broker_credentials)
context = auth.get("ssl_context")
print(auth["security_protocol"], auth.get("sasl_mechanism"), context is not None and
      context.verify_mode.name, context is not None and len(context.get_ca_certs()))
"""


@pytest.mark.parametrize(
    "module", ["stream.app", "subscribers.bidding_app", "subscribers.alerting_app"]
)
def test_the_worker_and_both_subscribers_take_tls_from_their_environment(
    module: str, tls_files: TlsFiles, tmp_path: Path
) -> None:
    settings = Settings.from_flat(
        broker_url="kafka://127.0.0.1:9",
        data_dir=tmp_path / "d",
        security_protocol="SASL_SSL",
        sasl_username="u",
        sasl_password=Secret("p"),
        ssl_cafile=tls_files.ca_cert,
    )
    out = subprocess.run(
        [sys.executable, "-c", _APP_CREDENTIALS, module],
        cwd=REPO_ROOT,
        env=child_environment(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    last = out.stdout.strip().splitlines()[-1]
    assert last.split() == ["SASL_SSL", "SCRAM-SHA-256", "CERT_REQUIRED", "1"], out.stderr


@pytest.mark.parametrize(
    "module", ["stream.app", "subscribers.bidding_app", "subscribers.alerting_app"]
)
def test_a_bad_ca_file_stops_the_worker_and_the_subscribers_with_the_reason(
    module: str, tmp_path: Path
) -> None:
    settings = Settings.from_flat(
        data_dir=tmp_path / "d", security_protocol="SSL", ssl_cafile=tmp_path / "missing.pem"
    )
    out = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        cwd=REPO_ROOT,
        env=child_environment(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert "refusing to start: CLICKSIGNALS_SSL_CAFILE=" in out.stderr, out.stderr
    assert "no such file" in out.stderr and "Traceback" not in out.stderr


# --------------------------------------------------------------------------------------------
# Kafka tier: a broker per protocol
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsBroker:
    protocol: str
    state: kafka_local.BrokerState
    files: TlsFiles
    client: Settings
    """What a deployment would set: the broker, the protocol, the CA, and the client's
    certificate (SSL) or SASL login (SASL_SSL)."""
    started_s: float
    sasl: kafka_local.SaslConfig | None


APP_USER = "clicksignals"


@pytest.fixture(scope="module", params=["SSL", "SASL_SSL"])
def tls_broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsBroker]:
    protocol: str = request.param
    base = tmp_path_factory.mktemp(f"broker-{protocol.lower()}")
    files = make_tls_files(base / "certs")
    tls = kafka_local.TlsConfig(
        keystore=files.broker_keystore,
        ca_file=files.ca_cert,
        client_auth="required" if protocol == "SSL" else "none",
        probe_certfile=files.probe_cert,
    )
    sasl = None
    if protocol == "SASL_SSL":
        sasl = kafka_local.SaslConfig(
            admin_user="admin",
            admin_password=Secret(secrets.token_hex(16)),
            users={APP_USER: Secret(secrets.token_hex(16))},
        )
    data_dir = base / "broker"
    t0 = time.monotonic()
    try:
        state = kafka_local.start(_base_settings(), data_dir, timeout_s=90.0, sasl=sasl, tls=tls)
    except Exception as exc:  # no java, ports: the conftest's rule (fail in CI, skip locally)
        with contextlib.suppress(Exception):
            kafka_local.stop(data_dir)
        _unavailable(f"could not start a {protocol} broker: {exc}")
    started = time.monotonic() - t0
    try:
        client = _base_settings().with_overrides(
            broker_url=state.broker_url,
            security_protocol=protocol,
            ssl_cafile=files.ca_cert,
        )
        if sasl is None:
            client = client.with_overrides(
                ssl_certfile=files.client_cert,
                ssl_keyfile=files.client_key,
                ssl_key_password=files.client_key_password,
            )
        else:
            client = client.with_overrides(
                sasl_mechanism="SCRAM-SHA-256",
                sasl_username=APP_USER,
                sasl_password=sasl.users[APP_USER],
            )
            # The application's user may touch exactly its topics and groups (Faust's internal
            # topics and the subscribers' groups all start with the app id).
            principal = f"User:{APP_USER}"
            topics = sorted(set(kafka_local.topic_specs(client)))
            kafka_local.create_acls(
                _base_settings(),
                sasl,
                state.bootstrap,
                [
                    *(kafka_local.AclSpec("TOPIC", t, principal, "ALL") for t in topics),
                    kafka_local.AclSpec(
                        "TOPIC", client.worker.app_id, principal, "ALL", "PREFIXED"
                    ),
                    kafka_local.AclSpec(
                        "GROUP", client.worker.app_id, principal, "ALL", "PREFIXED"
                    ),
                    kafka_local.AclSpec("CLUSTER", "kafka-cluster", principal, "DESCRIBE"),
                ],
                tls=tls,
            )
        yield TlsBroker(protocol, state, files, client, started, sasl)
    finally:
        kafka_local.stop(data_dir)


def _cli(
    settings: Settings, *args: str, timeout: float = CLI_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """``clicksignals ARGS`` as its own process, configured only through its environment."""
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args],
        cwd=REPO_ROOT,
        env=child_environment(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (
        f"{result.args}: exit {result.returncode}\n{result.stderr[-3000:]}"
    )
    return result


async def _lags(settings: Settings, groups: dict[str, tuple[str, str]]) -> dict[str, int]:
    async with OffsetReader(settings) as offsets:
        return await offsets.lags(groups)


async def _client_tls_version(settings: Settings) -> str:
    """The TLS version of an aiokafka client's live connections (from settings.kafka)."""
    producer = AIOKafkaProducer(**settings.kafka.client_kwargs())
    await producer.start()
    try:
        await producer.client.force_metadata_update()
        versions = set()
        for conn in producer.client._conns.values():
            ssl_object = conn._writer.transport.get_extra_info("ssl_object")
            versions.add(ssl_object.version() if ssl_object is not None else "cleartext")
    finally:
        await producer.stop()
    assert len(versions) == 1, versions
    return versions.pop()


@pytest.mark.kafka
def test_every_client_over_tls(tls_broker: TlsBroker, tmp_path: Path) -> None:
    b = tls_broker
    settings = b.client
    secrets_in_play = [
        s.reveal()
        for s in (settings.kafka.ssl_key_password, settings.kafka.sasl_password)
        + ((b.sasl.admin_password,) if b.sasl else ())
        if s
    ]

    t0 = time.monotonic()
    created = _ok(_cli(settings, "topics", "create"))
    topics_s = time.monotonic() - t0
    assert created.stderr.count(": created (") == len(kafka_local.topic_specs(settings)), (
        created.stderr
    )

    # The demo: the worker and both subscribers as Faust processes, its own producer and
    # collector, all on the TLS broker because it answers at the configured URL.
    workdir = tmp_path / "demo"
    t0 = time.monotonic()
    demo = _ok(
        _cli(
            settings,
            "demo",
            "--users",
            "200",
            "--days",
            "56",
            "--settle",
            "4",
            "--quiet",
            "--workdir",
            str(workdir),
            timeout=DEMO_TIMEOUT_S,
        )
    )
    demo_s = time.monotonic() - t0
    assert "using the broker that answers at" in demo.stderr, demo.stderr[-2000:]
    assert not (workdir / "kafka").exists()  # it started no broker of its own
    summary = json.loads((workdir / "out" / "summary.json").read_text())
    signals = summary["signals"]
    assert summary["events_sent"] == summary["events"] > 1000
    assert signals["demand"] > 100 and signals["churn"] > 100, signals
    assert signals["bid_adjustments"] > 0 and signals["dlq"] == 0, signals

    # Each Faust process consumed everything over TLS: the demo waited for it, and the
    # committed offsets are at the ends.
    assert summary["consumer_lag"] == {"worker": 0, "bidder": 0, "alerter": 0}, summary
    assert run_sync(_lags(settings, demo_module.consumer_groups(settings))) == dict.fromkeys(
        ("worker", "bidder", "alerter"), 0
    )

    # tail reads what the demo collected; replay sends more, tail reads the clickstream back.
    t0 = time.monotonic()
    tail = _ok(_cli(settings, "tail", "demand", "--idle", "3"))
    tail_s = time.monotonic() - t0
    assert len(tail.stdout.splitlines()) == signals["demand"]
    t0 = time.monotonic()
    replay = _ok(_cli(settings, "replay", "--users", "20", "--days", "14", "--quiet"))
    replay_s = time.monotonic() - t0
    sent = int(replay.stdout.split()[1])  # "replayed N events to ..."
    clickstream = _ok(_cli(settings, "tail", "clickstream", "--idle", "3"))
    assert len(clickstream.stdout.splitlines()) == summary["events"] + sent

    version = run_sync(_client_tls_version(settings))
    assert version in {"TLSv1.2", "TLSv1.3"}

    logs = [demo.stderr, created.stderr, tail.stderr, replay.stderr, clickstream.stderr]
    logs += [p.read_text(errors="replace") for p in sorted(workdir.glob("*.log"))]
    assert len(logs) == 8
    for text in logs:
        for secret in secrets_in_play:
            assert secret not in text

    report(
        f"{b.protocol}: broker up in {b.started_s:.1f} s; topics create {topics_s:.1f} s; demo "
        f"{demo_s:.1f} s ({summary['events']} events -> demand {signals['demand']}, churn "
        f"{signals['churn']}, bid-adjustments {signals['bid_adjustments']}, churn-alerts "
        f"{signals['churn_alerts']}); all consumed; tail "
        f"{tail_s:.1f} s; replay {sent} events {replay_s:.1f} s; client connections {version}"
    )


def _api_versions_request() -> bytes:
    """A Kafka ApiVersions v0 request (api key 18, correlation id 7), size-prefixed."""
    body = struct.pack(">hhih", 18, 0, 7, -1)
    return struct.pack(">i", len(body)) + body


def _exchange(sock: socket.socket) -> bytes:
    """Send an ApiVersions request; the first 8 bytes answered (b"" when the peer closed)."""
    sock.settimeout(10)
    sock.sendall(_api_versions_request())
    data = b""
    with contextlib.suppress(ConnectionResetError, ssl.SSLError, TimeoutError):
        while len(data) < 8:
            chunk = sock.recv(8 - len(data))
            if not chunk:
                break
            data += chunk
    return data


def _raw(bootstrap: str, context: ssl.SSLContext | None) -> tuple[bytes, str | None]:
    host, _, port = bootstrap.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        if context is None:
            return _exchange(sock), None
        with context.wrap_socket(sock, server_hostname=host) as tls:
            cipher = tls.cipher()
            return _exchange(tls), f"{tls.version()} {cipher[0] if cipher else '?'}"


async def _refused(kwargs: dict[str, Any], topic: str) -> str:
    """Try to read ``topic`` with these options; returns why it failed (raises if it worked)."""
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
    except (KafkaError, TimeoutError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"[:160]
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()


@pytest.mark.kafka
def test_plaintext_and_unverified_clients_are_refused(tls_broker: TlsBroker) -> None:
    b = tls_broker
    settings = b.client
    bootstrap = b.state.bootstrap
    # Something to read, so that "no records" can only mean "refused".
    topic = unique_name(f"{settings.worker.app_id}-tls-refusal")  # under the app user's ACL prefix
    topic_settings = settings.with_overrides(topic_clickstream=topic)
    run_sync(kafka_local.ensure_topics(settings, {topic: 1}))
    _ok(_cli(topic_settings, "replay", "--users", "3", "--days", "3", "--quiet"))

    # The same request bytes: answered through TLS, the connection closed in the clear.
    client_cert = b.files.probe_cert if b.protocol == "SSL" else None
    context = ssl.create_default_context(cafile=str(b.files.ca_cert))
    if client_cert is not None:
        context.load_cert_chain(client_cert)
    answer, negotiated = _raw(bootstrap, context)
    assert len(answer) == 8 and struct.unpack(">i", answer[4:8])[0] == 7, answer
    cleartext, _ = _raw(bootstrap, None)
    # In the clear: a TLS alert record (content type 21) or nothing, then the connection
    # closes; never a Kafka response.
    assert cleartext[:1] in {b"", b"\x15"}, cleartext

    plain = {"bootstrap_servers": bootstrap, "security_protocol": "PLAINTEXT"}
    system_cas = settings.with_overrides(ssl_cafile=None)  # trusts the system's CAs only
    refusals = {
        "PLAINTEXT": run_sync(_refused(plain, topic)),
        "unverified (system CAs)": run_sync(_refused(system_cas.kafka.client_kwargs(), topic)),
    }
    if b.protocol == "SSL":
        no_cert = settings.with_overrides(
            ssl_certfile=None, ssl_keyfile=None, ssl_key_password=Secret("")
        )
        foreign = no_cert.with_overrides(ssl_certfile=b.files.stranger_cert)
        refusals["no client certificate"] = run_sync(_refused(no_cert.kafka.client_kwargs(), topic))
        refusals["certificate from another CA"] = run_sync(
            _refused(foreign.kafka.client_kwargs(), topic)
        )
    else:
        sasl_plain = settings.with_overrides(security_protocol="SASL_PLAINTEXT", ssl_cafile=None)
        no_login = settings.with_overrides(
            security_protocol="SSL", sasl_username="", sasl_password=Secret("")
        )
        wrong = settings.with_overrides(sasl_password=Secret("wrong-" + secrets.token_hex(4)))
        refusals["SASL_PLAINTEXT"] = run_sync(_refused(sasl_plain.kafka.client_kwargs(), topic))
        refusals["TLS without SASL"] = run_sync(_refused(no_login.kafka.client_kwargs(), topic))
        refusals["wrong password"] = run_sync(_refused(wrong.kafka.client_kwargs(), topic))
    report(
        f"{b.protocol}: negotiated {negotiated}; the same request in the clear got "
        f"{cleartext!r}; refusals: {refusals}"
    )
    for name, why in refusals.items():
        assert "KafkaConnectionError" in why or "Timeout" in why, (name, why)
    # Why the client trusting only the system's CAs gave up: it verified the broker's
    # certificate (settings.kafka's context, as every client has it) and found no trusted CA.
    with pytest.raises(ssl.SSLCertVerificationError):
        _raw(bootstrap, ssl_context(system_cas.kafka))
