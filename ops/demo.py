"""``clicksignals demo``: the whole system on this machine, in one command.

Owns the demo's choreography and its processes:

1. a Kafka broker -- the configured one if it answers, else the project's own on a free port
   with a fresh data directory under ``--workdir`` (so every run starts from empty topics and
   consumer groups, and the counts are this run's);
2. the topics; then three Faust workers, each its own process in its own session, on free web
   ports: the worker (``faust -A stream.app worker``) and both subscribers
   (``subscribers.cli.worker_argv``: the bidder and the alerter), all waited for on ``/health``;
3. the replay of generated traffic (the generator's ``regular`` shop, :data:`DEMO_SHOP`) or of
   ``--events FILE``, while a collector reads the five
   output topics into ``<workdir>/out/*.jsonl`` and a :class:`ops.demo_view.Tally`, and a live
   view shows progress, events/s, signal counts, top churn risks and bid multipliers;
4. once the replay is done, nothing new arrived for ``--settle`` seconds and each of the three
   processes has committed everything on its input topic (:mod:`ops.offsets`; an alerter that
   raises few alerts can be far behind while every output topic is idle), or ``--drain`` seconds
   after the replay if one has not (a warning names it, ``summary.json`` records the lag):
   ``summary.json`` and ``dashboard.html`` (:mod:`ops.dashboard`), then everything it started
   is stopped.

Ending: a normal end, Ctrl-C and SIGTERM all take the same path -- the collector and producer
close, each child gets SIGTERM to its process group (SIGKILL after a grace period), the broker
the demo started is stopped, and the outputs collected so far are still written. Further
Ctrl-C/SIGTERM during that shutdown are ignored (with a note) so it cannot be cut half-way and
leave processes behind.

The live view is redrawn in place on a terminal (stderr); elsewhere (CI, a pipe) it is logged
as one line every few seconds instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any, Final

import orjson
import pandas as pd
from aiokafka import AIOKafkaConsumer, TopicPartition

from features.windows import DAY_MS
from ops import kafka_local
from ops.dashboard import render_dashboard
from ops.demo_truth import Truth, evaluate
from ops.demo_view import (
    FILES,
    KINDS,
    LiveStatus,
    Tally,
    rate,
    redraw,
    render_live,
    summary_record,
)
from ops.offsets import OffsetReader
from ops.replay import load_wire, produce
from ops.supervise import Supervised, stop_all
from settings import Settings, child_environment
from subscribers.cli import worker_argv
from training.evaluate import roc_auc

log = logging.getLogger(__name__)

GENERATED_MODEL_DIR: Final = Path("onnx_models/generated")
"""The model trained on the generator's clickstream (README, *The demo's model*)."""
GENERATOR_START: Final = "2024-01-01"
"""The generator's first day, as ``ops.replay.load_wire`` and ``train-and-export`` use it."""
DEMO_SHOP: Final = "regular"
"""The generator's preset the demo replays (:data:`ingest.generator.REGULAR_SHOP`: customers
who order regularly, so the model's order-based churn can see who leaves; issue 20)."""
STOP_GRACE_S: Final = 20.0
READY_TIMEOUT_S: Final = 120.0
TICK_S: Final = 0.5
LOG_EVERY_S: Final = 5.0


# --------------------------------------------------------------------------------------------
# Traffic, its truth, and the model that fits it
# --------------------------------------------------------------------------------------------


def demo_model_dir(settings: Settings, model_dir: Path | None, *, generated: bool) -> Path:
    """The model the demo's worker serves.

    ``--model-dir`` if given; else a ``CLICKSIGNALS_MODEL_DIR`` that differs from the default;
    else, for generated traffic, the model trained on that generator (the shipped Online
    Retail model scores clickstream it has never seen nearly constantly: issue 20), and for
    ``--events FILE`` the default model.
    """
    if model_dir is not None:
        return model_dir
    if settings.worker.model_dir != Settings().worker.model_dir or not generated:
        return settings.worker.model_dir
    return GENERATED_MODEL_DIR


