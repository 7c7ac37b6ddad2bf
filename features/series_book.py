"""Category demand in the stream: the partitions' window sums, their parts, and the history the
category model reads.

Owns the step-wise side of :mod:`features.demand` as the worker runs it (issue 17):

* :class:`SeriesBook` — one clickstream partition's sums of its open windows, per series and in
  total, folded event by event (:func:`fold`, with :func:`features.demand.add_event`) and
  stored in :data:`BOOK_SHARDS` table values (:func:`encode_shard`), so that no value outgrows
  a Kafka message however many series a shop has;
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


def _add(into: Sums, cell: SeriesCell) -> None:
    into[0] += cell.units
    into[1] += cell.revenue
    into[2] += cell.views
    into[3] += cell.carts


@dataclass
class SeriesBook:
    """One partition's sums of its open windows (closed windows leave with their part)."""

    series: dict[int, dict[str, Sums]] = field(default_factory=dict)
    """Window index -> series key -> sums."""
    totals: dict[int, Sums] = field(default_factory=dict)
    """Window index -> the sums of every event of the window (keyed or not)."""
    overflow: dict[int, int] = field(default_factory=dict)
    """Window index -> events of a series that found no room (:data:`MAX_SERIES_PER_WINDOW`)."""

    def copy(self) -> SeriesBook:
        return SeriesBook(
            {w: {k: list(v) for k, v in cells.items()} for w, cells in self.series.items()},
            {w: list(v) for w, v in self.totals.items()},
            dict(self.overflow),
        )


def fold(book: SeriesBook, level: SeriesLevel, event: ClickEvent, window: int) -> int | None:
    """Add one event to its window's totals and its series' sums; the shard whose value
    changed besides the totals' (``None``: the event has no series, or found no room)."""
    cell = SeriesCell()
    add_event(cell, event)
    total = book.totals.get(window)
    if total is None:
        total = book.totals[window] = [0.0] * N_AGGREGATES
    _add(total, cell)
    key = series_key(level, event.category, event.product_id)
    if key is None:
        return None
    cells = book.series.get(window)
    if cells is None:
        cells = book.series[window] = {}
    sums = cells.get(key)
    if sums is None:
        if len(cells) >= MAX_SERIES_PER_WINDOW:
            book.overflow[window] = book.overflow.get(window, 0) + 1
            return None
        sums = cells[key] = [0.0] * N_AGGREGATES
    _add(sums, cell)
    return shard_of(key)


def close(book: SeriesBook, window: int) -> tuple[dict[str, Sums], Sums, int]:
    """Take the sums of ``window`` (and of any earlier window still open, which a closed
    partition can no longer receive) out of the book: per series, in total, and the overflow."""
    cells: dict[str, Sums] = {}
    totals = [0.0] * N_AGGREGATES
    overflow = 0
    for w in sorted(w for w in set(book.series) | set(book.totals) if w <= window):
        for key, sums in book.series.pop(w, {}).items():
            into = cells.setdefault(key, [0.0] * N_AGGREGATES)
            for i in range(N_AGGREGATES):
                into[i] += sums[i]
        for i, x in enumerate(book.totals.pop(w, [0.0] * N_AGGREGATES)):
            totals[i] += x
        overflow += book.overflow.pop(w, 0)
    return cells, totals, overflow


def encode_shard(book: SeriesBook, shard: int) -> dict[str, Any]:
    """The JSON-ready value of one shard (shard 0 also holds the totals and overflow)."""
    series = {
        str(w): {k: v for k, v in cells.items() if shard_of(k) == shard}
        for w, cells in book.series.items()
    }
    out: dict[str, Any] = {"series": {w: c for w, c in series.items() if c}}
    if shard == 0:
        out["totals"] = {str(w): v for w, v in book.totals.items()}
        out["overflow"] = {str(w): n for w, n in book.overflow.items()}
    return out


def decode_shards(values: Iterable[Mapping[str, Any]]) -> SeriesBook:
    """A book from its shards' values (any order; a missing shard is an empty one)."""
    book = SeriesBook()
    for value in values:
        for w, cells in value["series"].items():
            book.series.setdefault(int(w), {}).update(
                {str(k): [float(x) for x in v] for k, v in cells.items()}
            )
        for w, v in value.get("totals", {}).items():
            book.totals[int(w)] = [float(x) for x in v]
        for w, n in value.get("overflow", {}).items():
            book.overflow[int(w)] = int(n)
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
        for key, sums in part.cells.items():
            into = cells.setdefault(key, [0.0] * N_AGGREGATES)
            for i in range(N_AGGREGATES):
                into[i] += sums[i]
        if part.totals is not None:
            for i in range(N_AGGREGATES):
                totals[i] += part.totals[i]
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
