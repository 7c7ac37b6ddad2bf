"""The one settings object: every tunable of the system, read from the environment.

Nothing else in the project reads ``os.environ``. :class:`Settings` is grouped by concern into
typed sub-objects -- :class:`KafkaConnection`, :class:`Topics`, :class:`WorkerSettings`,
:class:`SubscriberSettings`, :class:`LocalBroker` and :class:`LogSettings` -- so that a module
asks for the part it uses (``settings.topics.demand``, ``settings.kafka``).

Each setting has one *flat name*, which is its environment variable without the
``CLICKSIGNALS_`` prefix (``topic_demand`` is ``CLICKSIGNALS_TOPIC_DEMAND`` and lives at
``settings.topics.demand``). The flat names are the deployment contract: ``docker-compose.yml``
and the README's settings table list them, a test keeps them in step, and
:meth:`Settings.from_flat` / :meth:`Settings.with_overrides` take them, so that an override
reads like the variable an operator would set. Secrets (SASL password, TLS key password,
webhook URL) are held as :class:`Secret` so that they never appear in ``repr`` or logs.

:class:`Topics` is the one place that lists every topic the application reads or writes
(:meth:`Topics.names`), the internal re-keying topic included.

Why a top-level package named ``settings`` stays: the brief fixes ``faust -A stream.app worker``
as the worker's command, so the project's packages (``stream``, ``features``, ``settings``...)
are top-level by contract, and renaming only this one would not remove the class of collision.
The project installs into its own environment (``scripts/bootstrap.sh``'s ``.venv``, the
image); a foreign ``settings`` module shadowing this one fails loudly at the first import of
:class:`Settings`, never silently.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
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


def _secret() -> Secret:
    return Secret("")


def _flat(name: str) -> dict[str, str]:
    """Field metadata: the setting's flat name when it is not the field's own name."""
    return {"flat": name}


@dataclass(frozen=True)
class KafkaConnection:
    """Where the brokers are and how every client authenticates (``settings.kafka``)."""

    broker_url: str = "kafka://127.0.0.1:9092"
    """Faust-style URL(s), ``;``-separated; ``kafka://host:port``."""
    security_protocol: str = "PLAINTEXT"
    """PLAINTEXT | SASL_PLAINTEXT | SASL_SSL | SSL."""
    sasl_mechanism: str = "SCRAM-SHA-256"
    sasl_username: str = ""
    sasl_password: Secret = field(default_factory=_secret)
    ssl_cafile: Path | None = None
    """PEM CA bundle that signed the brokers' certificates (SSL, SASL_SSL); unset: the
    system's trusted CAs (what managed Kafka services' public certificates need)."""
    ssl_certfile: Path | None = None
    """PEM client certificate (chain) for brokers that require client authentication (mTLS)."""
    ssl_keyfile: Path | None = None
    """PEM private key of ``ssl_certfile``; unset: the key is in ``ssl_certfile``."""
    ssl_key_password: Secret = field(default_factory=_secret)
    """Password of an encrypted ``ssl_keyfile``."""

    @property
    def bootstrap_servers(self) -> str:
        """Plain ``host:port,host:port`` for aiokafka clients."""
        hosts = [u.split("://", 1)[-1] for u in self.broker_url.replace(",", ";").split(";")]
        return ",".join(h.strip() for h in hosts if h.strip())

    def client_kwargs(self) -> dict[str, Any]:
        """Connection options for aiokafka producers/consumers/admin clients.

        Built by :func:`settings.kafka.client_kwargs`, the one place that turns the security
        settings into client configuration (it also builds the Faust apps' credentials).
        """
        from settings.kafka import client_kwargs  # settings.kafka imports this module

        return client_kwargs(self)


