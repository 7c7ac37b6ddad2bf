"""The online evaluation's records and assembly: partitions' parts of one window end's cohort,
cut to a bounded size and arriving in any interleaving, with re-sends, give the quality of the
whole cohort exactly once."""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import orjson
import pytest

from features.feedback import (
    PredictionOutcome,
    QualityBoard,
    QualityPart,
    forget,
    part_key,
    publish,
    quality_parts,
    receive,
)
from features.outcomes import Outcome, Pending
from features.quality import quality
from tests.support.cohorts import END, PARTITIONS, WEEK, close_cohort, outcomes_of, tally_of


def parts_of(outcomes: list[PredictionOutcome], max_scores: int, end_ms: int = END) -> list:  # type: ignore[type-arg]
    part = [zlib.crc32(o.user_id.encode()) % PARTITIONS for o in outcomes]
    return [
        piece
        for p in range(PARTITIONS)
        for piece in quality_parts(
            [o for o, q in zip(outcomes, part, strict=True) if q == p],
            window_end_ms=end_ms,
            horizon_windows=13,
            partition=p,
            partitions=PARTITIONS,
            max_scores=max_scores,
        )
    ]


def assemble(parts: list[QualityPart], drained: bool = True) -> dict[int, list]:  # type: ignore[type-arg]
    """The aggregator agent's loop over a dict table, through the records' JSON; ``drained``:
    every part belongs to a published window end, so none may be left in the table."""
    board = QualityBoard()
    table: dict[str, bytes] = {}
    published: dict[int, list] = {}  # type: ignore[type-arg]
    for part in parts:
        raw = orjson.dumps(part.to_dict())
        part = QualityPart.from_dict(orjson.loads(raw))
        new, done = receive(board, part)
        if new:
            table[part_key(part.window_end_ms, part.partition, part.index)] = raw
        for end in done:
            keys = board.keys(end)
            got = [QualityPart.from_dict(orjson.loads(table.pop(k))) for k in keys]
            assert end not in published, "a window end published twice"
            published[end] = publish(got, 0)
            forget(board, end)
        board = QualityBoard.from_dict(orjson.loads(orjson.dumps(board.to_dict())))
    assert not (drained and table), "parts left behind after publishing"
    return published


@pytest.mark.parametrize("max_scores", [100_000, 257])
def test_a_cohort_s_parts_in_any_order_with_re_sends_give_its_quality_once(max_scores: int) -> None:
    """2,500 users of a window end (active buyers, a tied block of dormant customers, browsers)
    on 4 partitions; with 257 histogram entries per part each partition sends several."""
    c = close_cohort()
    parts = parts_of(outcomes_of(c), max_scores)
    assert (len(parts) > PARTITIONS) == (max_scores < 1000)
    rng = np.random.default_rng(1)
    shuffled = [parts[i] for i in rng.permutation(len(parts))]
    resent = shuffled + shuffled[:3]  # a batch re-sent after a crash, after publication
    published = assemble(resent)
    ((record,),) = published.values()
    want = quality(tally_of(c, np.ones(len(c["users"]), dtype=bool)))
    got = record.figures
    assert got["n"] == want["n"] == len(c["users"])
    assert got["churn"]["roc_auc"] == want["churn"]["roc_auc"]
    assert got["churn"]["pr_auc"] == want["churn"]["pr_auc"]
    assert got["churn"]["calibration"] == want["churn"]["calibration"]
    for group in ("orders", "spend"):
        for key in ("mae", "rmse", "bias"):
            assert got[group][key] == pytest.approx(want[group][key], rel=1e-12)
    assert record.window_end_ms == END and record.model_version == "m-1"
    assert orjson.loads(orjson.dumps(record.to_dict()))["population"] == len(c["users"])


def test_a_partition_that_began_after_a_window_end_does_not_hold_its_cohort_back() -> None:
    """Partition 3's users all arrived later: its first close sends parts for a later window
    end only. The earlier cohort is complete once it has gone past it."""
    c = close_cohort()
    early = [p for p in parts_of(outcomes_of(c), 100_000) if p.partition != 3]
    late = parts_of(outcomes_of(c, END + WEEK), 100_000)
    published = assemble(early, drained=False)
    assert published == {}
    published = assemble(early + late, drained=False)
    assert sorted(published) == [END]  # the later one waits for partitions 0..2's next closes
    assert published[END][0].figures["n"] < len(c["users"])


