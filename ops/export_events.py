"""Retraining from the stream: the clickstream topic as a canonical events file.

Owns ``clicksignals export-events``: read the clickstream topic from its beginning up to the
end offsets it has when the command starts, validate every record with the worker's own rules
(:func:`features.validation.validate`, the worker's policy from settings), and write the valid
events as a canonical file: CSV (``.csv``, ``.csv.gz``) or Parquet (``.parquet``, through
DuckDB). Records the worker would dead-letter are counted by reason and left out, so the file
holds what the worker folded into its windows. Then::

    clicksignals export-events --out var/export/clickstream.parquet
    train-and-export --events var/export/clickstream.parquet --engine duckdb ...

Memory is bounded by a chunk of events (they are written as they come: CSV appended, Parquet
through a DuckDB table on disk), not by the topic. The re-keying topic is not read: its records
are copies of clickstream records.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from features.events import ClickEvent
from features.validation import Invalid, ValidationPolicy, validate
from ops.offsets import partition_ends
from settings import Settings

log = logging.getLogger(__name__)

CHUNK_EVENTS = 100_000


@dataclass
class ExportSummary:
    records: int = 0
    events: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    """Dead-letter reason -> records left out for it."""
    seconds: float = 0.0

    def describe(self) -> str:
        refused = ", ".join(f"{r} {n:,}" for r, n in sorted(self.refused.items())) or "none"
        return (
            f"{self.records:,} records read, {self.events:,} events written, refused: "
            f"{refused} ({self.seconds:.1f} s)"
        )


async def read_clickstream(
    settings: Settings,
    on_chunk: Callable[[list[ClickEvent]], None],
    *,
    now_ms: int | None = None,
    chunk: int = CHUNK_EVENTS,
) -> ExportSummary:
    """Every record of the clickstream topic up to its end offsets at the start, validated;
    ``on_chunk`` gets the valid events in chunks (per partition in offset order)."""
    summary = ExportSummary()
    started = time.monotonic()
    policy = ValidationPolicy.from_settings(settings.worker)
    topic = settings.topics.clickstream
    consumer = AIOKafkaConsumer(
        **settings.kafka.client_kwargs(), group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        ends = await partition_ends(consumer, [topic])
        if not ends:
            raise RuntimeError(f"topic {topic!r} does not exist")
        tps = sorted(ends, key=lambda tp: tp.partition)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        pending: list[ClickEvent] = []
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=500, max_records=10_000)
            for tp, messages in batch.items():
                for m in messages:
                    if m.offset >= ends[tp]:
                        continue  # written after the start: the next export's
                    summary.records += 1
                    now = now_ms if now_ms is not None else int(time.time() * 1000)
                    result = (
                        Invalid("null_value", None, "a tombstone")
                        if m.value is None
                        else validate(m.value, now_ms=now, policy=policy)
                    )
                    if isinstance(result, Invalid):
                        summary.refused[result.reason] = summary.refused.get(result.reason, 0) + 1
                        continue
                    pending.append(result)
                    if len(pending) >= chunk:
                        on_chunk(pending)
                        summary.events += len(pending)
                        pending = []
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        if pending:
            on_chunk(pending)
            summary.events += len(pending)
    finally:
        await consumer.stop()
    summary.seconds = time.monotonic() - started
    return summary


class CanonicalWriter:
    """Canonical events to ``path`` chunk by chunk: CSV appended, Parquet through DuckDB."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.parquet = path.suffix == ".parquet"
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._con: Any = None
        self._first = True
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.parquet:
            import duckdb

            self._tmp = tempfile.TemporaryDirectory(prefix="clicksignals-export-")
            self._con = duckdb.connect(str(Path(self._tmp.name) / "export.duckdb"))
        elif path.exists():
            path.unlink()

    def write(self, events: list[ClickEvent]) -> None:
        from ingest.adapters import events_to_frame

        frame = events_to_frame(events)
        if self.parquet:
            con = self._con
            assert con is not None
            con.register("chunk", frame)
            if self._first:
                con.execute("CREATE TABLE events AS SELECT * FROM chunk")
            else:
                con.execute("INSERT INTO events SELECT * FROM chunk")
            con.unregister("chunk")
        else:
            frame.to_csv(
                self.path, index=False, mode="w" if self._first else "a", header=self._first
            )
        self._first = False

    def close(self) -> None:
        """Finish the file (Parquet: ordered by event time, as canonical files are)."""
        if self.parquet:
            con = self._con
            assert con is not None
            if self._first:
                from ingest.adapters import empty_events

                con.register("chunk", empty_events())
                con.execute("CREATE TABLE events AS SELECT * FROM chunk")
            target = str(self.path).replace("'", "''")
            con.execute(
                f"COPY (SELECT * FROM events ORDER BY event_time_ms, user_id) TO '{target}' "
                "(FORMAT parquet)"
            )
            con.close()
            assert self._tmp is not None
            self._tmp.cleanup()
        elif self._first:
            from ingest.adapters import empty_events

            empty_events().to_csv(self.path, index=False)


def export_events(settings: Settings, out: Path, now_ms: int | None = None) -> ExportSummary:
    writer = CanonicalWriter(out)
    try:
        summary = asyncio.run(read_clickstream(settings, writer.write, now_ms=now_ms))
    finally:
        writer.close()
    return summary


def export_command(args: argparse.Namespace, settings: Settings) -> int:
    summary = export_events(settings, args.out)
    log.info("%s", summary.describe())
    print(f"exported {settings.topics.clickstream} to {args.out}: {summary.describe()}")
    return 0


__all__ = ["CanonicalWriter", "ExportSummary", "export_command", "export_events"]