def demo_bid_baselines(settings: Settings, model_dir: Path) -> str:
    """``bid_model_baselines`` with the served model's own "average user", unless one is set.

    The bidder's default baseline (0.02 orders/day) is Online Retail's model's mean; a model
    of a shop whose customers order every week or two would put nearly every user at the cap.
    The model's "average" is its mean expected order rate over the users it scored at its
    cutoff (``predictions.csv``, written by ``train-and-export``), per day of its horizon --
    the per-model baseline the README's bidding section asks an operator to set. Unchanged
    when the settings already name this model version or the model has no predictions.
    """
    from subscribers.bidding import parse_model_baselines

    configured = settings.subscribers.bid_model_baselines
    try:
        manifest = orjson.loads((model_dir / "manifest.json").read_bytes())
        version = str(manifest["model_version"])
        days = manifest["window"]["length_ms"] * manifest["window"]["horizon"] / DAY_MS
        if version in parse_model_baselines(configured):
            return configured
        expected = pd.read_csv(model_dir / "predictions.csv")
        # The bidder reads a mean (mean_orders) where the model serves a quantile.
        column = "mean_orders" if "mean_orders" in expected.columns else "expected_orders"
        per_day = float(expected[column].mean()) / days
    except (OSError, KeyError, TypeError, ValueError, orjson.JSONDecodeError):
        return configured
    if not per_day > 0:
        return configured
    log.info("bidder: the served model's average user orders %.4f times a day", per_day)
    return (
        f"{configured};{version}={per_day:.6g}"
        if configured.strip()
        else f"{version}={per_day:.6g}"
    )