@dataclass(frozen=True)
class Topics:
    """Every topic's name and the partitioning they share (``settings.topics``).

    ``routed`` is the worker's internal re-keying topic; its name follows the worker's
    ``app_id`` (like Faust's changelog topics) and has no variable of its own.
    """

    clickstream: str = field(default="clickstream", metadata=_flat("topic_clickstream"))
    demand: str = field(default="demand-signals", metadata=_flat("topic_demand"))
    churn: str = field(default="churn-risk", metadata=_flat("topic_churn"))
    dead_letter: str = field(default="clickstream-dlq", metadata=_flat("topic_dead_letter"))
    bid_adjustments: str = field(default="bid-adjustments", metadata=_flat("topic_bid_adjustments"))
    churn_alerts: str = field(default="churn-alerts", metadata=_flat("topic_churn_alerts"))
    outcomes: str = field(default="prediction-outcomes", metadata=_flat("topic_outcomes"))
    """Window-close predictions joined with what happened once their horizon passed."""
    quality: str = field(default="model-quality", metadata=_flat("topic_quality"))
    """The online evaluation: per window end and model version, the cohort's quality."""
    category_demand: str = field(default="category-demand", metadata=_flat("topic_category_demand"))
    """Per series (category) and window end: the category model's quantiles (issue 17)."""
    stock_levels: str = field(default="stock-levels", metadata=_flat("topic_stock_levels"))
    """Stock on hand and on order per series, keyed by series: the planner's input."""
    reorder_suggestions: str = field(
        default="reorder-suggestions", metadata=_flat("topic_reorder_suggestions")
    )
    """The planner's output: series whose P90 demand over the cover exceeds their stock."""
    routed: str = field(default="clicksignals-clickstream-by-user", metadata={"flat": None})
    """Internal topic where the worker re-keys events a producer did not key by user."""
    quality_parts: str = field(default="clicksignals-quality-parts", metadata={"flat": None})
    """Internal topic of the partitions' quality tallies; one partition (see
    :mod:`features.feedback`), named after the app id like ``routed``."""
    category_parts: str = field(default="clicksignals-category-parts", metadata={"flat": None})
    """Internal topic of the partitions' category sums; one partition (see
    :mod:`features.series_book`), named after the app id like ``routed``."""
    partitions: int = 4
    replication_factor: int = 1

    def names(self) -> tuple[str, ...]:
        """Every topic the application reads or writes, in pipeline order."""
        return (
            self.clickstream,
            self.routed,
            self.demand,
            self.churn,
            self.dead_letter,
            self.bid_adjustments,
            self.churn_alerts,
            self.outcomes,
            self.quality,
            self.quality_parts,
            self.category_parts,
            self.category_demand,
            self.stock_levels,
            self.reorder_suggestions,
        )

    def partitions_of(self, name: str) -> int:
        """A topic's partition count: the internal quality and category topics have one, so
        that each worker's parts arrive in the order they were sent; every other topic
        ``partitions``."""
        return 1 if name in (self.quality_parts, self.category_parts) else self.partitions


@dataclass(frozen=True)
class WorkerSettings:
    """The scoring worker (``settings.worker``): identity, state, model, batching, limits."""

    app_id: str = "clicksignals"
    """Faust app id: the consumer group and the prefix of table changelogs and internal topics
    (the subscribers' ids derive from it)."""
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
    drift_psi_threshold: float = 0.25
    """Input drift: a window feature whose population stability index against the model's
    training distribution exceeds this is flagged (``model-quality``'s ``input_drift``, the
    ``clicksignals_input_drift`` gauges); see :mod:`features.drift`."""
    batch_size: int = 512
    batch_timeout_s: float = 0.05
    close_slice: int = 256
    """Users a slice of a window close in progress closes: a close of many users is spread
    over slices between the batches of live events, at most ``close_share`` of the worker's
    time while events flow, so that no event waits for a whole partition's close
    (``stream.processor.CLOSE_SLICE``)."""
    close_share: float = 0.1
    """The most of the worker's time window closes in progress take while events flow
    (``Worker.go_on_closing``); with no events in the last second they run at full speed.
    Closes are background work (a window's churn signals, due once a week) and live events
    are not: at 0.25 a weekly close pushed the p99 event → signal latency at half the
    worker's rate to 276-300 ms, at 0.1 it stayed at 159-194 ms (two side-by-side pairs,
    ``bench/results/profile.md``, 2026-12-07 night). A close of 25,000 users (~2.5 s of
    work) then takes ~25 s under traffic. Above 0 and at most 1."""
    bulk_consumption: bool = True
    """Hand the agent its topics' records as the consumer fetched them, a list at a time
    (:class:`stream.faust_runtime.BulkConsumer`), instead of one Faust event per record
    (``stream.take_events``: ~75 µs per record here). A micro-batch is then what was fetched,
    at most ``batch_size`` records, and ``batch_timeout_s`` does not apply. The user-state
    changelog is then restored the same way, a fetched list at a time into the store, instead
    of Faust's recovery loop (1M users: 26 s against 131 s). ``false``: Faust's stream
    iteration and recovery (the bench compares the two)."""
    ort_intra_op_threads: int = 1
    model_poll_interval_s: float = 10.0
    """How often the worker looks for a new model version in ``model_dir`` (0: never), and
    for a shadow model in ``model_dir/candidate/``."""
    online_evaluation: bool = True
    """Settle each window-close prediction one horizon later and publish ``model-quality``,
    input drift and shadow evaluations; ``false`` turns the whole online evaluation off
    (the bench measures its cost that way)."""
    category_demand: bool = True
    """Sum category demand per window and publish the category model's forecasts
    (``category-demand``) when ``model_dir/demand/`` holds a model of a level's series
    (``train-and-export --demand LEVEL``); ``false``: off (the bench measures its cost so)."""
    promote_after: int = 0
    """Promote the shadow model once it has beaten the serving one (lower orders MAE and
    churn log loss) on this many consecutive evaluable window ends; 0: never (the default)."""
    gc_young_threshold: int = 50_000
    """Container allocations (net) between the worker's young garbage collections; the heap
    built at start-up is frozen out of collections too (:func:`stream.memory.tune_collector`,
    why there). 0: Python's own thresholds (700), nothing frozen."""
    lag_interval_s: float = 5.0
    """How often the worker updates its consumer-lag gauge (0: never)."""
    memory_trim_interval_s: float = 5.0
    """How often the worker asks whether to give freed heap pages back to the operating
    system, and how long without a batch counts as quiet: it trims at each tick while quiet,
    and under steady traffic at most once a minute (:func:`stream.memory.trim_due`; 0: never)."""
    watermark_interval_s: float = 1.0
    """How often the worker announces the event time of the source partitions it holds to
    every other partition (watermark records on the re-keying topic). A partition closes a
    window only when every source partition has passed it, so this bounds how long a window
    close waits for the other partitions' announcements."""
    source_idle_timeout_s: float = 30.0
    """A source partition with nothing to read (caught up, no new record) for this long is
    idle: it stops holding back the other partitions' event time until it has records again.
    Records it then brings for windows already closed are late."""
    fetch_max_wait_ms: int = 50
    """How long the broker may hold the worker's fetch request when it has no new data.
    Faust fixes 1,500 ms; see "fetch wait" in stream/faust_runtime.py for why that costs
    latency."""
    max_event_bytes: int = 65536
    max_future_skew_s: float = 86400.0
    """Events more than this far ahead of the processing clock are rejected."""
    min_event_time: str = "2000-01-01T00:00:00Z"
    web_host: str = "127.0.0.1"
    """Interface every web server of the system binds (worker and subscribers)."""
    web_port: int = 6066
    churn_high_threshold: float | None = None
    """Overrides the manifest's high-risk threshold when set."""


