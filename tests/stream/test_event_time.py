"""Event time across partitions, without a broker: a partition closes a window only when every
source partition that can still send it events has passed it (issue 19).

Populations: a shop's clickstream produced keyed by user (a well-behaved tracker), unkeyed
(round-robin: many trackers, connectors and CSV loaders) and keyed by session id; a source
partition that lags behind (a slow or paused consumer) and one with nothing to read (idle).
The re-keying topic is looped back in process (:mod:`stream.loopback`); the Kafka tier
(``test_worker_kafka``) runs the same populations through a real broker.
"""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import orjson
import pandas as pd
import pytest

from features.signals import DeadLetter
from ingest.adapters import to_wire_bytes
from serving.scorer import load_model
from stream.loopback import run_in_process
from stream.processor import (
    WAKE_GRACE_MS,
    BatchOutput,
    DictStore,
    Processor,
    RawMessage,
    SourceMark,
    encode_watermark,
)
from stream.publish import partition_of
from tests.support.processor import (
    MODEL_DIR,
    PARTITIONS,
    WEEK,
    assert_parity,
    close_signals,
    dormant_base,
    frame_of,
    make_processor,
    messages,
    synthetic,
)


@pytest.fixture(scope="module")
def scorer():  # type: ignore[no-untyped-def]
    return load_model(MODEL_DIR)


