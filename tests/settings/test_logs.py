"""``settings.logs``: the JSON formatter, secret masking, and how Faust workers get it."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from settings import Secret, Settings
from settings.logs import (
    JsonFormatter,
    check_log_format,
    faust_logging_config,
    make_formatter,
    secret_values,
)

TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
PASSWORD = "hunter2-sasl-pw"
WEBHOOK = "https://hooks.example.test/services/T0K3N"


def _record(msg: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("clicksignals.test", logging.WARNING, __file__, 1, msg, args, exc_info)


def _secret_settings(**changes: object) -> Settings:
    return Settings.from_flat(
        sasl_password=Secret(PASSWORD), alert_webhook_url=Secret(WEBHOOK), **changes
    )


def test_json_line_has_ts_level_logger_message() -> None:
    line = JsonFormatter().format(_record("user %s scored %.2f", "u1", 0.5))
    assert "\n" not in line
    payload = json.loads(line)
    assert set(payload) == {"ts", "level", "logger", "message"}
    assert TS.match(payload["ts"]), payload["ts"]
    assert payload["level"] == "WARNING"
    assert payload["logger"] == "clicksignals.test"
    assert payload["message"] == "user u1 scored 0.50"


def test_exception_goes_to_exc_info_on_the_same_line() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        line = JsonFormatter().format(_record("failed", exc=exc))
    assert "\n" not in line
    payload = json.loads(line)
    assert payload["message"] == "failed"
    assert "RuntimeError: boom" in payload["exc_info"]
    assert "Traceback" in payload["exc_info"]


def test_unicode_and_quotes_stay_valid_json() -> None:
    payload = json.loads(JsonFormatter().format(_record('user "ü" said\nhi')))
    assert payload["message"] == 'user "ü" said\nhi'


def test_secret_values_are_the_non_empty_secret_fields() -> None:
    values = secret_values(_secret_settings())
    assert sorted(map(Secret.reveal, values)) == sorted([PASSWORD, WEBHOOK])
    assert secret_values(Settings()) == []
    assert PASSWORD not in repr(values)


def test_secrets_never_reach_a_json_line() -> None:
    formatter = make_formatter(_secret_settings(log_format="json"))
    try:
        raise ConnectionError(f"auth failed for password={PASSWORD}")
    except ConnectionError as exc:
        line = formatter.format(_record("client config %s, hook %s", PASSWORD, WEBHOOK, exc=exc))
    assert PASSWORD not in line
    assert WEBHOOK not in line
    payload = json.loads(line)
    assert payload["message"] == "client config ***, hook ***"
    assert "password=***" in payload["exc_info"]


def test_secret_containing_another_is_masked_whole() -> None:
    formatter = JsonFormatter([Secret("abc"), Secret("xxabcxx")])
    assert json.loads(formatter.format(_record("xxabcxx abc")))["message"] == "*** ***"


def test_log_format_is_checked() -> None:
    assert check_log_format(Settings.from_flat(log_format=" JSON ")) == "json"
    assert check_log_format(Settings()) == "text"
    with pytest.raises(ValueError, match="text or json"):
        check_log_format(Settings.from_flat(log_format="xml"))
    assert not isinstance(make_formatter(Settings()), JsonFormatter)


def test_cli_refuses_an_unknown_log_format() -> None:
    from ops.cli import configure_logging

    with pytest.raises(SystemExit, match="CLICKSIGNALS_LOG_FORMAT"):
        configure_logging(Settings.from_flat(log_format="yaml"))


def test_faust_logging_config_is_none_for_text() -> None:
    assert faust_logging_config(Settings()) is None


def test_faust_logging_config_does_not_show_secrets() -> None:
    config = faust_logging_config(_secret_settings(log_format="json"))
    assert config is not None
    assert config["merge"] is True
    assert set(config["formatters"]) == {"default", "colored"}  # mode's two formatter names
    assert PASSWORD not in repr(config)
    assert WEBHOOK not in repr(config)


# Run as a child process: mode's set-up reconfigures the whole process's logging (and with a
# logfile redirects its stdout/stderr), which a pytest process does not survive ("lost
# sys.stderr" at a later test). A worker is a fresh process anyway.
_WORKER_LOGGING = """
import logging, sys
from mode.utils.logging import setup_logging
from settings import Secret, Settings
from settings.logs import faust_logging_config

logfile, password = sys.argv[1] or None, sys.argv[2]
config = faust_logging_config(Settings.from_flat(log_format="json", sasl_password=Secret(password)))
# faust.Worker hands mode a shallow copy of app.conf.logging_config, as here.
setup_logging(loglevel="info", logfile=logfile, logging_config=dict(config))
log = logging.getLogger("faust.test")
log.debug("not at -l info")
log.info("consumer started with %s", password)
# The config stays usable for a second worker start in the same process.
assert config["formatters"]["default"]["()"] is config["formatters"]["colored"]["()"]
logging.shutdown()
"""


@pytest.mark.parametrize("logfile", [True, False])
def test_a_faust_worker_logs_json_with_its_level_and_destination(
    tmp_path: Path, logfile: bool
) -> None:
    """What ``faust ... worker -l info [--logfile F]`` does with the app's logging_config."""
    target = tmp_path / "worker.log"
    done = subprocess.run(
        [sys.executable, "-c", _WORKER_LOGGING, str(target) if logfile else "", PASSWORD],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    text = target.read_text() if logfile else done.stderr
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert [(p["level"], p["logger"], p["message"]) for p in lines] == [
        ("INFO", "faust.test", "consumer started with ***")
    ]


def test_subscriber_apps_pass_the_json_config_to_faust(tmp_path: Path) -> None:
    from subscribers.runtime import make_app

    settings = _secret_settings(log_format="json", data_dir=tmp_path, store_url="memory://")
    app = make_app(settings, app_id="logs-test", web_port=6999, name="bidder")
    assert dict(app.conf.logging_config)["merge"] is True
    plain = make_app(
        Settings.from_flat(data_dir=tmp_path, store_url="memory://"),
        app_id="logs-test-text",
        web_port=6999,
        name="bidder",
    )
    assert not plain.conf.logging_config
