"""Wall time and peak memory of each stage of a training run, and its progress bars.

Owns :class:`StageLog` (a context manager per stage: its wall seconds and the peak resident
set size seen while it ran, read by a sampling thread, go to the report) and :func:`progress`
(a tqdm bar over an iterable or a count: shown on a terminal, silent in logs and CI, where
``tqdm``'s own rule turns a bar off when stderr is not a TTY; ``TQDM_DISABLE=1`` turns them
off anywhere).

Why sampling: the kernel's high-water mark (``ru_maxrss``) only grows, so after the biggest
stage every later one would report the same figure. A thread reading ``/proc/self/statm``
every :data:`SAMPLE_SECONDS` sees each stage's own peak (to within the interval; the
high-water mark is kept beside it as the run's true peak).
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from tqdm import tqdm

log = logging.getLogger(__name__)

T = TypeVar("T")

SAMPLE_SECONDS: Final = 0.05
MB: Final = 1024 * 1024
_PAGE: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """The process's resident set size now (the high-water mark where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return high_water_bytes()


def high_water_bytes() -> int:
    """The kernel's peak resident set size of this process so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


@dataclass
class Stage:
    name: str
    seconds: float
    peak_rss_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.name,
            "seconds": round(self.seconds, 2),
            "peak_rss_mb": round(self.peak_rss_bytes / MB, 1),
        }


class StageLog:
    """Stages in the order they ran; ``with log.stage("features"): ...``."""

    def __init__(self, sample_seconds: float = SAMPLE_SECONDS) -> None:
        self.stages: list[Stage] = []
        self._sample_seconds = sample_seconds
        self._peak = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._running: tuple[str, float] | None = None
        self._generation = 0

    def _sample(self) -> None:
        while not self._stop.wait(self._sample_seconds):
            with self._lock:
                generation = self._generation
            now = rss_bytes()
            with self._lock:
                # A reading taken before a stage started belongs to the stage before: the
                # read releases the GIL, and a stage can end and the next begin meanwhile.
                if generation == self._generation:
                    self._peak = max(self._peak, now)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.start(name)
        try:
            yield
        finally:
            self.finish()

    def start(self, name: str) -> None:
        """End the running stage, if any, and start ``name``."""
        self.finish()
        if self._thread is None:
            self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
            self._thread.start()
        with self._lock:
            self._generation += 1
            self._peak = rss_bytes()
        self._running = (name, time.perf_counter())

    def finish(self) -> None:
        """End the running stage (nothing when none runs)."""
        if self._running is None:
            return
        name, started = self._running
        self._running = None
        seconds = time.perf_counter() - started
        with self._lock:
            peak = max(self._peak, rss_bytes())
        self.stages.append(Stage(name, seconds, peak))
        log.info("stage %s: %.1f s, peak RSS %.0f MB", name, seconds, peak / MB)

    def __enter__(self) -> StageLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.finish()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None

    def to_dict(self) -> dict[str, Any]:
        """The report's ``resources`` block."""
        return {
            "stages": [s.to_dict() for s in self.stages],
            "seconds": round(sum(s.seconds for s in self.stages), 1),
            "peak_rss_mb": round(
                max([high_water_bytes(), *(s.peak_rss_bytes for s in self.stages)]) / MB, 1
            ),
            "rss_sampled_every_s": self._sample_seconds,
        }


def progress(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    desc: str,
    unit: str = "it",
) -> tqdm[T]:
    """A tqdm bar (on a terminal only, see the module doc); ``update()`` it without an
    iterable."""
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        disable=None,  # None: off when stderr is not a TTY
        leave=False,
        mininterval=0.5,
        dynamic_ncols=True,
    )


__all__ = ["Stage", "StageLog", "high_water_bytes", "progress", "rss_bytes"]
