"""``clicksignals bidder``, ``alerter`` and ``planner``: run a subscriber's Faust worker.

The command replaces itself (``exec``) with ``python -m faust -A subscribers.<app> worker``, in
the environment :func:`settings.child_environment` builds from the CLI's settings. The worker
is then *the* process: signals (Ctrl-C, a supervisor's SIGTERM) reach Faust directly and it
shuts down cleanly, and nothing is left behind as an orphan. :func:`add_subscriber_commands`
is one of :func:`ops.cli.command_groups` (this module does not import the CLI's).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TypeAlias

from settings import Settings, child_environment

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

APPS = {
    "bidder": "subscribers.bidding_app",
    "alerter": "subscribers.alerting_app",
    "planner": "subscribers.planning_app",
}


_FAUST_LEVELS = {"WARNING": "WARN", "CRITICAL": "CRIT", "FATAL": "CRIT"}


def worker_argv(name: str, loglevel: str) -> list[str]:
    """The command line of subscriber ``name``'s worker (``loglevel`` in logging's names)."""
    level = _FAUST_LEVELS.get(loglevel.upper(), loglevel.upper())
    return [sys.executable, "-m", "faust", "-A", APPS[name], "worker", "-l", level.lower()]


def _exec(argv: Sequence[str], env: dict[str, str]) -> int:  # pragma: no cover - replaces us
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], list(argv), env)


def _run(name: str) -> object:
    def handler(args: argparse.Namespace, settings: Settings) -> int:
        loglevel = args.loglevel or settings.logs.level
        return _exec(worker_argv(name, loglevel), child_environment(settings))

    return handler


def add_subscriber_commands(commands: Subcommands) -> None:
    """``clicksignals bidder``, ``clicksignals alerter`` and ``clicksignals planner``."""
    helps = {
        "bidder": "ad-bidding worker: demand signals -> bid multipliers, GET /bid/{user_id}",
        "alerter": "churn-alerting worker: churn-risk signals -> alerts (topic, log, webhook)",
        "planner": "stock-planning worker: category forecasts + stock -> reorder suggestions, "
        "GET /forecast/{series}",
    }
    for name, text in helps.items():
        p = commands.add_parser(name, help=text)
        p.add_argument(
            "-l", "--loglevel", default=None, help="worker log level (default: settings')"
        )
        p.set_defaults(handler=_run(name))


__all__ = ["APPS", "add_subscriber_commands", "worker_argv"]
