"""Category demand in the stream: the partitions' window sums, their parts, and the history the
category model reads.

Owns the step-wise side of :mod:`features.demand` as the worker runs it (issue 17):

* :class:`SeriesBook` — one clickstream partition's sums of its open windows, per series and in
  total, folded event by event (:func:`fold`, with :func:`features.demand.add_event`) and
  stored in :data:`BOOK_SHARDS` table values (:func:`encode_shard`), so that no value outgrows
  a Kafka message however many series a shop has, and a batch stores only the shards it
  changed;
* :class:`CategoryPart` — what a partition sends when it closes a window: its sums of that
  window, cut to :data:`MAX_SERIES_PER_PART` series per part (:func:`category_parts`). Parts
  are assembled by :mod:`features.parts` (every partition's, once all have closed the window);
* :class:`SeriesHistory` and :func:`model_inputs` — the merged sums of the last ``seq_len``
  windows per series, kept by the category aggregator, and the category model's inputs built
  from them exactly as training builds them (:func:`features.demand.series_inputs`);
* :class:`CategoryForecast` — one record of the ``category-demand`` topic.

Why the sums are derived from the user state's path, not sent per event: the processor folds
an event into its partition's book exactly when it folds it into the user's state (never a
redelivered duplicate, never a late event), and the book is stored with the user states of the
same batch, so the sums count every event once across crashes; a window's part is a function of
the stored book, so a part sent again after a crash is the same part, and the aggregator keeps
the first (:func:`features.parts.receive`).

Hostile input: a series key is at most ``max_id_chars`` long (validation refuses longer ids);
a partition's window holds at most :data:`MAX_SERIES_PER_WINDOW` series, and an event of a
series beyond that counts in the window's totals only (``overflow`` says how many). Neither
stops the stream nor grows its state without bound.

Pure: stdlib and numpy only, no I/O.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from features.demand import (
    N_AGGREGATES,
    SeriesCell,
    SeriesLevel,
    add_event,
    future_inputs,
    series_inputs,
    series_key,
    series_scale,
)
from features.events import ClickEvent
from features.signals import ms_to_iso, signal_id
from features.windows import Float32Array, FloatArray, IntArray, WindowSpec

BOOK_SHARDS: Final = 32
"""Table values a partition's book is stored in (by a stable hash of the series key)."""
MAX_SERIES_PER_WINDOW: Final = 20_000
"""Series one partition sums per window; beyond, events count in the totals only. At the
longest accepted key (256 characters) a full window is ~7 MB, ~220 kB per shard."""
MAX_SERIES_PER_PART: Final = 2_000
"""Series per :class:`CategoryPart`: under 1 MB (Kafka's default message limit) at the longest
accepted keys."""

Sums = list[float]
"""One (series, window)'s aggregates in :data:`features.demand.SERIES_AGGREGATES` order."""


def shard_of(series: str) -> int:
    """The book shard a series is stored in (crc32: the same in every process)."""
    return zlib.crc32(series.encode("utf-8", "surrogatepass")) % BOOK_SHARDS


def _add_sums(into: Sums, sums: Sums | None) -> None:
    for i, x in enumerate(sums or ()):
        into[i] += x


def _accumulate(into: dict[str, Sums], cells: Mapping[str, Sums]) -> None:
    """Add each series' sums of ``cells`` into ``into`` (new series start at zero)."""
    for key, sums in cells.items():
        _add_sums(into.setdefault(key, [0.0] * N_AGGREGATES), sums)


def _add(into: Sums, cell: SeriesCell) -> None:
    into[0] += cell.units
    into[1] += cell.revenue
    into[2] += cell.views
    into[3] += cell.carts


_Undo = tuple[Any, ...]


