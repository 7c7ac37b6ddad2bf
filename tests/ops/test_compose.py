"""docker-compose.yml stays in step with settings: its CLICKSIGNALS_* names are env_names()."""

from __future__ import annotations

import re

from ops.kafka_local import kafka_version
from settings import env_names
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
    assert text.count("environment: *clicksignals-env") == 2  # topic-init and worker
    assert f"image: apache/kafka:{kafka_version()}" in text  # same broker as `kafka start`
    assert 'command: ["clicksignals", "topics", "create"]' in text
    assert 'command: ["faust", "-A", "stream.app", "worker", "-l", "info"]' in text
