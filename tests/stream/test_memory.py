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
