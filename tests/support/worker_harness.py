"""Harness for the Kafka tier's worker tests: a real ``faust -A stream.app worker`` subprocess.

:class:`WorkerProcess` starts the worker from the repo root with the test's settings as
``CLICKSIGNALS_*`` variables (:func:`settings.child_environment`), logs to a file, waits until
it serves ``/health`` and logged that it is ready, and stops it (SIGTERM, then SIGKILL). The
Kafka helpers produce records and read topics back *up to the end offsets seen when the read
started* (deterministic, no idle timeouts), and :func:`wait_until_done` decides that a worker
has processed everything: its consumer group's committed offsets reached the end of the source
topics and no output topic grew for a few seconds.

Nothing here mocks Kafka; every wait is bounded and raises with the worker log's tail.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from ops import kafka_local
from ops.supervise import START_TIMEOUT_S, Supervised
from settings import Settings, child_environment
from stream.processor import WATERMARK_PREFIX
from stream.publish import partition_of
from tests.conftest import unique_name

# Re-exported: the Kafka-tier tests read topics through this harness.
from tests.support.kafka_io import Record as Record
from tests.support.kafka_io import committed as committed
from tests.support.kafka_io import end_offsets as end_offsets
from tests.support.kafka_io import produce as produce
from tests.support.kafka_io import read_topic as read_topic

REPO_ROOT = Path(__file__).resolve().parents[2]
WATERMARK_KEY_PREFIX = WATERMARK_PREFIX.encode()
MODEL_DIR = REPO_ROOT / "onnx_models" / "default"
FAUST = Path(sys.executable).with_name("faust")
READY_LINE = "Worker ready"
# After a SIGKILL the group waits for the dead member's session to expire before a new
# worker gets partitions: Faust's default session timeout is 60 s, restart tests use 10 s.
FAST_REJOIN = {"BROKER_SESSION_TIMEOUT": "10", "BROKER_HEARTBEAT_INTERVAL": "1"}

T = TypeVar("T")


SCORE_TOLERANCE = 1e-5
"""How far one signal's score may move between runs, relative to the score where it is above 1:
ONNX Runtime's float32 results move in the last bits when the rows batched with it differ (a
restart, a redelivery, another worker composes its micro-batches differently). A float32 has
~7 significant digits, so an absolute 1e-5 is under one ulp for an expected spend of 200 or
~40 expected orders; relative, it is ~80 ulps at any size. Ids must match exactly; scores
within this."""


def same_score(a: float, b: float) -> bool:
    return abs(a - b) <= SCORE_TOLERANCE * max(1.0, abs(a), abs(b))


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a fresh event loop in a helper thread (like ``tests.conftest.run_sync``)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def worker_settings(base: Settings, data_dir: Path, **overrides: Any) -> Settings:
    """``base`` (isolated topics/app id) plus a data dir, a free web port and the shipped model."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "web_port": kafka_local.free_port(),
        "web_host": "127.0.0.1",
        "store_url": "memory://",
        "model_dir": MODEL_DIR,
        "log_level": "INFO",
        # A finished replay leaves every source with nothing to read: its last windows close
        # once the sources are announced idle, well within wait_until_done's 4 s of quiet
        # outputs (production: 30 s and 1 s).
        "source_idle_timeout_s": 2.0,
        "watermark_interval_s": 0.25,
    }
    values.update(overrides)
    return base.with_overrides(**values)


class WorkerError(AssertionError):
    """A worker died, did not get ready, or did not finish in time (message has the log)."""


