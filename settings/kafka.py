"""Kafka client configuration, built in one place for every client of the project.

Every Kafka client -- the aiokafka producers, consumers and admin clients of the CLI (``replay``,
``tail``, ``topics create``, ``demo``), the tests and benches, and the Faust apps (the worker and
both subscribers, whose ``broker_credentials`` Faust hands to its own aiokafka clients) -- gets
its connection options here, from the one :class:`settings.KafkaConnection` (``settings.kafka``):

* :func:`client_kwargs` -- keyword arguments for ``AIOKafkaProducer``/``Consumer``/``AdminClient``
  (what :meth:`settings.KafkaConnection.client_kwargs` returns);
* :func:`faust_credentials` -- ``faust.App(broker_credentials=...)``;
* :func:`ssl_context` -- the TLS context both of them carry for ``SSL`` and ``SASL_SSL``.

TLS is verified, never merely switched on: the broker's certificate must chain to
``ssl_cafile`` (or, unset, to the system's trusted CAs) and name the host the client dialled
(``check_hostname``); TLS 1.2 is the floor. A client certificate (``ssl_certfile``, ``ssl_keyfile``,
``ssl_key_password``) is presented when configured, for brokers that require client
authentication. TLS settings given with a protocol that does not use TLS are refused rather than
ignored: an operator who set a CA file believes the traffic is encrypted.

Configuration errors raise :class:`KafkaClientConfigError` naming the environment variable at
fault (never a secret's value).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from settings import ENV_PREFIX, KafkaConnection

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

SECURITY_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
TLS_PROTOCOLS: Final = frozenset({"SSL", "SASL_SSL"})
SASL_PROTOCOLS: Final = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
_TLS_FIELDS: Final = ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password")


class KafkaClientConfigError(ValueError):
    """The security settings cannot make a Kafka client; the message names the variable."""


def _var(name: str) -> str:
    return ENV_PREFIX + name.upper()


def security_protocol(kafka: KafkaConnection) -> str:
    """``kafka.security_protocol`` upper-cased, checked against what the clients speak."""
    protocol = kafka.security_protocol.strip().upper()
    if protocol not in SECURITY_PROTOCOLS:
        raise KafkaClientConfigError(
            f"{_var('security_protocol')}={kafka.security_protocol!r}: use one of "
            + ", ".join(SECURITY_PROTOCOLS)
        )
    return protocol


def _readable(kafka: KafkaConnection, name: str) -> str | None:
    value: Path | None = getattr(kafka, name)
    if value is None:
        return None
    if not Path(value).is_file():
        raise KafkaClientConfigError(f"{_var(name)}={str(value)!r}: no such file")
    return str(value)


def ssl_context(kafka: KafkaConnection) -> ssl.SSLContext | None:
    """The verifying TLS context for ``SSL``/``SASL_SSL`` (module doc); ``None`` otherwise."""
    protocol = security_protocol(kafka)
    if protocol not in TLS_PROTOCOLS:
        given = [_var(n) for n in _TLS_FIELDS if getattr(kafka, n)]
        if given:
            raise KafkaClientConfigError(
                f"{', '.join(given)} set, but {_var('security_protocol')}={protocol} does not "
                "use TLS: use SSL or SASL_SSL, or unset them"
            )
        return None
    cafile = _readable(kafka, "ssl_cafile")
    certfile = _readable(kafka, "ssl_certfile")
    keyfile = _readable(kafka, "ssl_keyfile")
    if certfile is None and (keyfile is not None or kafka.ssl_key_password):
        raise KafkaClientConfigError(
            f"{_var('ssl_keyfile')} / {_var('ssl_key_password')} need {_var('ssl_certfile')}"
        )
    try:
        # CERT_REQUIRED and check_hostname come with the default context; only the CA file
        # given is trusted when there is one (a private CA must not widen to the system's).
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise KafkaClientConfigError(f"{_var('ssl_cafile')}={cafile!r}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if certfile is not None:
        try:
            # Always a password (empty when none is set): with None, OpenSSL would prompt on
            # the terminal for an encrypted key, and a worker would hang instead of failing.
            context.load_cert_chain(certfile, keyfile, password=kafka.ssl_key_password.reveal())
        except (OSError, ssl.SSLError) as exc:
            raise KafkaClientConfigError(
                f"client certificate {_var('ssl_certfile')}={certfile!r} / "
                f"{_var('ssl_keyfile')}={keyfile!r} (wrong {_var('ssl_key_password')}, or a "
                f"key that does not match the certificate?): {exc}"
            ) from None
    return context


def client_kwargs(kafka: KafkaConnection) -> dict[str, Any]:
    """Connection options for aiokafka producers, consumers and admin clients."""
    protocol = security_protocol(kafka)
    kwargs: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "security_protocol": protocol,
    }
    context = ssl_context(kafka)
    if context is not None:
        kwargs["ssl_context"] = context
    if protocol in SASL_PROTOCOLS:
        kwargs.update(
            sasl_mechanism=kafka.sasl_mechanism.upper(),
            sasl_plain_username=kafka.sasl_username,
            sasl_plain_password=kafka.sasl_password.reveal(),
        )
    return kwargs


def faust_credentials(kafka: KafkaConnection) -> CredentialsT | None:
    """``faust.App(broker_credentials=...)``: the same protocol, TLS context and SASL login.

    Faust turns these into the aiokafka options of its consumer, producer and the client that
    creates its internal topics (``credentials_to_aiokafka_auth``); ``None`` is PLAINTEXT.
    """
    import faust  # here, not at the top: the CLI's plain aiokafka clients never need Faust

    protocol = security_protocol(kafka)
    context = ssl_context(kafka)
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(context=context)
    mechanism = kafka.sasl_mechanism.upper()
    if mechanism == "GSSAPI":
        return faust.GSSAPICredentials(ssl_context=context)
    # Faust picks SASL_SSL over SASL_PLAINTEXT by whether an ssl_context is given.
    return faust.SASLCredentials(
        username=kafka.sasl_username,
        password=kafka.sasl_password.reveal(),
        mechanism=mechanism,
        ssl_context=context,
    )


__all__ = [
    "SECURITY_PROTOCOLS",
    "KafkaClientConfigError",
    "client_kwargs",
    "faust_credentials",
    "security_protocol",
    "ssl_context",
]
