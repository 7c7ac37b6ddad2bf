"""Per-partition parts of one window end, put together once every partition has sent its own.

Owns the assembly protocol the worker's aggregators share (the online evaluation's quality,
:mod:`features.feedback`, and the category demand, :mod:`features.demand`): at each window
close a clickstream partition sends its part(s) of that window end to an internal topic of one
partition; an aggregator records them on a :class:`PartBoard` (:func:`receive`) and merges a
window end once it is complete.

A window end is complete when every partition has sent all of its parts for it, or has sent a
part for a later window end: a partition sends its parts at each window close, in order, so
one that went past a window end without parts for it had nothing there (it began after it).
The internal topic has one partition, so each worker's parts arrive in the order they were
sent, and window ends complete in order. A part received again (a batch re-sent after a crash)
replaces itself; a part of a window end already merged is ignored.

Pure: stdlib only, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


class Part(Protocol):
    """What the board reads of a part: part ``index`` of ``count`` of ``partition``'s parts
    for ``window_end_ms``, out of ``partitions`` partitions."""

    @property
    def window_end_ms(self) -> int: ...
    @property
    def partition(self) -> int: ...
    @property
    def partitions(self) -> int: ...
    @property
    def index(self) -> int: ...
    @property
    def count(self) -> int: ...


@dataclass
class PartBoard:
    """Which parts the internal topic has brought, per window end (an aggregator's state).

    The part bodies are stored apart, one per key (:func:`part_key`), so that no state value
    outgrows a Kafka message however many parts a window end has; the board holds only what
    arrived.
    """

    partitions: int | None = None
    progress: dict[int, int] = field(default_factory=dict)
    """Partition -> the latest window end it sent a part for."""
    received: dict[int, dict[int, tuple[int, list[int]]]] = field(default_factory=dict)
    """Open window end -> partition -> (its part count, indices received)."""
    published_through: int | None = None
    """The latest window end merged: older parts are re-sent ones."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "partitions": self.partitions,
            "progress": {str(p): e for p, e in self.progress.items()},
            "received": {
                str(e): {str(p): [c, sorted(i)] for p, (c, i) in parts.items()}
                for e, parts in self.received.items()
            },
            "published_through": self.published_through,
        }

    @staticmethod
    def fields_from_dict(d: Mapping[str, Any]) -> dict[str, Any]:
        """The base fields of a board's dict, as constructor arguments (subclasses add theirs)."""
        return {
            "partitions": d["partitions"],
            "progress": {int(p): int(e) for p, e in d["progress"].items()},
            "received": {
                int(e): {int(p): (int(c), [int(x) for x in i]) for p, (c, i) in parts.items()}
                for e, parts in d["received"].items()
            },
            "published_through": d["published_through"],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PartBoard:
        return cls(**cls.fields_from_dict(d))

    def keys(self, window_end_ms: int) -> list[str]:
        """The part keys of a window end received so far."""
        return [
            part_key(window_end_ms, p, i)
            for p, (_, indices) in sorted(self.received.get(window_end_ms, {}).items())
            for i in indices
        ]

    def _complete(self, window_end_ms: int) -> bool:
        assert self.partitions is not None
        got = self.received.get(window_end_ms, {})
        for p in range(self.partitions):
            if self.progress.get(p, window_end_ms) > window_end_ms:
                # Went past it: its parts of this window end, if any, came before (one
                # partition, in send order). Also what keeps a part that claims more parts
                # than ever come from holding every later window end back.
                continue
            entry = got.get(p)
            if entry is None or len(set(entry[1])) < entry[0]:
                return False
        return True


def part_key(window_end_ms: int, partition: int, index: int) -> str:
    return f"part/{window_end_ms}/{partition}/{index}"


BOARD_KEY = "board"


def receive(board: PartBoard, part: Part) -> tuple[bool, list[int]]:
    """Record ``part`` on the board: whether it is new (to be stored under
    :func:`part_key`), and the window ends now complete, oldest first (their parts are to be
    merged and dropped; the board forgets them). Raises ``ValueError`` for a part whose
    partition count is not the board's."""
    if board.partitions is None:
        board.partitions = part.partitions
    elif part.partitions != board.partitions:
        raise ValueError(f"a part of {part.partitions} partitions on a board of {board.partitions}")
    end = part.window_end_ms
    if board.published_through is not None and end <= board.published_through:
        return False, []
    board.progress[part.partition] = max(board.progress.get(part.partition, end), end)
    parts = board.received.setdefault(end, {})
    count, indices = parts.get(part.partition, (part.count, []))
    new = part.index not in indices
    if new:
        indices.append(part.index)
    parts[part.partition] = (count, indices)
    done: list[int] = []
    for e in sorted(board.received):
        if not board._complete(e):
            break
        done.append(e)
        board.published_through = e
    return new, done


__all__ = ["BOARD_KEY", "Part", "PartBoard", "part_key", "receive"]