class WorkerProcess(Supervised):
    """One ``faust -A stream.app worker`` subprocess and its log file (:mod:`ops.supervise`)."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        log_path: Path,
        faust_env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            name=name,
            argv=[str(FAUST), "-A", "stream.app", "worker", "-l", "info"],
            # Faust's own knobs (it reads e.g. BROKER_SESSION_TIMEOUT from the environment).
            env={**child_environment(settings), **(faust_env or {})},
            log_path=log_path,
            url=f"http://{settings.worker.web_host}:{settings.worker.web_port}",
            cwd=REPO_ROOT,
            error=WorkerError,
        )
        self.settings = settings
        self.final_lag: int | None = None
        """Consumer lag when :func:`wait_until_done` returned."""

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S, **_: Any) -> float:
        """Until ``/health`` answers and the log says the worker is ready; returns seconds."""
        return super().wait_ready(timeout_s, ready_line=READY_LINE)


# --------------------------------------------------------------------------------------------
# Kafka helpers (async; tests call them through ``run_sync``)
# --------------------------------------------------------------------------------------------


async def _progress(settings: Settings, sources: Sequence[str], outputs: Sequence[str]) -> tuple:  # type: ignore[type-arg]
    ends = await end_offsets(settings, [*sources, *outputs])
    per_topic: dict[str, int] = {}
    for tp, end in ends.items():
        per_topic[tp.topic] = per_topic.get(tp.topic, 0) + end
    done = await committed(settings, settings.worker.app_id, sources)
    lag = sum(per_topic.get(t, 0) - done[t] for t in sources)
    if lag and settings.topics.routed in sources:
        # The workers announce their sources' event time on the re-keying topic every
        # watermark interval, so it always has a few records newer than the last commit:
        # those are not work left to do.
        lag -= await _uncommitted_announcements(settings, ends)
    return lag, tuple(per_topic.get(t, 0) for t in outputs)


async def _uncommitted_announcements(settings: Settings, ends: Mapping[TopicPartition, int]) -> int:
    """Watermark records of the re-keying topic after the group's committed offsets."""
    admin = AIOKafkaAdminClient(**settings.kafka.client_kwargs())
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(settings.worker.app_id)
    finally:
        await admin.close()
    starts = {
        tp: max(offsets[tp].offset, 0) if tp in offsets else 0
        for tp in ends
        if tp.topic == settings.topics.routed
    }
    pending = {tp: start for tp, start in starts.items() if start < ends[tp]}
    if not pending:
        return 0
    consumer = AIOKafkaConsumer(**settings.kafka.client_kwargs(), enable_auto_commit=False)
    await consumer.start()
    marks = 0
    try:
        consumer.assign(list(pending))
        for tp, start in pending.items():
            consumer.seek(tp, start)
        remaining = set(pending)
        deadline = time.monotonic() + 10.0
        while remaining and time.monotonic() < deadline:
            batch = await consumer.getmany(*remaining, timeout_ms=500)
            for tp, messages in batch.items():
                marks += sum(
                    1
                    for m in messages
                    if m.offset < ends[tp] and (m.key or b"").startswith(WATERMARK_KEY_PREFIX)
                )
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return marks


def _clocks(worker: WorkerProcess) -> dict[str, Any] | None:
    """The worker's ``/clocks`` view, or ``None`` while it does not answer with one."""
    with contextlib.suppress(OSError, ValueError):
        status, clocks = worker.get_json("/clocks", 2.0)
        if status == 200 and isinstance(clocks, dict):
            return clocks
    return None


def clocks_reached(worker: WorkerProcess, last_event_ms: Mapping[int, int]) -> bool:
    """True when the worker's ``/clocks`` shows every partition's last event time."""
    clocks = _clocks(worker)
    return clocks is not None and all(
        (clocks.get(str(p)) or {}).get("max_event_ms") == ms for p, ms in last_event_ms.items()
    )


def closes_reached(worker: WorkerProcess, closed_through: Mapping[int, int]) -> bool:
    """True when the worker's ``/clocks`` shows every partition closed through at least the
    given window (another run's, on the same events)."""
    clocks = _clocks(worker)
    if clocks is None:
        return False
    reached = [(clocks.get(str(p)) or {}).get("closed_through") for p in closed_through]
    return all(
        isinstance(r, int) and r >= w for r, w in zip(reached, closed_through.values(), strict=True)
    )


def _clocks_or_error(worker: WorkerProcess) -> object:
    try:
        return worker.get_json("/clocks", 2.0)
    except (OSError, ValueError) as exc:
        return repr(exc)


def wait_until_done(
    worker: WorkerProcess,
    *,
    idle_s: float = 4.0,
    timeout_s: float = 180.0,
    expect_min_source: int = 0,
    last_event_ms: Mapping[int, int] | None = None,
    closed_through: Mapping[int, int] | None = None,
) -> float:
    """Until the worker's group has committed the end of the source topics (lag 0), no
    output topic grew for ``idle_s`` and no window close is in progress (a close after a
    backlog goes on in slices between the timer's turns, so quiet outputs alone could be a
    pause in it). Returns seconds waited; the lag at that moment
    is left in ``worker.final_lag``.

    ``expect_min_source``: records the source topics must hold before lag 0 counts (guards
    against declaring an idle worker done before the test's records are visible).

    ``last_event_ms`` (partition -> event time of its last record, records in time order):
    also done, lag or not, once ``/clocks`` shows those times and outputs are idle. For a
    worker restored from the changelog after a crash, whose committed offsets faust-streaming
    may leave stuck (see the restart test), so lag 0 never comes although every record was
    processed.

    ``closed_through`` (partition -> window): not done before ``/clocks`` shows each partition
    closed through at least that window. A worker restored with every record already
    processed has its clocks at once and quiet outputs, while its closes wait for the
    watermark records its timer sends: without this, "done" could come before they began.
    """
    s = worker.settings
    sources = [s.topics.clickstream, s.topics.routed]
    # Every output, also those one hop further (the aggregators read the partitions' parts
    # from an internal topic): a run stopped when only the signals had been quiet could
    # miss the last window's category forecasts or quality record.
    outputs = [
        s.topics.demand,
        s.topics.churn,
        s.topics.dead_letter,
        s.topics.outcomes,
        s.topics.quality,
        s.topics.category_demand,
    ]
    t0 = time.monotonic()
    last_outputs: tuple[int, ...] | None = None
    stable_since = t0
    while True:
        if not worker.alive():
            raise worker.fail(f"worker {worker.name} died (code {worker.proc.returncode})")  # type: ignore[union-attr]
        lag, outs = run_sync(_progress(s, sources, outputs))
        now = time.monotonic()
        if outs != last_outputs:
            last_outputs, stable_since = outs, now
        ends = run_sync(end_offsets(s, [s.topics.clickstream]))
        produced = sum(ends.values())
        caught_up = lag == 0 or (
            last_event_ms is not None and clocks_reached(worker, last_event_ms)
        )
        if (
            produced >= expect_min_source
            and now - stable_since >= idle_s
            and caught_up
            and closes_in_progress(worker) == 0
            and (closed_through is None or closes_reached(worker, closed_through))
        ):
            worker.final_lag = lag
            return now - t0
        if now - t0 > timeout_s:
            raise worker.fail(
                f"worker {worker.name} not done after {timeout_s:.0f} s (lag {lag}, outputs {outs})"
                f"; /clocks {_clocks_or_error(worker)}, expected last events {last_event_ms}"
            )
        time.sleep(0.5)


