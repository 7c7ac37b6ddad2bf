"""The feature step on its own: per-(user, window) cells as Parquet, written here or by any SQL
engine, and read back by ``train-and-export --cells``.

Owns :data:`CELL_COLUMNS` (the cells' schema: one row per user and window with an event), the
one portable SQL statement that computes them from canonical events (:func:`cells_sql`,
standard SQL: a GROUP BY with COUNT(DISTINCT ...), no engine's dialect), the embedded default
that runs it with DuckDB (``python -m training.cells``, :func:`write_cells`), and
:func:`open_cells`, which gives training the same :class:`~training.outofcore.EventStore`
interface over cells that the DuckDB engine gives over events.

Why cells: they are what training needs of events (users x windows, not events), they are
additive per user, and they are what a distributed engine a shop already runs (Spark, Trino,
BigQuery) computes from event tables far beyond one machine, writing Parquet shards. Training
then reads the shards, and its memory is bounded by users (:mod:`training.shards`).

Nothing here defines a feature: the cells are :data:`features.windows.BASE_FEATURES` and the
cell's first and last purchase time, and the tensor is made from them by
:func:`features.batch.tensor_from_base`, as on every other path. The user order is the events
path's (first event, then id), from each cell's ``first_event_ms``, so the same shop gives the
same tensor from events or from its cells (tested).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from features.events import EVENT_TYPES, PURCHASE
from features.windows import BASE_FEATURES, COUNT_FEATURES, DAY_MS, WindowSpec
from ingest.adapters import IngestError, IngestSummary
from training.outofcore import (
    EngineConfig,
    EventStore,
    WindowCells,
    connect,
    open_events,
    resolve_paths,
    sql_string,
)

log = logging.getLogger(__name__)

KEY_COLUMNS: Final = ("user_id", "window_end_ms", "first_event_ms")
TIME_COLUMNS: Final = ("first_purchase_ms", "last_purchase_ms")
CELL_COLUMNS: Final[tuple[str, ...]] = (*KEY_COLUMNS, *BASE_FEATURES, *TIME_COLUMNS)
"""A cell: ``user_id``; ``window_end_ms``, the end of its window on the training grid
(boundaries at the cutoff plus whole windows); ``first_event_ms``, its earliest event; the
base aggregates, named as :data:`features.windows.BASE_FEATURES`; its earliest and latest
purchase time (NULL without a purchase). Only windows with an event have a row."""

_EVENTS_VIEW: Final = "canonical_events"

# The portable statement. Input: a relation of valid canonical events with columns user_id,
# event_time_ms (BIGINT, UTC ms), event_type, quantity, price (NULL when unknown), product_id,
# category, session_id, order_id. {events}, {origin_ms}, {window_ms}, {last} are filled in.
_CELLS_SQL: Final = """SELECT
  user_id,
  CAST({origin_ms} + (w + 1) * {window_ms} AS BIGINT) AS window_end_ms,
  MIN(event_time_ms) AS first_event_ms,
{counts},
  -- orders: distinct order ids, else distinct sessions, else each purchase line on its own
  CAST(COUNT(DISTINCT CASE WHEN {p} THEN order_id END)
    + COUNT(DISTINCT CASE WHEN {p} AND order_id IS NULL THEN session_id END)
    + COUNT(CASE WHEN {p} AND order_id IS NULL AND session_id IS NULL THEN 1 END) AS DOUBLE)
    AS orders,
  CAST(COALESCE(SUM(CASE WHEN {p} THEN quantity END), 0) AS DOUBLE) AS units,
  -- an unknown price is worth 0
  CAST(COALESCE(SUM(CASE WHEN {p} THEN COALESCE(price * quantity, 0.0) END), 0.0) AS DOUBLE)
    AS spend,
  CAST(COUNT(DISTINCT product_id) AS DOUBLE) AS distinct_products,
  CAST(COUNT(DISTINCT category) AS DOUBLE) AS distinct_categories,
  CAST(COUNT(DISTINCT session_id) AS DOUBLE) AS sessions,
  -- order days: distinct UTC days with a purchase
  CAST(COUNT(DISTINCT CASE WHEN {p} THEN FLOOR(event_time_ms / {day_ms}.0) END) AS DOUBLE)
    AS order_days,
  MIN(CASE WHEN {p} THEN event_time_ms END) AS first_purchase_ms,
  MAX(CASE WHEN {p} THEN event_time_ms END) AS last_purchase_ms
