"""Category demand in the processor and the aggregator, without a broker.

Populations: a generated shop with categories, sessions and returns (users keyed over four
partitions, replayed in micro-batches of 1, 64 and 512); the same shop cut at a restart; and
hostile category fields (absent, blank, odd characters, numbers, longer than ids may be, and
more distinct series than a partition keeps). The forecasts are the shipped category model's
(``onnx_models/default/demand/family3``); the offline side is :mod:`training.demand`'s panel
and :func:`training.demand_model.samples_at`, as ``train-and-export --demand`` builds them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from features import series_book
from features.demand import SeriesLevel, parse_level, widened
from features.series_book import CategoryPart
from features.validation import ValidationPolicy
from ingest.generator import generate_clickstream
from serving.demand import DemandModel, find_category_model, load_demand_model
from serving.scorer import Scorer, load_model
from stream.categories import CategoryAggregator, quantiles_of
from stream.loopback import run_in_process
from stream.processor import BatchOutput, DictStore, Processor, RawMessage
from stream.publish import partition_of
from tests.support.events import events_from_frame
from tests.support.processor import MODEL_DIR, PARTITIONS, messages
from training.demand import series_panel
from training.demand_model import samples_at

LEVEL = "category"


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return load_model(MODEL_DIR)


@pytest.fixture(scope="module")
def model() -> DemandModel:
    directory = find_category_model(MODEL_DIR)
    assert directory is not None and directory.name == "family3"
    return load_demand_model(directory)


def processor(scorer: Scorer, store: DictStore, level: SeriesLevel) -> Processor:
    return Processor(
        scorer,
        store,
        partitions=PARTITIONS,
        policy=ValidationPolicy(),
        allowed_lateness_ms=0,
        fresh_interval_ms=10**15,
        routed_topics=frozenset({"routed"}),
        clock=lambda: 1_900_000_000_000,
        evaluate=False,
        series_level=level,
    )


def parts_of(
    proc: Processor, store: DictStore, msgs: list[RawMessage], batch: int
) -> list[CategoryPart]:
    parts: list[CategoryPart] = []

    def collect(out: BatchOutput) -> None:
        store.apply(out.writes)
        parts.extend(out.category_parts)

    run_in_process(proc, msgs, batch, collect)
    return parts


def aggregate(model: DemandModel, parts: Iterable[CategoryPart]) -> dict[str, dict[int, dict]]:
    """Every forecast the aggregator makes from ``parts``: series -> window end -> record."""
    agg = CategoryAggregator(model, {}, PARTITIONS)
    out: dict[str, dict[int, dict]] = {}
    for part in parts:
        for merged in agg.receive(orjson.dumps(part.to_dict()), 0):
            for f in merged.forecasts:
                out.setdefault(f.series, {})[f.window_end_ms] = f.to_dict()
    return out


@pytest.fixture(scope="module")
def shop() -> pd.DataFrame:
    """A generated shop: 400 users over 20 weeks, with categories, returns and sessions."""
    frame = generate_clickstream(n_users=400, start="2011-01-03", days=140, seed=11)
    return frame.sort_values("event_time_ms", kind="stable").reset_index(drop=True)


def offline(
    model: DemandModel, frame: pd.DataFrame, level: SeriesLevel
) -> dict[str, dict[int, np.ndarray]]:
    """The training side's forecasts at every origin with ``seq_len`` windows of history."""
    spec = model.spec
    m = model.manifest
    times = frame.event_time_ms.to_numpy()
    first, last = spec.index(int(times.min())), spec.index(int(times.max()))
    panel = series_panel(frame, spec, level, first, last)
    out: dict[str, dict[int, np.ndarray]] = {}
    for origin in range(m.seq_len - 1, panel.n_windows):
        samples = samples_at(panel, [origin], m.seq_len, m.horizon, origin)
        active = panel.cells[:, origin - m.seq_len + 1 : origin + 1].sum(axis=(1, 2)) > 0
        samples = samples.select(active)
        q = model.forecast(samples.inputs, samples.future, samples.scale)
        end = spec.end_ms(first + origin)
        for i, code in enumerate(samples.series):
            out.setdefault(str(panel.names[code]), {})[end] = q[i]
    return out


@pytest.mark.parametrize("batch", [1, 64, 512])
def test_the_stream_forecasts_every_category_as_training_does(
    scorer: Scorer, model: DemandModel, shop: pd.DataFrame, batch: int
) -> None:
    level = parse_level(LEVEL)
    store = DictStore()
    parts = parts_of(processor(scorer, store, level), store, messages(shop), batch)
    stream = aggregate(model, parts)
    want = offline(model, shop, level)
    assert set(stream) == set(want)
    n = 0
    for series, by_end in want.items():
        # The last windows close only when the input ends, as offline: the stream's last
        # forecast is the one at the last window every partition closed.
        assert set(stream[series]) <= set(by_end)
        for end, record in stream[series].items():
            np.testing.assert_allclose(quantiles_of([record])[0], by_end[end], rtol=1e-4, atol=1e-4)
            n += 1
    assert n > 100


