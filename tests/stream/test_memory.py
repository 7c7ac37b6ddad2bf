"""Freed heap given back to the operating system (:mod:`stream.memory`)."""

from __future__ import annotations

import platform

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
