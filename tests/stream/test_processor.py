"""The worker's logic without a broker: routing, dead letters, watermarks, silent users,
restarts, and parity of window-close signals with offline prediction."""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pytest

from features.validation import ValidationPolicy
from ingest.adapters import to_wire_bytes
from serving.scorer import load_model
from stream.processor import (
    DictStore,
    Processor,
    RawMessage,
    is_internal_key,
)
from stream.publish import partition_of
from tests.support.processor import (
    MODEL_DIR,
    PARTITIONS,
    WEEK,
    assert_parity,
    assert_quality_parity,
    assert_same_state,
    close_signals,
    dormant_base,
    frame_of,
    input_drift_by_window,
    make_processor,
    messages,
    online_quality,
    run,
    run_outputs,
    synthetic,
)


@pytest.fixture(scope="module")
def scorer():  # type: ignore[no-untyped-def]
    return load_model(MODEL_DIR)


@pytest.mark.parametrize("batch", [1, 37, 512])
def test_window_close_signals_equal_offline_prediction(scorer, batch: int) -> None:  # type: ignore[no-untyped-def]
    frame = synthetic()
    store = DictStore()
    proc = make_processor(scorer, store)
    signals = run(proc, store, messages(frame), batch)
    assert len(close_signals(signals)) > 200
    assert_parity(frame, signals, proc)


def uninterrupted(scorer, msgs: list[RawMessage]) -> tuple[DictStore, list]:  # type: ignore[no-untyped-def, type-arg]
    """The table and the signals of one worker that ran through ``msgs``."""
    store = DictStore()
    return store, run(make_processor(scorer, store), store, msgs, 64)


def assert_one_run(want: list, got: list, want_store: DictStore, got_store: DictStore) -> None:  # type: ignore[type-arg]
    """The signals and the table of an uninterrupted worker (see :func:`assert_same_signals`)."""
    assert_same_signals(want, got)
    assert got_store.data == want_store.data


def assert_same_signals(want: list, got: list) -> None:  # type: ignore[type-arg]
    """The same signals. Scores agree up to float32 inference noise: ONNX Runtime's LSTM
    results move in the last bit (~2e-7 relative) when the rows batched together differ, and
    a restarted run, or one closing a few users at a time, batches differently."""
    a = {s.signal_id: s for s in want}
    b = {s.signal_id: s for s in got}
    assert set(a) == set(b)
    for field in ("expected_orders", "expected_spend", "churn_probability"):
        keys = [k for k in a if hasattr(a[k], field)]
        np.testing.assert_allclose(
            [getattr(b[k], field) for k in keys], [getattr(a[k], field) for k in keys], rtol=1e-6
        )


def test_restart_from_the_store_gives_the_signals_of_an_uninterrupted_run(scorer) -> None:  # type: ignore[no-untyped-def]
    msgs = messages(synthetic(seed=3))
    store, whole = uninterrupted(scorer, msgs)
    store2 = DictStore()
    half = len(msgs) // 2
    first = run(make_processor(scorer, store2), store2, msgs[:half], 64)
    # A new worker: nothing in memory, only what the table (changelog) restored.
    rest = run(make_processor(scorer, store2), store2, msgs[half:], 64)
    assert_one_run(whole, first + rest, store, store2)


