"""One way to build a Faust app (stream.faust_app): the worker, both subscribers and the bench's
naive baseline get the same broker, store, web and serializer configuration, each with its own
id, port, data directory and tuning."""

from __future__ import annotations

import re
from pathlib import Path

from settings import load_settings
from stream.faust_app import faust_app

REPO = Path(__file__).resolve().parents[2]


def test_no_other_module_builds_a_faust_app() -> None:
    sources = [
        p
        for package in ("stream", "subscribers", "bench", "ops", "training", "ingest")
        for p in (REPO / package).rglob("*.py")
    ]
    building = sorted(
        str(p.relative_to(REPO))
        for p in sources
        if re.search(
            r"^[^#\n]*(?<!class )\b(?:faust\.App|BulkApp)\(", p.read_text(), flags=re.MULTILINE
        )
    )
    assert building == ["stream/faust_app.py"]


def test_common_options_with_the_apps_own_on_top(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "CLICKSIGNALS_BROKER_URL": "kafka://broker.example:9093",
            "CLICKSIGNALS_STORE_URL": "memory://",
            "CLICKSIGNALS_PARTITIONS": "6",
            "CLICKSIGNALS_WEB_HOST": "127.0.0.1",
        }
    )
    app = faust_app(
        settings,
        app_id="shop-bidder",
        web_port=6067,
        datadir=tmp_path / "data" / "bidder",
        stream_buffer_maxsize=1234,
    )
    conf = app.conf
    assert conf.id == "shop-bidder"
    assert [str(u) for u in conf.broker] == ["kafka://broker.example:9093"]
    assert conf.topic_partitions == 6 and conf.topic_allow_declare
    assert (conf.web_host, conf.web_port) == ("127.0.0.1", 6067)
    assert conf.key_serializer == "raw" and conf.value_serializer == "raw"
    assert conf.stream_buffer_maxsize == 1234
    assert (tmp_path / "data").is_dir()  # Faust makes only the last level itself
