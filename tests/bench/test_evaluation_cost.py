"""The online evaluation's cost from alternating on/off runs: the order alternates pair by
pair, the cost is that of the mean rates, and each pair's own cost is kept to show the spread
between runs on one shared machine."""

from __future__ import annotations

import pytest

from bench.worker.phases import alternating_evaluation, evaluation_cost
from bench.worker.report import evaluation_rows


def test_pairs_alternate_their_order_after_the_first_run_with_evaluation_on() -> None:
    assert alternating_evaluation(1) == [False]
    assert alternating_evaluation(3) == [False, False, True, True, False]


def test_a_machine_that_drifts_steadily_costs_both_sides_alike() -> None:
    """Runs that each go 100 events/s slower than the one before, evaluation costing
    nothing: one pair reads the drift as a 3 % cost, two alternating pairs cancel it."""
    order = [True, *alternating_evaluation(2)]
    rates = [3000.0 - 100 * i for i in range(len(order))]
    runs = list(zip(order, rates, strict=True))
    one = evaluation_cost(runs[:2], runs[:2], 10)
    assert one["worker_cost"] == pytest.approx(1 - 3000 / 2900)
    two = evaluation_cost(runs, runs, 10)
    assert two["worker_cost"] == pytest.approx(0.0)
    assert two["worker_pair_costs"] == pytest.approx([1 - 3000 / 2900, 1 - 2700 / 2800])
    rows = evaluation_rows(two)
    assert "mean of 2 runs each" in rows[0] and "2 alternating pairs" in rows[0]
    assert "**0.0 %**" in rows[0]