def test_a_window_end_without_any_settled_prediction_publishes_nothing() -> None:
    empty = [
        part
        for p in range(PARTITIONS)
        for part in quality_parts(
            [], window_end_ms=END, horizon_windows=13, partition=p, partitions=PARTITIONS
        )
    ]
    assert assemble(empty) == {END: []}


def test_late_settled_outcomes_are_published_but_not_counted() -> None:
    c = close_cohort()
    outcomes = outcomes_of(c)
    late = PredictionOutcome.create(
        Outcome(Pending(0, "m-1", 9.0, 9.0, 0.01, 0.0, 0.0), 0.0, 0.0),
        user_id="u-late",
        window_end_ms=END,
        settled_through_ms=END + 20 * WEEK,
        horizon_windows=13,
        on_time=False,
        emitted_at_ms=0,
    )
    assert late.to_dict()["actual"]["churned"] is True
    ((record,),) = assemble(parts_of([*outcomes, late], 100_000)).values()
    assert record.figures["n"] == len(outcomes)


def test_parts_of_another_partition_count_are_refused() -> None:
    board = QualityBoard()
    receive(
        board,
        quality_parts([], window_end_ms=END, horizon_windows=13, partition=0, partitions=4)[0],
    )
    other = quality_parts([], window_end_ms=END, horizon_windows=13, partition=0, partitions=8)[0]
    with pytest.raises(ValueError, match="8 partitions on a board of 4"):
        receive(board, other)
    # A board made for the worker's partitions never waits for a forged count's parts.
    forged = quality_parts(
        [], window_end_ms=END, horizon_windows=13, partition=0, partitions=10**9
    )[0]
    with pytest.raises(ValueError, match="partitions on a board of 4"):
        receive(QualityBoard(partitions=4), forged)
    # A part that claims parts which never come holds its window end back only until its
    # partition goes past it: the later window ends are not blocked behind it.
    board = QualityBoard(partitions=1)
    claim = quality_parts([], window_end_ms=END, horizon_windows=13, partition=0, partitions=1)[0]
    assert receive(board, dataclasses.replace(claim, count=10**9)) == (True, [])
    later = quality_parts(
        [], window_end_ms=END + WEEK, horizon_windows=13, partition=0, partitions=1
    )[0]
    assert receive(board, later) == (True, [END, END + WEEK])
    with pytest.raises(ValueError, match="out of range"):
        QualityPart.from_dict({**other.to_dict(), "partition": 9})


def test_a_close_done_in_slices_tallies_its_cohort_as_one_close_would() -> None:
    """A partition's close of 2,500 users taken in slices of 300 (the worker's runs), each
    slice's tallies stored as JSON (a table record of its own): merged at the end, the parts
    give the quality of the cohort tallied at once, input histograms summed."""
    from features.feedback import CohortProgress, cohort_tallies, merge_progress, parts_of

    outcomes = outcomes_of(close_cohort())
    rng = np.random.default_rng(4)
    order = rng.permutation(len(outcomes))
    pieces = []
    counts_total = np.zeros((2, 5), dtype=np.int64)
    for lo in range(0, len(order), 300):
        piece = [outcomes[i] for i in order[lo : lo + 300]]
        counts = rng.integers(0, 50, size=(2, 5))
        counts_total += counts
        as_tuple = tuple(tuple(int(x) for x in row) for row in counts)
        stored = CohortProgress(7, cohort_tallies(piece, END), as_tuple).to_dict()
        pieces.append(CohortProgress.from_dict(orjson.loads(orjson.dumps(stored))))
    progress = merge_progress(pieces)
    assert progress.window == 7
    assert progress.counts == tuple(tuple(int(x) for x in row) for row in counts_total)
    sliced = parts_of(
        progress.tallies, window_end_ms=END, horizon_windows=13, partition=0, partitions=1
    )
    whole = quality_parts(
        outcomes, window_end_ms=END, horizon_windows=13, partition=0, partitions=1
    )
    got, want = publish(sliced, 0), publish(whole, 0)
    assert len(got) == len(want) == 1
    a, b = got[0].figures, want[0].figures
    assert a["n"] == b["n"] == len(outcomes)
    for group in ("orders", "spend"):
        for key in ("mae", "rmse", "bias"):
            assert a[group][key] == pytest.approx(b[group][key], rel=1e-12)
    assert a["churn"]["roc_auc"] == pytest.approx(b["churn"]["roc_auc"], abs=1e-12)
