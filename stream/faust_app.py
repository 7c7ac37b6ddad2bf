"""The one way this project builds a Faust app: :func:`faust_app`.

The worker (:mod:`stream.worker`), both subscribers (:mod:`subscribers.runtime`) and the
bench's naive baseline (:mod:`bench.naive_app`) all get their ``faust.App`` here, so they agree
on what every app of the project needs:

* the broker and its connection options from :mod:`settings.kafka` (TLS, SASL: the one place
  that builds them; a setting that cannot make a client raises
  :class:`settings.kafka.KafkaClientConfigError`, which each entry point turns into its
  refusal to start);
* the store, a data directory, partitions and replication of the topics it declares (topics
  come from ``clicksignals topics create``; auto-creation would hide a partition count that
  differs from the changelog's);
* its web server on ``settings.worker.web_host``;
* raw bytes on every topic and table: the pure modules do their own (de)coding;
* ``CLICKSIGNALS_LOG_FORMAT=json`` through Faust's ``logging_config`` (:mod:`settings.logs`);
* after a rebalance, a stream partition no one has committed yet is read from its start
  (:func:`stream.faust_runtime.install_seek_from_start`; without it records Faust dropped
  around the rebalance were lost), and commits are computed from unique acknowledged offsets
  (:func:`stream.faust_runtime.install_unique_acks`).

What differs (app id, web port, data directory, the worker's fetch and producer tuning) is
passed in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import faust

from settings import Settings
from settings.kafka import faust_credentials
from settings.logs import faust_logging_config
from stream import faust_runtime

RAW: Final[dict[str, Any]] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}
"""Keyword arguments of a raw-bytes topic or table."""


def faust_app(
    settings: Settings,
    *,
    app_id: str,
    web_port: int,
    datadir: Path,
    bulk: bool = False,
    **tuning: Any,
) -> faust.App:
    """A Faust app with the project's common configuration and ``tuning`` on top; with
    ``bulk``, its consumer can hand topics to bulk agents
    (:class:`stream.faust_runtime.BulkSource`)."""
    datadir.parent.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    logging_config = faust_logging_config(settings)
    logs: dict[str, Any] = {} if logging_config is None else {"logging_config": logging_config}
    options: dict[str, Any] = {
        "broker": settings.kafka.broker_url,
        "broker_credentials": faust_credentials(settings.kafka),
        "store": settings.worker.store_url,
        "datadir": str(datadir),
        "topic_partitions": settings.topics.partitions,
        "topic_replication_factor": settings.topics.replication_factor,
        "topic_allow_declare": True,
        "web_bind": settings.worker.web_host,
        "web_host": settings.worker.web_host,
        "web_port": web_port,
        "producer_linger_ms": 5,
        "key_serializer": "raw",
        "value_serializer": "raw",
        **logs,
        **tuning,
    }
    faust_runtime.install_seek_from_start()
    faust_runtime.install_seek_fence()
    faust_runtime.install_subscribe_after_metadata()
    faust_runtime.install_unique_acks()
    if bulk:
        return faust_runtime.BulkApp(app_id, **options)
    return faust.App(app_id, **options)


__all__ = ["RAW", "faust_app"]
