"""The bench's command line: what ``python -m bench.worker`` is asked to measure."""

from __future__ import annotations

import pytest

from bench.worker.harness import parse_args


def test_latency_rates_follow_the_measured_worker_by_default() -> None:
    cfg = parse_args(["--latency-fractions", "0.25,0.5"])
    assert cfg.latency_fractions == (0.25, 0.5)
    assert cfg.latency_base_rate is None


def test_two_variants_compared_side_by_side_can_share_their_send_rates() -> None:
    # A/B runs of two worker versions on a machine whose measured rate drifts by ±10 %: the
    # fractions are then of one fixed rate, so both latency phases send the same traffic.
    cfg = parse_args(["--latency-fractions", "0.5", "--latency-base-rate", "13000"])
    assert cfg.latency_base_rate == 13000.0


@pytest.mark.parametrize("rate", ["0", "-5"])
def test_a_base_rate_that_sends_nothing_is_refused(rate: str) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--latency-base-rate", rate])