@dataclass
class SeriesBook:
    """One partition's sums of its open windows (closed windows leave with their part).

    Series are kept by shard (:func:`shard_of`), so that storing a shard touches only its own
    series. While a journal is open (:meth:`begin`), every change records how to take it back
    (:meth:`undo`): the processor takes back a run that raised without copying the book."""

    shards: list[dict[int, dict[str, Sums]]] = field(
        default_factory=lambda: [{} for _ in range(BOOK_SHARDS)]
    )
    """Shard -> window index -> series key -> sums."""
    totals: dict[int, Sums] = field(default_factory=dict)
    """Window index -> the sums of every event of the window (keyed or not)."""
    sizes: dict[int, int] = field(default_factory=dict)
    """Window index -> series kept (the cap, :data:`MAX_SERIES_PER_WINDOW`)."""
    overflow: dict[int, int] = field(default_factory=dict)
    """Window index -> events of a series that found no room."""
    marks: list[dict[int, int]] = field(default_factory=lambda: [{} for _ in range(BOOK_SHARDS)])
    """Shard -> clickstream partition -> the highest offset of it folded into the shard: each
    stored shard says which events it holds, so that a shard stored without the users of its
    batch (or the users without it) neither loses nor double-counts them after a restart."""
    journal: list[_Undo] | None = None

    def series(self, window: int) -> dict[str, Sums]:
        """Every series' sums of a window (a new dict)."""
        out: dict[str, Sums] = {}
        for shard in self.shards:
            out.update(shard.get(window, {}))
        return out

    def windows(self) -> set[int]:
        return set(self.totals) | {w for shard in self.shards for w in shard}

    def begin(self) -> None:
        """Open a journal: changes from here on can be taken back."""
        self.journal = []

    def commit(self) -> None:
        self.journal = None

    def undo(self) -> None:
        """Take back every change since :meth:`begin` (then the journal is closed)."""
        for entry in reversed(self.journal or []):
            kind = entry[0]
            if kind == "total":
                _, w, old = entry
                if old is None:
                    self.totals.pop(w, None)
                else:
                    self.totals[w] = old
            elif kind == "key":
                _, shard, w, key, old = entry
                cells = self.shards[shard].setdefault(w, {})
                if old is None:
                    cells.pop(key, None)
                    self.sizes[w] -= 1
                    if not self.sizes[w]:
                        del self.sizes[w]
                    if not cells:
                        del self.shards[shard][w]
                else:
                    cells[key] = old
            elif kind == "mark":
                _, shard, q, old = entry
                if old is None:
                    self.marks[shard].pop(q, None)
                else:
                    self.marks[shard][q] = old
            elif kind == "overflow":
                _, w, old = entry
                if old is None:
                    self.overflow.pop(w, None)
                else:
                    self.overflow[w] = old
            else:  # a closed window, put back whole
                _, w, shards, total, size, overflow = entry
                for shard, cells in shards.items():
                    self.shards[shard][w] = cells
                if total is not None:
                    self.totals[w] = total
                if size is not None:
                    self.sizes[w] = size
                if overflow is not None:
                    self.overflow[w] = overflow
        self.journal = None


def _fresh(book: SeriesBook, shard: int, origin: tuple[int, int] | None) -> bool:
    """Whether the event at ``origin`` (clickstream partition, offset) is not in ``shard`` yet
    (no origin: a routed copy without one, folded like the user state folds it)."""
    return origin is None or book.marks[shard].get(origin[0], -1) < origin[1]


def _mark(book: SeriesBook, shard: int, origin: tuple[int, int] | None) -> None:
    if origin is None:
        return
    q, offset = origin
    marks = book.marks[shard]
    if book.journal is not None:
        book.journal.append(("mark", shard, q, marks.get(q)))
    marks[q] = offset


