"""Giving the worker's freed heap back to the operating system: glibc's ``malloc_trim``.

Owns :func:`trim`, which the worker calls on a timer (``memory_trim_interval_s``). Kafka
records are decoded on Faust's consumer thread and freed on the event loop's, so their memory
is freed into the consumer thread's glibc arena, in pages glibc keeps mapped: after a burst the
worker's RSS stayed ~110 MiB above what it held (the backpressure test), and RSS is what a
container's memory limit and an operator's dashboard count. ``malloc_trim(0)`` returns the
free pages of every arena (``madvise``), not only the top of the main heap. It takes the
arenas' locks, so it runs off the event loop; measured cost and effect: docs/reliability.md.

Elsewhere than glibc (musl, macOS) there is nothing to call and :func:`trim` does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


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