def test_a_restart_restored_in_slices_as_the_table_changes_is_an_uninterrupted_run(scorer) -> None:  # type: ignore[no-untyped-def]
    """The restored worker's clocks and close candidates are rebuilt a slice of records at a
    time (the worker lets its event loop run between slices), while the table changes under
    the pass (standby replicas write the same store): the candidates are those of the pass in
    one go, and the signals those of an uninterrupted worker."""
    msgs = messages(synthetic(seed=3))
    store, whole = uninterrupted(scorer, msgs)
    store2 = DictStore()
    half = len(msgs) // 2
    first = run(make_processor(scorer, store2), store2, msgs[:half], 64)
    in_one_go = make_processor(scorer, store2)
    assert list(in_one_go.restore_partitions(range(PARTITIONS), slice_records=10**9)) == []

    restarted = make_processor(scorer, store2)
    standby = "\x00standby/"
    slices = 0
    for read in restarted.restore_partitions(range(PARTITIONS), slice_records=3):
        assert read == 3 * (slices + 1)
        # A dict iterator would fail here ("dictionary changed size during iteration").
        store2.data[f"{standby}{slices}"] = b"x"
        slices += 1
        assert restarted._clocks == {}  # installed only once the pass is complete
    for k in [k for k in store2.data if k.startswith(standby)]:
        del store2.data[k]
    assert slices > 10
    assert restarted._active == in_one_go._active
    assert sum(len(a) for a in restarted._active.values()) > 20
    assert restarted._clocks == in_one_go._clocks

    rest = run(restarted, store2, msgs[half:], 64)
    assert_one_run(whole, first + rest, store, store2)


def test_a_partition_revoked_while_its_restore_yields_is_not_installed(scorer) -> None:  # type: ignore[no-untyped-def]
    """A rebalance between two slices of the restore: what the pass read of the revoked
    partition may be from before another worker moved it on, so it is left for a later read;
    the other partitions are installed."""
    store = DictStore()
    run(make_processor(scorer, store), store, messages(synthetic(seed=5)), 128)
    restarted = make_processor(scorer, store)
    steps = restarted.restore_partitions(range(PARTITIONS), slice_records=5)
    next(steps)
    restarted.forget_partitions({0})
    for _ in steps:
        pass
    assert sorted(restarted._clocks) == list(range(1, PARTITIONS))
    assert 0 not in restarted._active
    # Restored already: a second pass reads nothing of them.
    assert list(restarted.restore_partitions(range(1, PARTITIONS), slice_records=1)) == []


def test_a_partition_lost_and_taken_back_continues_from_the_table_not_the_cache(scorer) -> None:  # type: ignore[no-untyped-def]
    """Failover and back: worker A holds every partition, loses them to B, which moves the
    state on, then A gets them back (forget on revocation and again on assignment, as the
    app's rebalance callbacks do). A continues from the table, never from users it cached
    before B's work: the signals and the table are those of one uninterrupted worker."""
    msgs = messages(synthetic(seed=5))
    store, whole = uninterrupted(scorer, msgs)
    shared = DictStore()
    a, b = make_processor(scorer, shared), make_processor(scorer, shared)
    third = len(msgs) // 3
    first = run(a, shared, msgs[:third], 64)
    # A re-reads one of its own messages (a redelivery): its user is read for the check.
    run(a, shared, msgs[third - 1 : third], 1)
    a.forget_partitions(set(range(PARTITIONS)))  # revoked
    assert not a._users and not a._active  # nothing of the partitions stays in memory
    second = run(b, shared, msgs[third : 2 * third], 64)
    b.forget_partitions(set(range(PARTITIONS)))
    a.forget_partitions(set(range(PARTITIONS)))  # assigned back: the cache is not trusted
    rest = run(a, shared, msgs[2 * third :], 64)

    assert_one_run(whole, first + second + rest, store, shared)


def test_clocks_of_held_partitions_show_after_a_restart_without_new_messages(scorer) -> None:  # type: ignore[no-untyped-def]
    """A restarted worker whose partitions were all processed gets no message: ``/clocks``
    must still show where each held partition's event time stands (read from the store)."""
    store = DictStore()
    proc = make_processor(scorer, store)
    run(proc, store, messages(synthetic(seed=5)), 128)
    before = proc.clocks_view()
    assert len(before) == PARTITIONS

    restarted = make_processor(scorer, store)
    assert restarted.clocks_view() == {}
    held = {0, PARTITIONS - 1}
    stored = ("max_event_ms", "closed_through")
    view = restarted.clocks_view(held)
    assert sorted(view) == sorted(held)
    assert {p: {k: view[p][k] for k in stored} for p in view} == {
        p: {k: before[p][k] for k in stored} for p in sorted(held)
    }
    # What the other sources announced is not stored: it comes again within a heartbeat.
    assert all(view[p]["sources"] == {} and view[p]["watermark_ms"] is None for p in view)
    # Read only: nothing loaded, so the first real message still rebuilds its partition.
    assert restarted.clocks_view() == {}