def test_a_restart_and_parts_sent_twice_neither_lose_nor_double_count(
    scorer: Scorer, model: DemandModel, shop: pd.DataFrame
) -> None:
    level = parse_level(LEVEL)
    msgs = messages(shop)
    store = DictStore()
    whole = parts_of(processor(scorer, store, level), store, msgs, 64)

    store2 = DictStore()
    half = len(msgs) // 2
    # A new worker after the first half: only what the table restored, and the second half
    # begins with a redelivered stretch of the first (already folded: not counted again).
    first = parts_of(processor(scorer, store2, level), store2, msgs[:half], 64)
    again = msgs[half - 300 : half]
    rest = parts_of(processor(scorer, store2, level), store2, again + msgs[half:], 64)
    key = lambda p: (p.window_end_ms, p.partition, p.index)  # noqa: E731
    assert {key(p): p for p in whole} == {key(p): p for p in first + rest}
    # Every part delivered twice (a batch re-sent after a crash): the same forecasts.
    doubled = [p for part in first + rest for p in (part, part)]
    a, b = aggregate(model, whole), aggregate(model, doubled)
    assert a.keys() == b.keys()
    for series in a:
        assert a[series].keys() == b[series].keys()
        for end in a[series]:
            assert a[series][end]["forecast_id"] == b[series][end]["forecast_id"]
            assert a[series][end]["horizon"] == b[series][end]["horizon"]


def test_empty_windows_closed_before_the_shop_s_first_event_move_no_forecast(
    scorer: Scorer, model: DemandModel, shop: pd.DataFrame
) -> None:
    """A partition closes windows from where the watermark stood when it first heard from
    every source: within the allowed lateness of the first event, or before it had an event
    of its own, that is a window or two before the shop's first. Its empty parts of those
    windows complete them on the board (the others went past); the shop's history, and the
    ``seq_len`` windows a forecast waits for, still begin at its first event, as offline (a
    CI run's killed worker forecast one window early)."""
    level = parse_level(LEVEL)
    store = DictStore()
    whole = parts_of(processor(scorer, store, level), store, messages(shop), 64)
    first_end = min(p.window_end_ms for p in whole)
    length = model.spec.length_ms
    early = [
        part
        for end in (first_end - 2 * length, first_end - length)
        for p in range(PARTITIONS)
        if p % 2 == 0  # some partitions only: the others go past these ends
        for part in series_book.category_parts(
            {},
            [0.0] * series_book.N_AGGREGATES,
            0,
            window_end_ms=end,
            partition=p,
            partitions=PARTITIONS,
        )
    ]
    plain, preceded = aggregate(model, whole), aggregate(model, early + whole)
    assert plain.keys() == preceded.keys()
    for series in plain:
        assert plain[series].keys() == preceded[series].keys(), series
        for end in plain[series]:
            assert plain[series][end]["horizon"] == preceded[series][end]["horizon"]


USERS = [u for u in (f"u{i}" for i in range(200)) if partition_of(u.encode(), PARTITIONS) == 0][:7]
"""Users of partition 0, where the messages of the hostile tests arrive."""


def _event(i: int, category: object, product: object = "p1", kind: str = "purchase") -> bytes:
    body: dict[str, object] = {
        "event_time": 1_300_000_000_000 + i * 60_000,
        "event_type": kind,
        "user_id": USERS[i % len(USERS)],
        "price": 2.5,
        "quantity": 2,
    }
    if category is not ...:
        body["category"] = category
    if product is not ...:
        body["product_id"] = product
    return orjson.dumps(body)


def test_hostile_category_fields_never_stop_the_stream(scorer: Scorer) -> None:
    hostile: list[object] = [
        ...,  # absent
        None,
        "",
        "   ",
        "x" * 256,  # the longest id accepted
        "x" * 257,  # longer: dead-lettered by validation
        "électroménager/Küche 🍳",
        "a\x00b\nc",
        12345,
        3.5,
        ["a"],
        {"a": 1},
        True,
    ]
    msgs = [RawMessage(None, _event(i, c), "clickstream", 0, i) for i, c in enumerate(hostile * 3)]
    store = DictStore()
    proc = processor(scorer, store, parse_level(LEVEL))
    out = proc.process(msgs)
    store.apply(out.writes)
    # Nothing raised: every message is folded, re-keyed or dead-lettered with its reason.
    assert not out.processing_errors
    reasons = {d.reason for d in out.dead_letters}
    assert reasons <= {"wrong_type", "bad_value"}, reasons
    # Longer than ids may be, a float, a list, an object, a boolean: three of each.
    assert len(out.dead_letters) == 3 * 5
    assert not out.reroute
    # The partition's book is in the table, and a new processor reads it back.
    proc2 = processor(scorer, store, parse_level(LEVEL))
    book = proc2._book(0)
    keys = {k for w in book.windows() for k in book.series(w)}
    assert "x" * 256 in keys and "électroménager/Küche 🍳" in keys and "12345" in keys
    assert "a\x00b\nc" in keys


