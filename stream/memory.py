"""The worker process's heap: freed pages given back to the operating system (glibc's
``malloc_trim``) and the cyclic garbage collector tuned for a long-lived heap.

Owns :func:`trim`, which the worker calls on a timer (``memory_trim_interval_s``). Kafka
records are decoded on Faust's consumer thread and freed on the event loop's, so their memory
is freed into the consumer thread's glibc arena, in pages glibc keeps mapped: after a burst the
worker's RSS stayed ~110 MiB above what it held (the backpressure test), and RSS is what a
container's memory limit and an operator's dashboard count. ``malloc_trim(0)`` returns the
free pages of every arena (``madvise``), not only the top of the main heap. It takes the
arenas' locks, so it runs off the event loop; measured cost and effect: docs/reliability.md.

It walks every free chunk with the arena's lock held, so the event loop's own allocations
wait for it: 30-80 ms for a 1.5 GB heap in a probe (a thread trimming every 0.3 s, the main
thread allocating: its slowest allocation 79 ms), longer with a larger heap on a busy
machine. Every 5 s under live traffic, that holds back the events of each stall, about 1 %
of them, by tens of ms: the p99's territory (the bench's latency pairs at half the worker's
rate did not tell it from their run-to-run spread: p99 109-403 ms in four runs trimming every
5 s, 163-165 ms in two without). So :func:`trim_due` trims while the worker is quiet (no
batch for an interval, when a burst's pages are there to give back and no event waits), and
under steady traffic at most every :data:`BUSY_TRIM_EVERY_S`: a steady stream reuses what
it freed; only a burst's peak is left over, and a minute is soon enough to give it back.

Elsewhere than glibc (musl, macOS) there is nothing to call and :func:`trim` does nothing.

Owns :func:`tune_collector` too, which ``faust -A stream.app worker`` calls once it is built.
CPython's cyclic collector runs a young collection every 700 net container allocations and a
full one whenever the survivors since the last grew by a quarter of the long-lived heap. A
worker's long-lived heap is large (Faust, aiokafka, ONNX Runtime's bindings, every active
user's decoded state) and churns (users leave the cache, delivery futures outlive a batch),
so full collections came every second or so and scanned all of it: 8.1 s of a 37.6 s
CPU-second bench worker, 22 % (2026-12-07, bench/results/profile.md). Nothing in the hot path
depends on the collector (it frees by reference count); it is there for cycles. So the tuning
freezes what start-up built (never garbage, never scanned again) and lets a young generation
grow to ``gc_young_threshold`` containers before it is collected: full collections still
run, for cycles, a hundred times less often.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

log = logging.getLogger(__name__)

BUSY_TRIM_EVERY_S: Final = 60.0
"""While events flow, the heap is trimmed at most this often (see the module's docstring)."""


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        log.info("no malloc_trim in this C library: freed memory stays with the allocator")
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    trim: Callable[[int], int] = fn
    return trim


def trim() -> bool:
    """Return free heap pages to the operating system; ``True`` if any were returned."""
    fn = _malloc_trim()
    return fn is not None and bool(fn(0))


def trim_due(now: float, last_batch: float | None, last_trim: float | None, quiet_s: float) -> bool:
    """Whether the trim timer's tick at ``now`` (monotonic seconds) should trim: when no
    batch came in the last ``quiet_s`` (a quiet worker, or one that restores its state and
    has taken no batch yet: every tick, as a trim stalls no event then), and under steady
    traffic when the last trim is :data:`BUSY_TRIM_EVERY_S` old (or there was none)."""
    if last_batch is None or now - last_batch >= quiet_s:
        return True
    return last_trim is None or now - last_trim >= BUSY_TRIM_EVERY_S


@dataclass(frozen=True, slots=True)
class CollectorTuning:
    """What :func:`tune_collector` changed, for :func:`restore_collector` to undo."""

    thresholds: tuple[int, int, int]
    """The collector's thresholds before the tuning."""
    froze: bool
    """Whether the tuning froze the heap (only then is unfreezing it an undo: objects frozen
    by anyone else stay frozen)."""


def tune_collector(young_threshold: int) -> CollectorTuning:
    """Freeze the heap built so far out of the collector's scans and collect the young
    generation at ``young_threshold`` containers (0: Python's thresholds left as they are).
    Returns what it changed, for :func:`restore_collector`."""
    before = gc.get_threshold()
    if young_threshold <= 0:
        return CollectorTuning(before, froze=False)
    gc.collect()
    gc.freeze()
    gc.set_threshold(young_threshold, before[1], before[2])
    log.info(
        "garbage collector: %d start-up objects frozen, young generation at %d (was %d)",
        gc.get_freeze_count(),
        young_threshold,
        before[0],
    )
    return CollectorTuning(before, froze=True)


def restore_collector(tuning: CollectorTuning) -> None:
    """Undo :func:`tune_collector` (the bench's in-process phases)."""
    if tuning.froze:
        gc.unfreeze()
    gc.set_threshold(*tuning.thresholds)
