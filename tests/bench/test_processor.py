"""``python -m bench.processor``: the processor alone on a small generator dataset, no broker
(the figures are the bench's; here only that it runs and reports them)."""

from __future__ import annotations

import logging

import pytest

from bench import processor


def test_a_small_generator_stream_runs_through_the_processor_and_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="bench.processor"):
        assert processor.main(["--events", "5000", "--users", "500"]) == 0
    lines = {record.getMessage().split()[0]: record.getMessage() for record in caplog.records}
    assert lines["events"].split()[-1] == "5000"
    assert "events_per_s" in lines and "sequences_scored" in lines


def test_repeated_runs_report_each_rate_their_median_and_spread(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="bench.processor"):
        assert processor.main(["--events", "2000", "--users", "200", "--repeat", "2"]) == 0
    lines = {record.getMessage().split()[0]: record.getMessage() for record in caplog.records}
    assert len(lines["runs_events_per_s"].split()) == 3  # the name and two rates
    assert "median_events_per_s" in lines and lines["spread"].endswith("%")


def test_repeat_below_one_is_refused() -> None:
    with pytest.raises(SystemExit):
        processor.main(["--repeat", "0"])
