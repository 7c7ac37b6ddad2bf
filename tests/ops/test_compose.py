"""docker-compose.yml stays in step with the code: its CLICKSIGNALS_* names are env_names(),
its services run real modules and commands, and topic-init creates exactly the topics in use."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest

from ops.kafka_local import kafka_version, topic_specs
from settings import Settings, env_names
from subscribers.cli import APPS
from tests.conftest import REPO_ROOT

COMPOSE = REPO_ROOT / "docker-compose.yml"


def _env_block(text: str) -> str:
    start = text.index("x-clicksignals-env: &clicksignals-env\n")
    end = text.index("\n\n", start)
    return text[start:end]


def test_compose_env_block_lists_exactly_the_settings_names() -> None:
    block = _env_block(COMPOSE.read_text())
    keys = re.findall(r"^\s+(CLICKSIGNALS_[A-Z0-9_]+):", block, flags=re.MULTILINE)
    assert len(keys) == len(set(keys)), "duplicate names in the compose env block"
    assert set(keys) == set(env_names().values())


def test_compose_mentions_no_unknown_clicksignals_names() -> None:
    names = set(re.findall(r"CLICKSIGNALS_[A-Z0-9_]+", COMPOSE.read_text()))
    assert names <= set(env_names().values())


def test_compose_services_share_the_env_and_the_kafka_version() -> None:
    text = COMPOSE.read_text()
    # topic-init, worker, bidder, alerter and planner
    assert text.count("environment: *clicksignals-env") == 5
    assert f"image: apache/kafka:{kafka_version()}" in text  # same broker as `kafka start`
    assert 'command: ["clicksignals", "topics", "create"]' in text
    assert 'command: ["faust", "-A", "stream.app", "worker", "-l", "info"]' in text
    assert 'command: ["clicksignals", "bidder"]' in text
    assert 'command: ["clicksignals", "alerter"]' in text
    assert 'command: ["clicksignals", "planner"]' in text


# --------------------------------------------------------------------------------------------
# Services (read with a small parser: the compose file is block YAML, two-space indents, and
# its commands are flow lists of double-quoted strings, i.e. JSON; PyYAML is not a dependency)
# --------------------------------------------------------------------------------------------

APP_SERVICES = ("topic-init", "worker", "bidder", "alerter", "planner")


def _services(text: str) -> dict[str, str]:
    """Service name -> its block of lines, from the top-level ``services:`` mapping."""
    body = text[text.index("\nservices:\n") + len("\nservices:\n") :]
    body = body[: re.search(r"^\S", body, flags=re.MULTILINE).start()]  # type: ignore[union-attr]
    parts = re.split(r"^  ([a-z][a-z0-9-]*):\n", body, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _list(block: str, key: str) -> list[str]:
    """The ``- item`` entries under ``key:`` in a service block (quotes removed)."""
    match = re.search(rf"^    {key}:\n((?:      - .*\n)+)", block, flags=re.MULTILINE)
    if match is None:
        return []
    return [line.strip()[2:].strip('"') for line in match.group(1).splitlines()]


def _command(block: str) -> list[str]:
    match = re.search(r"^    command: (\[.*\])$", block, flags=re.MULTILINE)
    assert match is not None, block
    command: list[str] = json.loads(match.group(1))
    return command


def test_compose_has_exactly_the_broker_and_the_application_services() -> None:
    services = _services(COMPOSE.read_text())
    assert set(services) == {"kafka", *APP_SERVICES}
    for name in APP_SERVICES:
        block = services[name]
        assert "    build: *clicksignals-build\n" in block, name
        assert "    image: clicksignals:local\n" in block, name  # one image for all
        assert "    environment: *clicksignals-env\n" in block, name


def test_compose_commands_name_real_modules_and_cli_commands() -> None:
    from ops.cli import build_parser

    for name, block in _services(COMPOSE.read_text()).items():
        if name == "kafka":
            continue
        command = _command(block)
        if command[0] == "faust":
            app = command[command.index("-A") + 1]
            assert importlib.util.find_spec(app) is not None, f"{name}: no module {app}"
            assert command[command.index("-A") + 2] == "worker", name
        else:
            assert command[0] == "clicksignals", name  # the console script of ops.cli
            try:
                args = build_parser().parse_args(command[1:])
            except SystemExit:
                pytest.fail(f"{name}: `{' '.join(command)}` is not a clicksignals command")
            assert callable(args.handler), name
    subscriber_apps = {
        "bidder": "subscribers.bidding_app",
        "alerter": "subscribers.alerting_app",
        "planner": "subscribers.planning_app",
    }
    for name, app in subscriber_apps.items():
        assert APPS[name] == app  # what `clicksignals <name>` execs
        assert importlib.util.find_spec(app) is not None


def test_compose_publishes_each_web_port_on_loopback_from_its_setting() -> None:
    services = _services(COMPOSE.read_text())
    expected = {
        "worker": ("CLICKSIGNALS_WEB_PORT", Settings().worker.web_port),
        "bidder": ("CLICKSIGNALS_BIDDER_WEB_PORT", Settings().subscribers.bidder_web_port),
        "alerter": ("CLICKSIGNALS_ALERTER_WEB_PORT", Settings().subscribers.alerter_web_port),
        "planner": ("CLICKSIGNALS_PLANNER_WEB_PORT", Settings().subscribers.planner_web_port),
    }
    for name, (var, default) in expected.items():
        port = f"${{{var}:-{default}}}"
        assert _list(services[name], "ports") == [f"127.0.0.1:{port}:{port}"], name
    assert _list(services["topic-init"], "ports") == []


def test_compose_gives_each_stateful_service_its_own_volume() -> None:
    text = COMPOSE.read_text()
    services = _services(text)
    data_dir = "/app/var/worker"  # CLICKSIGNALS_DATA_DIR in the env block
    assert f'CLICKSIGNALS_DATA_DIR: "{data_dir}"' in text
    mounts = {}
    for name in ("worker", "bidder", "alerter", "planner"):
        volumes = [v for v in _list(services[name], "volumes") if v.endswith(f":{data_dir}")]
        assert len(volumes) == 1, name
        mounts[name] = volumes[0].split(":")[0]
    assert len(set(mounts.values())) == 4, mounts  # never two workers on one state volume
    declared = re.search(r"^volumes:\n((?:  .*\n)+)", text, flags=re.MULTILINE)
    assert declared is not None
    names = {line.strip().rstrip(":") for line in declared.group(1).splitlines()}
    assert set(mounts.values()) <= names


def test_compose_app_services_start_after_the_topics_exist() -> None:
    services = _services(COMPOSE.read_text())
    assert "      kafka:\n        condition: service_healthy" in services["topic-init"]
    for name in ("worker", "bidder", "alerter", "planner"):
        assert (
            "    depends_on:\n      topic-init:\n"
            "        condition: service_completed_successfully\n" in services[name]
        ), name


def _topic_fields_used(*modules: str) -> set[str]:
    """``settings.topics.<name>`` fields referenced by the given source files."""
    used: set[str] = set()
    for module in modules:
        source = (REPO_ROOT / module).read_text()
        used |= set(re.findall(r"\.topics\.([a-z_]+)\b(?!\()", source))
    return used - {"partitions", "replication_factor"}


def test_every_topic_topic_init_creates_is_used_by_the_code_and_vice_versa() -> None:
    """`clicksignals topics create` (compose's topic-init) creates kafka_local.topic_specs."""
    settings = Settings()
    created = set(topic_specs(settings))
    used = _topic_fields_used(
        "stream/worker.py",
        "subscribers/bidder.py",
        "subscribers/alerter.py",
        "subscribers/planner.py",
    )
    assert used, "no topics found in the apps' sources"
    used_names = {getattr(settings.topics, field) for field in used}
    assert created == used_names
