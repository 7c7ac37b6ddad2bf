"""Throw-away TLS material for the TLS tests, made at test time with ``cryptography``.

One private CA signs a broker certificate (SAN ``127.0.0.1`` and ``localhost``: clients check
the host they dialled) and a client certificate (``CN=clicksignals-client``). Files are PEM in a
directory the caller gives (a pytest ``tmp_path``), keys with mode 0600; nothing here is ever
committed. The client key is encrypted with a random password, so the tests go through
``CLICKSIGNALS_SSL_KEY_PASSWORD``; the broker's key is not (Kafka's PEM key store reads an
unencrypted PKCS#8 key without a password setting).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from settings import Secret

VALID_FOR = dt.timedelta(days=1)


@dataclass(frozen=True)
class TlsFiles:
    """Where :func:`make_tls_files` put everything."""

    ca_cert: Path
    """The CA certificate: the clients' ``ssl_cafile`` and the broker's trust store."""
    broker_keystore: Path
    """Broker key (unencrypted PKCS#8) + certificate + CA certificate (Kafka's PEM key store)."""
    client_cert: Path
    client_key: Path
    """Encrypted with ``client_key_password``."""
    client_key_password: Secret
    probe_cert: Path
    """Client certificate and unencrypted key in one file (the broker's readiness probe)."""
    stranger_cert: Path
    """A client certificate and key from a CA the broker does not trust (one file)."""


def _key() -> ec.EllipticCurvePrivateKey:
    # P-256: generated in milliseconds (RSA-2048 takes ~0.1-1 s each), and both Python's
    # OpenSSL and the JDK speak it.
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "clicksignals tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    common_name: str,
    usages: list[x509.ObjectIdentifier],
    *,
    server: bool,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        names: list[x509.GeneralName] = [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.DNSName("localhost"),
        ]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey, password: Secret | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.reveal().encode())
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _write(path: Path, data: bytes, *, secret: bool = False) -> Path:
    path.touch(mode=0o600 if secret else 0o644)
    path.write_bytes(data)
    return path


def make_tls_files(directory: Path) -> TlsFiles:
    """A CA, a broker and a client certificate (module doc) written into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("clicksignals test CA")
    broker_key, broker_cert = _leaf(
        ca_key,
        ca_cert,
        "clicksignals test broker",
        # clientAuth too: the broker connects to its own inter-broker listener.
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        server=True,
    )
    client_key, client_cert = _leaf(
        ca_key, ca_cert, "clicksignals-client", [ExtendedKeyUsageOID.CLIENT_AUTH], server=False
    )
    probe_key, probe_cert = _leaf(
        ca_key, ca_cert, "clicksignals-probe", [ExtendedKeyUsageOID.CLIENT_AUTH], server=False
    )
    other_ca_key, other_ca_cert = _ca("someone else's CA")
    stranger_key, stranger_cert = _leaf(
        other_ca_key,
        other_ca_cert,
        "clicksignals-client",  # the same name, but not signed by the broker's CA
        [ExtendedKeyUsageOID.CLIENT_AUTH],
        server=False,
    )
    password = Secret(secrets.token_urlsafe(18))
    return TlsFiles(
        ca_cert=_write(directory / "ca.pem", _pem(ca_cert)),
        broker_keystore=_write(
            directory / "broker.pem",
            _key_pem(broker_key) + _pem(broker_cert) + _pem(ca_cert),
            secret=True,
        ),
        client_cert=_write(directory / "client.pem", _pem(client_cert)),
        client_key=_write(directory / "client.key", _key_pem(client_key, password), secret=True),
        client_key_password=password,
        probe_cert=_write(
            directory / "probe.pem", _pem(probe_cert) + _key_pem(probe_key), secret=True
        ),
        stranger_cert=_write(
            directory / "stranger.pem", _pem(stranger_cert) + _key_pem(stranger_key), secret=True
        ),
    )


__all__ = ["TlsFiles", "make_tls_files"]