def test_more_series_than_a_window_keeps_count_in_the_totals_only(
    scorer: Scorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(series_book, "MAX_SERIES_PER_WINDOW", 50)
    store = DictStore()
    proc = processor(scorer, store, parse_level(LEVEL))
    msgs = [RawMessage(None, _event(i, f"c{i}"), "clickstream", 0, i) for i in range(120)]
    out = proc.process(msgs)
    book = proc._book(0)
    (window,) = book.windows()
    cells = book.series(window)
    assert len(cells) == 50
    (overflow,) = book.overflow.values()
    (totals,) = book.totals.values()
    assert not out.reroute and not out.dead_letters
    assert overflow == len(msgs) - 50
    assert totals[0] == 2.0 * len(msgs)  # two units each, every one in the totals


def test_a_book_at_the_caps_stays_under_the_message_limit() -> None:
    """20,000 series of the longest accepted key in one window: every shard and every part
    under Kafka's default 1 MB message limit."""
    book = series_book.SeriesBook()
    cells = {
        f"{i:06d}" + "k" * 250: [1.0, 2.5, 3.0, 4.0]
        for i in range(series_book.MAX_SERIES_PER_WINDOW)
    }
    for key, sums in cells.items():
        book.shards[series_book.shard_of(key)].setdefault(0, {})[key] = sums
    book.sizes[0] = len(cells)
    book.totals[0] = [1.0, 2.0, 3.0, 4.0]
    sizes = [
        len(orjson.dumps(series_book.encode_shard(book, s))) for s in range(series_book.BOOK_SHARDS)
    ]
    assert max(sizes) < 1_000_000
    again = series_book.decode_shards(
        orjson.loads(orjson.dumps(series_book.encode_shard(book, s)))
        for s in range(series_book.BOOK_SHARDS)
    )
    assert again.shards == book.shards and again.totals == book.totals
    assert again.sizes == book.sizes
    parts = series_book.category_parts(
        cells, [1.0, 2.0, 3.0, 4.0], 0, window_end_ms=1, partition=0, partitions=1
    )
    assert max(len(orjson.dumps(p.to_dict())) for p in parts) < 1_000_000
    assert sum(len(p.cells) for p in parts) == len(cells)


PART = {"window_end_ms": 1, "partition": 0, "partitions": 4, "index": 0, "count": 1, "cells": {}}


@pytest.mark.parametrize(
    "body",
    [
        {**PART, "partition": 5},
        {**PART, "index": 1},
        {**PART, "cells": {"a": [1]}},
        {**PART, "totals": [1, 2]},
        {k: v for k, v in PART.items() if k != "cells"},
        {**PART, "window_end_ms": "x"},
    ],
)
def test_a_malformed_part_costs_itself_only(model: DemandModel, body: dict[str, object]) -> None:
    agg = CategoryAggregator(model, {}, PARTITIONS)
    with pytest.raises(ValueError):
        agg.receive(orjson.dumps(body), 0)
    with pytest.raises(ValueError):
        agg.receive(b"not json", 0)


def test_the_aggregator_refuses_a_part_of_another_partition_count(model: DemandModel) -> None:
    agg = CategoryAggregator(model, {}, PARTITIONS)
    part = series_book.category_parts(
        {}, [0.0] * series_book.N_AGGREGATES, 0, window_end_ms=1, partition=0, partitions=9
    )
    with pytest.raises(ValueError, match="partitions"):
        agg.receive(orjson.dumps(part[0].to_dict()), 0)


def test_widening_is_the_manifest_s(model: DemandModel) -> None:
    raw = np.array([[[[1.0, 2.0, 4.0], [1.0, 2.0, 4.0]]]])
    assert np.allclose(widened(raw, model.manifest.interval_width)[0, 0, 0, 1], 2.0)


def test_a_journaled_book_takes_back_folds_and_closes_exactly(shop: pd.DataFrame) -> None:
    """The processor's rollback of a run that raised: every fold and close since ``begin``
    undone, the book as it was, shard by shard."""
    level = parse_level(LEVEL)
    week = 7 * 86_400_000
    events = list(events_from_frame(shop.head(3000)))
    book = series_book.SeriesBook()
    for e in events[:1500]:
        series_book.fold(book, level, e, e.event_time_ms // week)
    shards = range(series_book.BOOK_SHARDS)
    before = [orjson.loads(orjson.dumps(series_book.encode_shard(book, s))) for s in shards]
    sizes = dict(book.sizes)
    book.begin()
    for e in events[1500:]:
        series_book.fold(book, level, e, e.event_time_ms // week)
    first = min(book.windows())
    cells, _, _, changed = series_book.close(book, first + 1)
    assert cells and changed
    book.undo()
    assert [orjson.loads(orjson.dumps(series_book.encode_shard(book, s))) for s in shards] == before
    assert book.sizes == sizes and book.journal is None


def test_a_message_that_raises_costs_itself_and_leaves_the_sums_of_a_run_without_it(
    scorer: Scorer, shop: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Poison isolation with category demand on: the batch is rolled back (the book's journal
    undone) and bisected; the sums, the parts and the stored book are those of the stream
    without the poisoned message."""
    import stream.processor as processor_module

    level = parse_level(LEVEL)
    msgs = messages(shop)
    clean_store = DictStore()
    clean = parts_of(processor(scorer, clean_store, level), clean_store, msgs, 512)

    original = processor_module.fold

    def faulty(
        book: series_book.SeriesBook, lv: SeriesLevel, event: Any, window: int, origin: Any
    ) -> Any:
        if event.category == "poison":
            raise ValueError("a category fault")
        return original(book, lv, event, window, origin)

    monkeypatch.setattr(processor_module, "fold", faulty)
    body = orjson.loads(msgs[len(msgs) // 2].value or b"{}")
    poisoned = RawMessage(
        msgs[len(msgs) // 2].key,
        orjson.dumps({**body, "category": "poison"}),
        msgs[len(msgs) // 2].topic,
        msgs[len(msgs) // 2].partition,
        msgs[len(msgs) // 2].offset,
    )
    shifted = [
        RawMessage(m.key, m.value, m.topic, m.partition, m.offset + 1)
        if m.partition == poisoned.partition and m.offset >= poisoned.offset
        else m
        for m in msgs
    ]
    half = len(msgs) // 2
    stream_msgs = [*shifted[:half], poisoned, *shifted[half:]]
    store = DictStore()
    proc = processor(scorer, store, level)
    got: list[CategoryPart] = []
    dead: list[str] = []

    def collect(out: BatchOutput) -> None:
        store.apply(out.writes)
        got.extend(out.category_parts)
        dead.extend(d.reason for d in out.dead_letters)

    run_in_process(proc, stream_msgs, 512, collect)
    assert dead == ["processing_error"]
    assert [p.to_dict() for p in got] == [p.to_dict() for p in clean]

    def sums(data: dict[str, bytes]) -> dict[str, Any]:
        # The marks differ by the poisoned message's offset: the sums must not.
        return {
            k: {f: x for f, x in orjson.loads(v).items() if f != "marks"}
            for k, v in data.items()
            if k.startswith("\x00series/")
        }

    assert sums(store.data) == sums(clean_store.data)


@pytest.mark.parametrize("lost", ["the category shards", "the users"])
def test_a_batch_stored_in_part_neither_loses_nor_double_counts_its_events(
    scorer: Scorer, shop: pd.DataFrame, lost: str
) -> None:
    """A kill -9 while a batch's changelog records were being delivered: some of them stored,
    some not. Each stored shard says which events it holds, so the restart folds each event
    into each shard exactly once, whichever side was lost."""
    level = parse_level(LEVEL)
    msgs = messages(shop)
    store = DictStore()
    whole = parts_of(processor(scorer, store, level), store, msgs, 64)

    h1, h2 = len(msgs) // 3, len(msgs) // 3 + 500
    store = DictStore()
    proc = processor(scorer, store, level)
    before = parts_of(proc, store, msgs[:h1], 64)
    older = dict(store.data)
    before += parts_of(proc, store, msgs[h1:h2], 64)
    is_book = lambda k: k.startswith("\x00series/")  # noqa: E731
    mixed = DictStore()
    for key, value in store.data.items():
        keep_old = is_book(key) if lost == "the category shards" else not is_book(key)
        if keep_old:
            if key in older:
                mixed.data[key] = older[key]
        else:
            mixed.data[key] = value
    # Kafka redelivers everything after the first stretch's committed offsets.
    after = parts_of(processor(scorer, mixed, level), mixed, msgs[h1:], 64)
    key = lambda p: (p.window_end_ms, p.partition, p.index)  # noqa: E731
    first_wins: dict[tuple[int, int, int], CategoryPart] = {}
    for part in before + after:
        first_wins.setdefault(key(part), part)
    assert {key(p): p.to_dict() for p in whole} == {k: p.to_dict() for k, p in first_wins.items()}
