"""subscribers.bidding: the bounded multiplier and the per-user latest-signal state (no broker)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from features.signals import DemandSignal
from settings import Settings
from subscribers.bidding import (
    FORMULA,
    MAX_LIFT,
    BidAdjustment,
    BidConfig,
    BidState,
    adjustment_for,
    apply_demand,
    bid_multiplier,
    parse_model_baselines,
)
from subscribers.records import Position
from tests.support.factories import T0, demand

DEFAULT = BidConfig()  # floor 0.5, cap 2.0, k 0.5, baseline 0.02 orders/day
NOW = T0 + 10**9


@pytest.mark.parametrize(
    ("orders_28d", "lift", "multiplier"),
    [
        (0.0, 0.0, 0.5),
        (0.28, 0.5, 0.75),
        (0.56, 1.0, 1.0),
        (1.12, 2.0, 1.5),
        (1.68, 3.0, 2.0),
        (50.0, 50 / 0.56, 2.0),
        (-0.3, 0.0, 0.5),  # a negative estimate counts as zero
    ],
)
def test_default_formula_values(orders_28d: float, lift: float, multiplier: float) -> None:
    m = bid_multiplier(orders_28d, 28.0, "m-a", DEFAULT)
    assert m.multiplier == pytest.approx(multiplier)
    assert m.lift == pytest.approx(lift)
    assert m.baseline_per_day == 0.02


def test_a_signal_serving_a_quantile_is_priced_on_its_mean() -> None:
    # A customer served 0 orders (their likely count) who is expected to order 1.12 times:
    # the bid follows the expectation, as for a model that serves its mean.
    served_quantile = adjustment_for(demand(orders=0.0, mean=1.12), DEFAULT, NOW)
    served_mean = adjustment_for(demand(orders=1.12), DEFAULT, NOW)
    assert served_quantile.multiplier == served_mean.multiplier == pytest.approx(1.5)
    assert served_quantile.expected_orders == 0.0


def test_horizon_normalisation_puts_models_on_one_scale() -> None:
    four_weeks = bid_multiplier(1.12, 28.0, "m-4w", DEFAULT)
    eight_weeks = bid_multiplier(2.24, 56.0, "m-8w", DEFAULT)
    assert four_weeks.multiplier == eight_weeks.multiplier == pytest.approx(1.5)


def test_each_model_version_may_carry_its_own_baseline() -> None:
    config = BidConfig(model_baselines={"m-new": 0.04})
    assert bid_multiplier(1.12, 28.0, "m-old", config).multiplier == pytest.approx(1.5)
    new = bid_multiplier(1.12, 28.0, "m-new", config)
    assert new.multiplier == pytest.approx(1.0) and new.baseline_per_day == 0.04


def test_zero_sensitivity_is_a_constant_neutral_bid() -> None:
    config = BidConfig(sensitivity=0.0, floor=0.8, cap=1.2)
    for orders in (0.0, 1.0, 1e300, math.inf):
        assert bid_multiplier(orders, 28.0, "m", config).multiplier == 1.0


def test_neutral_is_clipped_when_the_range_excludes_one() -> None:
    config = BidConfig(floor=1.1, cap=3.0)
    assert config.neutral == 1.1
    assert bid_multiplier(math.nan, 28.0, "m", config).multiplier == 1.1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"floor": 0.0},
        {"floor": -1.0},
        {"floor": 2.5, "cap": 2.0},
        {"sensitivity": -0.1},
        {"baseline_orders_per_day": 0.0},
        {"cap": math.inf},
        {"floor": math.nan},
        {"model_baselines": {"m": -1.0}},
    ],
)
def test_invalid_configurations_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        BidConfig(**kwargs)  # type: ignore[arg-type]


def test_parse_model_baselines() -> None:
    assert parse_model_baselines("") == {}
    assert parse_model_baselines(" m-a = 0.02 ; m-b=0.5;") == {"m-a": 0.02, "m-b": 0.5}
    with pytest.raises(ValueError):
        parse_model_baselines("m-a")
    with pytest.raises(ValueError):
        parse_model_baselines("m-a=lots")


def test_config_from_settings() -> None:
    settings = Settings.from_flat(
        bid_floor=0.7,
        bid_cap=1.6,
        bid_sensitivity=0.25,
        bid_baseline_orders_per_day=0.05,
        bid_model_baselines="m-x=0.1",
    )
    config = BidConfig.from_settings(settings.subscribers)
    assert (config.floor, config.cap, config.sensitivity) == (0.7, 1.6, 0.25)
    assert config.baseline_for("m-x") == 0.1 and config.baseline_for("m-y") == 0.05


# --------------------------------------------------------------------------------------------
# Properties of the multiplier
# --------------------------------------------------------------------------------------------

any_float = st.floats(allow_nan=True, allow_infinity=True)
positive = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False)


@st.composite
def configs(draw: st.DrawFn) -> BidConfig:
    floor = draw(st.floats(min_value=1e-3, max_value=10.0))
    cap = draw(st.floats(min_value=floor, max_value=1e3))
    return BidConfig(
        floor=floor,
        cap=cap,
        sensitivity=draw(st.floats(min_value=0.0, max_value=1e6)),
        baseline_orders_per_day=draw(positive),
        model_baselines=draw(st.dictionaries(st.sampled_from(["m-a", "m-b"]), positive)),
    )


@given(configs(), any_float, any_float, st.sampled_from(["m-a", "m-b", "m-c"]))
def test_multiplier_always_within_floor_and_cap(
    config: BidConfig, orders: float, horizon: float, model: str
) -> None:
    m = bid_multiplier(orders, horizon, model, config)
    assert config.floor <= m.multiplier <= config.cap
    assert math.isfinite(m.lift) and 0.0 <= m.lift <= MAX_LIFT
    assert math.isfinite(m.rate_per_day)


@given(configs(), st.floats(0, 1e9), st.floats(0, 1e9), positive)
def test_multiplier_is_non_decreasing_in_expected_orders(
    config: BidConfig, a: float, b: float, horizon: float
) -> None:
    low, high = sorted((a, b))
    assert (
        bid_multiplier(low, horizon, "m-a", config).multiplier
        <= bid_multiplier(high, horizon, "m-a", config).multiplier
    )


@given(configs(), st.floats(0, 1e6), st.floats(0.1, 1e3))
def test_adjustment_records_the_bounds_and_stays_within_them(
    config: BidConfig, orders: float, horizon: float
) -> None:
    signal = demand(orders=orders, horizon_days=horizon)
    record = adjustment_for(signal, config, NOW).to_dict()
    assert record["floor"] <= record["multiplier"] <= record["cap"]
    assert record["formula"] == FORMULA


# --------------------------------------------------------------------------------------------
# Per-user state: latest signal wins, duplicates and stale signals change nothing
# --------------------------------------------------------------------------------------------


def run(signals: list[DemandSignal], config: BidConfig = DEFAULT) -> tuple[BidState | None, list]:
    state: BidState | None = None
    outcomes = []
    for s in signals:
        d = apply_demand(state, s, config, NOW)
        outcomes.append(d.outcome)
        if d.accepted:
            assert d.state is not None and d.adjustment is not None
            assert d.state.adjustment == d.adjustment
        else:
            assert d.state is state and d.adjustment is None
        state = d.state
    return state, outcomes


def test_first_signal_makes_an_adjustment() -> None:
    d = apply_demand(None, demand(orders=1.12), DEFAULT, NOW)
    assert d.outcome == "newer" and d.adjustment is not None
    a = d.adjustment
    assert a.multiplier == pytest.approx(1.5) and a.user_id == "u1"
    assert a.source_signal_id == demand(orders=1.12).signal_id
    assert a.emitted_at_ms == NOW


def test_duplicate_and_older_signals_are_ignored() -> None:
    first, older, newer = demand(window=5), demand(window=4, orders=9.0), demand(window=6)
    state, outcomes = run([first, first, older, newer, first, newer])
    assert outcomes == ["newer", "duplicate", "stale", "newer", "duplicate", "duplicate"]
    assert state is not None and state.adjustment.source_signal_id == newer.signal_id


def test_newer_model_version_replaces_the_same_window() -> None:
    old = demand(window=5, model="m-old", orders=0.0, emitted=T0 + 10)
    new = demand(window=5, model="m-new", orders=1.68, emitted=T0 + 20)
    state, outcomes = run([old, new])
    assert outcomes == ["newer", "newer"]
    assert state is not None and state.adjustment.model_version == "m-new"
    assert state.adjustment.multiplier == 2.0
    # ... and the old model's signal arriving late does not bring the old value back.
    state2, outcomes2 = run([new, old])
    assert outcomes2 == ["newer", "stale"]
    assert state2 is not None and state2.adjustment.model_version == "m-new"


def test_a_re_emitted_recent_signal_is_a_duplicate_even_when_not_held() -> None:
    a = demand(window=5, model="m-a", emitted=T0 + 10)
    b = demand(window=5, model="m-b", emitted=T0 + 20)
    # The worker re-emits ``a`` after a restart: same id, later emission time.
    a_re = demand(window=5, model="m-a", emitted=T0 + 30)
    assert a_re.signal_id == a.signal_id
    _, outcomes = run([a, b, a_re])
    assert outcomes == ["newer", "newer", "duplicate"]


def test_state_round_trips_through_json() -> None:
    state, _ = run([demand(window=1), demand(window=2, orders=1.3, trigger="activity")])
    assert state is not None
    assert BidState.from_json(state.to_json()) == state
    assert BidAdjustment.from_dict(state.adjustment.to_dict()) == state.adjustment
    assert state.position == Position.of(demand(window=2, orders=1.3, trigger="activity"))


signal_specs = st.tuples(
    st.integers(0, 4),  # window
    st.sampled_from(["m-a", "m-b"]),
    st.sampled_from(["window_close", "activity"]),
    st.integers(0, 3),  # emission offset
    st.floats(0, 5),
)


@given(st.lists(signal_specs, min_size=1, max_size=25), st.randoms(use_true_random=False))
def test_final_state_is_the_newest_signal_whatever_the_arrival_order(
    specs: list[tuple[int, str, str, int, float]], rnd: random.Random
) -> None:
    signals = [
        demand(window=w, model=m, trigger=t, emitted=T0 + w * 10 + e, orders=o)
        for w, m, t, e, o in specs
    ]
    by_id = {s.signal_id: s for s in signals}
    assume(len(by_id) == len(signals))  # one emission per id, as the worker does
    newest = max(signals, key=lambda s: Position.of(s).key())
    arrivals = signals + rnd.sample(signals, len(signals))  # a replay on top
    rnd.shuffle(arrivals)
    state, outcomes = run(arrivals)
    assert state is not None and state.adjustment.source_signal_id == newest.signal_id
    # Accepted positions strictly increase, and no signal is accepted twice.
    accepted = [s for s, o in zip(arrivals, outcomes, strict=True) if o == "newer"]
    keys = [Position.of(s).key() for s in accepted]
    assert keys == sorted(set(keys))
