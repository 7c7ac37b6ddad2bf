"""The category aggregator's logic, without Faust: category parts in, ``category-demand`` out.

Owns :class:`CategoryAggregator`. Each clickstream partition sends its category sums of every
window it closes (:class:`features.series_book.CategoryPart`, on the worker's internal topic of
one partition); the aggregator records them on a :class:`features.parts.PartBoard` and, once
every partition has closed a window, merges their sums into each series' history (the last
``seq_len`` windows) and scores every series with a sum in those windows with the category
model, in one ONNX Runtime call: one :class:`features.series_book.CategoryForecast` per series
per window end.

State lives in a string-keyed store of bytes (the worker's changelog-backed ``category-board``
table; a dict in tests), one value per key so that none outgrows a Kafka message:
``board``, ``part/{end}/{partition}/{index}`` (parts waiting for their window end),
``series/{key}`` (a series' history), ``totals`` (the shop's) and ``meta`` (the first window
merged with an event in it: no forecast is made before ``seq_len`` windows were seen, as
offline training cannot make one at an origin with less history). Merging a window end is
idempotent (a history's window is set, never added to), so a part or a whole window end
processed again after a crash gives the same histories and forecasts with the same ids.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from dataclasses import dataclass

import numpy as np
import orjson

from features.parts import BOARD_KEY, PartBoard, part_key, receive
from features.series_book import (
    CategoryForecast,
    CategoryPart,
    SeriesHistory,
    merge_parts,
    model_inputs,
)
from serving.demand import DemandModel

log = logging.getLogger(__name__)

SERIES_KEY_PREFIX = "series/"
TOTALS_KEY = "totals"
META_KEY = "meta"


@dataclass
class Merged:
    """What merging one window end gave: its forecasts, and what to log and count."""

    window_end_ms: int
    forecasts: list[CategoryForecast]
    series: int
    overflow: int


class CategoryAggregator:
    """Parts in, forecasts out; ``store`` is the aggregator's table."""

    def __init__(
        self, model: DemandModel, store: MutableMapping[str, bytes], partitions: int
    ) -> None:
        self.model = model
        self.store = store
        self.partitions = partitions

    def receive(self, raw: bytes, now_ms: int) -> list[Merged]:
        """One part (its raw value): stored, and every window end it completes merged and
        scored. A part that cannot be read raises ``ValueError`` (the caller logs it: one bad
        part costs itself, its window end never completes)."""
        try:
            part = CategoryPart.from_dict(orjson.loads(raw))
        except (KeyError, TypeError, AttributeError, orjson.JSONDecodeError) as exc:
            raise ValueError(f"unreadable category part: {exc!r}") from exc
        board_raw = self.store.get(BOARD_KEY)
        # The partition count comes from settings, never from a part: a part claiming
        # another count (10**9) is refused, not waited for.
        board = (
            PartBoard.from_dict(orjson.loads(board_raw))
            if board_raw
            else PartBoard(partitions=self.partitions)
        )
        new, done = receive(board, part)
        if new:
            self.store[part_key(part.window_end_ms, part.partition, part.index)] = raw
        merged = [self._merge(board, end, now_ms) for end in done]
        self.store[BOARD_KEY] = orjson.dumps(board.to_dict())
        return merged

    def _merge(self, board: PartBoard, end_ms: int, now_ms: int) -> Merged:
        keys = board.keys(end_ms)
        parts = [CategoryPart.from_dict(orjson.loads(self.store[k])) for k in keys]
        cells, totals, overflow = merge_parts(parts)
        m = self.model.manifest
        spec = self.model.spec
        window = spec.index(end_ms - 1)
        keep = m.seq_len
        histories = self._histories()
        for key, sums in cells.items():
            history = histories.setdefault(key, SeriesHistory())
            history.add(window, sums, keep)
            self.store[SERIES_KEY_PREFIX + key] = orjson.dumps(history.to_dict())
        stale = [k for k, h in histories.items() if (h.newest() or window) <= window - keep]
        for key in stale:
            del histories[key]
            self.store.pop(SERIES_KEY_PREFIX + key, None)
        shop = self._history(TOTALS_KEY)
        shop.add(window, totals, keep)
        self.store[TOTALS_KEY] = orjson.dumps(shop.to_dict())
        meta = orjson.loads(self.store.get(META_KEY) or b"{}")
        if "first_window" not in meta and any(totals):
            # The shop's history begins at its first window with an event, as the training
            # panel's does. A partition may close empty windows before it (its first
            # watermark stood within the allowed lateness of the first event, or came before
            # it had one), and how many depends on timing: counting them would make a
            # forecast come earlier in one run than in another.
            meta = {"first_window": window}
            self.store[META_KEY] = orjson.dumps(meta)
        first = meta.get("first_window")
        for k in keys:
            self.store.pop(k, None)
        board.received.pop(end_ms, None)
        forecasts: list[CategoryForecast] = []
        if first is not None and window - int(first) + 1 >= m.seq_len:
            names, sequence, future, scale = model_inputs(
                histories, shop, window, spec, m.seq_len, m.horizon
            )
            quantiles = self.model.forecast(sequence, future, scale)
            forecasts = [
                CategoryForecast(
                    series=name,
                    level=m.level,
                    window_end_ms=end_ms,
                    window_ms=m.window_ms,
                    model_version=m.model_version,
                    quantiles=quantiles[i],
                    scale=(float(scale[i, 0]), float(scale[i, 1])),
                    emitted_at_ms=now_ms,
                )
                for i, name in enumerate(names)
            ]
        return Merged(end_ms, forecasts, len(cells), overflow)

    def _history(self, key: str) -> SeriesHistory:
        raw = self.store.get(key)
        return SeriesHistory.from_dict(orjson.loads(raw)) if raw else SeriesHistory()

    def _histories(self) -> dict[str, SeriesHistory]:
        # Read from the store at each merge (once per window end): the table is the truth
        # after a restart or a rebalance, and there is no cache to keep in step with it.
        out: dict[str, SeriesHistory] = {}
        for key in list(self.store.keys()):
            if key.startswith(SERIES_KEY_PREFIX):
                out[key[len(SERIES_KEY_PREFIX) :]] = self._history(key)
        return out


def forecast_records(merged: Merged) -> list[tuple[bytes, bytes]]:
    """(key, value) records of a merged window end's forecasts, keyed by series."""
    return [
        (f.series.encode("utf-8", "surrogatepass"), orjson.dumps(f.to_dict()))
        for f in merged.forecasts
    ]


def quantiles_of(records: list[dict[str, object]]) -> np.ndarray:
    """``[N, horizon, 2, 3]`` quantiles of decoded ``category-demand`` records (tests, demo)."""
    out = []
    for r in records:
        horizon = r["horizon"]
        assert isinstance(horizon, list)
        out.append(
            [
                [[h[t][p] for p in ("p10", "p50", "p90")] for t in ("units", "revenue")]
                for h in horizon
            ]
        )
    return np.asarray(out, dtype=np.float64)


__all__ = ["CategoryAggregator", "Merged", "forecast_records", "quantiles_of"]