@dataclass(frozen=True)
class SubscriberSettings:
    """Ad bidding and churn alerting (``settings.subscribers``; ``subscribers/``)."""

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
    """Web port of the bidder (``GET /bid/{user_id}``), bound to the worker's ``web_host``."""
    alert_high_threshold: float | None = None
    """Churn probability that raises an alert even below the signal's ``risk_level`` high."""
    alert_recovery_threshold: float = 0.5
    """An alerted user re-arms only after a signal that is not high with probability below this."""
    alert_webhook_url: Secret = field(default_factory=_secret)
    """Optional URL each alert is POSTed to as JSON (failures are logged, never fatal)."""
    alert_webhook_timeout_s: float = 5.0
    planner_web_port: int = 6069
    """Web port of the planner (``GET /forecast/{series}``, ``/health``), bound to ``web_host``."""
    planner_lead_time_days: float = 14.0
    """Days from ordering to the goods on the shelf (the planner's rule)."""
    planner_review_days: float = 7.0
    """Days until the next chance to order: an order must last the lead time plus this."""
    planner_stock_csv: str = ""
    """Optional CSV of stock per series (``series,on_hand[,on_order][,as_of_ms]``), read at
    start-up; the ``stock-levels`` topic's newer records take over per series."""
    alerter_web_port: int = 6068
    """Web port of the alerter (``/health``, ``/alerts/{user_id}``), bound to ``web_host``."""


@dataclass(frozen=True)
class LocalBroker:
    """The single-node Kafka the project runs itself (``settings.local``; ``ops.kafka_local``)."""

    kafka_home: Path = Path(".cache/kafka")
    kafka_data_dir: Path = Path("var/kafka")


@dataclass(frozen=True)
class LogSettings:
    """How every process logs (``settings.logs``; ``settings.logs`` module)."""

    format: str = field(default="text", metadata=_flat("log_format"))
    """``text`` or ``json``."""
    level: str = field(default="INFO", metadata=_flat("log_level"))


