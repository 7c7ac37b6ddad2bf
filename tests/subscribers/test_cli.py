"""``clicksignals bidder`` / ``alerter``: the commands exist and exec the right Faust worker."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

import subscribers.cli
from ops.cli import build_parser, main
from settings import Settings, load_settings


@pytest.fixture
def execs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], dict[str, str]]]:
    calls: list[tuple[list[str], dict[str, str]]] = []

    def fake_exec(argv: Sequence[str], env: dict[str, str]) -> int:
        calls.append((list(argv), env))
        return 0

    monkeypatch.setattr(subscribers.cli, "_exec", fake_exec)
    return calls


@pytest.mark.parametrize(
    ("command", "module"),
    [
        ("bidder", "subscribers.bidding_app"),
        ("alerter", "subscribers.alerting_app"),
        ("planner", "subscribers.planning_app"),
    ],
)
def test_command_execs_the_faust_worker_with_the_settings(
    command: str, module: str, execs: list[tuple[list[str], dict[str, str]]], tmp_path: Path
) -> None:
    settings = Settings.from_flat(
        app_id="t-app", bidder_web_port=7001, data_dir=tmp_path, bid_cap=3.0
    )
    assert main([command], settings=settings) == 0
    ((argv, env),) = execs
    assert argv == [sys.executable, "-m", "faust", "-A", module, "worker", "-l", "info"]
    # The child reads back exactly the settings the command was given.
    child = load_settings(env)
    assert child == settings
    assert child.bidder_app_id == "t-app-bidder" and child.alerter_app_id == "t-app-alerter"


@pytest.mark.parametrize(("given", "faust"), [("WARNING", "warn"), ("debug", "debug")])
def test_log_levels_are_mapped_to_faust_names(
    given: str, faust: str, execs: list[tuple[list[str], dict[str, str]]]
) -> None:
    assert main(["bidder", "-l", given], settings=Settings()) == 0
    assert execs[0][0][-2:] == ["-l", faust]
    assert main(["alerter"], settings=Settings.from_flat(log_level=given)) == 0
    assert execs[1][0][-2:] == ["-l", faust]


def test_commands_are_listed_in_help() -> None:
    text = build_parser().format_help()
    assert "bidder" in text and "alerter" in text


def test_the_cli_modules_import_in_either_order_without_a_cycle() -> None:
    """The subscribers' commands do not import the operations CLI (no registry filled by import
    side effects): each module imports alone in a fresh interpreter, in either order, and the
    parser then has every command."""
    import subprocess

    commands = [
        "kafka",
        "topics",
        "replay",
        "generate",
        "export-events",
        "tail",
        "demo",
        "bidder",
        "alerter",
        "planner",
    ]
    for first, second in [("subscribers.cli", "ops.cli"), ("ops.cli", "subscribers.cli")]:
        code = (
            f"import sys, {first}\n"
            f"assert '{first}' == 'ops.cli' or 'ops.cli' not in sys.modules\n"
            f"import {second}\n"
            "parser = ops.cli.build_parser()\n"
            "print(' '.join(parser._subparsers._group_actions[0].choices))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split() == commands
