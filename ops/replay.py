"""Replay and tail: move events from files (or the generator) onto Kafka, and read topics back.

Owns ``clicksignals replay`` (a canonical / REES46 / Taobao / transactions file or the seeded
generator → the clickstream topic, keyed by user, in event-time order, as fast as possible or
at a chosen rate, with a progress bar), ``clicksignals tail`` (pretty-print an output topic)
and ``clicksignals generate`` (the seeded generator → a canonical CSV file, e.g. to train the
demo's model on with ``train-and-export --events``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from settings import Settings

log = logging.getLogger(__name__)


def load_wire(
    events: Path | None, fmt: str, users: int, days: int, seed: int, shop: str = "default"
) -> list[tuple[bytes, bytes]]:
    """(key, value) records in event-time order from a file, or from the generator.

    ``shop`` names the generator's preset (:data:`ingest.generator.PRESETS`).
    """
    from ingest.adapters import read_events, to_wire_bytes

    if events is not None:
        result = read_events(events, fmt)
        log.info("%s", result.summary.describe())
        return to_wire_bytes(result.events)
    from ingest.generator import PRESETS, generate_clickstream

    frame = generate_clickstream(n_users=users, days=days, seed=seed, config=PRESETS[shop])
    return to_wire_bytes(frame)


async def produce(
    settings: Settings,
    records: Sequence[tuple[bytes | None, bytes]],
    *,
    topic: str | None = None,
    rate: float | None = None,
    progress: bool = True,
    on_sent: Callable[[int], None] | None = None,
) -> float:
    """Send ``records`` to ``topic`` (default: clickstream); returns seconds taken.

    ``on_sent(n)`` is called with the number of records acknowledged so far, after each
    acknowledged chunk (the demo's live view draws its own progress bar from it).
    """
    from tqdm import tqdm

    producer = AIOKafkaProducer(
        **settings.kafka.client_kwargs(),
        linger_ms=20,
        max_batch_size=256 * 1024,
        acks="all",
        enable_idempotence=True,
    )
    await producer.start()
    started = time.perf_counter()
    bar = tqdm(total=len(records), unit="ev", disable=not progress, file=sys.stderr)
    try:
        pending = []
        acked = 0
        # Acknowledgements are awaited per chunk; at a set rate the chunk is about a second of
        # traffic, so progress (and back-pressure) follows the rate rather than 5000 records.
        chunk = 5000 if not rate else max(1, min(5000, int(rate)))
        for i, (key, value) in enumerate(records):
            if rate:
                due = started + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            pending.append(
                await producer.send(topic or settings.topics.clickstream, value, key=key)
            )
            if len(pending) >= chunk:
                await asyncio.gather(*pending)
                bar.update(len(pending))
                acked += len(pending)
                pending.clear()
                if on_sent is not None:
                    on_sent(acked)
        await asyncio.gather(*pending)
        bar.update(len(pending))
        await producer.flush()
        if on_sent is not None:
            on_sent(acked + len(pending))
    finally:
        bar.close()
        await producer.stop()
    return time.perf_counter() - started


async def consume(
    settings: Settings,
    topic: str,
    *,
    idle_s: float = 5.0,
    limit: int | None = None,
    from_beginning: bool = True,
) -> list[dict[str, Any]]:
    """Read ``topic`` until no message arrived for ``idle_s`` (or ``limit`` were read)."""
    consumer = AIOKafkaConsumer(
        topic,
        **settings.kafka.client_kwargs(),
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    out: list[dict[str, Any]] = []
    try:
        while limit is None or len(out) < limit:
            batch = await consumer.getmany(timeout_ms=int(idle_s * 1000), max_records=5000)
            if not batch:
                break
            for messages in batch.values():
                for m in messages:
                    try:
                        out.append(orjson.loads(m.value))
                    except orjson.JSONDecodeError:
                        out.append({"_raw": m.value.decode("utf-8", "replace")})
    finally:
        await consumer.stop()
    return out


def replay_command(args: argparse.Namespace, settings: Settings) -> int:
    records = load_wire(args.events, args.format, args.users, args.days, args.seed, args.shop)
    seconds = asyncio.run(produce(settings, records, rate=args.rate, progress=not args.quiet))
    rate = len(records) / seconds if seconds else float("inf")
    print(
        f"replayed {len(records)} events to {settings.topics.clickstream} "
        f"in {seconds:.1f}s ({rate:,.0f} events/s)"
    )
    return 0


def generate_command(args: argparse.Namespace, settings: Settings) -> int:
    """Write the seeded generator's events as a canonical CSV (``event_time_ms`` in ms)."""
    from ingest.generator import PRESETS, generate_clickstream

    frame = generate_clickstream(
        n_users=args.users,
        start=args.start,
        days=args.days,
        seed=args.seed,
        config=PRESETS[args.shop],
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False)
    print(
        f"wrote {len(frame):,} events of {frame['user_id'].nunique():,} users "
        f"(shop {args.shop!r}, seed {args.seed}) to {args.out}"
    )
    return 0


def tail_command(args: argparse.Namespace, settings: Settings) -> int:
    topic = {
        "demand": settings.topics.demand,
        "churn": settings.topics.churn,
        "dlq": settings.topics.dead_letter,
        "clickstream": settings.topics.clickstream,
    }.get(args.topic, args.topic)
    records = asyncio.run(consume(settings, topic, idle_s=args.idle, limit=args.limit))
    for record in records:
        print(orjson.dumps(record, option=orjson.OPT_INDENT_2 if args.pretty else 0).decode())
    return 0
