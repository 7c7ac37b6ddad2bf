"""The one settings object: every tunable of the system, read from the environment.

Nothing else in the project reads ``os.environ``. Each field maps to one variable named
``CLICKSIGNALS_<FIELD>`` (upper case); ``docker-compose.yml`` and the README's settings table
list the same names, and a test keeps them in step. Secrets (SASL password, TLS key password,
webhook URL) are held as :class:`Secret` so that they never appear in ``repr`` or logs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "CLICKSIGNALS_"


class Secret(str):
    """A string whose repr/str in logs is masked; ``reveal()`` gives the value to clients."""

    def __repr__(self) -> str:
        return "Secret('***')" if self else "Secret('')"

    def __str__(self) -> str:
        return "***" if self else ""

    def reveal(self) -> str:
        return str.__str__(self)


@dataclass(frozen=True)
class Settings:
    """Typed settings; defaults are the local single-node set-up the README starts."""

    # --- Kafka connection -------------------------------------------------------------
    broker_url: str = "kafka://127.0.0.1:9092"
    """Faust-style URL(s), ``;``-separated; ``kafka://host:port``."""
    security_protocol: str = "PLAINTEXT"
    """PLAINTEXT | SASL_PLAINTEXT | SASL_SSL | SSL."""
    sasl_mechanism: str = "SCRAM-SHA-256"
    sasl_username: str = ""
    sasl_password: Secret = field(default_factory=lambda: Secret(""))
    ssl_cafile: Path | None = None
    """PEM CA bundle that signed the brokers' certificates (SSL, SASL_SSL); unset: the
    system's trusted CAs (what managed Kafka services' public certificates need)."""
    ssl_certfile: Path | None = None
    """PEM client certificate (chain) for brokers that require client authentication (mTLS)."""
    ssl_keyfile: Path | None = None
    """PEM private key of ``ssl_certfile``; unset: the key is in ``ssl_certfile``."""
    ssl_key_password: Secret = field(default_factory=lambda: Secret(""))
    """Password of an encrypted ``ssl_keyfile``."""

    # --- Topics (names and partition counts live here and only here) -------------------
    topic_clickstream: str = "clickstream"
    topic_demand: str = "demand-signals"
    topic_churn: str = "churn-risk"
    topic_dead_letter: str = "clickstream-dlq"
    topic_bid_adjustments: str = "bid-adjustments"
    topic_churn_alerts: str = "churn-alerts"
    partitions: int = 4
    replication_factor: int = 1

    # --- Worker ---------------------------------------------------------------------------
    app_id: str = "clicksignals"
    store_url: str = "rocksdb://"
    """``rocksdb://`` (default, changelog-backed) or ``memory://`` for tests."""
    data_dir: Path = Path("var/worker")
    model_dir: Path = Path("onnx_models/default")
    allowed_lateness_s: float = 3600.0
    """Event-time lateness tolerated before a window closes; later events go to the DLQ."""
    fresh_signal_min_interval_s: float = 60.0
    """Per-user minimum interval (event time) between activity-triggered demand signals."""
    dormant_churn_floor: float = 0.8
    """A dormant customer (an order, no event in the lookback) is scored at each window close
    while their last window-close churn probability is below this; ``1.0``: always. Default:
    ``features.windows.DORMANT_CHURN_FLOOR`` (why 0.8 there)."""
    batch_size: int = 512
    batch_timeout_s: float = 0.05
    ort_intra_op_threads: int = 1
    model_poll_interval_s: float = 10.0
    """How often the worker looks for a new model version in ``model_dir`` (0: never)."""
    lag_interval_s: float = 5.0
    """How often the worker updates its consumer-lag gauge (0: never)."""
    fetch_max_wait_ms: int = 50
    """How long the broker may hold the worker's fetch request when it has no new data.
    Faust fixes 1,500 ms; see "fetch wait" in stream/app.py for why that costs latency."""
    max_event_bytes: int = 65536
    max_future_skew_s: float = 86400.0
    """Events more than this far ahead of the processing clock are rejected."""
    min_event_time: str = "2000-01-01T00:00:00Z"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    churn_high_threshold: float | None = None
    """Overrides the manifest's high-risk threshold when set."""

    # --- Subscribers: ad bidding and churn alerting (``subscribers/``) ---------------------
    bid_floor: float = 0.5
    """Lowest bid multiplier the bidder ever emits."""
    bid_cap: float = 2.0
    """Highest bid multiplier the bidder ever emits."""
    bid_sensitivity: float = 0.5
    """``k`` in ``clip(1 + k * (lift - 1), floor, cap)``: how strongly demand moves the bid."""
    bid_baseline_orders_per_day: float = 0.02
    """Expected orders per day of an average user (lift 1); the shipped model's mean is ~0.019."""
    bid_model_baselines: str = ""
    """Per-model baselines, ``model_version=orders_per_day`` pairs ``;``-separated."""
    bidder_web_port: int = 6067
    """Web port of the bidder (``GET /bid/{user_id}``), bound to ``web_host``."""
    alert_high_threshold: float | None = None
    """Churn probability that raises an alert even below the signal's ``risk_level`` high."""
    alert_recovery_threshold: float = 0.5
    """An alerted user re-arms only after a signal that is not high with probability below this."""
    alert_webhook_url: Secret = field(default_factory=lambda: Secret(""))
    """Optional URL each alert is POSTed to as JSON (failures are logged, never fatal)."""
    alert_webhook_timeout_s: float = 5.0
    alerter_web_port: int = 6068
    """Web port of the alerter (``/health``, ``/alerts/{user_id}``), bound to ``web_host``."""

    # --- Local broker (ops) ---------------------------------------------------------------
    kafka_home: Path = Path(".cache/kafka")
    kafka_data_dir: Path = Path("var/kafka")
    log_format: str = "text"
    """``text`` or ``json``."""
    log_level: str = "INFO"

    @property
    def topic_routed(self) -> str:
        """Internal topic where the worker re-keys events a producer did not key by user."""
        return f"{self.app_id}-clickstream-by-user"

    @property
    def bidder_app_id(self) -> str:
        """Faust app id (consumer group, table changelog prefix) of the ad-bidding subscriber."""
        return f"{self.app_id}-bidder"

    @property
    def alerter_app_id(self) -> str:
        """Faust app id of the churn-alerting subscriber."""
        return f"{self.app_id}-alerter"

    @property
    def bootstrap_servers(self) -> str:
        """Plain ``host:port,host:port`` for aiokafka clients."""
        hosts = [u.split("://", 1)[-1] for u in self.broker_url.replace(",", ";").split(";")]
        return ",".join(h.strip() for h in hosts if h.strip())

    def kafka_client_kwargs(self) -> dict[str, Any]:
        """Connection options for aiokafka producers/consumers/admin clients.

        Built by :func:`settings.kafka.client_kwargs`, the one place that turns the security
        settings into client configuration (it also builds the Faust apps' credentials).
        """
        from settings.kafka import client_kwargs  # settings.kafka imports this module

        return client_kwargs(self)

    def with_overrides(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _convert(raw: str, annotation: str) -> Any:
    kind = annotation.replace(" ", "")
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    if kind == "float|None":
        return float(raw) if raw.strip() else None
    if kind == "Path":
        return Path(raw)
    if kind == "Path|None":
        return Path(raw) if raw.strip() else None
    if kind == "Secret":
        return Secret(raw)
    if kind == "bool":
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    return raw


def env_names() -> dict[str, str]:
    """Field name -> environment variable name, for docs and consistency tests."""
    return {f.name: ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}


def child_environment(settings: Settings) -> dict[str, str]:
    """The environment for a child process (a worker) that should see ``settings``.

    The current environment (PATH and the like) plus every field as its variable, secrets
    revealed: the child's own :func:`load_settings` reads them back.
    """
    env = dict(os.environ)
    for name, var in env_names().items():
        value = getattr(settings, name)
        if value is None:
            env.pop(var, None)
        else:
            env[var] = value.reveal() if isinstance(value, Secret) else str(value)
    return env


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from the environment (or the mapping given, for tests)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        name = ENV_PREFIX + f.name.upper()
        if name in env:
            try:
                values[f.name] = _convert(env[name], str(f.type))
            except ValueError as exc:
                raise ValueError(f"{name}={env[name]!r}: {exc}") from None
    return Settings(**values)


__all__ = ["ENV_PREFIX", "Secret", "Settings", "child_environment", "env_names", "load_settings"]