def announce_idle(proc: Processor, sources: list[int], to: int) -> None:
    """``sources`` announce themselves idle with nothing read, and ``to`` reads it (what a
    worker's heartbeat does through the re-keying topic)."""
    out = proc.heartbeat(held=sources, idle=sources)
    mine = [(k, v) for k, v in out.watermarks if partition_of(k, PARTITIONS) == to]
    assert len(mine) == len(sources)
    proc.process([RawMessage(k, v, "routed", to, i) for i, (k, v) in enumerate(mine)])


def one_partition_pair(name: str) -> tuple[str, str]:
    """``name`` and a "busy" user on its partition (keeps that partition's event time moving)."""
    p = partition_of(name.encode(), PARTITIONS)
    busy = next(
        f"busy{i}" for i in range(10_000) if partition_of(f"busy{i}".encode(), PARTITIONS) == p
    )
    return name, busy


def quiet_closes(scorer, kind: str, floor: float) -> tuple[list[int], list[float], int]:  # type: ignore[no-untyped-def]
    """A user who did one ``kind`` event in week 0 and nothing after, with a busy user on
    their partition for lookback + 8 weeks: their window-close ends and churn, and the number
    of closes of the partition."""
    start = int(pd.Timestamp("2011-01-03", tz="UTC").value // 1_000_000)
    quiet, busy = one_partition_pair("quiet")
    weeks = scorer.manifest.spec.lookback + 8  # well past the lookback, whatever the model's
    rows = [(start + 3600_000, quiet, kind)]
    rows += [(start + w * WEEK + 7200_000, busy, "view") for w in range(0, weeks)]
    store = DictStore()
    proc = make_processor(scorer, store)
    proc.dormant_churn_floor = floor
    signals = run(proc, store, messages(frame_of(rows)), 5)
    closes = close_signals([s for s in signals if hasattr(s, "churn_probability")])
    mine = sorted((k[1], s.churn_probability) for k, s in closes.items() if k[0] == quiet)  # type: ignore[attr-defined]
    return [m[0] for m in mine], [m[1] for m in mine], weeks - 1


def test_a_buyer_is_scored_past_the_lookback_until_their_churn_reaches_the_floor(scorer) -> None:  # type: ignore[no-untyped-def]
    lookback = scorer.manifest.spec.lookback
    # Floor 1.0: never reached, so the customer is scored at every close of the partition.
    ends, churn, closes = quiet_closes(scorer, "purchase", 1.0)
    assert len(ends) == closes > lookback + 2
    assert churn[lookback - 1] > churn[0]  # a user going quiet is what churn risk must catch
    # A floor their churn reaches at the k-th dormant close: scored through that close (its
    # signal stands), never after.
    k = 3
    floor = churn[lookback - 1 + k]
    assert max(churn[lookback - 1 : lookback - 1 + k]) < floor  # (the model's risk rises)
    ends_f, churn_f, _ = quiet_closes(scorer, "purchase", floor)
    assert ends_f == ends[: lookback + k]
    np.testing.assert_allclose(churn_f, churn[: lookback + k], atol=1e-6)
    assert churn_f[-1] >= floor


def test_a_user_who_never_bought_is_scored_until_the_lookback_passes(scorer) -> None:  # type: ignore[no-untyped-def]
    lookback = scorer.manifest.spec.lookback
    ends, _, closes = quiet_closes(scorer, "view", 1.0)  # whatever the floor
    assert closes > lookback + 2
    assert len(ends) == lookback  # the week it viewed and lookback-1 silent weeks


@pytest.mark.parametrize(("floor", "batch"), [(0.87, 1), (0.87, 512), (None, 97)])
def test_dormant_one_time_buyers_are_scored_until_their_churn_passes_the_floor_as_offline(
    scorer, floor: float | None, batch: int
) -> None:  # type: ignore[no-untyped-def]
    """Parity on the extended population: window-close signals of dormant customers (one-time
    and repeat buyers out of the lookback, under the floor) equal offline prediction's rows,
    including the close at which each stops; batch 512 closes many windows per batch (a
    dormant customer's later closes wait on scores of the same batch)."""
    from features.windows import DORMANT_CHURN_FLOOR

    floor = DORMANT_CHURN_FLOOR if floor is None else floor
    frame = dormant_base()
    store = DictStore()
    proc = make_processor(scorer, store)
    proc.dormant_churn_floor = floor
    signals = run(proc, store, messages(frame), batch)
    assert_parity(frame, signals, proc, floor)

    lookback_ms = proc.spec.lookback * proc.spec.length_ms
    last_event = frame.groupby("user_id").event_time_ms.max()
    churn = close_signals([s for s in signals if hasattr(s, "churn_probability")])
    dormant = {k: s for k, s in churn.items() if k[1] > last_event[k[0]] + lookback_ms}
    assert dormant, "no dormant customer was scored: the test exercises nothing"
    assert not [k for k in dormant if k[0].startswith(("viewer", "busy"))]
    if floor == 0.87:
        # Scored a year after their only order, and some have stopped at the floor.
        year = 52 * WEEK
        assert any(k[0].startswith("once") and k[1] > last_event[k[0]] + year for k in dormant)
        ends = max(k[1] for k in churn)
        stopped = {
            u: max((k for k in churn if k[0] == u), key=lambda k: k[1])
            for u in {k[0] for k in dormant}
        }
        stopped = {u: k for u, k in stopped.items() if k[1] < ends}
        assert stopped
        assert all(churn[k].churn_probability >= floor for k in stopped.values())  # type: ignore[attr-defined]


def test_a_restart_keeps_scoring_the_dormant_customers_under_the_floor(scorer) -> None:  # type: ignore[no-untyped-def]
    """The candidates a restarted worker rebuilds from the table include dormant customers
    under the floor (from their stored last scores): same signals as an uninterrupted run."""
    msgs = messages(dormant_base(seed=11))
    store = DictStore()
    proc = make_processor(scorer, store)
    proc.dormant_churn_floor = 0.87
    whole = run(proc, store, msgs, 64)

    store2 = DictStore()
    part = make_processor(scorer, store2)
    part.dormant_churn_floor = 0.87
    cut = len(msgs) * 2 // 3  # well after the first customers went dormant
    first = run(part, store2, msgs[:cut], 64)
    restarted = make_processor(scorer, store2)
    restarted.dormant_churn_floor = 0.87
    rest = run(restarted, store2, msgs[cut:], 64)
    a = {s.signal_id: s.expected_orders for s in whole if hasattr(s, "expected_orders")}
    b = {s.signal_id: s.expected_orders for s in first + rest if hasattr(s, "expected_orders")}
    assert set(a) == set(b)
    np.testing.assert_allclose([b[k] for k in a], [a[k] for k in a], rtol=1e-6)


def test_a_future_dated_event_within_the_skew_does_not_make_its_partition_late(scorer) -> None:  # type: ignore[no-untyped-def]
    """Live traffic on a Sunday at noon (weekly windows end Monday 00:00 UTC): one event of a
    partition is dated 20 h ahead (a device clock; within the accepted 24 h skew), Monday
    08:00. It is folded, but the partition's event time stops at the wall clock: the rest of
    Sunday's events of that partition are folded, not dead-lettered as late."""
    now = int(pd.Timestamp("2024-03-10 12:00", tz="UTC").value // 1_000_000)  # a Sunday
    hour = 3_600_000
    proc = Processor(
        scorer,
        DictStore(),
        partitions=PARTITIONS,
        policy=ValidationPolicy(),
        allowed_lateness_ms=0,
        fresh_interval_ms=10**15,
        routed_topics=frozenset({"routed"}),
        clock=lambda: now,
    )
    a, b = one_partition_pair("live")
    sunday = [now - 3 * hour + i * 60_000 for i in range(6)]
    future = now + 20 * hour
    arrival = [*sunday[:2], future, *sunday[2:]]  # the future-dated one arrives third
    rows = [(t, a if i % 2 else b, "view") for i, t in enumerate(arrival)]
    msgs = messages(frame_of(rows).sort_index())
    assert len({m.partition for m in msgs}) == 1
    p = msgs[0].partition
    announce_idle(proc, [q for q in range(PARTITIONS) if q != p], p)  # its time is the stream's
    out = proc.process(msgs)
    assert not out.dead_letters, [d.reason for d in out.dead_letters]
    clock = proc.clocks_view()[msgs[0].partition]
    assert clock["max_event_ms"] == now  # not the future event's time
    # Once the wall clock passes Monday 08:00, the event time follows it to there.
    later = now + 21 * hour
    proc.now_ms = lambda: later
    out = proc.process(messages(frame_of([(later - hour, a, "view")])))
    assert not out.dead_letters
    assert proc.clocks_view()[msgs[0].partition]["max_event_ms"] == later - hour


def test_bad_input_goes_to_dead_letters_with_a_reason(scorer) -> None:  # type: ignore[no-untyped-def]
    good = {"event_time": "2011-03-01T10:00:00Z", "event_type": "view", "user_id": "u1"}
    key = b"u1"
    p = partition_of(key, PARTITIONS)
    raw = [
        b"\xff\xfe",
        b"{not json",
        b"[1,2]",
        orjson.dumps({**good, "user_id": ""}),
        orjson.dumps({**good, "price": -1}),
        orjson.dumps({**good, "event_time": "1970-01-01T00:00:00Z"}),
        orjson.dumps(good),
    ]
    proc = make_processor(scorer)
    out = proc.process([RawMessage(key, v, "clickstream", p, i) for i, v in enumerate(raw)])
    assert [d.offset for d in out.dead_letters] == [0, 1, 2, 3, 4, 5]
    assert all(d.reason and d.detail for d in out.dead_letters)
    assert out.dead_letters[0].raw == b"\xff\xfe"
    # The other source partitions have nothing to read (idle): this one's time is the
    # stream's. Two weeks later the first window has closed: an event for it is late.
    announce_idle(proc, [q for q in range(PARTITIONS) if q != p], p)
    later = orjson.dumps({**good, "event_time": "2011-03-20T10:00:00Z"})
    late = orjson.dumps({**good, "event_time": "2011-03-01T11:00:00Z"})
    out = proc.process(
        [RawMessage(key, later, "clickstream", p, 7), RawMessage(key, late, "clickstream", p, 8)]
    )
    assert [d.reason for d in out.dead_letters] == ["late"]


def test_a_message_on_the_wrong_partition_is_rekeyed_not_folded(scorer) -> None:  # type: ignore[no-untyped-def]
    value = orjson.dumps({"event_time": 1299000000000, "event_type": "view", "user_id": "u1"})
    right = partition_of(b"u1", PARTITIONS)
    wrong = (right + 1) % PARTITIONS
    proc = make_processor(scorer)
    out = proc.process([RawMessage(None, value, "clickstream", wrong, 0)])
    assert out.reroute == [(b"u1", value)]
    # Nothing folded: the only write is the clock of the partition it was read on, whose
    # source time it moved (its watermark records follow the copy).
    assert list(out.writes) == [wrong]
    assert all(is_internal_key(k) for k in out.writes[wrong])
    with pytest.raises(RuntimeError, match="partition counts"):
        proc.process([RawMessage(b"u1", value, "routed", wrong, 0)])


def test_activity_signals_are_rate_limited_per_user(scorer) -> None:  # type: ignore[no-untyped-def]
    proc = make_processor(scorer)
    proc.fresh_interval_ms = 60_000
    p = partition_of(b"u1", PARTITIONS)
    base = 1_299_000_000_000
    msgs = [
        RawMessage(
            b"u1",
            orjson.dumps({"event_time": base + dt, "event_type": "view", "user_id": "u1"}),
            "clickstream",
            p,
            i,
        )
        for i, dt in enumerate([0, 10_000, 59_000, 61_000, 200_000])
    ]
    out = proc.process(msgs)
    fresh = [s for s in out.demand if s.trigger == "activity"]
    assert [s.window_end_ms - base for s in fresh] == [0, 61_000, 200_000]
    assert len({s.signal_id for s in fresh}) == 3


def assert_same_quality(a: dict, b: dict) -> None:  # type: ignore[type-arg]
    """Two runs' online quality per window end: the same cohorts, and figures equal up to
    ONNX Runtime's last-bit noise between differently batched runs."""
    assert set(a) == set(b) and len(a) >= 10
    for end in a:
        assert b[end]["n"] == a[end]["n"]
        assert b[end]["orders"]["mae"] == pytest.approx(a[end]["orders"]["mae"], rel=1e-6)
        assert b[end]["churn"]["roc_auc"] == pytest.approx(
            a[end]["churn"]["roc_auc"], abs=1e-9, nan_ok=True
        )


@pytest.mark.realdata
def test_uci_replay_through_the_processor_equals_offline_prediction(scorer, shared_data) -> None:  # type: ignore[no-untyped-def]
    from ingest.adapters import read_events

    frame = read_events(shared_data / "online_retail.csv.gz", "transactions").events
    store = DictStore()
    proc = make_processor(scorer, store)
    signals = run(proc, store, messages(frame), 512)
    assert_parity(frame, signals, proc)


# --- online evaluation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "shop",
    [
        "synthetic",  # 60 users buying at random over 30 weeks: a horizon of 13 fits 16 times
        "dormant_base",  # one-time buyers dormant for a year, repeat buyers who stop, browsers
    ],
)
def test_online_quality_equals_the_offline_evaluation_at_every_evaluable_window_end(
    scorer,  # type: ignore[no-untyped-def]
    shop: str,
) -> None:
    frame = synthetic(seed=5) if shop == "synthetic" else dormant_base()
    store = DictStore()
    proc = make_processor(scorer, store)
    outputs = run_outputs(proc, store, messages(frame), 64)
    outcomes = [o for out in outputs for o in out.outcomes]
    # Every prediction is settled at exactly one horizon later: dormant customers stay
    # closed (unscored) until their last prediction is settled, so none is settled late.
    assert outcomes and all(o.on_time for o in outcomes)
    assert len({o.outcome_id for o in outcomes}) == len(outcomes)
    signals = [s for out in outputs for s in out.churn if s.trigger == "window_close"]
    horizon_ms = proc.spec.horizon * proc.spec.length_ms
    closed = proc.spec.end_ms(min(c["closed_through"] for c in proc.clocks_view().values()))
    settleable = {
        (s.user_id, s.window_end_ms) for s in signals if s.window_end_ms + horizon_ms <= closed
    }
    assert {(o.user_id, o.window_end_ms) for o in outcomes} == settleable
    online = online_quality(outputs)
    assert len(online) >= 10
    assert_quality_parity(frame, online)


def test_a_restart_settles_the_predictions_of_the_run_before_it(scorer) -> None:  # type: ignore[no-untyped-def]
    """The rings are in the table: a new worker halfway (nothing in memory) settles what the
    first made, and the quality is that of one uninterrupted run (scores up to ONNX Runtime's
    last-bit noise between differently batched runs)."""
    frame = dormant_base(seed=11)
    msgs = messages(frame)
    store = DictStore()
    whole = run_outputs(make_processor(scorer, store), store, msgs, 64)
    store2 = DictStore()
    half = len(msgs) // 2
    first = run_outputs(make_processor(scorer, store2), store2, msgs[:half], 64)
    rest = run_outputs(make_processor(scorer, store2), store2, msgs[half:], 64)
    ids = {o.outcome_id for out in whole for o in out.outcomes}
    assert ids == {o.outcome_id for out in first + rest for o in out.outcomes}
    a, b = online_quality(whole), online_quality(first + rest)
    assert_same_quality(a, b)


@pytest.mark.parametrize("shop", ["synthetic", "dormant_base"])
def test_closes_done_a_few_users_a_run_give_the_signals_quality_and_table_of_closes_done_at_once(
    scorer,  # type: ignore[no-untyped-def]
    shop: str,
) -> None:
    """A window close is taken three users a run (CLOSE_SLICE is 256 in the worker: a
    partition of 25,000 users closes in ~100 slices, between batches of live events). The
    signals, the outcomes, each window end's quality and input histograms, and the table at
    the end are those of closes done in one run; the window-close signals are still offline
    prediction's."""
    frame = synthetic(seed=5) if shop == "synthetic" else dormant_base()
    msgs = messages(frame)
    store = DictStore()
    whole = run_outputs(make_processor(scorer, store), store, msgs, 64)
    sliced_store = DictStore()
    proc = make_processor(scorer, sliced_store, close_slice=3)
    sliced = run_outputs(proc, sliced_store, msgs, 64)

    # The closes were split: some runs ended with a close in progress.
    assert sum(1 for out in sliced for w in out.writes.values() for v in w.values() if b'"k"' in v)
    signals = [s for out in sliced for s in out.demand + out.churn]
    assert_same_signals([s for out in whole for s in out.demand + out.churn], signals)
    if shop == "synthetic":
        # Not on the dormant base: where a dropped customer's last (unsent) close falls
        # depends on how runs are cut, with closes done at once too (a batch of 7 or 5,000
        # events stores another closed_through for a viewer gone out of the lookback).
        assert_same_state(sliced_store, store)
    assert_parity(frame, signals, proc)
    assert sorted(o.outcome_id for out in whole for o in out.outcomes) == sorted(
        o.outcome_id for out in sliced for o in out.outcomes
    )
    a, b = online_quality(whole), online_quality(sliced)
    assert_same_quality(a, b)
    reference = scorer.manifest.input_reference
    assert input_drift_by_window(whole, reference) == input_drift_by_window(sliced, reference)


def test_a_restart_in_the_middle_of_a_close_goes_on_where_it_stopped(scorer) -> None:  # type: ignore[no-untyped-def]
    """A worker stops with a window close half done (a slice of users closed and stored, the
    rest not): the next worker, from the table alone, closes the rest, each user once, and the
    cohort's quality counts the users of both (what each slice of the first settled is stored
    in a record of its own, which the clock counts)."""
    frame = synthetic(seed=5)
    msgs = messages(frame)
    store = DictStore()
    whole = run_outputs(make_processor(scorer, store), store, msgs, 64)
    for cut in range(len(msgs) // 2, len(msgs)):
        store2 = DictStore()
        proc = make_processor(scorer, store2, close_slice=2)
        first = run_outputs(proc, store2, msgs[:cut], 64, drain=False)
        # Stopped after the cut: is a close in progress in the table?
        clocks = [v for k, v in store2.data.items() if k.startswith("\x00clock/")]
        if any(b'"k"' in v and b'"n"' in v for v in clocks):
            break
    else:
        pytest.fail("no cut left a close in progress with settled outcomes")
    rest = run_outputs(make_processor(scorer, store2, close_slice=2), store2, msgs[cut:], 64)
    signals = [s for out in first + rest for s in out.demand + out.churn]
    assert_same_signals([s for out in whole for s in out.demand + out.churn], signals)
    assert_same_state(store2, store)
    ids = [o.outcome_id for out in first + rest for o in out.outcomes]
    assert sorted(ids) == sorted(o.outcome_id for out in whole for o in out.outcomes)
    a, b = online_quality(whole), online_quality(first + rest)
    assert_same_quality(a, b)


def test_an_event_of_a_window_whose_close_has_begun_is_late_for_every_user(scorer) -> None:  # type: ignore[no-untyped-def]
    """Lateness does not depend on how far a close has got: once a window's close has begun,
    an event of it is late for a user the close has not reached yet, as for one it has."""
    frame = synthetic(seed=5)
    msgs = messages(frame)
    store = DictStore()
    proc = make_processor(scorer, store, close_slice=1)
    run_outputs(proc, store, msgs[: len(msgs) // 2], 64, drain=False)
    p, clock = next((p, c) for p, c in sorted(proc._clocks.items()) if c.closing is not None)
    assert clock.queue is not None and clock.queued < len(clock.queue)
    waiting = clock.queue[-1]
    end = proc.spec.end_ms(clock.closing)
    late = frame_of([(end - 1000, waiting, "view")])
    (key, value), *_ = to_wire_bytes(late)
    out = proc.process([RawMessage(key, value, "clickstream", p, 10**6)])
    assert [d.reason for d in out.dead_letters] == ["late"]


@pytest.mark.realdata
def test_uci_online_quality_equals_the_offline_evaluation(scorer, shared_data) -> None:  # type: ignore[no-untyped-def]
    """Online Retail replayed through the processor: the online quality of each of the 40
    window ends whose 13-week horizon the year covers is the offline evaluation's."""
    from ingest.adapters import read_events

    frame = read_events(shared_data / "online_retail.csv.gz", "transactions").events
    store = DictStore()
    outputs = run_outputs(make_processor(scorer, store), store, messages(frame), 512)
    online = online_quality(outputs)
    assert len(online) == 40
    assert_quality_parity(frame, online)


def _regular_shop(halve_buying_from: str | None) -> pd.DataFrame:
    """The demo model's shop (the generator's ``regular`` preset), 3,000 users over 12 weeks;
    from ``halve_buying_from`` on, the same users' carts turn into purchases half as often."""
    import dataclasses

    from ingest.generator import PRESETS, generate_clickstream

    shop = PRESETS["regular"]
    base = generate_clickstream(3000, "2024-01-01", 84, seed=7, config=shop)
    if halve_buying_from is None:
        return base
    halved = dataclasses.replace(shop, purchase_given_cart=shop.purchase_given_cart / 2)
    after = generate_clickstream(3000, "2024-01-01", 84, seed=7, config=halved)
    cut = int(pd.Timestamp(halve_buying_from, tz="UTC").value // 1_000_000)
    frame = pd.concat([base[base.event_time_ms < cut], after[after.event_time_ms >= cut]])
    return frame.sort_values("event_time_ms", kind="stable").reset_index(drop=True)


def test_input_drift_fires_on_buying_features_when_buying_halves_and_stays_quiet_otherwise() -> (
    None
):
    """Against the demo model's training distribution (same shop shape, other users and seed):
    the control run's window ends stay under the threshold on every feature; once buying
    halves (2024-02-12) the purchase features pass it and the browsing ones do not."""
    from pathlib import Path

    scorer = load_model(Path(MODEL_DIR).parent / "generated")
    reference = scorer.manifest.input_reference
    assert reference is not None
    runs = {}
    for name, shift in (("control", None), ("halved", "2024-02-12")):
        store = DictStore()
        outputs = run_outputs(
            make_processor(scorer, store), store, messages(_regular_shop(shift)), 512
        )
        runs[name] = input_drift_by_window(outputs, reference)
    assert len(runs["control"]) >= 10
    assert all(d["drifted"] == [] for d in runs["control"].values())
    shifted = pd.Timestamp("2024-02-19", tz="UTC").value // 1_000_000  # first week after it
    for end, d in runs["halved"].items():
        if end < shifted:
            assert d["drifted"] == [], d["window_end"]
        else:
            assert {"orders", "order_days", "cart_conversion"} <= set(d["drifted"]), d
            assert not {"n_view", "n_cart", "sessions"} & set(d["drifted"]), d


def test_the_live_input_histograms_do_not_depend_on_how_many_windows_a_run_closes(
    scorer,  # type: ignore[no-untyped-def]
) -> None:
    """A backlog closes many windows of a user in one run: each window end's histogram must
    still hold that window's vectors (it once held views of a ring that had moved on)."""
    reference = scorer.manifest.input_reference
    assert reference is not None
    frame = synthetic(seed=5)
    runs = []
    for batch in (16, 5000):
        store = DictStore()
        outputs = run_outputs(make_processor(scorer, store), store, messages(frame), batch)
        runs.append(input_drift_by_window(outputs, reference))
    assert len(runs[0]) >= 10
    assert runs[0] == runs[1]