def fold(
    book: SeriesBook,
    level: SeriesLevel,
    event: ClickEvent,
    window: int,
    origin: tuple[int, int] | None = None,
) -> list[int]:
    """Add one event to its window's totals (shard 0) and its series' sums; the shards that
    changed. A shard that already holds the event (its mark for the event's clickstream
    partition is at or past the event's offset) is left alone."""
    key = series_key(level, event.category, event.product_id)
    shard = shard_of(key) if key is not None else None
    fresh_totals = _fresh(book, 0, origin)
    fresh_series = shard is not None and _fresh(book, shard, origin)
    if not fresh_totals and not fresh_series:
        return []
    cell = SeriesCell()
    add_event(cell, event)
    journal = book.journal
    changed: list[int] = []
    if fresh_totals:
        total = book.totals.get(window)
        if journal is not None:
            journal.append(("total", window, None if total is None else list(total)))
        if total is None:
            total = book.totals[window] = [0.0] * N_AGGREGATES
        _add(total, cell)
        changed.append(0)
    if fresh_series:
        assert key is not None and shard is not None
        if _add_series(book, key, shard, window, cell):
            changed.append(shard)
        elif fresh_totals:  # no room: counted once, with the totals it did reach
            if journal is not None:
                journal.append(("overflow", window, book.overflow.get(window)))
            book.overflow[window] = book.overflow.get(window, 0) + 1
    if fresh_totals:
        _mark(book, 0, origin)
    if fresh_series and shard != 0:  # shard 0's one mark covers its totals and its series
        assert shard is not None
        _mark(book, shard, origin)
    return changed


def _add_series(book: SeriesBook, key: str, shard: int, window: int, cell: SeriesCell) -> bool:
    """Add ``cell`` to the series' sums of ``window``; ``False`` when there is no room."""
    journal = book.journal
    cells = book.shards[shard].get(window)
    sums = cells.get(key) if cells is not None else None
    if sums is None:
        if book.sizes.get(window, 0) >= MAX_SERIES_PER_WINDOW:
            return False
        if cells is None:
            cells = book.shards[shard][window] = {}
        if journal is not None:
            journal.append(("key", shard, window, key, None))
        sums = cells[key] = [0.0] * N_AGGREGATES
        book.sizes[window] = book.sizes.get(window, 0) + 1
    elif journal is not None:
        journal.append(("key", shard, window, key, list(sums)))
    _add(sums, cell)
    return True


def close(book: SeriesBook, window: int) -> tuple[dict[str, Sums], Sums, int, set[int]]:
    """Take the sums of ``window`` (and of any earlier window still open, which a closed
    partition can no longer receive) out of the book: per series, in total, the overflow, and
    the shards that changed."""
    cells: dict[str, Sums] = {}
    totals = [0.0] * N_AGGREGATES
    overflow = 0
    changed: set[int] = set()
    for w in sorted(w for w in book.windows() if w <= window):
        taken = {i: shard.pop(w) for i, shard in enumerate(book.shards) if w in shard}
        total = book.totals.pop(w, None)
        size = book.sizes.pop(w, None)
        over = book.overflow.pop(w, None)
        if book.journal is not None:
            book.journal.append(("window", w, taken, total, size, over))
        changed.update(taken)
        for shard_cells in taken.values():
            _accumulate(cells, shard_cells)
        _add_sums(totals, total)
        overflow += over or 0
    return cells, totals, overflow, changed


def encode_shard(book: SeriesBook, shard: int) -> dict[str, Any]:
    """The JSON-ready value of one shard (shard 0 also holds the totals and overflow)."""
    out: dict[str, Any] = {
        "shard": shard,
        "series": {str(w): cells for w, cells in book.shards[shard].items() if cells},
        "marks": {str(q): o for q, o in book.marks[shard].items()},
    }
    if shard == 0:
        out["totals"] = {str(w): v for w, v in book.totals.items()}
        out["overflow"] = {str(w): n for w, n in book.overflow.items()}
    return out


def decode_shards(values: Iterable[Mapping[str, Any]]) -> SeriesBook:
    """A book from its shards' values (any order; a missing shard is an empty one). Each
    series goes to the shard :func:`shard_of` names, whichever value held it."""
    book = SeriesBook()
    for value in values:
        for w, cells in value["series"].items():
            window = int(w)
            for k, v in cells.items():
                key = str(k)
                sums = [float(x) for x in v]
                if len(sums) != N_AGGREGATES:
                    raise ValueError(f"series {key!r}: {len(sums)} sums, not {N_AGGREGATES}")
                held = book.shards[shard_of(key)].setdefault(window, {})
                if key not in held:
                    book.sizes[window] = book.sizes.get(window, 0) + 1
                held[key] = sums
        for w, v in value.get("totals", {}).items():
            book.totals[int(w)] = [float(x) for x in v]
        for w, n in value.get("overflow", {}).items():
            book.overflow[int(w)] = int(n)
        if "shard" in value:
            book.marks[int(value["shard"])] = {
                int(q): int(o) for q, o in value.get("marks", {}).items()
            }
    return book