FAUST_OFFSET_KEY = b"__faust\x00offset__"


def persisted_offsets(data_dir: Path, table: str = "user-state") -> dict[int, int]:
    """Per partition, the changelog offset a stopped worker's RocksDB store says it holds.

    Faust keeps it under its own key in each partition's database; a warm restart resumes
    the changelog after it. Read with Faust's raw-mode options, the databases opened
    read-only (the worker must have stopped).
    """
    import re

    from rocksdict import AccessType, Options, Rdict

    found: dict[int, int] = {}
    for path in sorted(data_dir.rglob(f"*{table}-*.db")):
        match = re.search(r"-(\d+)\.db$", path.name)
        if match is None:
            continue
        db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            raw = db.get(FAUST_OFFSET_KEY)
        finally:
            db.close()
        if raw is not None:
            found[int(match.group(1))] = int(raw)
    return found


def report(message: str) -> None:
    """Timings, shown with ``pytest -s`` (and in the captured output of a failure)."""
    print(f"[worker-kafka] {message}", file=sys.stderr)


def window_close(records: list[Record]) -> list[dict[str, Any]]:
    return [r for r in (rec.json() for rec in records) if r["trigger"] == "window_close"]


def last_event_per_partition(frame: pd.DataFrame, partitions: int) -> dict[int, int]:
    part = [partition_of(u.encode(), partitions) for u in frame.user_id.astype(str)]
    return {int(p): int(t) for p, t in frame.groupby(part).event_time_ms.max().items()}


WorkerFactory = Callable[..., WorkerProcess]


def fresh_topics(
    base: Settings, prefix: str, clickstream_config: dict[str, str] | None = None
) -> Settings:
    """``base`` with an app id and application topics of its own, created on its broker
    (the clickstream topic with ``clickstream_config`` when given)."""
    s = base.isolated(unique_name(prefix))
    if clickstream_config:
        run_sync(_create_topic(s, s.topics.clickstream, s.topics.partitions, clickstream_config))
    run_sync(kafka_local.ensure_topics(s))
    return s


async def _create_topic(
    settings: Settings, name: str, partitions: int, config: dict[str, str]
) -> None:
    from aiokafka.admin import NewTopic

    admin = AIOKafkaAdminClient(**settings.kafka.client_kwargs())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=config)])
    finally:
        await admin.close()


def metric_samples(worker: WorkerProcess) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The worker's ``/metrics`` as sample name -> [(labels, value)] (empty if unreachable)."""

    try:
        with urllib.request.urlopen(worker.url + "/metrics", timeout=2.0) as response:
            text = response.read().decode()
    except OSError:
        return {}
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def closes_in_progress(worker: WorkerProcess) -> float:
    """Held partitions with a window close still going on in slices (0 if unreachable: the
    quiet outputs then decide alone, as before the worker exported it)."""
    samples = metric_samples(worker).get("clicksignals_closes_in_progress", [])
    return sum(value for _, value in samples)


def events_in(worker: WorkerProcess) -> float:
    samples = metric_samples(worker).get("clicksignals_events_in_total", [])
    return sum(value for _, value in samples)


def wait_for(
    what: str, condition: Callable[[], bool], timeout_s: float, workers: Sequence[WorkerProcess]
) -> float:
    """Poll ``condition`` until true; returns seconds waited. Fails if a worker died."""
    t0 = time.monotonic()
    while not condition():
        for w in workers:
            if not w.alive():
                raise w.fail(f"worker {w.name} died while waiting for {what}")
        if time.monotonic() - t0 > timeout_s:
            raise workers[0].fail(f"{what}: not reached after {timeout_s:.0f} s")
        time.sleep(0.25)
    return time.monotonic() - t0


def lag_samples(worker: WorkerProcess) -> dict[tuple[str, int], float]:
    return {
        (labels["topic"], int(labels["partition"])): value
        for labels, value in metric_samples(worker).get("clicksignals_consumer_lag", [])
    }
