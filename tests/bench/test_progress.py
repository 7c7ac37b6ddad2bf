"""``bench.worker.phases.Progress``: the worker phases' rate from polled samples of progress.

The shapes named are the runs the harness polls: a long run (many samples between the first
progress and the end), and a run shorter than one poll (the smoke's 10,000 events on two
workers), whose rate must still be given, over at least the time the work took.
"""

from __future__ import annotations

import pytest

from bench.worker.phases import Progress, Sample


def progress(*samples: tuple[float, int, int | None]) -> Progress:
    return Progress([Sample(t, committed, events_in) for t, committed, events_in in samples])


def test_a_long_run_is_timed_from_its_first_progress_to_its_end() -> None:
    run = progress((1.0, 0, 0), (2.0, 100, 150), (3.0, 600, 700), (4.0, 1000, 1000))
    rate = run.rate("committed", 1000)
    assert rate is not None
    assert rate["seconds"] == pytest.approx(2.0)
    assert rate["events_per_s"] == pytest.approx(900 / 2.0)


def test_a_run_done_within_one_poll_is_timed_from_the_poll_before_it() -> None:
    run = progress((1.0, 0, None), (1.5, 0, 0), (2.0, 1000, 1000))
    rate = run.rate("committed", 1000)
    assert rate is not None
    assert rate["seconds"] == pytest.approx(0.5)
    assert rate["events_per_s"] == pytest.approx(1000 / 0.5)


def test_a_run_done_by_the_first_poll_is_timed_from_the_workers_start() -> None:
    rate = progress((0.8, 1000, 1000)).rate("events_in", 1000)
    assert rate is not None and rate["events_per_s"] == pytest.approx(1000 / 0.8)


def test_a_run_that_never_ends_or_never_starts_has_no_rate() -> None:
    assert progress((1.0, 0, 0), (2.0, 500, 500)).rate("committed", 1000) is None
    assert progress((1.0, 0, None), (2.0, 0, None)).rate("events_in", 1000) is None