@dataclass(frozen=True, slots=True)
class CategoryPart:
    """Part ``index`` of ``count`` of one partition's sums for the window ending
    ``window_end_ms`` (:class:`features.parts.Part`)."""

    window_end_ms: int
    partition: int
    partitions: int
    index: int
    count: int
    cells: Mapping[str, Sums]
    totals: Sums | None = None
    """On part 0: the partition's totals of the window."""
    overflow: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "window_end_ms": self.window_end_ms,
            "partition": self.partition,
            "partitions": self.partitions,
            "index": self.index,
            "count": self.count,
            "cells": dict(self.cells),
            **({"totals": self.totals} if self.totals is not None else {}),
            "overflow": self.overflow,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CategoryPart:
        cells = {str(k): [float(x) for x in v] for k, v in d["cells"].items()}
        if any(len(v) != N_AGGREGATES for v in cells.values()):
            raise ValueError(f"category part: a cell does not hold {N_AGGREGATES} sums")
        totals = d.get("totals")
        part = cls(
            window_end_ms=int(d["window_end_ms"]),
            partition=int(d["partition"]),
            partitions=int(d["partitions"]),
            index=int(d["index"]),
            count=int(d["count"]),
            cells=cells,
            totals=[float(x) for x in totals] if totals is not None else None,
            overflow=int(d.get("overflow", 0)),
        )
        if not (0 <= part.partition < part.partitions and 0 <= part.index < part.count):
            raise ValueError(
                f"category part {part.index}/{part.count} of partition "
                f"{part.partition}/{part.partitions} is out of range"
            )
        if part.totals is not None and len(part.totals) != N_AGGREGATES:
            raise ValueError(f"category part: totals do not hold {N_AGGREGATES} sums")
        return part