def load_traffic(args: argparse.Namespace) -> tuple[list[tuple[bytes, bytes]], Truth | None]:
    """The records to replay and, for generated traffic, who the generator makes churn."""
    if args.events is not None:
        return load_wire(args.events, args.format, args.users, args.days, args.seed), None
    from ingest.adapters import to_wire_bytes
    from ingest.generator import PRESETS, simulate

    # The same simulation as ``load_wire``'s generator path, kept whole for its truth table.
    sim = simulate(
        n_users=args.users,
        start=GENERATOR_START,
        days=args.days,
        seed=args.seed,
        config=PRESETS[args.shop],
    )
    end_ms = int(pd.Timestamp(GENERATOR_START, tz="UTC").value // 1_000_000) + args.days * DAY_MS
    return to_wire_bytes(sim.events), Truth.from_users(sim.users, end_ms)


def live_auc(tally: Tally, truth: Truth | None) -> float | None:
    """ROC-AUC of the current churn scores against the truth (``None``: no truth or one class)."""
    if truth is None:
        return None
    pairs = [(p, truth.churned(u)) for u, (_, p) in tally.churn.items()]
    known = [(p, bool(c)) for p, c in pairs if c is not None]
    if not known:
        return None
    auc = roc_auc([p for p, _ in known], [1.0 if c else 0.0 for _, c in known])
    return None if auc != auc else auc  # NaN (one class so far) shows as none


# --------------------------------------------------------------------------------------------
# Child processes
# --------------------------------------------------------------------------------------------


def children(settings: Settings, base: Path) -> list[Supervised]:
    """The three Faust workers of a demo (not yet started): worker, bidder, alerter, each
    supervised by :mod:`ops.supervise` (own session, log file, readiness on ``/health``)."""
    level = settings.logs.level
    host = settings.worker.web_host
    env = child_environment(settings)
    # The worker is started as the README runs it; the subscribers as `clicksignals bidder`
    # and `clicksignals alerter` run them (the same argv, without the exec).
    worker = [sys.executable, "-m", "faust", "-A", "stream.app", "worker", "-l", "info"]
    ports = {
        "worker": settings.worker.web_port,
        "bidder": settings.subscribers.bidder_web_port,
        "alerter": settings.subscribers.alerter_web_port,
    }
    argvs = {"worker": worker, "bidder": worker_argv("bidder", level)}
    argvs["alerter"] = worker_argv("alerter", level)
    return [
        Supervised(name, argvs[name], env, base / f"{name}.log", f"http://{host}:{port}")
        for name, port in ports.items()
    ]


def wait_ready(kids: list[Supervised], timeout_s: float = READY_TIMEOUT_S) -> None:
    """Until every child answers ``/health`` (RuntimeError if one exits or time runs out)."""
    for child in kids:
        child.wait_ready(timeout_s, poll_s=0.5)
        log.info("%s ready (%s)", child.name, child.url)


# --------------------------------------------------------------------------------------------
# Signals
# --------------------------------------------------------------------------------------------


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that one shutdown path serves both."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` inside the block (Python's default would just die)."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Ignore Ctrl-C/SIGTERM (noting them) while the demo shuts its processes down."""

    def note(signum: int, frame: FrameType | None) -> None:
        log.warning("%s: already shutting down, please wait", signal.Signals(signum).name)

    previous = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# --------------------------------------------------------------------------------------------
# Collecting and showing
# --------------------------------------------------------------------------------------------


class Outputs:
    """The ``<kind>.jsonl`` files, one record per line as it came off its topic."""

    def __init__(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.paths = {kind: out_dir / FILES[kind] for kind in KINDS}
        self.files = {kind: path.open("wb") for kind, path in self.paths.items()}

    def write(self, kind: str, value: bytes) -> None:
        self.files[kind].write(value + b"\n")

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def output_topics(settings: Settings) -> dict[str, str]:
    """Topic name -> output kind, for the six topics the demo reads."""
    return {
        settings.topics.demand: "demand",
        settings.topics.churn: "churn",
        settings.topics.dead_letter: "dlq",
        settings.topics.bid_adjustments: "bids",
        settings.topics.churn_alerts: "alerts",
        settings.topics.quality: "quality",
        settings.topics.category_demand: "categories",
    }


async def collect(
    settings: Settings,
    partitions: Mapping[str, int],
    sink: Callable[[str, bytes], None],
    ready: asyncio.Event,
    stop: asyncio.Event,
) -> None:
    """Read the output topics from their current ends until ``stop``; ``ready`` once placed.

    Partitions (``partitions``: topic -> count, as the broker reported them when the topics
    were created) are assigned explicitly and positioned at their end *before* ``ready`` is
    set, so nothing the replay causes can be missed, whatever the topics held before.
    """
    topics = output_topics(settings)
    consumer = AIOKafkaConsumer(**settings.kafka.client_kwargs(), group_id=None)
    await consumer.start()
    try:
        parts = [TopicPartition(t, p) for t in topics for p in range(partitions[t])]
        consumer.assign(parts)
        await consumer.seek_to_end(*parts)
        for tp in parts:
            await consumer.position(tp)
        ready.set()
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            for tp, messages in batch.items():
                kind = topics[tp.topic]
                for m in messages:
                    sink(kind, m.value)
    finally:
        await consumer.stop()


class LiveView:
    """Draws :func:`ops.demo_view.render_live` in place on a TTY, or logs it now and then."""

    def __init__(self, stream: IO[str], *, quiet: bool = False) -> None:
        self.stream = stream
        self.tty = stream.isatty() and not quiet
        self.quiet = quiet
        self.drawn = 0
        self.last_log = float("-inf")

    def show(self, status: LiveStatus, tally: Tally, *, final: bool = False) -> None:
        lines = render_live(status, tally)
        if self.tty:
            self.stream.write(redraw(self.drawn, lines))  # a UI, not a log: drawn in place
            self.stream.flush()
            self.drawn = len(lines)
        elif not self.quiet and (final or status.elapsed_s - self.last_log >= LOG_EVERY_S):
            self.last_log = status.elapsed_s
            log.info("%s", " | ".join(line.strip() for line in lines))


@dataclass
class RunState:
    """What the asynchronous part reports back (also when it is interrupted)."""

    events: int = 0
    sent: int = 0
    replay_seconds: float | None = None
    started: float | None = None
    truth: Truth | None = None
    """Generated traffic only: who the generator makes churn (compared in the reports)."""
    terminated: bool = False
    """SIGTERM arrived while the replay ran (the run was cancelled because of it)."""
    consumer_lag: dict[str, int] | None = None
    """Process -> records of its input topic it had not committed when the run ended."""


def consumer_groups(settings: Settings) -> dict[str, tuple[str, str]]:
    """Each demo process -> (its consumer group, the topic it consumes)."""
    return {
        "worker": (settings.worker.app_id, settings.topics.clickstream),
        "bidder": (settings.bidder_app_id, settings.topics.demand),
        "alerter": (settings.alerter_app_id, settings.topics.churn),
    }


async def drained(
    offsets: OffsetReader,
    groups: Mapping[str, tuple[str, str]],
    state: RunState,
    drain_s: float,
    now: float,
) -> bool:
    """Whether every process has committed all of its input (module doc, step 4), or
    ``drain_s`` have passed since the replay ended (then with a warning naming who lags)."""
    state.consumer_lag = await offsets.lags(groups)
    behind = {name: lag for name, lag in state.consumer_lag.items() if lag}
    if not behind:
        return True
    assert state.started is not None and state.replay_seconds is not None
    if now - (state.started + state.replay_seconds) <= drain_s:
        return False
    log.warning(
        "ending %.0f s after the replay with records not consumed: %s",
        drain_s,
        ", ".join(f"{name} {lag:,}" for name, lag in behind.items()),
    )
    return True


async def run_demo(
    settings: Settings,
    partitions: Mapping[str, int],
    args: argparse.Namespace,
    tally: Tally,
    outputs: Outputs,
    state: RunState,
) -> None:
    """Replay, collect and show until the outputs settle (module doc, step 3)."""
    records, state.truth = load_traffic(args)
    state.events = len(records)

    def sink(kind: str, value: bytes) -> None:
        outputs.write(kind, value)
        tally.add(kind, value)

    def on_sent(n: int) -> None:
        state.sent = n

    # SIGTERM is handled like asyncio.run handles Ctrl-C: cancel this task, so the finally
    # below closes producer and collector in order (an exception raised from a plain signal
    # handler could land anywhere in the loop, even inside that clean-up).
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None

    def on_sigterm() -> None:
        if state.terminated:
            log.warning("SIGTERM: already shutting down, please wait")
            return
        state.terminated = True
        main.cancel()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    view = LiveView(sys.stderr, quiet=args.quiet)
    ready, stop = asyncio.Event(), asyncio.Event()
    collector = asyncio.create_task(collect(settings, partitions, sink, ready, stop))
    placed = asyncio.create_task(ready.wait())
    producer: asyncio.Task[float] | None = None
    try:
        await asyncio.wait([collector, placed], return_when=asyncio.FIRST_COMPLETED)
        if collector.done():
            collector.result()  # the collector failed before it was placed: raise why
        started = state.started = time.perf_counter()
        tally.sample(0.0, 0)
        producer = asyncio.create_task(
            produce(settings, records, rate=args.rate, progress=False, on_sent=on_sent)
        )
        last_total, idle_since = -1, started
        groups = consumer_groups(settings)
        async with OffsetReader(settings) as offsets:
            while True:
                await asyncio.sleep(TICK_S)
                now = time.perf_counter()
                tally.sample(now - started, state.sent)
                if producer.done():
                    state.replay_seconds = producer.result()  # raises if the replay failed
                if tally.total != last_total:
                    last_total, idle_since = tally.total, now
                settled = producer.done() and now - idle_since > args.settle
                if settled:  # the outputs are idle; are the processes done too?
                    settled = await drained(offsets, groups, state, args.drain, now)
                phase = (
                    "replaying" if not producer.done() else ("done" if settled else "processing")
                )
                events_per_s = (
                    state.sent / state.replay_seconds
                    if state.replay_seconds
                    else rate(tally.samples)
                )
                status = LiveStatus(
                    phase,
                    now - started,
                    state.sent,
                    state.events,
                    events_per_s,
                    rate(tally.samples, outputs=True),
                    live_auc(tally, state.truth),
                )
                view.show(status, tally, final=settled)
                if settled:
                    break
    finally:
        stop.set()
        placed.cancel()
        if producer is not None and not producer.done():
            producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            if producer is not None:
                await asyncio.gather(producer, return_exceptions=True)
            await collector
        # Back to the synchronous handler before the loop closes (closing would reset SIGTERM
        # to its default, which kills the demo before it stops its processes).
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _raise_terminated)


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def _own_broker(settings: Settings, kafka_dir: Path) -> Settings:
    """Start the demo's broker on a free port with empty data; settings pointing at it."""
    # A broker left by an interrupted earlier demo is ours to end (stop checks the pid).
    kafka_local.stop(kafka_dir)
    shutil.rmtree(kafka_dir, ignore_errors=True)
    state = kafka_local.start(settings, kafka_dir, port=kafka_local.free_port())
    return settings.with_overrides(broker_url=state.broker_url)


def write_reports(
    tally: Tally,
    state: RunState,
    outputs: Mapping[str, Path],
    out_dir: Path,
    *,
    wall_seconds: float,
    interrupted: bool,
    title: str,
) -> dict[str, Any]:
    """``summary.json`` and ``dashboard.html`` in ``out_dir``; returns the summary record."""
    files = {k: str(p) for k, p in outputs.items()}
    files["summary"] = str(out_dir / "summary.json")
    files["dashboard"] = str(out_dir / "dashboard.html")
    truth_eval = None
    if state.truth is not None:
        files["truth"] = str(out_dir / "truth.jsonl")
        state.truth.write(out_dir / "truth.jsonl")
        scores = {u: p for u, (_, p) in tally.churn.items()}
        truth_eval = evaluate(scores, tally.alerted, state.truth)
    summary = summary_record(
        tally,
        events=state.events,
        events_sent=state.sent,
        replay_seconds=state.replay_seconds,
        wall_seconds=wall_seconds,
        interrupted=interrupted,
        outputs=files,
        truth=truth_eval,
        consumer_lag=state.consumer_lag,
    )
    (out_dir / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    (out_dir / "dashboard.html").write_text(
        render_dashboard(tally, summary, title=title), encoding="utf-8"
    )
    return summary


def _print_summary(summary: Mapping[str, Any], logs: list[Path]) -> None:
    s = summary["signals"]
    rate_text = (
        f" ({summary['events_per_second']:,.0f} events/s)" if summary["events_per_second"] else ""
    )
    took = f" in {summary['replay_seconds']}s" if summary["replay_seconds"] is not None else ""
    print(
        f"events replayed: {summary['events_sent']:,} of {summary['events']:,}{took}"
        f"{rate_text}; wall time {summary['wall_seconds']}s"
        + ("  [interrupted]" if summary["interrupted"] else "")
    )
    print(
        f"signals: demand {s['demand']:,}, churn {s['churn']:,}, dead letters {s['dlq']:,}, "
        f"bid-adjustments {s['bid_adjustments']:,}, churn-alerts {s['churn_alerts']:,}"
    )
    print(
        "top churn risks: "
        + (", ".join(f"{u} {p:.3f}" for u, p in summary["top_churn_risks"][:5]) or "none")
    )
    d = summary["bid_distribution"]
    print(
        "top bid multipliers: "
        + (", ".join(f"{u} ×{m:.2f}" for u, m in summary["top_bid_multipliers"][:5]) or "none")
        + f"  (floor {d['floor']:,}, neutral {d['neutral']:,}, cap {d['cap']:,})"
    )
    t = summary.get("truth")
    if t:
        q = t["score_quantiles"]
        auc = "n/a" if t["roc_auc"] is None else f"{t['roc_auc']:.3f}"
        share = "n/a" if t["alerted_precision"] is None else f"{t['alerted_precision']:.0%}"
        print(
            f"vs the generator's truth: churn ROC-AUC {auc} over {t['users_scored']:,} users "
            f"({t['true_churners']:,} churn); alerted {t['alerted_users']:,}, of whom {share} "
            f"churn; scores p05 {q.get('p05', 0):.3f} · p50 {q.get('p50', 0):.3f} · "
            f"p95 {q.get('p95', 0):.3f}"
        )
    out_dir = Path(summary["outputs"]["summary"]).parent
    names = ", ".join(Path(p).name for p in summary["outputs"].values())
    print(f"outputs: {out_dir} ({names})")
    print(f"dashboard: {summary['outputs']['dashboard']}")
    print("logs: " + ", ".join(str(p) for p in logs))


def demo_command(args: argparse.Namespace, settings: Settings) -> int:
    wall_started = time.monotonic()
    base = Path(args.workdir).resolve()
    out_dir = base / "out"
    kafka_dir = base / "kafka"
    tally, state = Tally(), RunState()
    kids: list[Supervised] = []
    started_broker = False
    outputs: Outputs | None = None
    interrupted: str | None = None
    failed = False
    with sigterm_as_interrupt():
        try:
            # Probed as every client connects (TLS, SASL: settings.kafka), or a secured
            # broker would look absent and the demo would start a plaintext one beside it.
            probe = settings.kafka.client_kwargs()
            if not kafka_local.answers(settings.kafka.bootstrap_servers, 2.0, probe):
                if probe["security_protocol"] != "PLAINTEXT":
                    raise RuntimeError(
                        f"no broker answers at {settings.kafka.bootstrap_servers} over "
                        f"{probe['security_protocol']}; the demo starts a broker of its own "
                        "only for PLAINTEXT (it cannot make certificates or users yours trust)"
                    )
                # Set first: an interrupt while the broker starts must still stop it.
                started_broker = True
                settings = _own_broker(settings, kafka_dir)
            else:
                log.info("using the broker that answers at %s", settings.kafka.bootstrap_servers)
            shutil.rmtree(base / "worker", ignore_errors=True)  # in-memory tables: no state
            model_dir = demo_model_dir(settings, args.model_dir, generated=args.events is None)
            log.info("the worker serves the model in %s", model_dir)
            settings = settings.with_overrides(
                model_dir=model_dir,
                bid_model_baselines=demo_bid_baselines(settings, model_dir),
                data_dir=base / "worker",
                store_url="memory://",
                web_port=kafka_local.free_port(),
                bidder_web_port=kafka_local.free_port(),
                alerter_web_port=kafka_local.free_port(),
            )
            partitions = {r.name: r.actual_partitions for r in kafka_local.create_topics(settings)}
            kids = children(settings, base)
            for child in kids:
                child.start()
            wait_ready(kids)
            outputs = Outputs(out_dir)
            asyncio.run(run_demo(settings, partitions, args, tally, outputs, state))
        except Terminated:
            interrupted = "SIGTERM"
        except KeyboardInterrupt:
            interrupted = "SIGTERM" if state.terminated else "SIGINT"
        except asyncio.CancelledError:
            # run_demo cancelled by its SIGTERM handler (Ctrl-C arrives as KeyboardInterrupt).
            interrupted = "SIGTERM" if state.terminated else "SIGINT"
        except (RuntimeError, kafka_local.KafkaLocalError, OSError) as exc:
            log.error("demo failed: %s", exc)
            failed = True
        finally:
            if interrupted:
                log.warning("%s: shutting down", interrupted)
            with signals_deferred():
                if outputs is not None:
                    outputs.close()
                stop_all(kids, STOP_GRACE_S)
                if started_broker:
                    kafka_local.stop(kafka_dir)
    if outputs is None:
        return 1 if failed else (143 if interrupted == "SIGTERM" else 130)
    title = f"events from {args.events}" if args.events else "generated traffic"
    summary = write_reports(
        tally,
        state,
        outputs.paths,
        out_dir,
        wall_seconds=time.monotonic() - wall_started,
        interrupted=interrupted is not None,
        title=title,
    )
    _print_summary(summary, [c.log_path for c in kids])
    if failed:
        return 1
    if interrupted:
        return 143 if interrupted == "SIGTERM" else 130
    return 0
