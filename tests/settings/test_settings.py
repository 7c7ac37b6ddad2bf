"""``settings``: one typed object grouped by concern, read from flat ``CLICKSIGNALS_*`` names.

The variable names are the deployment contract (compose, the README's table); the groups are
how code asks for them. These tests pin that the two views are one: every variable lands in
exactly one group field, every group field but the derived ``topics.routed`` has a variable,
and the round trips through the environment and through flat names lose nothing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ops.kafka_local import topic_specs
from settings import (
    ENV_PREFIX,
    Secret,
    Settings,
    Topics,
    child_environment,
    env_names,
    load_settings,
)


def _group_fields(settings: Settings) -> list[tuple[str, str]]:
    return [
        (group.name, f.name)
        for group in dataclasses.fields(settings)
        for f in dataclasses.fields(getattr(settings, group.name))
    ]


def test_every_variable_names_one_group_field_and_every_field_but_the_internal_topics_has_one() -> (
    None
):
    settings = Settings()
    fields = _group_fields(settings)
    assert len(fields) == len(set(fields))
    names = env_names()
    # Every grouped field has a variable, except the three internal topics named after the app
    # id (re-keying, quality parts, category parts).
    assert len(names) == len(fields) - 3
    assert all(var == ENV_PREFIX + name.upper() for name, var in names.items())
    assert set(settings.flat()) == set(names)


def test_a_shop_operator_s_environment_lands_in_the_groups() -> None:
    """The variables a deployment sets (compose's names) read into the grouped object."""
    settings = load_settings(
        {
            "CLICKSIGNALS_BROKER_URL": "kafka://kafka-1:9092;kafka://kafka-2:9092",
            "CLICKSIGNALS_SECURITY_PROTOCOL": "SASL_SSL",
            "CLICKSIGNALS_SASL_PASSWORD": "s3cret",
            "CLICKSIGNALS_SSL_CAFILE": "/etc/kafka/ca.pem",
            "CLICKSIGNALS_TOPIC_DEMAND": "shop-eu.demand",
            "CLICKSIGNALS_PARTITIONS": "12",
            "CLICKSIGNALS_APP_ID": "shop-eu",
            "CLICKSIGNALS_BATCH_TIMEOUT_S": "0.02",
            "CLICKSIGNALS_CHURN_HIGH_THRESHOLD": "",
            "CLICKSIGNALS_BID_CAP": "3",
            "CLICKSIGNALS_KAFKA_DATA_DIR": "/data/kafka",
            "CLICKSIGNALS_LOG_LEVEL": "DEBUG",
            "UNRELATED": "ignored",
        }
    )
    assert settings.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert settings.kafka.security_protocol == "SASL_SSL"
    assert settings.kafka.sasl_password.reveal() == "s3cret"
    assert repr(settings.kafka.sasl_password) == "Secret('***')"
    assert settings.kafka.ssl_cafile == Path("/etc/kafka/ca.pem")
    assert settings.topics.demand == "shop-eu.demand"
    assert settings.topics.partitions == 12
    assert settings.topics.routed == "shop-eu-clickstream-by-user"
    assert settings.worker.app_id == "shop-eu"
    assert settings.worker.batch_timeout_s == 0.02
    assert settings.worker.churn_high_threshold is None
    assert settings.subscribers.bid_cap == 3.0
    assert settings.local.kafka_data_dir == Path("/data/kafka")
    assert settings.logs.level == "DEBUG"
    assert (settings.bidder_app_id, settings.alerter_app_id) == (
        "shop-eu-bidder",
        "shop-eu-alerter",
    )


def test_a_bad_value_names_its_variable() -> None:
    with pytest.raises(ValueError, match="CLICKSIGNALS_PARTITIONS='four'"):
        load_settings({"CLICKSIGNALS_PARTITIONS": "four"})


def test_unknown_flat_names_are_refused() -> None:
    with pytest.raises(TypeError, match="no setting named 'topic_demnad'"):
        Settings.from_flat(topic_demnad="x")


def test_overrides_replace_only_what_they_name_and_re_derive_the_routed_topic() -> None:
    base = Settings.from_flat(topic_churn="churn-x", sasl_password=Secret("pw"), bid_floor=0.7)
    moved = base.with_overrides(app_id="bench-1", partitions=2)
    assert moved.topics.routed == "bench-1-clickstream-by-user"
    assert moved.topics.partitions == 2
    assert moved.topics.churn == "churn-x"
    assert moved.kafka.sasl_password.reveal() == "pw"
    assert moved.subscribers.bid_floor == 0.7
    assert base.worker.app_id == "clicksignals"  # frozen: the original is untouched


def test_flat_names_and_the_environment_round_trip() -> None:
    settings = Settings.from_flat(
        app_id="rt",
        model_dir=Path("/models/v7"),
        ssl_key_password=Secret("k"),
        alert_high_threshold=0.9,
        topic_dead_letter="dlq-rt",
    )
    assert Settings.from_flat(**settings.flat()) == settings
    assert load_settings(child_environment(settings)) == settings


def test_topics_names_is_the_one_list_of_every_topic() -> None:
    topics = Settings.from_flat(app_id="shop").topics
    names = topics.names()
    assert len(names) == len(set(names)) == 14
    name_fields = [f.name for f in dataclasses.fields(Topics) if f.type == "str"]
    assert sorted(names) == sorted(getattr(topics, f) for f in name_fields)
    assert "shop-clickstream-by-user" in names
    assert "shop-quality-parts" in names
    assert "shop-category-parts" in names
    # Every topic has the configured partitions but the internal parts' ones: in send order.
    assert topic_specs(Settings.from_flat(app_id="shop", partitions=6)) == {
        **dict.fromkeys(names, 6),
        "shop-quality-parts": 1,
        "shop-category-parts": 1,
    }


def test_an_isolated_copy_shares_no_topic_and_no_group_with_the_original() -> None:
    base = Settings()
    other = base.isolated("t1", partitions=2)
    assert not set(base.topics.names()) & set(other.topics.names())
    internal = {other.topics.routed, other.topics.quality_parts, other.topics.category_parts}
    own = [n for n in other.topics.names() if n not in internal]
    assert all(name.endswith("-t1") for name in own)
    assert other.topics.routed == "clicksignals-t1-clickstream-by-user"  # follows the app id
    assert other.topics.quality_parts == "clicksignals-t1-quality-parts"
    assert other.worker.app_id == "clicksignals-t1" and other.topics.partitions == 2
    assert {other.bidder_app_id, other.alerter_app_id}.isdisjoint(
        {base.bidder_app_id, base.alerter_app_id}
    )
