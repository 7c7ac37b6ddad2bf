"""The ``clicksignals`` command line (:mod:`ops.cli`): its parser and exit codes, no broker."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ops import cli
from settings import Settings


def test_cli_parser_structure() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["kafka", "start", "--port", "19092", "--data-dir", "d"])
    assert args.handler is cli._kafka_start and args.port == 19092 and args.data_dir == Path("d")
    assert parser.parse_args(["kafka", "stop"]).handler is cli._kafka_stop
    assert parser.parse_args(["kafka", "status"]).handler is cli._kafka_status
    assert parser.parse_args(["kafka", "fetch"]).handler is cli._kafka_fetch
    assert parser.parse_args(["topics", "create"]).handler is cli._topics_create
    with pytest.raises(SystemExit):
        parser.parse_args(["kafka"])
    with pytest.raises(SystemExit):
        parser.parse_args(["kafka", "start", "--port", "1", "--any-port"])


def test_cli_start_refuses_a_busy_default_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = Settings.from_flat(broker_url=f"kafka://127.0.0.1:{port}")
        assert cli.main(["kafka", "start", "--data-dir", str(tmp_path)], settings) == 1
    assert capsys.readouterr().out == ""
