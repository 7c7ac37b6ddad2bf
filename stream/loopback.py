"""Kafka's re-keying topic in one process: the processor run over a finite input, no broker.

Owns :func:`run_in_process`, for the demo's offline twin, benchmarks and unit tests. The worker
sends re-keyed copies and watermark records to the re-keying topic and reads them back on
their partitions; here they are queued per partition and read at the start of the next batch,
as a worker whose fetch brings them in behind the batch that sent them would. After each batch
the runtime's timer is played: :meth:`~stream.processor.Processor.heartbeat` with the sources
whose input is used up declared idle (in the worker: nothing to read for the idle timeout).
After the input, heartbeats and the queue are played until nothing changes, so every window
the whole input's event time passed is closed, as in a worker left running.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from stream.processor import BatchOutput, Processor, RawMessage
from stream.publish import partition_of

MAX_DRAIN_ROUNDS = 100_000
"""Bound on the heartbeat rounds after the input (each closes at most
:data:`~stream.processor.MAX_CLOSE_REQUESTS_PER_RUN` requests' worth of windows, and a slice of
:data:`~stream.processor.CLOSE_SLICE` users; rounds stop when nothing changes and no close is in
progress)."""


def run_in_process(
    proc: Processor,
    messages: Sequence[RawMessage],
    batch_size: int,
    on_output: Callable[[BatchOutput], None],
    *,
    drain: bool = True,
) -> None:
    """Process ``messages`` in batches of ``batch_size`` with the re-keying topic looped back.

    ``on_output`` gets every batch's and heartbeat's output, in order (apply its writes to the
    store there). ``messages`` are clickstream messages, partitions and offsets as Kafka gave.
    ``drain=False``: stop after the input's last batch and its heartbeat, as a worker that
    stops there (what the re-keying topic still holds is not read).
    """
    routed_topic = _routed_topic(proc)
    held = range(proc.partitions)
    remaining = [0] * proc.partitions
    for m in messages:
        remaining[m.partition] += 1
    queued: list[list[RawMessage]] = [[] for _ in held]
    offsets = [0] * proc.partitions

    def enqueue(out: BatchOutput) -> None:
        on_output(out)
        copies = zip(out.reroute, out.reroute_origins, strict=True)
        for (key, value), origin in copies:
            p = partition_of(key, proc.partitions)
            queued[p].append(RawMessage(key, value, routed_topic, p, offsets[p], origin))
            offsets[p] += 1
        for key, value in out.watermarks:
            p = partition_of(key, proc.partitions)
            queued[p].append(RawMessage(key, value, routed_topic, p, offsets[p]))
            offsets[p] += 1

    def take_queued() -> list[RawMessage]:
        batch = [m for q in queued for m in q]
        for q in queued:
            q.clear()
        return batch

    def idle() -> list[int]:
        return [p for p in held if remaining[p] == 0]

    for lo in range(0, len(messages), batch_size):
        part = list(messages[lo : lo + batch_size])
        for m in part:
            remaining[m.partition] -= 1
        enqueue(proc.process(take_queued() + part))
        enqueue(proc.heartbeat(held, idle()))
    if not drain:
        return
    for _ in range(MAX_DRAIN_ROUNDS):
        before = proc.clocks_view()
        pending = take_queued()
        if pending:
            enqueue(proc.process(pending))
        enqueue(proc.heartbeat(held, idle()))
        if proc.clocks_view() == before and not proc.closes_pending():
            return


def exchange_watermarks(proc: Processor, idle: Iterable[int] = ()) -> BatchOutput:
    """One heartbeat of a processor that holds every partition, read back at once: what the
    worker's announcement timer and its re-keying topic do between two batches. Returns the
    heartbeat's outputs and the window closes the announcements allowed."""
    routed_topic = _routed_topic(proc)
    out = proc.heartbeat(range(proc.partitions), idle)
    offsets = [0] * proc.partitions
    routed = []
    for key, value in out.watermarks:
        p = partition_of(key, proc.partitions)
        routed.append(RawMessage(key, value, routed_topic, p, offsets[p]))
        offsets[p] += 1
    out.merge(proc.process(routed))
    return out


def _routed_topic(proc: Processor) -> str:
    if not proc.routed_topics:
        raise ValueError("the processor reads no re-keying topic (routed_topics is empty)")
    return min(proc.routed_topics)
