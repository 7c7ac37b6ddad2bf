"""subscribers.alerting: hysteresis and de-duplication of churn alerts (no broker)."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from features.signals import ChurnSignal, RiskThresholds
from settings import Settings
from subscribers.alerting import AlertConfig, AlertDecision, AlertState, apply_churn
from subscribers.records import Position
from tests.support.factories import T0, churn

CONFIG = AlertConfig(recovery_threshold=0.5)  # high = the signal's risk_level (p >= 0.85 here)
NOW = T0 + 10**9


def run(
    signals: list[ChurnSignal], config: AlertConfig = CONFIG, state: AlertState | None = None
) -> tuple[AlertState | None, list[AlertDecision]]:
    decisions = []
    for s in signals:
        d = apply_churn(state, s, config, NOW)
        if d.outcome != "newer":
            assert d.state is state and d.alert is None and d.transition is None
        decisions.append(d)
        state = d.state
    return state, decisions


def alerts(decisions: list[AlertDecision]) -> list[int]:
    return [d.alert.alert_seq for d in decisions if d.alert is not None]


def test_crossing_into_high_risk_raises_one_alert() -> None:
    _, ds = run([churn(window=0, p=0.2), churn(window=1, p=0.9)])
    assert [d.transition for d in ds] == [None, "raised"]
    alert = ds[1].alert
    assert alert is not None
    assert (alert.user_id, alert.reason, alert.alert_seq) == ("u1", "risk_level_high", 1)
    assert alert.source_signal_id == churn(window=1, p=0.9).signal_id
    assert alert.raised_at_ms == NOW and alert.churn_probability == 0.9


def test_a_user_first_seen_high_is_alerted() -> None:
    _, ds = run([churn(window=0, p=0.95)])
    assert alerts(ds) == [1]


def test_no_alert_storm_while_high_or_hovering_between_thresholds() -> None:
    ps = [0.9, 0.95, 0.86, 0.7, 0.88, 0.55, 0.99]  # never below the 0.5 recovery threshold
    _, ds = run([churn(window=i, p=p) for i, p in enumerate(ps)])
    assert alerts(ds) == [1]
    assert all(d.transition != "recovered" for d in ds)


def test_recovery_below_the_lower_threshold_re_arms() -> None:
    ps = [0.9, 0.6, 0.49, 0.7, 0.9, 0.2, 0.91]
    state, ds = run([churn(window=i, p=p) for i, p in enumerate(ps)])
    assert [d.transition for d in ds] == [
        "raised",
        None,
        "recovered",
        None,
        "raised",
        "recovered",
        "raised",
    ]
    assert alerts(ds) == [1, 2, 3]
    assert state is not None and state.alerting and state.alerts_raised == 3
    ids = [d.alert.alert_id for d in ds if d.alert]
    assert len(set(ids)) == 3


def test_own_probability_threshold_raises_with_its_reason() -> None:
    config = AlertConfig(recovery_threshold=0.4, high_threshold=0.75)
    signal = churn(window=0, p=0.8)  # risk_level medium (< 0.85) but >= 0.75
    assert signal.risk_level == "medium"
    _, ds = run([signal], config)
    assert ds[0].alert is not None and ds[0].alert.reason == "probability_threshold"
    assert ds[0].alert.high_threshold == 0.75
    # 0.45 is not high, but not below the 0.4 recovery threshold either: still alerting.
    state, ds2 = run([churn(window=1, p=0.45), churn(window=2, p=0.8)], config, ds[0].state)
    assert alerts(ds2) == [] and state is not None and state.alerting


def test_risk_level_high_counts_even_below_a_probability_threshold() -> None:
    low_cut = RiskThresholds(medium=0.2, high=0.3)
    config = AlertConfig(recovery_threshold=0.1, high_threshold=0.9)
    _, ds = run([churn(window=0, p=0.35, thresholds=low_cut)], config)
    assert ds[0].alert is not None and ds[0].alert.reason == "risk_level_high"


def test_a_high_signal_below_the_recovery_threshold_does_not_recover() -> None:
    # The worker's high cut (0.3) is below the alerter's recovery threshold (0.5).
    low_cut = RiskThresholds(medium=0.2, high=0.3)
    _, ds = run(
        [churn(window=0, p=0.35, thresholds=low_cut), churn(window=1, p=0.4, thresholds=low_cut)]
    )
    assert [d.transition for d in ds] == ["raised", None]


def test_duplicates_and_older_windows_are_ignored() -> None:
    high = churn(window=5, p=0.9)
    state, ds = run([high, churn(window=6, p=0.1), high, churn(window=4, p=0.95)])
    assert [d.outcome for d in ds] == ["newer", "newer", "duplicate", "stale"]
    assert alerts(ds) == [1]
    assert state is not None and not state.alerting


def test_re_emitted_high_signal_after_recovery_does_not_re_alert() -> None:
    # The worker re-emits window 5 after a restart (same id, later emission time).
    high = churn(window=5, p=0.9, emitted=T0 + 1)
    again = churn(window=5, p=0.9, emitted=T0 + 99)
    assert again.signal_id == high.signal_id
    _, ds = run([high, churn(window=6, p=0.1), again])
    assert alerts(ds) == [1]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"recovery_threshold": -0.1},
        {"recovery_threshold": 1.1},
        {"recovery_threshold": 0.6, "high_threshold": 0.5},
        {"recovery_threshold": 0.5, "high_threshold": 1.5},
        {"recovery_threshold": float("nan")},
    ],
)
def test_invalid_configurations_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        AlertConfig(**kwargs)


def test_config_from_settings() -> None:
    config = AlertConfig.from_settings(
        Settings.from_flat(alert_high_threshold=0.8, alert_recovery_threshold=0.3).subscribers
    )
    assert (config.high_threshold, config.recovery_threshold) == (0.8, 0.3)
    assert AlertConfig.from_settings(Settings().subscribers) == AlertConfig(0.5, None)


def test_state_and_alert_serialise() -> None:
    state, ds = run([churn(window=0, p=0.9, days=None), churn(window=1, p=0.2)])
    assert state is not None
    assert AlertState.from_json(state.to_json()) == state
    assert state.to_dict()["state"] == "armed" and state.recovered_at_ms == NOW
    alert = ds[0].alert
    assert alert is not None
    d = alert.to_dict()
    assert d["alert"] == "churn_high_risk" and d["days_since_last_order"] is None
    assert d["window_end"] == "2019-10-01T00:00:00.000Z"


# --------------------------------------------------------------------------------------------
# Property: never two alerts for a user without a recovery in between
# --------------------------------------------------------------------------------------------

specs = st.tuples(
    st.sampled_from(["u1", "u2", "u3"]),
    st.integers(0, 6),  # window
    st.sampled_from(["m-a", "m-b"]),
    st.sampled_from(["window_close", "activity"]),
    st.integers(0, 2),  # emission offset
    st.floats(0.0, 1.0),  # churn probability
)
alert_configs = st.builds(
    lambda r, h: AlertConfig(recovery_threshold=r, high_threshold=None if h is None else max(r, h)),
    st.floats(0.0, 1.0),
    st.none() | st.floats(0.0, 1.0),
)


@given(
    st.lists(specs, min_size=1, max_size=40),
    alert_configs,
    st.randoms(use_true_random=False),
)
def test_alerts_never_fire_twice_without_a_recovery_between(
    items: list[tuple[str, int, str, str, int, float]],
    config: AlertConfig,
    rnd: random.Random,
) -> None:
    signals = [
        churn(u, window=w, model=m, trigger=t, emitted=T0 + w * 10 + e, p=p)
        for u, w, m, t, e, p in items
    ]
    # Arrival order is arbitrary, with duplicates (a replay) mixed in.
    arrivals = signals + rnd.sample(signals, rnd.randint(0, len(signals)))
    rnd.shuffle(arrivals)
    states: dict[str, AlertState | None] = {}
    history: dict[str, list[str]] = {}
    ids: set[str] = set()
    for s in arrivals:
        d = apply_churn(states.get(s.user_id), s, config, NOW)
        states[s.user_id] = d.state
        if d.transition is not None:
            history.setdefault(s.user_id, []).append(d.transition)
        if d.alert is not None:
            assert config.high_reason(s) is not None
            assert d.alert.alert_id not in ids
            ids.add(d.alert.alert_id)
    for user, transitions in history.items():
        # Strictly alternating, starting with an alert: raised, recovered, raised, ...
        assert transitions[0] == "raised", (user, transitions)
        assert all(a != b for a, b in itertools.pairwise(transitions))
        state = states[user]
        assert state is not None
        assert state.alerts_raised == transitions.count("raised")
    # Replaying everything once more changes nothing and raises nothing.
    for s in arrivals:
        d = apply_churn(states[s.user_id], s, config, NOW)
        assert d.outcome in ("duplicate", "stale") and d.alert is None


@given(st.lists(specs, min_size=1, max_size=30))
def test_the_newest_signal_is_held_whatever_the_order(
    items: list[tuple[str, int, str, str, int, float]],
) -> None:
    signals = [
        churn("u1", window=w, model=m, trigger=t, emitted=T0 + w * 10 + e, p=p)
        for _, w, m, t, e, p in items
    ]
    unique = {s.signal_id: s for s in reversed(signals)}  # one emission per id
    state, _ = run(list(unique.values()))
    newest = max(unique.values(), key=lambda s: Position.of(s).key())
    assert state is not None and state.position == Position.of(newest)
