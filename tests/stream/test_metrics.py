"""The worker's Prometheus metrics fed by its timers and batches (:mod:`stream.metrics`):
consumer lag, model reloads, processed positions."""

from __future__ import annotations

from stream import metrics


def _samples(name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in metrics.REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_consumer_lag_is_highwater_minus_position_for_known_partitions() -> None:
    highwaters = {("t", 0): 100, ("t", 1): 5, ("t", 2): None, ("t", 3): 7}
    positions = {("t", 0): 40, ("t", 1): 5, ("t", 2): 3, ("t", 3): 9}
    assert metrics.consumer_lag(highwaters, positions) == {("t", 0): 60, ("t", 1): 0, ("t", 3): 0}
    assert metrics.consumer_lag({("t", 0): 10}, {}) == {}


def test_the_lag_gauge_shows_exactly_the_partitions_held() -> None:
    metrics.set_consumer_lag({("t", 0): 60, ("t", 1): 0, ("r", 0): 2})
    assert _samples("clicksignals_consumer_lag") == {
        (("partition", "0"), ("topic", "t")): 60,
        (("partition", "1"), ("topic", "t")): 0,
        (("partition", "0"), ("topic", "r")): 2,
    }
    metrics.set_consumer_lag({("t", 1): 3})  # partitions 0 were revoked
    assert _samples("clicksignals_consumer_lag") == {(("partition", "1"), ("topic", "t")): 3}
    metrics.set_consumer_lag({})
    assert _samples("clicksignals_consumer_lag") == {}


def test_model_reloads_are_counted_and_the_serving_version_marked() -> None:
    before = _samples("clicksignals_model_reloads_total")
    metrics.observe_model_reload("unchanged", "m-a")
    metrics.observe_model_reload("failed", "m-a")
    metrics.observe_model_reload("swapped", "m-b")
    after = _samples("clicksignals_model_reloads_total")
    for outcome, n in (("failed", 1), ("swapped", 1)):
        key = (("outcome", outcome),)
        assert after[key] - before.get(key, 0) == n
    assert (("outcome", "unchanged"),) not in after
    assert _samples("clicksignals_model_info") == {(("version", "m-b"),): 1}


def test_processed_positions_follow_finished_batches_and_forget_revoked_partitions() -> None:
    from stream.processor import RawMessage

    batch = [RawMessage(None, b"", "t", 0, o) for o in (5, 7, 6)] + [
        RawMessage(None, b"", "t", 1, 3)
    ]
    metrics.note_processed(batch)
    assert metrics.processed_position("t", 0) == 8
    assert metrics.processed_position("t", 1) == 4
    metrics.note_processed([RawMessage(None, b"", "t", 0, 2)])  # a redelivered older one
    assert metrics.processed_position("t", 0) == 8
    metrics.forget_processed({("t", 0)})
    assert metrics.processed_position("t", 0) is None
    assert metrics.processed_position("t", 1) == 4
    metrics.forget_processed({("t", 1)})