def category_parts(
    cells: Mapping[str, Sums],
    totals: Sums,
    overflow: int,
    *,
    window_end_ms: int,
    partition: int,
    partitions: int,
    max_series: int = MAX_SERIES_PER_PART,
) -> list[CategoryPart]:
    """One partition's parts of a closed window, series in key order (a part sent again
    after a crash is cut the same way). Always at least one part: an empty window still says
    the partition passed it."""
    keys = sorted(cells)
    count = max(1, -(-len(keys) // max_series))
    return [
        CategoryPart(
            window_end_ms,
            partition,
            partitions,
            i,
            count,
            {k: cells[k] for k in keys[i * max_series : (i + 1) * max_series]},
            totals if i == 0 else None,
            overflow if i == 0 else 0,
        )
        for i in range(count)
    ]


def merge_parts(parts: Iterable[CategoryPart]) -> tuple[dict[str, Sums], Sums, int]:
    """One window's sums over every partition: per series, in total, and the overflow.
    Summed in (partition, index) order, so the result does not depend on arrival order."""
    cells: dict[str, Sums] = {}
    totals = [0.0] * N_AGGREGATES
    overflow = 0
    for part in sorted(parts, key=lambda p: (p.partition, p.index)):
        _accumulate(cells, part.cells)
        _add_sums(totals, part.totals)
        overflow += part.overflow
    return cells, totals, overflow


# --- the aggregator's history and the model's inputs -------------------------------------------


@dataclass
class SeriesHistory:
    """One series' (or the shop's) merged sums of its recent windows: window index -> sums.
    Windows with nothing are absent (zeros)."""

    windows: dict[int, Sums] = field(default_factory=dict)

    def add(self, window: int, sums: Sums, keep: int) -> None:
        """Record a window and forget those ``keep`` or more windows before it."""
        self.windows[window] = list(sums)
        for w in [w for w in self.windows if w <= window - keep]:
            del self.windows[w]

    def newest(self) -> int | None:
        return max(self.windows) if self.windows else None

    def to_dict(self) -> dict[str, Any]:
        return {"windows": {str(w): v for w, v in self.windows.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SeriesHistory:
        return cls({int(w): [float(x) for x in v] for w, v in d["windows"].items()})


def dense(history: SeriesHistory, last: int, seq_len: int) -> FloatArray:
    """``[seq_len, 4]``: the sums of windows ``last - seq_len + 1 .. last``, zeros where none."""
    out = np.zeros((seq_len, N_AGGREGATES), dtype=np.float64)
    first = last - seq_len + 1
    for w, sums in history.windows.items():
        if first <= w <= last:
            out[w - first] = sums
    return out


def model_inputs(
    histories: Mapping[str, SeriesHistory],
    totals: SeriesHistory,
    last: int,
    spec: WindowSpec,
    seq_len: int,
    horizon: int,
) -> tuple[list[str], Float32Array, Float32Array, FloatArray]:
    """The category model's inputs at the close of window ``last``: series keys (sorted),
    ``sequence`` ``[N, seq_len, 7]``, ``future`` ``[N, horizon, 2]`` and ``scale`` ``[N, 2]``,
    for every series with a sum in its input windows; as :func:`training.demand_model.samples_at`
    builds them from the training panel."""
    names = sorted(
        k for k, h in histories.items() if any(last - seq_len < w <= last for w in h.windows)
    )
    cells = np.zeros((len(names), seq_len, N_AGGREGATES), dtype=np.float64)
    for i, k in enumerate(names):
        cells[i] = dense(histories[k], last, seq_len)
    starts: IntArray = spec.origin_ms + np.arange(last - seq_len + 1, last + 1) * spec.length_ms
    future_starts: IntArray = spec.origin_ms + np.arange(last + 1, last + 1 + horizon) * (
        spec.length_ms
    )
    sequence = series_inputs(cells, dense(totals, last, seq_len), starts)
    future = np.repeat(future_inputs(future_starts)[None], len(names), axis=0)
    return names, sequence, future, series_scale(cells)


# --- the topic's record ---------------------------------------------------------------------------

_P = ("p10", "p50", "p90")


@dataclass(frozen=True)
class CategoryForecast:
    """One series' forecast at one window end (topic ``category-demand``)."""

    series: str
    level: str
    window_end_ms: int
    window_ms: int
    model_version: str
    quantiles: FloatArray
    """``[horizon, 2, 3]``: units and revenue, P10/P50/P90, per horizon window (widened)."""
    scale: tuple[float, float]
    """Mean units and revenue over the last input windows (the model's scale)."""
    emitted_at_ms: int

    @property
    def forecast_id(self) -> str:
        return signal_id(
            "category_demand", self.series, self.window_end_ms, self.level, self.model_version
        )

    def to_dict(self) -> dict[str, Any]:
        horizon = []
        for h, q in enumerate(np.asarray(self.quantiles, dtype=np.float64)):
            start = self.window_end_ms + h * self.window_ms
            horizon.append(
                {
                    "window_start": ms_to_iso(start),
                    "window_start_ms": start,
                    "window_end_ms": start + self.window_ms,
                    "units": {p: float(q[0, j]) for j, p in enumerate(_P)},
                    "revenue": {p: float(q[1, j]) for j, p in enumerate(_P)},
                }
            )
        return {
            "forecast_id": self.forecast_id,
            "series": self.series,
            "level": self.level,
            "window_end": ms_to_iso(self.window_end_ms),
            "window_end_ms": self.window_end_ms,
            "window_ms": self.window_ms,
            "model_version": self.model_version,
            "scale": {"units": self.scale[0], "revenue": self.scale[1]},
            "horizon": horizon,
            "emitted_at": ms_to_iso(self.emitted_at_ms),
            "emitted_at_ms": self.emitted_at_ms,
        }


__all__ = [
    "BOOK_SHARDS",
    "MAX_SERIES_PER_PART",
    "MAX_SERIES_PER_WINDOW",
    "CategoryForecast",
    "CategoryPart",
    "SeriesBook",
    "SeriesHistory",
    "category_parts",
    "close",
    "decode_shards",
    "dense",
    "encode_shard",
    "fold",
    "merge_parts",
    "model_inputs",
    "shard_of",
]