@dataclass(frozen=True)
class Settings:
    """Typed settings; defaults are the local single-node set-up the README starts.

    Build it with :func:`load_settings` (the environment), :meth:`from_flat` (flat names, as in
    tests and harnesses) or the constructor (sub-objects).
    """

    kafka: KafkaConnection = field(default_factory=KafkaConnection)
    topics: Topics = field(default_factory=Topics)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    subscribers: SubscriberSettings = field(default_factory=SubscriberSettings)
    local: LocalBroker = field(default_factory=LocalBroker)
    logs: LogSettings = field(default_factory=LogSettings)

    def __post_init__(self) -> None:
        # The re-keying topic is the worker's own, named after its app id: derive it here so
        # that every way of building Settings (and every app_id override) agrees.
        routed = f"{self.worker.app_id}-clickstream-by-user"
        parts = f"{self.worker.app_id}-quality-parts"
        categories = f"{self.worker.app_id}-category-parts"
        derived = (routed, parts, categories)
        if (self.topics.routed, self.topics.quality_parts, self.topics.category_parts) != derived:
            object.__setattr__(
                self,
                "topics",
                dataclasses.replace(
                    self.topics, routed=routed, quality_parts=parts, category_parts=categories
                ),
            )

    @property
    def bidder_app_id(self) -> str:
        """Faust app id (consumer group, table changelog prefix) of the ad-bidding subscriber."""
        return f"{self.worker.app_id}-bidder"

    @property
    def planner_app_id(self) -> str:
        """Faust app id of the stock planner."""
        return f"{self.worker.app_id}-planner"

    @property
    def alerter_app_id(self) -> str:
        """Faust app id of the churn-alerting subscriber."""
        return f"{self.worker.app_id}-alerter"

    @classmethod
    def from_flat(cls, **values: Any) -> Settings:
        """Settings from flat names (module doc), typed values; the rest keep their defaults."""
        groups: dict[str, dict[str, Any]] = {name: {} for name in _GROUPS}
        for name, value in values.items():
            try:
                group, attr = _FLAT[name]
            except KeyError:
                raise TypeError(f"no setting named {name!r} (see settings.env_names())") from None
            groups[group][attr] = value
        return cls(**{name: _GROUPS[name](**kw) for name, kw in groups.items()})

    def flat(self) -> dict[str, Any]:
        """Flat name -> value of every setting (the inverse of :meth:`from_flat`)."""
        return {name: getattr(getattr(self, g), a) for name, (g, a) in _FLAT.items()}

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with the settings named by flat name (``topic_demand=...``) replaced."""
        return Settings.from_flat(**{**self.flat(), **changes})

    def isolated(self, suffix: str, **changes: Any) -> Settings:
        """A copy whose app id and every application topic end in ``-suffix`` (the re-keying
        topic, the changelogs and the subscribers' ids follow the app id), plus ``changes``:
        another deployment on the same broker that reads and writes nothing of this one's."""
        t = self.topics
        names = {
            "app_id": self.worker.app_id,
            "topic_clickstream": t.clickstream,
            "topic_demand": t.demand,
            "topic_churn": t.churn,
            "topic_dead_letter": t.dead_letter,
            "topic_bid_adjustments": t.bid_adjustments,
            "topic_churn_alerts": t.churn_alerts,
            "topic_outcomes": t.outcomes,
            "topic_quality": t.quality,
            "topic_category_demand": t.category_demand,
            "topic_stock_levels": t.stock_levels,
            "topic_reorder_suggestions": t.reorder_suggestions,
        }
        return self.with_overrides(**{k: f"{v}-{suffix}" for k, v in names.items()}, **changes)


_GROUPS: dict[str, type[Any]] = {
    "kafka": KafkaConnection,
    "topics": Topics,
    "worker": WorkerSettings,
    "subscribers": SubscriberSettings,
    "local": LocalBroker,
    "logs": LogSettings,
}


def _setting_fields() -> Iterator[tuple[str, str, dataclasses.Field[Any]]]:
    """(flat name, group, field) of every setting that has a variable."""
    for group, kind in _GROUPS.items():
        for f in dataclasses.fields(kind):
            flat = f.metadata.get("flat", f.name)
            if flat is not None:
                yield flat, group, f


_FLAT: dict[str, tuple[str, str]] = {flat: (g, f.name) for flat, g, f in _setting_fields()}
_TYPES: dict[str, str] = {flat: str(f.type) for flat, _, f in _setting_fields()}


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
    """Flat name -> environment variable name, for docs and consistency tests."""
    return {name: ENV_PREFIX + name.upper() for name in _FLAT}


def child_environment(settings: Settings) -> dict[str, str]:
    """The environment for a child process (a worker) that should see ``settings``.

    The current environment (PATH and the like) plus every setting as its variable, secrets
    revealed: the child's own :func:`load_settings` reads them back.
    """
    env = dict(os.environ)
    for name, value in settings.flat().items():
        var = ENV_PREFIX + name.upper()
        if value is None:
            env.pop(var, None)
        else:
            env[var] = value.reveal() if isinstance(value, Secret) else str(value)
    return env


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from the environment (or the mapping given, for tests)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name in _FLAT:
        var = ENV_PREFIX + name.upper()
        if var in env:
            try:
                values[name] = _convert(env[var], _TYPES[name])
            except ValueError as exc:
                raise ValueError(f"{var}={env[var]!r}: {exc}") from None
    return Settings.from_flat(**values)


__all__ = [
    "ENV_PREFIX",
    "KafkaConnection",
    "LocalBroker",
    "LogSettings",
    "Secret",
    "Settings",
    "SubscriberSettings",
    "Topics",
    "WorkerSettings",
    "child_environment",
    "env_names",
    "load_settings",
]
