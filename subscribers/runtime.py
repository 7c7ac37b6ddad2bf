"""Faust plumbing shared by the subscriber apps (the logic lives in the pure modules).

Both apps: raw-bytes topics and a raw-bytes table (the pure modules do their own JSON), their own
app id (``settings.bidder_app_id`` / ``alerter_app_id``: consumer group and changelog prefix),
their own web port on ``settings.worker.web_host``, and data under
``settings.worker.data_dir / <name>``.

Micro-batches are handled like the worker's: outputs are sent, Kafka's acknowledgement is
awaited, and only then is the table written -- state that exists implies its outputs were
delivered. :class:`UserBatch` is that loop's bookkeeping, shared by both apps: it parses each
record (a refused one is counted and logged, never raised), reads each user's state once per
batch, keeps the batch's new states, awaits the sends and writes the states last.
:class:`TableFocus` makes the event of the key's partition current before each table read or
write, because Faust files a key under the *current event's* partition.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, Protocol, TypeVar

import faust
import orjson
from faust.types import EventT

from settings import Settings
from stream import faust_runtime
from stream.faust_app import RAW, faust_app
from subscribers.records import Rejected

log = logging.getLogger(__name__)

_S = TypeVar("_S")
_T = TypeVar("_T")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def make_app(settings: Settings, *, app_id: str, web_port: int, name: str) -> faust.App:
    """A Faust app for one subscriber (:func:`stream.faust_app.faust_app`, data under
    ``settings.worker.data_dir / name``); a TLS/SASL setting that cannot make a client ends the
    process with the reason."""
    app = config_or_exit(
        lambda s: faust_app(s, app_id=app_id, web_port=web_port, datadir=s.worker.data_dir / name),
        settings,
        name,
    )
    return app


def config_or_exit(build: Callable[[_S], _T], source: _S, what: str) -> _T:
    """``build(source)``, or end the process with the reason (bad subscriber settings)."""
    try:
        return build(source)
    except (ValueError, TypeError) as exc:
        log.critical("refusing to start the %s: %s", what, exc)
        print(f"clicksignals {what}: refusing to start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


class TableFocus:
    """Make an event current before touching a table key (see the module doc)."""

    def __init__(self, table: Any) -> None:
        self.table = table

    @staticmethod
    def focus(event: EventT[Any]) -> None:
        faust_runtime.set_current_event(event)

    def get(self, event: EventT[Any], key: str) -> bytes | None:
        self.focus(event)
        value: bytes | None = self.table.get(key)
        return value

    def set(self, event: EventT[Any], key: str, value: bytes) -> None:
        self.focus(event)
        self.table[key] = value


class _Signal(Protocol):
    @property
    def user_id(self) -> str: ...


class _State(Protocol):
    def to_json(self) -> bytes: ...


_SignalT = TypeVar("_SignalT", bound=_Signal)
_StateT = TypeVar("_StateT", bound=_State)


class UserBatch(Generic[_SignalT, _StateT]):
    """One micro-batch of a subscriber: signals in, per-user state, outputs, state out."""

    def __init__(
        self,
        name: str,
        table: TableFocus,
        parse: Callable[[Any], _SignalT | Rejected],
        decode_state: Callable[[bytes], _StateT],
        counters: Counter[str],
    ) -> None:
        self.name = name
        self.table = table
        self.parse = parse
        self.decode_state = decode_state
        self.counters = counters
        self.states: dict[str, _StateT] = {}
        self._owners: dict[str, EventT[Any]] = {}
        self._sent: list[Any] = []

    def signals(
        self, events: Iterable[EventT[Any]]
    ) -> Iterator[tuple[EventT[Any], _SignalT, _StateT | None]]:
        """(event, signal, the user's state so far) for every record that parses."""
        for event in events:
            signal = self.parse(event.message.value)
            if isinstance(signal, Rejected):
                self.counters["rejected"] += 1
                log.warning(
                    "%s: refused record %s:%d@%d: %s (%s)",
                    self.name,
                    event.message.topic,
                    event.message.partition,
                    event.message.offset,
                    signal.reason,
                    signal.detail,
                )
                continue
            user = signal.user_id
            held = self.states.get(user)
            if held is None:
                raw = self.table.get(event, user)
                held = self.decode_state(raw) if raw is not None else None
            yield event, signal, held

    def keep(self, event: EventT[Any], user: str, state: _StateT) -> None:
        """``state`` is the user's new state, written at :meth:`write_states`."""
        self.states[user], self._owners[user] = state, event

    async def send(self, topic: Any, user: str, record: dict[str, Any]) -> None:
        """Send ``record`` keyed by user; :meth:`delivered` awaits Kafka's acknowledgement."""
        self._sent.append(await topic.send(key=user.encode(), value=orjson.dumps(record)))

    async def delivered(self) -> int:
        """Until Kafka acknowledged every record sent; how many there were."""
        await asyncio.gather(*(f for f in self._sent if inspect.isawaitable(f)))
        return len(self._sent)

    def write_states(self) -> None:
        for user, state in self.states.items():
            self.table.set(self._owners[user], user, state.to_json())


__all__ = ["RAW", "TableFocus", "UserBatch", "config_or_exit", "make_app", "now_ms"]
