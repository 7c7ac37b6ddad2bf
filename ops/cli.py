"""The ``clicksignals`` operations command line (console script ``clicksignals``).

This module owns argument parsing, logging set-up and exit codes for operator commands; the work
itself lives in the modules the commands call (``ops.kafka_local`` for the broker and topics).

Commands are grouped; each group is a function that adds its sub-commands to the top-level
sub-parser set and binds each to a handler ``(args, settings) -> exit code`` via
``set_defaults(handler=...)``. A new group (``replay``, ``tail``, ``demo``, ...) is such a
function, listed in :func:`command_groups` (the one list of commands; nothing registers
itself on import)::

    def _replay(commands: Subcommands) -> None:
        p = commands.add_parser("replay", help="...")
        p.set_defaults(handler=_replay_handler)

Logging goes to stderr (format and level from settings); stdout carries only user-facing
answers (the bootstrap of a started broker, ``kafka status``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeAlias

from settings import Settings, load_settings
from settings.logs import configure_root

log = logging.getLogger("clicksignals.cli")

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Handler: TypeAlias = Callable[[argparse.Namespace, Settings], int]
GroupAdder: TypeAlias = Callable[[Subcommands], None]

# --------------------------------------------------------------------------------------------
# Logging
# --------------------------------------------------------------------------------------------


def configure_logging(settings: Settings, verbose: bool = False) -> None:
    """Root logging to stderr per ``settings.logs.format`` / ``settings.logs.level``.

    The formatter (text or JSON) is :mod:`settings.logs`'s, shared with the Faust workers.
    """
    try:
        configure_root(settings, verbose=verbose)
    except ValueError as exc:  # a bad CLICKSIGNALS_LOG_FORMAT: say so, no traceback
        raise SystemExit(f"clicksignals: {exc}") from None
    # aiokafka logs every refused connection of a readiness probe at ERROR; keep it quiet.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL if not verbose else logging.DEBUG)


# --------------------------------------------------------------------------------------------
# kafka: the local broker
# --------------------------------------------------------------------------------------------


def _settings_port(settings: Settings) -> int:
    first = settings.kafka.bootstrap_servers.split(",")[0]
    host, _, port = first.rpartition(":")
    if host not in {"127.0.0.1", "localhost", ""}:
        log.warning("broker_url names %s, but the local broker listens on 127.0.0.1 only", first)
    try:
        return int(port)
    except ValueError:
        raise SystemExit(
            f"cannot take a port from broker_url {settings.kafka.broker_url!r}"
        ) from None


def _kafka_start(args: argparse.Namespace, settings: Settings) -> int:
    from ops import kafka_local

    data_dir = Path(args.data_dir or settings.local.kafka_data_dir)
    port: int | None = args.port
    if port is None and not args.any_port:
        port = _settings_port(settings)
        current = kafka_local.status(data_dir, probe=False)
        already_ours = current.running and current.state is not None and current.state.port == port
        if not already_ours and not kafka_local.port_is_free(port):
            log.error(
                "port %d (from CLICKSIGNALS_BROKER_URL=%s) is in use; pass --port P or "
                "--any-port, or stop whatever listens there",
                port,
                settings.kafka.broker_url,
            )
            return 1
    state = kafka_local.start(settings, data_dir, port, timeout_s=args.timeout)
    print(f"bootstrap: {state.bootstrap}  (pid {state.pid}, data dir {state.data_dir})")
    print(f"export CLICKSIGNALS_BROKER_URL={state.broker_url}")
    return 0


def _kafka_stop(args: argparse.Namespace, settings: Settings) -> int:
    from ops import kafka_local

    kafka_local.stop(Path(args.data_dir or settings.local.kafka_data_dir), timeout_s=args.timeout)
    return 0


def _kafka_status(args: argparse.Namespace, settings: Settings) -> int:
    from ops import kafka_local

    found = kafka_local.status(Path(args.data_dir or settings.local.kafka_data_dir))
    print(found.describe())
    if found.running and found.state is not None:
        print(f"export CLICKSIGNALS_BROKER_URL={found.state.broker_url}")
    return 0 if found.running and found.answering else 1


def _kafka_fetch(args: argparse.Namespace, settings: Settings) -> int:
    from ops import kafka_local

    libs = kafka_local.fetch_artifacts(settings, force=args.force)
    log.info("Kafka %s runtime in %s", kafka_local.kafka_version(), libs)
    return 0


def _kafka_commands(commands: Subcommands) -> None:
    kafka = commands.add_parser("kafka", help="the project's own single-node Kafka broker")
    sub = kafka.add_subparsers(dest="kafka_command", required=True, metavar="ACTION")

    def data_dir_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--data-dir",
            type=Path,
            default=None,
            help="broker data directory (default: CLICKSIGNALS_KAFKA_DATA_DIR)",
        )

    p = sub.add_parser("start", help="start the broker (KRaft, 127.0.0.1) and wait until ready")
    data_dir_option(p)
    ports = p.add_mutually_exclusive_group()
    ports.add_argument(
        "--port", type=int, default=None, help="client port (default: broker_url's port)"
    )
    ports.add_argument("--any-port", action="store_true", help="use any free port")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for readiness")
    p.set_defaults(handler=_kafka_start)

    p = sub.add_parser("stop", help="stop the broker started from the data directory")
    data_dir_option(p)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds before SIGKILL")
    p.set_defaults(handler=_kafka_stop)

    p = sub.add_parser("status", help="what runs where; exit 0 only if running and answering")
    data_dir_option(p)
    p.set_defaults(handler=_kafka_status)

    p = sub.add_parser("fetch", help="fetch the Kafka jars from Maven Central (idempotent)")
    p.add_argument("--force", action="store_true", help="fetch again even if already done")
    p.set_defaults(handler=_kafka_fetch)


# --------------------------------------------------------------------------------------------
# topics
# --------------------------------------------------------------------------------------------


def _topics_create(args: argparse.Namespace, settings: Settings) -> int:
    from aiokafka.errors import KafkaError

    from ops import kafka_local

    try:
        results = kafka_local.create_topics(settings)
    except KafkaError as exc:
        log.error("cannot create topics on %s: %r", settings.kafka.bootstrap_servers, exc)
        return 1
    mismatched = [r for r in results if r.outcome == "mismatch"]
    if mismatched:
        log.error(
            "%d topic(s) exist with a partition count other than CLICKSIGNALS_PARTITIONS=%d",
            len(mismatched),
            settings.topics.partitions,
        )
        return 1
    return 0


def _topics_commands(commands: Subcommands) -> None:
    topics = commands.add_parser("topics", help="the application's topics on the broker")
    sub = topics.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    p = sub.add_parser(
        "create", help="create the application's topics from settings (existing ones are kept)"
    )
    p.set_defaults(handler=_topics_create)


# --------------------------------------------------------------------------------------------
# replay / tail
# --------------------------------------------------------------------------------------------


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from ops.replay import replay_command

    return replay_command(args, settings)


def _generate(args: argparse.Namespace, settings: Settings) -> int:
    from ops.replay import generate_command

    return generate_command(args, settings)


def _shop_option(p: argparse.ArgumentParser, default: str) -> None:
    from ingest.generator import PRESETS

    p.add_argument(
        "--shop",
        default=default,
        choices=sorted(PRESETS),
        help=f"generator: the shop's preset (ingest.generator.PRESETS; default {default})",
    )


def _export_events(args: argparse.Namespace, settings: Settings) -> int:
    from ops.export_events import export_command

    return export_command(args, settings)


def _tail(args: argparse.Namespace, settings: Settings) -> int:
    from ops.replay import tail_command

    return tail_command(args, settings)


def _replay_commands(commands: Subcommands) -> None:
    p = commands.add_parser("replay", help="send a file (or generated traffic) to the clickstream")
    p.add_argument("--events", type=Path, help="events file; omit for the seeded generator")
    p.add_argument(
        "--format",
        default="auto",
        choices=["auto", "canonical", "rees46", "taobao", "transactions"],
    )
    p.add_argument("--rate", type=float, help="events per second (default: as fast as possible)")
    p.add_argument("--users", type=int, default=2000, help="generator: users")
    p.add_argument("--days", type=int, default=56, help="generator: days")
    p.add_argument("--seed", type=int, default=7, help="generator: seed")
    _shop_option(p, "default")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_replay)
    g = commands.add_parser(
        "generate", help="write the seeded generator's events to a canonical CSV file"
    )
    g.add_argument("--out", type=Path, required=True, help="CSV file to write (.gz: compressed)")
    g.add_argument("--users", type=int, default=2000, help="users")
    g.add_argument("--days", type=int, default=56, help="days")
    g.add_argument("--start", default="2024-01-01", help="first day (UTC)")
    g.add_argument("--seed", type=int, default=7, help="seed")
    _shop_option(g, "default")
    g.set_defaults(handler=_generate)
    x = commands.add_parser(
        "export-events",
        help="write the clickstream topic's valid events to a canonical file, to retrain on",
    )
    x.add_argument(
        "--out", type=Path, required=True, help="file to write: .csv, .csv.gz or .parquet"
    )
    x.set_defaults(handler=_export_events)
    t = commands.add_parser("tail", help="print records of a topic (demand, churn, dlq or a name)")
    t.add_argument("topic")
    t.add_argument("--limit", type=int)
    t.add_argument("--idle", type=float, default=3.0, help="stop after this many idle seconds")
    t.add_argument("--pretty", action="store_true")
    t.set_defaults(handler=_tail)


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from ops.demo import demo_command

    return demo_command(args, settings)


def _demo_commands(commands: Subcommands) -> None:
    p = commands.add_parser(
        "demo",
        help="local Kafka + worker with the shipped model + both subscribers + replayed "
        "traffic, end to end, with a live view, summary.json and dashboard.html",
    )
    p.add_argument("--events", type=Path, help="replay this file instead of generated traffic")
    p.add_argument(
        "--format",
        default="auto",
        choices=["auto", "canonical", "rees46", "taobao", "transactions"],
    )
    p.add_argument("--rate", type=float, help="events per second (default: as fast as possible)")
    p.add_argument("--users", type=int, default=2000, help="generator: users")
    p.add_argument("--days", type=int, default=56, help="generator: days")
    p.add_argument("--seed", type=int, default=7, help="generator: seed")
    _shop_option(p, "regular")
    p.add_argument(
        "--model-dir",
        type=Path,
        help="model the worker serves (default: CLICKSIGNALS_MODEL_DIR if set, else "
        "onnx_models/generated for generated traffic, onnx_models/default for --events)",
    )
    p.add_argument("--settle", type=float, default=6.0, help="idle seconds that end the run")
    p.add_argument(
        "--drain",
        type=float,
        default=120.0,
        help="seconds after the replay to wait for every process to consume everything",
    )
    p.add_argument("--workdir", default="var/demo", help="broker, process logs and outputs")
    p.add_argument("--quiet", action="store_true", help="no live view")
    p.set_defaults(handler=_demo)


def command_groups() -> list[GroupAdder]:
    """Every command group, in the order ``clicksignals --help`` lists them."""
    from subscribers.cli import add_subscriber_commands

    return [
        _kafka_commands,
        _topics_commands,
        _replay_commands,
        _demo_commands,
        add_subscriber_commands,
    ]


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clicksignals",
        description="Operate clicksignals: local Kafka broker, topics, and more.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_group in command_groups():
        add_group(commands)
    return parser


def main(argv: Sequence[str] | None = None, settings: Settings | None = None) -> int:
    """Run one command; returns its exit code. ``settings`` defaults to the environment's."""
    args = build_parser().parse_args(argv)
    settings = load_settings() if settings is None else settings
    configure_logging(settings, verbose=args.verbose)
    handler: Handler = args.handler
    from ops.kafka_local import KafkaLocalError
    from settings.kafka import KafkaClientConfigError

    try:
        return handler(args, settings)
    except KafkaLocalError as exc:
        log.error("%s", exc)
        return 1
    except KafkaClientConfigError as exc:  # TLS/SASL settings that make no client: say which
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