FROM (
  SELECT *, CAST(FLOOR((event_time_ms - {origin_ms}) / {window_ms}.0) AS BIGINT) AS w
  FROM {events}
) e
WHERE w <= {last}
GROUP BY user_id, w"""


def cells_sql(spec: WindowSpec, last: int, events: str = _EVENTS_VIEW) -> str:
    """The statement computing the cells of windows through ``last`` (a global window index on
    ``spec``'s grid) from the canonical events relation ``events``."""
    counts = ",\n".join(
        f"  CAST(COUNT(CASE WHEN event_type = {sql_string(t)} THEN 1 END) AS DOUBLE) AS {name}"
        for t, name in zip(EVENT_TYPES, COUNT_FEATURES, strict=True)
    )
    return _CELLS_SQL.format(
        events=events,
        origin_ms=spec.origin_ms,
        window_ms=spec.length_ms,
        last=last,
        counts=counts,
        p=f"event_type = {sql_string(PURCHASE)}",
        day_ms=DAY_MS,
    )


@dataclass(frozen=True)
class CellsWritten:
    directory: Path
    files: int
    cells: int
    users: int
    last_window_end_ms: int


def write_cells(
    store: EventStore, spec: WindowSpec, directory: Path, until_ms: int | None = None
) -> CellsWritten:
    """Run :func:`cells_sql` on the store's valid events for every window that ends by
    ``until_ms`` (default: every window the events cover whole; a window cut by the data's
    end would pass for a quiet one) and write the cells as Parquet shards (one per DuckDB
    thread) into ``directory``."""
    last = spec.index((store.stop_ms + 1) if until_ms is None else until_ms) - 1
    types = " ".join(f"WHEN {code} THEN {sql_string(t)}" for code, t in enumerate(EVENT_TYPES))
    store.con.execute(
        f"""CREATE OR REPLACE VIEW {_EVENTS_VIEW} AS
        SELECT user_id, t AS event_time_ms, CASE et {types} END AS event_type, q AS quantity,
          price, product_id, category, session_id, order_id
        FROM events WHERE reason IS NULL"""
    )
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.parquet"):
        old.unlink()  # shards of an earlier run would be read with these
    store.con.execute(
        f"COPY ({cells_sql(spec, last)}) TO {sql_string(str(directory))} "
        "(FORMAT parquet, PER_THREAD_OUTPUT true, OVERWRITE_OR_IGNORE true)"
    )
    files = sorted(directory.glob("*.parquet"))
    got = store.con.execute(
        "SELECT count(*), count(DISTINCT user_id) FROM read_parquet("
        + sql_string(str(directory / "*.parquet"))
        + ")"
    ).fetchall()[0]
    return CellsWritten(directory, len(files), int(got[0]), int(got[1]), spec.end_ms(last))


class CellStore(EventStore):
    """Cells read from Parquet, standing in for events: training reads its window tensor from
    them (:meth:`window_cells`) exactly as from the DuckDB engine's own cells."""

    def window_cells(self, spec: WindowSpec, first: int, last: int) -> WindowCells:
        n_windows = last - first + 1
        if n_windows < 1:
            raise ValueError(f"empty window range {first}..{last}")
        off = self.con.execute(
            f"SELECT count(*), min(window_end_ms) FROM given_cells "
            f"WHERE (window_end_ms - {spec.origin_ms}) % {spec.length_ms} <> 0"
        ).fetchall()[0]
        if int(off[0]):
            raise IngestError(
                f"{self.summary.path}: {int(off[0])} cells end off this run's window grid "
                f"(windows of {spec.length_ms / DAY_MS:g}d laid on the cutoff), the first at "
                f"{int(off[1])} ms: write the cells with the same --window and --cutoff"
            )
        # Exact: every end is on the grid (checked above).
        col = f"((window_end_ms - {spec.origin_ms}) // {spec.length_ms} - 1 - {first})"
        self.con.execute(
            f"""CREATE OR REPLACE TABLE coded_cells AS
            SELECT u, {col} AS col, g.* EXCLUDE (user_id)
            FROM given_cells g JOIN users USING (user_id)
            WHERE {col} BETWEEN 0 AND {n_windows - 1} ORDER BY u, col"""
        )
        counts = ", ".join(f"{name} AS n{code}" for code, name in enumerate(COUNT_FEATURES))
        self.con.execute(
            f"""CREATE OR REPLACE TABLE cells_plain AS
            SELECT u, col, {counts}, orders AS anonymous_orders, units, spend,
              first_purchase_ms::DOUBLE AS first_purchase_ms,
              last_purchase_ms::DOUBLE AS last_purchase_ms
            FROM coded_cells ORDER BY u, col"""
        )
        # The tables of distinct counts (EventStore._cells, _DISTINCT's order): the cells give
        # them whole, and orders is whole in anonymous_orders already (d0, d1 stay empty).
        for i, name in enumerate(
            (None, None, "distinct_products", "distinct_categories", "sessions", "order_days")
        ):
            self.con.execute(
                f"""CREATE OR REPLACE TABLE cells_d{i} AS
                SELECT u, col, {name or "0"}::DOUBLE AS n FROM coded_cells
                WHERE {"false" if name is None else f"{name} > 0"} ORDER BY u, col"""
            )
        self.con.execute("DROP TABLE coded_cells")
        got = self.con.execute("SELECT count(*) FROM cells_plain").fetchall()[0]
        return WindowCells(self, spec, first, n_windows, int(got[0]))


def open_cells(patterns: Sequence[str | Path], config: EngineConfig | None = None) -> CellStore:
    """Read cell shards (Parquet, :data:`CELL_COLUMNS`) into a DuckDB database on disk; a
    missing column, a NULL key or a user's window given twice is refused, naming it."""
    import duckdb

    cfg = config or EngineConfig()
    files = resolve_paths(patterns)
    if not files:
        raise IngestError("no cell files given")
    where = ", ".join(str(f) for f in files)
    started = time.perf_counter()
    workdir, con = connect(cfg, "cells")
    try:
        listed = "[" + ", ".join(sql_string(str(f)) for f in files) + "]"
        try:
            con.execute(f"CREATE TABLE given_cells AS SELECT * FROM read_parquet({listed})")
        except duckdb.Error as exc:
            raise IngestError(f"{where}: cannot read as Parquet cells: {exc}") from exc
        have = [r[0] for r in con.execute("DESCRIBE given_cells").fetchall()]
        missing = [c for c in CELL_COLUMNS if c not in have]
        if missing:
            raise IngestError(
                f"{where}: not cells: missing {', '.join(missing)} "
                f"(found {', '.join(have)}); cells have {', '.join(CELL_COLUMNS)}"
            )
        null_keys = " OR ".join(f"{c} IS NULL" for c in KEY_COLUMNS)
        bad = con.execute(f"SELECT count(*) FROM given_cells WHERE {null_keys}").fetchall()[0]
        if int(bad[0]):
            raise IngestError(f"{where}: {int(bad[0])} cells without {', '.join(KEY_COLUMNS)}")
        twice = con.execute(
            "SELECT user_id, window_end_ms FROM given_cells GROUP BY ALL HAVING count(*) > 1 "
            "LIMIT 1"
        ).fetchall()
        if twice:
            raise IngestError(
                f"{where}: user {twice[0][0]}'s window ending at {twice[0][1]} ms is given "
                "more than once (cells are one row per user and window)"
            )
        con.execute(
            "CREATE TABLE users AS SELECT user_id, "
            "(row_number() OVER (ORDER BY min(first_event_ms), user_id) - 1)::BIGINT AS u "
            "FROM given_cells GROUP BY user_id"
        )
        sums = ", ".join(f"sum({name})" for name in COUNT_FEATURES)
        row = con.execute(
            f"SELECT count(*), min(first_event_ms), max(window_end_ms), {sums} FROM given_cells"
        ).fetchall()[0]
        users = con.execute("SELECT count(*) FROM users").fetchall()[0]
    except BaseException:
        with contextlib.suppress(Exception):
            con.close()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    type_counts = {t: int(n or 0) for t, n in zip(EVENT_TYPES, row[3:], strict=True)}
    events = sum(type_counts.values())
    summary = IngestSummary(path=where, format="cells", rows_read=int(row[0]), events_out=events)
    summary.seconds = time.perf_counter() - started
    store = CellStore(
        con=con,
        workdir=workdir,
        summary=summary,
        rows=events,
        users=int(users[0]),
        start_ms=int(row[1]) if row[0] else 0,
        # The cells end with their last window: a run on them sees its end as the data's end.
        stop_ms=int(row[2]) - 1 if row[0] else 0,
        event_types={t: n for t, n in type_counts.items() if n},
    )
    log.info(
        "duckdb: %d cells (%d events) of %d users read in %.1fs",
        int(row[0]),
        events,
        store.users,
        summary.seconds,
    )
    return store


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.cells``: canonical event files -> cell shards, with DuckDB."""
    from training.cli import (
        OFFLINE_MIN_EVENT_TIME_MS,
        add_duckdb_arguments,
        parse_duration_ms,
        parse_instant_ms,
    )

    p = argparse.ArgumentParser(
        prog="python -m training.cells",
        description="The feature step of train-and-export on its own: canonical event files "
        "to per-(user, window) cells as Parquet shards, read back by train-and-export --cells. "
        "Beyond one machine, run the statement printed by --print-sql on Spark or Trino.",
    )
    p.add_argument("--events", help="canonical CSV (.gz) or Parquet files, a glob allowed")
    p.add_argument("--window", type=parse_duration_ms, default="7d")
    p.add_argument(
        "--cutoff",
        type=parse_instant_ms,
        required=True,
        help="the training cutoff: windows are laid on it (train with the same --window/--cutoff)",
    )
    p.add_argument(
        "--until",
        type=parse_instant_ms,
        help="cells of the windows that end by this instant (default: the last window the "
        "events cover whole); required with --print-sql",
    )
    p.add_argument("--out", type=Path, help="directory for the Parquet shards")
    add_duckdb_arguments(p)
    p.add_argument(
        "--print-sql",
        action="store_true",
        help="print the portable statement (input relation canonical_events) and exit",
    )
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    spec = WindowSpec(args.window, args.cutoff, 1, 1, 1)
    if args.print_sql:
        if args.until is None:
            p.error("--print-sql needs --until: the statement keeps whole windows only")
        sys.stdout.write(cells_sql(spec, spec.index(args.until) - 1) + ";\n")
        return 0
    if args.events is None or args.out is None:
        p.error("--events and --out are required (or --print-sql)")
    try:
        config = EngineConfig(memory_limit=args.duckdb_memory, temp_dir=args.duckdb_temp_dir)
        with open_events(
            [args.events], min_event_time_ms=OFFLINE_MIN_EVENT_TIME_MS, config=config
        ) as store:
            log.info("%s", store.summary.describe())
            if not store.rows:
                raise IngestError("no valid events to make cells of")
            written = write_cells(store, spec, args.out, args.until)
    except IngestError as exc:
        print(f"training.cells: error: {exc}", file=sys.stderr)
        return 2
    log.info(
        "%d cells of %d users through the window ending %d ms, in %d Parquet files under %s",
        written.cells,
        written.users,
        written.last_window_end_ms,
        written.files,
        written.directory,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