def produced(frame: pd.DataFrame, keying: str) -> list[RawMessage]:
    """The events as a producer with ``keying`` puts them on the clickstream partitions."""
    offsets = [0] * PARTITIONS
    out = []
    sessions = (
        frame.user_id.astype(str) + "/s" + (frame.event_time_ms // (6 * 3_600_000)).astype(str)
    )
    for i, (key, value) in enumerate(to_wire_bytes(frame)):
        if keying == "user":
            p = partition_of(key, PARTITIONS)
        elif keying == "session":
            p = partition_of(sessions.iloc[i].encode(), PARTITIONS)
        else:  # round-robin, no key
            p = i % PARTITIONS
        out.append(
            RawMessage(key if keying == "user" else None, value, "clickstream", p, offsets[p])
        )
        offsets[p] += 1
    return out


def run_all(
    proc: Processor, store: DictStore, msgs: list[RawMessage], batch: int
) -> tuple[list, list[DeadLetter]]:  # type: ignore[type-arg]
    signals: list = []  # type: ignore[type-arg]
    dead: list[DeadLetter] = []

    def collect(out: BatchOutput) -> None:
        store.apply(out.writes)
        signals.extend(out.demand)
        signals.extend(out.churn)
        dead.extend(out.dead_letters)

    run_in_process(proc, msgs, batch, collect)
    return signals, dead


def test_keyed_unkeyed_and_session_keyed_input_give_the_same_window_close_signals(scorer) -> None:  # type: ignore[no-untyped-def]
    """The issue's run, in process: 30 weeks of a 60-user shop produced three ways. Unkeyed,
    three events in four arrive on a partition that is not their user's and are re-keyed; they
    come back after that partition's own events, and before aligned watermarks most were
    dead-lettered as late."""
    frame = synthetic(seed=3)
    results = {}
    for keying in ("user", "round-robin", "session"):
        store = DictStore()
        proc = make_processor(scorer, store)
        signals, dead = run_all(proc, store, produced(frame, keying), 200)
        assert not dead, (keying, {d.reason for d in dead}, len(dead))
        closes = close_signals(signals)
        results[keying] = (
            {k: s.signal_id for k, s in closes.items()},
            {
                k: getattr(s, "expected_orders", None) or s.churn_probability
                for k, s in closes.items()
            },
        )
    (ids, scores) = results["user"]
    assert len(ids) > 200
    for keying in ("round-robin", "session"):
        other_ids, other_scores = results[keying]
        assert other_ids == ids, keying
        np.testing.assert_allclose(
            [other_scores[k] for k in ids], [scores[k] for k in ids], rtol=1e-5
        )


def weekly_views(user: str, weeks: range, start: int) -> list[tuple[int, str, str]]:
    return [(start + w * WEEK + 3_600_000, user, "view") for w in weeks]


def users_on_partitions() -> tuple[str, str]:
    """Two users on different partitions."""
    a = "alpha"
    pa = partition_of(a.encode(), PARTITIONS)
    b = next(
        f"beta{i}" for i in range(10_000) if partition_of(f"beta{i}".encode(), PARTITIONS) != pa
    )
    return a, b


def feed(proc: Processor, msgs: list[RawMessage], idle: list[int]) -> BatchOutput:
    """One batch, then a heartbeat whose watermark records are read on their partitions."""
    out = proc.process(msgs)
    beat = proc.heartbeat(range(PARTITIONS), idle)
    routed = [
        RawMessage(k, v, "routed", partition_of(k, PARTITIONS), i)
        for i, (k, v) in enumerate(beat.watermarks)
    ]
    after = proc.process(routed)
    out.merge(beat)
    out.merge(after)
    return out


def test_a_source_partition_that_lags_holds_back_every_partition_s_closes(scorer) -> None:  # type: ignore[no-untyped-def]
    """Source A has read 10 weeks of events, source B (a slow consumer with a backlog, not
    idle) one week: no partition closes past B's time, and B's events, when they come, are
    folded, not late. Once B has caught up, the windows close."""
    start = int(pd.Timestamp("2011-01-03", tz="UTC").value // 1_000_000)
    a, b = users_on_partitions()
    pa, pb = partition_of(a.encode(), PARTITIONS), partition_of(b.encode(), PARTITIONS)
    msgs_a = produced(frame_of(weekly_views(a, range(10), start)), "user")
    msgs_b = produced(frame_of(weekly_views(b, range(10), start)), "user")
    others = [q for q in range(PARTITIONS) if q not in (pa, pb)]
    proc = make_processor(scorer)
    feed(proc, msgs_a + msgs_b[:1], idle=others)
    clocks = proc.clocks_view()
    b_time = orjson.loads(msgs_b[0].value)["event_time"]
    assert clocks[pa]["watermark_ms"] == b_time
    assert clocks[pa]["closed_through"] < proc.spec.index(b_time)
    out = feed(proc, msgs_b[1:], idle=others)
    assert not out.dead_letters
    for _ in range(12):  # more heartbeats change nothing here
        feed(proc, [], idle=others)
    # B caught up: both partitions' time is now the later of the two sources' minimum.
    assert proc.clocks_view()[pa]["closed_through"] == proc.spec.index(start + 9 * WEEK) - 1


def test_an_idle_source_partition_stops_holding_time_back(scorer) -> None:  # type: ignore[no-untyped-def]
    """A source with nothing to read for the idle timeout announces itself idle: the others'
    windows close without it. While it is not idle (for example, before its worker has caught
    up), nothing closes."""
    start = int(pd.Timestamp("2011-01-03", tz="UTC").value // 1_000_000)
    a, _ = users_on_partitions()
    pa = partition_of(a.encode(), PARTITIONS)
    msgs = produced(frame_of(weekly_views(a, range(6), start)), "user")
    proc = make_processor(scorer)
    feed(proc, msgs, idle=[])
    assert proc.clocks_view()[pa]["closed_through"] is None  # the others were never heard of
    assert proc.watermark(pa) is None
    others = [q for q in range(PARTITIONS) if q != pa]
    out = feed(proc, [], idle=others)
    for _ in range(8):  # more heartbeats change nothing here
        out.merge(feed(proc, [], idle=others))
    assert proc.clocks_view()[pa]["closed_through"] == proc.spec.index(start + 5 * WEEK) - 1
    assert close_signals(out.demand), "the idle announcement closed nothing"


def test_an_idle_announcement_that_is_not_repeated_stops_counting(scorer) -> None:  # type: ignore[no-untyped-def]
    """A worker that announced its sources idle and then stopped announcing (paused, dead,
    cut off) may have a backlog by now: after the TTL its sources hold time back again."""
    start = int(pd.Timestamp("2011-01-03", tz="UTC").value // 1_000_000)
    a, _ = users_on_partitions()
    pa = partition_of(a.encode(), PARTITIONS)
    proc = make_processor(scorer)
    others = [q for q in range(PARTITIONS) if q != pa]
    feed(proc, produced(frame_of(weekly_views(a, range(3), start)), "user"), idle=others)
    closed = proc.clocks_view()[pa]["closed_through"]
    assert closed == proc.spec.index(start + 2 * WEEK) - 1
    silent = proc.now_ms() + proc.idle_ttl_ms + 1
    proc.now_ms = lambda: silent
    assert proc.watermark(pa) is None  # the others read nothing yet, and may have a backlog
    late_msgs = produced(frame_of(weekly_views(a, range(3, 6), start)), "user")
    out = proc.process([replace(m, offset=m.offset + 3) for m in late_msgs])
    assert not out.dead_letters
    assert proc.clocks_view()[pa]["closed_through"] == closed  # held back


def test_a_burst_after_a_quiet_spell_waits_for_announcements_made_after_it(scorer) -> None:  # type: ignore[no-untyped-def]
    """Every source idle (workers started on empty topics), then a backfill produced to every
    partition at once. The partition whose own source reads its share first must not close
    windows on it while the others' latest word is an idle announcement made before the
    burst: another worker may not have fetched its share yet, and its re-keyed copies would
    come late (the paused-worker Kafka test, 3,692 events in one CI run). It waits for
    announcements made after the wake (and its grace); one of a source that did read holds
    it back to that source's time, and the stray copy is folded, not late. Sources still
    idle after it let it close."""
    start = int(pd.Timestamp("2011-01-03", tz="UTC").value // 1_000_000)
    a, _ = users_on_partitions()
    pa = partition_of(a.encode(), PARTITIONS)
    others = [q for q in range(PARTITIONS) if q != pa]
    everyone = list(range(PARTITIONS))
    t = [2_000_000_000_000]
    proc = make_processor(scorer, wake_grace_ms=WAKE_GRACE_MS)
    proc.now_ms = lambda: t[0]
    feed(proc, [], idle=everyone)  # the quiet spell: every source announced idle
    # The burst: six weeks of user a on a's own source, and (an unkeyed producer) one event of
    # a's first week on another source, whose worker has not fetched it yet.
    own = produced(frame_of(weekly_views(a, range(6), start)), "user")
    stray_source = others[0]
    stray = [
        replace(m, partition=stray_source, offset=0)
        for m in produced(frame_of(weekly_views(a, range(1), start)), "user")
    ]
    t[0] += 100
    out = proc.process(own)
    assert proc.clocks_view()[pa]["closed_through"] is None  # the idle word predates the burst
    assert proc.watermark(pa) is None
    # The other worker fetches its share and announces after the grace: its source is active.
    t[0] += proc.wake_grace_ms + 50
    out.merge(feed(proc, stray, idle=others[1:]))
    # That source woke too: the still-idle ones count again from their next word.
    t[0] += proc.wake_grace_ms + 50
    out.merge(feed(proc, [], idle=others[1:]))
    assert not out.dead_letters, [d.reason for d in out.dead_letters]
    wm = proc.watermark(pa)
    assert wm is not None and wm < start + WEEK  # held back to the stray source's time
    # Nothing more comes: every source idle, announced after the wake, and the windows close.
    t[0] += 1_000
    out.merge(feed(proc, [], idle=everyone))
    assert not out.dead_letters
    assert proc.clocks_view()[pa]["closed_through"] == proc.spec.index(start + 5 * WEEK) - 1
    assert close_signals(out.demand)


def test_a_worker_that_just_took_its_partitions_waits_past_idle_words_made_before_its_first_read(
    scorer,
) -> None:  # type: ignore[no-untyped-def]
    """Two workers start on empty topics: the first alone for a moment (the group's first
    generation) announces every source idle, then the second joins and the partitions are
    split. The re-keying topic is read from the start, so a worker's latest word of the other
    sources is that idle announcement, fresh, while its own source was never idle here. The
    burst its own source then reads first must not close windows on it before the others
    have announced: the other worker may not have fetched its share yet (CI: 6,180 re-keyed
    events late in the paused-worker Kafka test). The first read is a wake."""
    start = int(pd.Timestamp("2011-01-03", tz="UTC").value // 1_000_000)
    a, _ = users_on_partitions()
    pa = partition_of(a.encode(), PARTITIONS)
    others = [q for q in range(PARTITIONS) if q != pa]
    t = [2_000_000_000_000]
    proc = make_processor(scorer, wake_grace_ms=WAKE_GRACE_MS)
    proc.now_ms = lambda: t[0]
    feed(proc, [], idle=others)  # the previous owner's words: the other sources idle
    own = produced(frame_of(weekly_views(a, range(6), start)), "user")
    stray = [
        replace(m, partition=others[0], offset=0)
        for m in produced(frame_of(weekly_views(a, range(1), start)), "user")
    ]
    t[0] += 100
    out = proc.process(own)
    assert proc.clocks_view()[pa]["closed_through"] is None  # the idle words predate the read
    # The other worker fetches its share; its copy is folded, not late.
    t[0] += proc.wake_grace_ms + 50
    out.merge(feed(proc, stray, idle=others[1:]))
    assert not out.dead_letters, [d.reason for d in out.dead_letters]
    # Nothing more comes: every source idle, announced after that source's wake too.
    t[0] += proc.wake_grace_ms + 50
    out.merge(feed(proc, [], idle=list(range(PARTITIONS))))
    assert not out.dead_letters
    assert proc.clocks_view()[pa]["closed_through"] == proc.spec.index(start + 5 * WEEK) - 1


def test_a_restarted_worker_does_not_take_the_previous_run_s_idle_announcements_as_fresh(
    scorer,
) -> None:  # type: ignore[no-untyped-def]
    """A worker stopped while its other sources were idle, restarted after a backlog was
    produced: it reads the re-keying topic again from its committed offset, and the first
    records there are the previous run's idle announcements. They are old: the backlog's
    re-keyed copies follow them, so they must not let the partition close windows on its own
    source's time (they did, when an announcement's age counted from its reading: 1,141 late
    events in the backlog-restart Kafka test). Fresh announcements of the restarted run do."""
    start = int(pd.Timestamp("2011-01-03", tz="UTC").value // 1_000_000)
    a, _ = users_on_partitions()
    pa = partition_of(a.encode(), PARTITIONS)
    others = [q for q in range(PARTITIONS) if q != pa]
    msgs = produced(frame_of(weekly_views(a, range(6), start)), "user")
    store = DictStore()
    before = make_processor(scorer, store)
    out = feed(before, msgs[:3], idle=others)
    store.apply(out.writes)
    closed = before.clocks_view()[pa]["closed_through"]
    assert closed == before.spec.index(start + 2 * WEEK) - 1
    last_round = [
        RawMessage(k, v, "routed", pa, i)
        for i, (k, v) in enumerate(before.heartbeat(range(PARTITIONS), others).watermarks)
        if partition_of(k, PARTITIONS) == pa
    ]
    assert len(last_round) == len(others)

    after = make_processor(scorer, store)
    restarted_at = before.now_ms() + 60_000
    after.now_ms = lambda: restarted_at
    replayed = after.process(last_round)
    backlog = after.process(msgs[3:])
    assert not replayed.dead_letters and not backlog.dead_letters
    assert after.clocks_view()[pa]["closed_through"] == closed  # held back
    assert not close_signals(backlog.demand)

    fresh = feed(after, [], idle=others)  # the restarted run's own announcements
    assert after.clocks_view()[pa]["closed_through"] == after.spec.index(start + 5 * WEEK) - 1
    assert close_signals(fresh.demand)


def test_one_idle_announcement_dated_in_the_future_does_not_keep_a_source_idle(scorer) -> None:  # type: ignore[no-untyped-def]
    """A single record on the re-keying topic claiming a source idle, dated an hour ahead (a
    forged record, a worker whose clock is far off) counts no longer than a fresh one: one
    message must not hold a partition's closes open to every source's backlog."""
    start = int(pd.Timestamp("2011-01-03", tz="UTC").value // 1_000_000)
    a, _ = users_on_partitions()
    pa = partition_of(a.encode(), PARTITIONS)
    others = [q for q in range(PARTITIONS) if q != pa]
    proc = make_processor(scorer)
    msgs = produced(frame_of(weekly_views(a, range(6), start)), "user")
    proc.process(msgs[:3])
    ahead = proc.now_ms() + 3_600_000
    # The record key that lands on pa, as a worker holding the other sources would send it.
    key = next(
        k
        for k, _ in make_processor(scorer).heartbeat(others).watermarks
        if partition_of(k, PARTITIONS) == pa
    )
    forged = [
        RawMessage(key, encode_watermark(q, SourceMark(None, True, ahead)), "routed", pa, i)
        for i, q in enumerate(others)
    ]
    closed = proc.clocks_view()[pa]["closed_through"]
    out = proc.process(forged)
    assert not out.dead_letters
    assert proc.clocks_view()[pa]["closed_through"] == closed  # not idle: they hold back


def run_shuffled(proc: Processor, store: DictStore, msgs: list[RawMessage], seed: int) -> list:  # type: ignore[type-arg]
    """As a worker's fetches may deliver them: chunks of a few partitions per batch, watermark
    records read back at any point of a later batch, heartbeats at any time; at the end, every
    source idle."""
    rng = random.Random(seed)
    signals: list = []  # type: ignore[type-arg]
    queued: list[RawMessage] = []
    offsets = [0] * PARTITIONS

    def handle(out: BatchOutput) -> None:
        store.apply(out.writes)
        signals.extend(out.demand)
        signals.extend(out.churn)
        assert not out.dead_letters, [d.reason for d in out.dead_letters]
        for key, value in out.watermarks:
            p = partition_of(key, PARTITIONS)
            queued.append(RawMessage(key, value, "routed", p, offsets[p]))
            offsets[p] += 1

    # A fetch brings chunks of a few partitions: one partition's event time runs far ahead
    # of another's, and closes wait for the slowest source.
    per = [[m for m in msgs if m.partition == p] for p in range(PARTITIONS)]
    while any(per):
        batch = []
        for _ in range(rng.randint(1, 3)):
            p = rng.randrange(PARTITIONS)
            n = rng.randint(1, 1500)
            batch += per[p][:n]
            del per[p][:n]
        arrived = rng.randint(0, len(queued))
        for m in queued[:arrived]:
            batch.insert(rng.randint(0, len(batch)), m)
        del queued[:arrived]
        handle(proc.process(batch))
        if rng.random() < 0.3:
            handle(proc.heartbeat(range(PARTITIONS)))
    for _ in range(3):
        pending, queued[:] = list(queued), []
        if pending:
            handle(proc.process(pending))
        handle(proc.heartbeat(range(PARTITIONS), range(PARTITIONS)))
    return signals


def comebacks(seed: int, customers: int = 150, weeks: int = 90) -> pd.DataFrame:
    """Customers who buy a few times early, go quiet for months (their churn climbing past
    the floor or not) and come back, on top of :func:`dormant_base`."""
    rng = np.random.default_rng(seed)
    start = int(pd.Timestamp("2011-01-03", tz="UTC").value // 1_000_000)
    rows: list[tuple[int, str, str]] = []
    for u in range(customers):
        first = int(rng.integers(0, 10 * WEEK))
        rows += [
            (start + first + int(t), f"comeback-{u}", "purchase")
            for t in rng.integers(0, 6 * WEEK, int(rng.integers(1, 5)))
        ]
        back = first + int(rng.integers(20 * WEEK, (weeks - 4) * WEEK - first))
        rows += [(start + back + i * 3_600_000, f"comeback-{u}", "purchase") for i in range(2)]
    return pd.concat([dormant_base(seed=seed, weeks=weeks), frame_of(rows)]).sort_values(
        "event_time_ms", kind="stable"
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_watermarks_read_at_any_point_of_a_batch_give_offline_s_closes(scorer, seed: int) -> None:  # type: ignore[no-untyped-def]
    """Customers who go dormant and come back, with activity signals on: closes now wait
    for the other sources, so a comeback event in a later window is often folded (and
    scored) before the partition closes the windows before it. Those closes are still
    decided on the customer's previous close score, as offline decides them, and the
    customer stays a candidate after them."""
    frame = comebacks(seed)
    store = DictStore()
    proc = make_processor(scorer, store)
    proc.dormant_churn_floor = 0.87
    proc.fresh_interval_ms = 60_000
    signals = run_shuffled(proc, store, messages(frame), seed)
    assert_parity(frame, signals, proc, 0.87)


@pytest.mark.realdata
def test_uci_with_watermarks_read_at_any_point_equals_offline_prediction(
    scorer, shared_data
) -> None:  # type: ignore[no-untyped-def]
    """The same on Online Retail (its 575 long-dormant customers and their comebacks), with
    the worker's default activity-signal interval."""
    from ingest.adapters import read_events

    frame = read_events(shared_data / "online_retail.csv.gz", "transactions").events
    store = DictStore()
    proc = make_processor(scorer, store)
    proc.fresh_interval_ms = 60_000
    signals = run_shuffled(proc, store, messages(frame), 1)
    assert_parity(frame, signals, proc)


def test_a_comeback_scored_before_the_close_before_it_keeps_that_close(scorer) -> None:  # type: ignore[no-untyped-def]
    """A dormant customer (always scored at closes: floor 1.0) comes back in window K+1 while
    the partition still waits for another source to pass K-1 and K. The comeback's activity
    score is written first; the closes of K-1 and K still score them, as offline does, on
    their previous close."""
    start = int(pd.Timestamp("2011-01-03", tz="UTC").value // 1_000_000)
    back = "comeback"
    pa = partition_of(back.encode(), PARTITIONS)
    qb = (pa + 1) % PARTITIONS

    def busy(p: int) -> str:
        return next(
            f"b{i}" for i in range(10_000) if partition_of(f"b{i}".encode(), PARTITIONS) == p
        )

    store = DictStore()
    proc = make_processor(scorer, store)
    proc.dormant_churn_floor = 1.0
    proc.fresh_interval_ms = 60_000
    k = proc.spec.lookback + 4
    rows = [(start + 3_600_000, back, "purchase")]
    rows += [(start + w * WEEK + 7_200_000, busy(p), "view") for w in range(k) for p in (pa, qb)]
    run_in_process(proc, produced(frame_of(rows), "user"), 50, lambda out: store.apply(out.writes))
    assert proc.clocks_view()[pa]["closed_through"] == proc.spec.index(start + (k - 1) * WEEK) - 1
    quiet = [q for q in range(PARTITIONS) if q not in (pa, qb)]

    def at(offset: int, rows: list[tuple[int, str, str]]) -> list[RawMessage]:
        return [replace(m, offset=m.offset + offset) for m in produced(frame_of(rows), "user")]

    # qb has more to read (not idle any more), pa reads week K+1 with the comeback in it.
    feed(proc, [], idle=quiet)
    out = feed(
        proc,
        at(
            k + 1,
            [
                (start + (k + 1) * WEEK + 60_000 * i, back if i == 1 else busy(pa), "view")
                for i in range(3)
            ],
        ),
        idle=quiet,
    )
    assert [s.trigger for s in out.demand if s.user_id == back] == ["activity"]
    store.apply(out.writes)
    # qb passes them: pa closes K-1 and K.
    out = feed(proc, at(k, [(start + (k + 1) * WEEK + 7_200_000, busy(qb), "view")]), idle=quiet)
    for _ in range(3):  # more heartbeats change nothing here
        out.merge(feed(proc, [], idle=quiet))
    ends = [
        s.window_end_ms for s in out.demand if s.user_id == back and s.trigger == "window_close"
    ]
    assert ends == [proc.spec.end_ms(proc.spec.index(start + w * WEEK)) for w in (k - 1, k)]
