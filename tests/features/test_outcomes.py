"""Pending predictions settled from a user's closed totals give the offline target: order days
and spend of the H windows after the prediction's window, for buyers, customers who go
dormant and browsers who never order."""

from __future__ import annotations

import numpy as np
import pytest

from features.events import ClickEvent
from features.outcomes import Pending, on_time, remember, settle
from features.state import add_event, close_through
from features.windows import DAY_MS, WindowSpec

WEEK = 7 * DAY_MS
ORIGIN = 1_704_067_200_000  # 2024-01-01, a Monday
SPEC = WindowSpec(WEEK, ORIGIN, seq_len=8, horizon=4, lookback=8)


def purchases(rng: np.random.Generator, user: str, weeks: int, rate: float) -> list[ClickEvent]:
    """A view every week and purchases at ``rate`` per week, several lines on some days."""
    events = []
    for w in range(weeks):
        events.append(ClickEvent(ORIGIN + w * WEEK + 3_600_000, "view", user, "p1"))
        for k in range(rng.poisson(rate)):
            day = int(rng.integers(0, 7))
            t = ORIGIN + w * WEEK + day * DAY_MS + 36_000_000 + k
            price = float(rng.gamma(2.0, 10.0))
            events.append(ClickEvent(t, "purchase", user, "p2", price=price, quantity=1))
    return sorted(events, key=lambda e: e.event_time_ms)


def target(events: list[ClickEvent], window: int, horizon: int) -> tuple[float, float]:
    """Order days and spend of windows ``window + 1 .. window + horizon``, from the events."""
    lo, hi = SPEC.start_ms(window + 1), SPEC.start_ms(window + horizon + 1)
    bought = [e for e in events if e.event_type == "purchase" and lo <= e.event_time_ms < hi]
    days = {e.event_time_ms // DAY_MS for e in bought}
    return float(len(days)), float(sum((e.price or 0.0) * e.quantity for e in bought))


@pytest.mark.parametrize(
    ("population", "rate", "active_weeks"),
    [
        ("weekly buyer", 1.5, 30),
        ("customer who goes dormant after 10 weeks", 0.8, 10),
        ("browser who never orders", 0.0, 30),
    ],
)
def test_settled_predictions_are_the_offline_target(
    population: str, rate: float, active_weeks: int
) -> None:
    rng = np.random.default_rng(len(population))
    events = purchases(rng, "u1", active_weeks, rate)
    weeks = 30
    state = None
    ring: list[Pending] = []
    settled = []
    for e in events:
        state = add_event(state, e, SPEC)
    assert state is not None
    # Closed one window at a time, as the worker's partition clock does; a prediction at each.
    for w in range(state.first_window, weeks):
        close_through(state, w, SPEC)
        done, ring = settle(ring, w, state.order_days_total, state.spend_total, SPEC.horizon)
        settled += done
        assert all(on_time(o, w, SPEC.horizon) for o in done)
        ring = remember(
            ring,
            Pending(w, "m1", 1.0, 10.0, 0.5, state.order_days_total, state.spend_total),
            SPEC.horizon,
        )
        assert len(ring) <= SPEC.horizon
    assert [o.prediction.window for o in settled] == list(
        range(state.first_window, weeks - SPEC.horizon)
    )
    for o in settled:
        orders, spend = target(events, o.prediction.window, SPEC.horizon)
        assert o.orders == orders, (population, o.prediction.window)
        assert o.spend == pytest.approx(spend, rel=1e-12, abs=1e-9)
        assert o.churned == (orders == 0)
    if rate == 0.0:
        assert all(o.churned for o in settled)
    else:  # the buyers' horizons hold orders, and the dormant one's later ones do not
        assert any(o.orders > 1 for o in settled)
        assert settled[-1].churned == (active_weeks < weeks - SPEC.horizon)


def test_a_user_closed_again_only_later_is_settled_late_and_says_so() -> None:
    """A dormant customer out of the close candidates is closed again by a later event: the
    predictions whose horizon passed meanwhile are settled then, over longer spans."""
    ring = [Pending(w, "m1", 1.0, 1.0, 0.5, 3.0, 30.0) for w in (10, 11)]
    done, waiting = settle(ring, 20, 5.0, 80.0, 4)
    assert [o.prediction.window for o in done] == [10, 11] and not waiting
    assert [on_time(o, 20, 4) for o in done] == [False, False]
    assert done[0].orders == 2.0 and done[0].spend == 50.0


def test_the_ring_keeps_one_prediction_per_window_and_at_most_the_horizon() -> None:
    ring: list[Pending] = []
    for w in range(10):
        ring = remember(ring, Pending(w, "m1", 1.0, 1.0, 0.5, 0.0, 0.0), 4)
    assert [p.window for p in ring] == [6, 7, 8, 9]
    # A model swap re-scores window 9: the newer prediction replaces the older.
    ring = remember(ring, Pending(9, "m2", 2.0, 1.0, 0.4, 0.0, 0.0), 4)
    assert [(p.window, p.model_version) for p in ring][-1] == (9, "m2") and len(ring) == 4
    with pytest.raises(ValueError, match="horizon"):
        settle(ring, 9, 0.0, 0.0, 0)


def test_a_shadow_model_s_predictions_wait_beside_the_serving_ones_each_at_most_the_horizon() -> (
    None
):
    ring: list[Pending] = []
    for w in range(6):
        ring = remember(ring, Pending(w, "m1", 1.0, 1.0, 0.5, 0.0, 0.0), 3)
        ring = remember(ring, Pending(w, "m2", 2.0, 1.0, 0.4, 0.0, 0.0, shadow=True), 3)
    assert [(p.window, p.shadow) for p in ring] == [
        (3, False),
        (3, True),
        (4, False),
        (4, True),
        (5, False),
        (5, True),
    ]
    done, waiting = settle(ring, 6, 1.0, 10.0, 3)
    assert [(o.prediction.window, o.prediction.shadow) for o in done] == [(3, False), (3, True)]
    assert all(o.orders == 1.0 for o in done) and len(waiting) == 4


def _remember_by_sorting(pending: list[Pending], new: Pending, horizon: int) -> list[Pending]:
    """The ring's rule spelled out: replace the same (window, role), sort, keep the newest
    ``horizon`` per role."""
    kept = [p for p in pending if (p.window, p.shadow) != (new.window, new.shadow)] + [new]
    kept.sort(key=lambda p: (p.window, p.shadow))
    serving = [p for p in kept if not p.shadow][-horizon:]
    shadow = [p for p in kept if p.shadow][-horizon:]
    return sorted(serving + shadow, key=lambda p: (p.window, p.shadow))


@pytest.mark.parametrize("seed", range(4))
def test_a_weekly_buyer_s_ring_built_close_by_close_follows_the_rule_including_odd_inputs(
    seed: int,
) -> None:
    """A weekly buyer's ring with a shadow model on some closes, a re-score after a swap and a
    close out of order: the append path gives the rule's ring at every step, and so does a
    ring handed over unordered or over the bound."""
    rng = np.random.default_rng(seed)
    horizon = 4
    ring: list[Pending] = []
    for step in range(60):
        window = step if rng.random() > 0.1 else int(rng.integers(0, step + 1))
        new = Pending(window, "m-a", 1.0, 2.0, 0.5, float(step), 3.0, bool(rng.random() < 0.3))
        expected = _remember_by_sorting(ring, new, horizon)
        assert remember(ring, new, horizon) == expected
        odd = list(rng.permutation(np.array(ring + expected, dtype=object)))
        assert remember(odd, new, horizon) == _remember_by_sorting(odd, new, horizon)
        ring = expected
