"""The worker's heap (:mod:`stream.memory`): freed pages given back to the operating system,
the cyclic collector tuned for a long-lived heap."""

from __future__ import annotations

import gc
import platform
import weakref
from collections.abc import Iterator

import pytest

from stream import memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_a_worker_that_freed_64_mib_of_records_gives_pages_back() -> None:
    # 4 kB buffers come from malloc (past pymalloc's 512 B), like decoded Kafka records.
    records = [bytearray(4096) for _ in range(16_384)]
    del records
    assert memory.trim() is True


def test_without_malloc_trim_trimming_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_malloc_trim", lambda: None)
    assert memory.trim() is False


@pytest.fixture
def collector() -> Iterator[None]:
    """The test process's collector as it was, whatever a test did to it."""
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("collector")
def test_a_tuned_worker_collects_at_its_threshold_and_never_scans_its_startup_heap() -> None:
    startup_heap = [{"user": i} for i in range(1_000)]  # containers built before the tuning
    tuning = memory.tune_collector(50_000)
    before = tuning.thresholds
    assert gc.get_threshold() == (50_000, before[1], before[2])
    assert gc.get_freeze_count() >= len(startup_heap)
    # A cycle made afterwards is still collected: the collector is tuned, not off.
    cycle: list[object] = []
    cycle.append(cycle)
    ref = weakref.ref(_Node(cycle))
    del cycle
    gc.collect()
    assert ref() is None
    memory.restore_collector(tuning)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


@pytest.mark.usefixtures("collector")
def test_a_threshold_of_zero_leaves_python_s_collector_as_it_was() -> None:
    before = gc.get_threshold()
    tuning = memory.tune_collector(0)
    assert tuning.thresholds == before
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    # Undoing a tuning that froze nothing unfreezes nothing: a heap someone else froze (a
    # worker's, around the bench's in-process phase) stays frozen.
    held = [{"user": i} for i in range(100)]
    gc.freeze()
    frozen = gc.get_freeze_count()
    memory.restore_collector(tuning)
    assert gc.get_freeze_count() == frozen >= len(held)


class _Node:
    """A container in a reference cycle (a weak reference tells when it is collected)."""

    def __init__(self, peer: list[object]) -> None:
        self.peer = peer
        peer.append(self)


# The trim timer's rule (stream.memory.trim_due), at a 5 s tick; times in monotonic seconds.


def test_a_worker_under_traffic_trims_at_its_first_tick() -> None:
    # Start-up (the model, a restore of the changelog) left its garbage behind.
    assert memory.trim_due(5.0, last_batch=4.9, last_trim=None, quiet_s=5.0)


def test_a_quiet_or_restoring_worker_trims_at_every_tick() -> None:
    # No event waits for a trim then; a restore frees as it goes, before any batch.
    assert memory.trim_due(300.0, last_batch=None, last_trim=295.0, quiet_s=5.0)
    assert memory.trim_due(300.0, last_batch=100.0, last_trim=295.0, quiet_s=5.0)


def test_a_burst_is_given_back_once_the_worker_goes_quiet() -> None:
    # A backlog drained at t=100; the trim at t=50 was during it.
    assert not memory.trim_due(103.0, last_batch=100.0, last_trim=50.0, quiet_s=5.0)
    assert memory.trim_due(105.0, last_batch=100.0, last_trim=50.0, quiet_s=5.0)


def test_steady_traffic_is_held_up_by_a_trim_once_a_minute_at_most() -> None:
    # A batch every few ms: every tick sees traffic. A trim stalls the event loop's own
    # allocations for tens of ms, so a 5 s cadence stalled live events every 5 s.
    last_trim = 10.0
    ticks = [t for t in range(15, 130, 5) if t - last_trim < memory.BUSY_TRIM_EVERY_S]
    assert all(
        not memory.trim_due(float(t), last_batch=t - 0.01, last_trim=last_trim, quiet_s=5.0)
        for t in ticks
    )
    assert memory.trim_due(
        last_trim + memory.BUSY_TRIM_EVERY_S, last_batch=69.99, last_trim=last_trim, quiet_s=5.0
    )
