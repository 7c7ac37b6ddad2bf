"""The project's own single-node Apache Kafka broker (KRaft combined mode) and its topics.

This package owns everything about the *local* broker, one module per job:

* :mod:`.artifacts` -- its jars, fetched from Maven Central (:func:`fetch_artifacts`, driven
  by ``ops/kafka/pom.xml``);
* :mod:`.config` -- its configuration: ports, SASL and TLS options, ``server.properties``;
* :mod:`.broker` -- its process: formatting its storage, starting it as a detached JVM in its
  own process group (:func:`start`), reporting on it (:func:`status`), ending exactly the
  process it started (:func:`stop`);
* :mod:`.topics` -- the application's topics and ACLs on any broker named by the settings
  (:func:`create_topics` / :func:`ensure_topics`, :func:`create_acls`).

The package re-exports each module's public names, so callers say ``kafka_local.start(...)``.

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

from ops.kafka_local.artifacts import (
    MARKER_NAME,
    POM_PATH,
    artifacts_ready,
    fetch_artifacts,
    kafka_version,
    libs_dir,
)
from ops.kafka_local.broker import (
    LOG_FILE,
    PID_FILE,
    BrokerState,
    BrokerStatus,
    answers,
    broker_answers,
    start,
    status,
    stop,
)
from ops.kafka_local.config import (
    LOG_DIRS,
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
from ops.kafka_local.topics import (
    AclSpec,
    TopicResult,
    create_acls,
    create_topics,
    ensure_topics,
    topic_specs,
)

__all__ = [
    "LOG_DIRS",
    "LOG_FILE",
    "MARKER_NAME",
    "PID_FILE",
    "POM_PATH",
    "AclSpec",
    "BrokerState",
    "BrokerStatus",
    "KafkaLocalError",
    "SaslConfig",
    "TlsConfig",
    "TopicResult",
    "answers",
    "artifacts_ready",
    "broker_answers",
    "client_protocol",
    "create_acls",
    "create_topics",
    "ensure_topics",
    "fetch_artifacts",
    "free_port",
    "kafka_version",
    "libs_dir",
    "new_cluster_id",
    "port_is_free",
    "probe_settings",
    "render_properties",
    "server_properties",
    "start",
    "status",
    "stop",
    "topic_specs",
]
