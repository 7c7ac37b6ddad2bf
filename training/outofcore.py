"""Out-of-core feature building: canonical event files of any size -> the window tensor.

Owns the DuckDB engine of ``train-and-export --engine duckdb``: reading canonical event files
(CSV, gzipped CSV or Parquet; several files or globs) into a DuckDB database on disk, applying
the canonical reader's validation rules in SQL (:func:`open_events`), and computing the
per-(user, window) base aggregates of :data:`features.windows.BASE_FEATURES` plus each cell's
first and last purchase time in SQL (:meth:`EventStore.window_tensor`). Everything after the
base aggregates is :func:`features.batch.tensor_from_base`, the function
:func:`features.batch.build_window_tensor` ends with: nothing here defines a feature.

Why DuckDB: its hash aggregates (GROUP BY, DISTINCT) spill to disk under a memory limit, it
reads CSV globs and Parquet natively, and the SQL ports to Spark or Trino. Memory is bounded by
what the result needs (users x windows: the dense tensor itself) and DuckDB's ``memory_limit``,
not by the number of events: the events live in a database file in a temporary directory, never
in Python. The distinct counts are one DISTINCT + GROUP BY query per key rather than
COUNT(DISTINCT) in one aggregate, which ran out of memory instead of spilling. DuckDB still
needs a floor of working memory that grows with its threads: 32 MB with 2 threads works (and
spills) on 1.2M events, 24 MB with 4 threads failed; a limit below the floor is an
out-of-memory error, never a wrong tensor.

Validation mirrors :func:`ingest.adapters.read_canonical` (CSV branch), reason for reason and
in the same order (the first failing rule names the row); :data:`RULE_DIFFERENCES` lists,
precisely, where the SQL cannot or does not follow pandas. Canonical JSONL and the other
source formats (REES46, Taobao, order lines) stay on the pandas path.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import gzip
import io
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import numpy as np
import pandas as pd

from features.batch import WindowTensor, tensor_from_base
from features.events import EVENT_TYPE_CODES, EVENT_TYPES, PURCHASE
from features.validation import (
    MIN_EVENT_TIME_MS_DEFAULT,
    NUMBER_TIME_MIN_MS,
    PLAIN_DATE_PATTERN,
)
from features.windows import BASE_FEATURES, DAY_MS, N_BASE, WindowSpec
from ingest.adapters import (
    FIRST_BAD_LISTED,
    MAX_QUANTITY,
    REQUIRED_COLUMNS,
    IngestError,
    IngestSummary,
)

log = logging.getLogger(__name__)

PARQUET_SUFFIXES: Final = (".parquet", ".pq")
DEFAULT_MEMORY_LIMIT: Final = "2GB"

RULE_DIFFERENCES: Final[tuple[str, ...]] = (
    "Line numbers of rows refused by a value rule are counted from the header, the refused "
    "lines (malformed, unreadable) included, but a blank line is skipped by DuckDB's reader "
    "without being counted, so a row below blank lines is numbered low by their count; pandas "
    "counts physical lines. Malformed and unreadable lines carry their physical line number. "
    "Parquet rows are numbered from 1. With several files, a listed row names its file.",
    "Blank lines (no character at all) are skipped by DuckDB's reader and not reported; pandas "
    "reports them as excluded:blank_line. A line of empty fields (',,,') is blank_line on "
    "both.",
    "A line that is not UTF-8 is refused as unreadable_line (DuckDB's reader); pandas reads "
    "it with U+FFFD replacement and judges the row by its fields. An unterminated quote "
    "refuses the file on both (IngestError).",
    "Whitespace stripped from fields is ASCII (space, tab, CR, LF, VT, FF); pandas' str.strip "
    "also strips other Unicode spaces (e.g. U+00A0). '\\d' in the digit-time rule is ASCII; "
    "Python's also matches other scripts' digits.",
    "Numbers (price, quantity) are parsed by DuckDB's cast with '_' refused; pandas' "
    "to_numeric and DuckDB agree on decimal, exponent, sign, inf and nan spellings.",
    "ISO-8601 times are parsed by DuckDB's TIMESTAMPTZ cast after the same zoned-or-naive "
    "check (the _ZONED_ISO pattern; a plain date, PLAIN_DATE_PATTERN, counts as zoned: its "
    "UTC day) "
    "and with whitespace before a numeric offset removed; hour "
    "24 is refused as pandas refuses it. Fractions below a microsecond are cut before the "
    "floor to milliseconds (pandas floors the nanoseconds); milliseconds agree.",
    "Parquet columns are read by type: numbers and timestamps are turned into their text and "
    "judged by the CSV rules, except that a NaN in a float column is a missing value (blank "
    "in CSV). A time column of naive TIMESTAMP type is refused (bad_value), as a naive ISO "
    "text is; a DATE column is read as its UTC day, as a plain date text is.",
)
"""Where the SQL rules differ from :func:`ingest.adapters.read_canonical` (CSV), and why."""

_WS: Final = "' ' || chr(9) || chr(10) || chr(11) || chr(12) || chr(13)"
# ingest.adapters._ZONED_ISO, for RE2 (search semantics, as re.search / str.contains).
_ZONED_ISO_SQL: Final = r"\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[Zz]|UTC|[+-]\d{2}(?::?\d{2})?)$"
_PURCHASE: Final = EVENT_TYPE_CODES[PURCHASE]
_PROFILE: Final = "profile.json"
_N_TYPES: Final = len(EVENT_TYPES)
# Positions after the counts in BASE_FEATURES, by name, so the order is the definition's.
_AFTER_COUNTS: Final = {name: i - _N_TYPES for i, name in enumerate(BASE_FEATURES)}
_ORDERS: Final = _AFTER_COUNTS["orders"]
_UNITS: Final = _AFTER_COUNTS["units"]
_SPEND: Final = _AFTER_COUNTS["spend"]
_PRODUCTS: Final = _AFTER_COUNTS["distinct_products"]
_CATEGORIES: Final = _AFTER_COUNTS["distinct_categories"]
_SESSIONS: Final = _AFTER_COUNTS["sessions"]
_ORDER_DAYS: Final = _AFTER_COUNTS["order_days"]


@dataclass(frozen=True)
class EngineConfig:
    """DuckDB's resources: its memory limit (spills beyond it), threads, and where it spills."""

    memory_limit: str = DEFAULT_MEMORY_LIMIT
    threads: int | None = None
    """``None``: DuckDB's default (every core)."""
    temp_dir: Path | None = None
    """Parent of the run's database file and spill files; ``None``: the system's temp dir."""


@dataclass
class EventStore:
    """Validated canonical events in a DuckDB database file, and what training asks of them.

    Made by :func:`open_events`; close it (or use it as a context manager) to drop the
    database and spill files.
    """

    con: Any
    workdir: Path
    summary: IngestSummary
    rows: int
    users: int
    start_ms: int
    stop_ms: int
    event_types: dict[str, int] = field(default_factory=dict)
    spilled_bytes: int = 0
    """Bytes DuckDB wrote to its spill files in this store's queries so far (its profile's
    ``total_bytes_spilled``): how far the work exceeded ``memory_limit``."""

    def _run(self, sql: str) -> dict[str, Any]:
        """Run ``sql`` to the end (its columns as numpy arrays, empty for a statement), adding
        what it spilled to :attr:`spilled_bytes`."""
        cursor = self.con.execute(sql)
        result: dict[str, Any] = cursor.fetchnumpy() if cursor.description else {}
        self.spilled_bytes += _spilled(self.workdir / _PROFILE)
        return result

    def __enter__(self) -> EventStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.con.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def user_ids(self) -> np.ndarray:
        """User ids by code: first event time, then id (the pandas path's order)."""
        got = self.con.execute("SELECT user_id FROM users ORDER BY u").fetchnumpy()
        return np.asarray(got["user_id"], dtype=object)

    def first_window(self, spec: WindowSpec) -> int:
        """Window of the earliest event (:func:`training.dataset.first_window`)."""
        return spec.index(self.start_ms)

    def window_tensor(
        self, spec: WindowSpec, first: int, last: int
    ) -> tuple[WindowTensor, np.ndarray]:
        """:func:`features.batch.build_window_tensor` of these events, and the user ids.

        Same contract: events after window ``last`` are ignored, events before ``first`` are an
        error; users are every user of the events, coded as the pandas path codes them.
        """
        return self.window_cells(spec, first, last).tensor()

    def window_cells(self, spec: WindowSpec, first: int, last: int) -> WindowCells:
        """The per-(user, window) base aggregates of windows ``first .. last``, computed once
        into a table of the database (on disk, sorted by user): any block of users' window
        tensor is then read from it (:meth:`WindowCells.tensor`) without touching the events
        again. Same contract as :meth:`window_tensor`."""
        n_windows = last - first + 1
        if n_windows < 1:
            raise ValueError(f"empty window range {first}..{last}")
        window_sql = _floor_div(f"t - {spec.origin_ms}", spec.length_ms)
        if self.rows:
            lowest = spec.index(self.start_ms)
            if lowest < first:
                raise ValueError(f"events start in window {lowest}, before {first}")
        started = time.perf_counter()
        # Row order does not matter from here on: not preserving it lets DuckDB stream and
        # spill.
        self.con.execute("SET preserve_insertion_order = false")
        try:
            self._cells(window_sql, first, last)
        finally:
            self.con.execute("DROP VIEW IF EXISTS cell_events")
            self.con.execute("SET preserve_insertion_order = true")
        # fetchall: a result left unfetched blocks the connection's next registration.
        n_nonempty = int(self.con.execute("SELECT count(*) FROM cells_plain").fetchall()[0][0])
        log.info(
            "duckdb: %d non-empty cells of %d users x %d windows in %.1fs (%.0f MB spilled)",
            n_nonempty,
            self.users,
            n_windows,
            time.perf_counter() - started,
            self.spilled_bytes / 1e6,
        )
        return WindowCells(self, spec, first, n_windows, n_nonempty)

    def _cells(self, window_sql: str, first: int, last: int) -> None:
        """Tables ``cells_plain`` and ``cells_d0 .. d5``: rows of non-empty (user code ``u``,
        column ``col``) with the inputs of :func:`features.batch.tensor_from_base`, ordered by
        ``u, col`` so that a block of users is a range of each. Seven tables, not one join of
        them: the join did not fit DuckDB's floor of memory (32 MB) where the parts spill.

        The events are read through a view, aggregated by ``user_id`` and joined to their code
        only as cells: at 51.6M events, materialising the events with their code and window
        first (one join of every event) took 16 s of the 37 s, the view and late join 30 s
        in all; the scan the view repeats costs about a second."""
        self._run(
            f"""CREATE OR REPLACE TEMP VIEW cell_events AS
            SELECT user_id, {window_sql} - {first} AS col, et, q, price, t,
              product_id, category, session_id, order_id
            FROM events WHERE reason IS NULL AND {window_sql} <= {last}"""
        )
        # 1. Plain aggregates per cell (a hash aggregate, which DuckDB spills).
        p = f"et = {_PURCHASE}"
        counts = ", ".join(
            f"count(*) FILTER (WHERE et = {code})::DOUBLE AS n{code}"
            for code in range(len(EVENT_TYPES))
        )
        self._run(
            f"""CREATE OR REPLACE TABLE cells_plain AS
            SELECT users.u, cells.* EXCLUDE (user_id) FROM (
            SELECT user_id, col, {counts},
              -- a purchase line with neither order nor session id is an order of its own
              count(*) FILTER (WHERE {p} AND order_id IS NULL AND session_id IS NULL)::DOUBLE
                AS anonymous_orders,
              coalesce(sum(q) FILTER (WHERE {p}), 0)::DOUBLE AS units,
              -- an unknown price is worth 0, as in build_window_tensor
              coalesce(sum(coalesce(price * q, 0.0)) FILTER (WHERE {p}), 0.0) AS spend,
              min(t) FILTER (WHERE {p})::DOUBLE AS first_purchase_ms,
              max(t) FILTER (WHERE {p})::DOUBLE AS last_purchase_ms
            FROM cell_events GROUP BY user_id, col
            ) cells JOIN users USING (user_id) ORDER BY u, col"""
        )
        # 2. Distinct counts, one query per key: (cell, key) made distinct, then counted per
        # cell. Hash aggregates that spill, where COUNT(DISTINCT) inside one grouped aggregate
        # (or all keys in one UNION) ran out of memory under a small limit. orders: distinct
        # order keys among purchases, as features.batch._order_keys (the order id, else the
        # session in a key space of its own, else the line: counted above).
        day = _floor_div("t", DAY_MS)
        for i, (key, where) in enumerate(
            (
                ("order_id", f"{p} AND order_id IS NOT NULL"),
                ("session_id", f"{p} AND order_id IS NULL AND session_id IS NOT NULL"),
                ("product_id", "product_id IS NOT NULL"),
                ("category", "category IS NOT NULL"),
                ("session_id", "session_id IS NOT NULL"),
                (day, p),
            )
        ):
            self._run(
                f"""CREATE OR REPLACE TABLE cells_d{i} AS
                SELECT users.u, cells.col, cells.n FROM (
                  SELECT user_id, col, count(*)::DOUBLE AS n
                  FROM (SELECT DISTINCT user_id, col, {key} AS key FROM cell_events WHERE {where})
                  GROUP BY user_id, col
                ) cells JOIN users USING (user_id) ORDER BY u, col"""
            )


_DISTINCT: Final = (_ORDERS, _ORDERS, _PRODUCTS, _CATEGORIES, _SESSIONS, _ORDER_DAYS)
"""Where each distinct count of :meth:`EventStore._cells` (table ``cells_d0 .. d5``) goes among the
aggregates after the counts; order ids and sessions both add to orders (disjoint key spaces,
like even/odd)."""


@dataclass(frozen=True)
class WindowCells:
    """A window range's non-empty cells, in a store's database (:meth:`EventStore.window_cells`).

    :meth:`tensor` turns any block of users into their rows of the window tensor, so memory is
    that block's, not every user's: the cells stay on disk.
    """

    store: EventStore
    spec: WindowSpec
    first: int
    n_windows: int
    nonempty: int

    @property
    def n_users(self) -> int:
        return self.store.users

    def tensor(self, codes: np.ndarray | None = None) -> tuple[WindowTensor, np.ndarray]:
        """The window tensor of the users coded ``codes`` (sorted, distinct; ``None``: every
        user) and their ids, in code order: exactly those users' rows of the whole tensor
        (the features of one user never read another's)."""
        n_windows = self.n_windows
        con = self.store.con
        if codes is None:
            n_users = self.n_users
            ids = self.store.user_ids()
            pick = ""
            sample = False
        else:
            codes = np.asarray(codes, dtype=np.int64)
            if len(codes) > 1 and not np.all(np.diff(codes) > 0):
                raise ValueError("user codes must be sorted and distinct")
            n_users = len(codes)
            # A block of consecutive codes is a range of the sorted tables (zone maps skip
            # the rest); a sample is a semi-join with the codes, registered for the reads.
            sample = not n_users or int(codes[-1]) - int(codes[0]) != n_users - 1
            if sample:
                con.register("picked_users", pd.DataFrame({"u": codes}))
                pick = "SEMI JOIN picked_users USING (u)"
            else:
                pick = f"WHERE u BETWEEN {int(codes[0])} AND {int(codes[-1])}"
            named = con.execute(f"SELECT user_id FROM users {pick} ORDER BY u").fetchnumpy()
            ids = np.asarray(named["user_id"], dtype=object)

        def cells(table: str) -> tuple[dict[str, Any], np.ndarray]:
            got = self.store._run(f"SELECT * FROM {table} {pick}")
            user = np.asarray(got["u"], dtype=np.int64)
            if codes is not None:
                user = np.searchsorted(codes, user)
            return got, user * n_windows + np.asarray(got["col"], dtype=np.int64)

        n_cells = n_users * n_windows
        base = np.zeros((n_cells, N_BASE), dtype=np.float64)
        first_ms = np.full(n_cells, np.nan)
        last_ms = np.full(n_cells, np.nan)
        first_col = np.full(n_users, n_windows, dtype=np.int64)
        try:
            got, flat = cells("cells_plain")
            plain = {f"n{code}": code for code in range(len(EVENT_TYPES))}
            plain.update(
                anonymous_orders=_N_TYPES + _ORDERS,
                units=_N_TYPES + _UNITS,
                spend=_N_TYPES + _SPEND,
            )
            # One row scatter of the plain columns, not one strided scatter per column.
            block = np.empty((len(flat), N_BASE), dtype=np.float64)
            block[:, _N_TYPES:] = 0.0
            for name, position in plain.items():
                block[:, position] = _floats(got[name])
            base[flat] = block
            del block
            # NULL (no purchase in the cell) arrives masked or as NaN: either way NaN here.
            first_ms[flat] = _floats(got["first_purchase_ms"])
            last_ms[flat] = _floats(got["last_purchase_ms"])
            np.minimum.at(first_col, flat // n_windows, flat % n_windows)
            for i, feature in enumerate(_DISTINCT):
                got, flat = cells(f"cells_d{i}")
                base[flat, _N_TYPES + feature] += _floats(got["n"])
            del got, flat
        finally:
            if sample:
                con.unregister("picked_users")
        tensor = tensor_from_base(
            self.spec,
            self.first,
            base.reshape(n_users, n_windows, N_BASE),
            first_ms.reshape(n_users, n_windows),
            last_ms.reshape(n_users, n_windows),
            first_col,
        )
        return tensor, ids


def _spilled(profile: Path) -> int:
    """``total_bytes_spilled`` of the last profiled query (0 when the profile says nothing)."""
    try:
        data = json.loads(profile.read_text())
        return int(data.get("system", {}).get("total_bytes_spilled", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


def _floats(values: Any) -> np.ndarray:
    if isinstance(values, np.ma.MaskedArray):
        return np.asarray(values.filled(np.nan), dtype=np.float64)
    return np.asarray(values, dtype=np.float64)


def _floor_div(expr: str, divisor: int) -> str:
    """Integer floor division in SQL (DuckDB's ``//`` truncates toward zero, Python floors)."""
    return f"((({expr}) - ((({expr}) % {divisor}) + {divisor}) % {divisor}) // {divisor})"


def sql_string(text: str) -> str:
    """``text`` as a standard SQL string literal (a quote doubled: DuckDB, Trino)."""
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --- files ------------------------------------------------------------------------------------


def resolve_paths(patterns: Sequence[str | Path]) -> list[Path]:
    """Files named by ``patterns`` (paths or globs), in order; IngestError if one names none."""
    files: list[Path] = []
    for pattern in patterns:
        text = str(pattern)
        if glob.has_magic(text):
            matched = sorted(glob.glob(text, recursive=True))
            matched = [m for m in matched if Path(m).is_file()]
            if not matched:
                raise IngestError(f"{text}: no file matches")
            files.extend(Path(m) for m in matched)
        elif Path(text).is_file():
            files.append(Path(text))
        else:
            raise IngestError(f"{text}: no such file")
    return list(dict.fromkeys(files))


def is_parquet(path: Path) -> bool:
    return path.suffix.lower() in PARQUET_SUFFIXES


def _csv_header(path: Path) -> list[str]:
    """Column names as pandas would see them: stripped, BOM removed."""
    try:
        raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115
        with io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="") as f:
            line = f.readline()
    except (OSError, EOFError, UnicodeError) as exc:
        raise IngestError(f"{path}: cannot read: {exc}") from exc
    names = next(csv.reader([line.strip("\r\n")]), [])
    return [n.strip().lstrip("\ufeff") for n in names]


def _require(columns: Sequence[str], where: str) -> str:
    """The time column, after checking the canonical columns are there (adapters' wording)."""
    missing = sorted(REQUIRED_COLUMNS["canonical"] - set(columns))
    if missing:
        raise IngestError(
            f"{where}: not a canonical file: missing column(s) {', '.join(missing)}; "
            f"columns found: {', '.join(columns) or '(none)'}"
        )
    time_col = next((c for c in ("event_time", "event_time_ms") if c in columns), None)
    if time_col is None:
        raise IngestError(
            f"{where}: not a canonical file: missing column event_time (or event_time_ms); "
            f"columns found: {', '.join(columns)}"
        )
    return time_col


# --- validation in SQL ------------------------------------------------------------------------


def _text(expr: str) -> str:
    """A field as the canonical reader sees it: stripped, empty = missing (NULL)."""
    return f"nullif(trim({expr}, {_WS}), '')"


def _number(text_expr: str) -> str:
    # DuckDB's cast accepts '1_000'; pandas' to_numeric does not: refuse it here too.
    return (
        f"CASE WHEN strpos({text_expr}, '_') > 0 THEN NULL ELSE TRY_CAST({text_expr} AS DOUBLE) END"
    )


def _validated_select(source: str, columns: dict[str, str], time_col: str, lo: int, hi: int) -> str:
    """SELECT of the typed event columns plus ``reason`` (NULL when the row is kept).

    ``columns`` maps each source column to a VARCHAR expression of it. Rules and their order
    are :func:`ingest.adapters.read_canonical`'s: the first failing rule names the row.
    """

    def col(name: str) -> str:
        return columns.get(name, "NULL::VARCHAR")

    type_codes = " ".join(f"WHEN {sql_string(t)} THEN {c}" for t, c in EVENT_TYPE_CODES.items())
    blank = " AND ".join(f"({expr}) IS NULL" for expr in columns.values()) or "false"
    # Whitespace before a numeric offset: pandas' ISO8601 parser accepts it, DuckDB's not.
    iso = r"regexp_replace(tt, '\s+([+-]\d{2}(?::?\d{2})?)$', '\1')"
    time_name = time_col
    return f"""
        SELECT user_id, t, et, q, price, product_id, category, session_id, order_id,
          src_file, src_row,
          CASE
            WHEN is_blank THEN 'blank_line'
            WHEN et_text IS NULL THEN 'missing_field:event_type'
            WHEN et IS NULL THEN 'unknown_event_type:event_type'
            WHEN user_text IS NULL THEN 'missing_field:user_id'
            WHEN tt IS NULL THEN 'missing_field:{time_name}'
            WHEN NOT digits AND NOT zoned AND t IS NOT NULL THEN 'bad_value:{time_name}'
            WHEN t IS NULL THEN 'bad_value:{time_name}'
            WHEN digits AND t >= 0 AND t < {NUMBER_TIME_MIN_MS} THEN 'bad_value:{time_name}'
            WHEN t < {lo} THEN 'time_too_old:{time_name}'
            WHEN t > {hi} THEN 'time_in_future:{time_name}'
            WHEN price_text IS NOT NULL
              AND (price IS NULL OR NOT isfinite(price) OR price < 0) THEN 'bad_value:price'
            WHEN q_num IS NULL OR NOT isfinite(q_num) OR q_num <> floor(q_num)
              OR q_num < 1 OR q_num > {MAX_QUANTITY} THEN 'bad_value:quantity'
          END AS reason
        FROM (
          SELECT *,
            CASE
              WHEN digits THEN TRY_CAST(tt AS BIGINT)
              -- hour 24: DuckDB rolls it to the next day, pandas refuses it.
              WHEN regexp_matches(tt, '[T ]24:') THEN NULL
              ELSE {_floor_div(f"epoch_us(TRY_CAST({iso} AS TIMESTAMPTZ))", 1000)}
            END AS t,
            CASE WHEN q_num IS NULL OR NOT isfinite(q_num) OR q_num <> floor(q_num)
              OR q_num < 1 OR q_num > {MAX_QUANTITY} THEN 1 ELSE q_num::BIGINT END AS q
          FROM (
            SELECT
              {col("user_id")} AS user_id,
              {_text(col("user_id"))} AS user_text,
              {_text(col("event_type"))} AS et_text,
              CASE {_text(col("event_type"))} {type_codes} END::UTINYINT AS et,
              {_text(col(time_col))} AS tt,
              coalesce(regexp_full_match({_text(col(time_col))}, '-?[0-9]{{1,18}}'), false)
                AS digits,
              coalesce(
                regexp_matches({_text(col(time_col))}, {sql_string(_ZONED_ISO_SQL)})
                  OR regexp_full_match({_text(col(time_col))}, {sql_string(PLAIN_DATE_PATTERN)}),
                false
              ) AS zoned,
              {_text(col("price"))} AS price_text,
              {_number(_text(col("price")))} AS price,
              CASE WHEN {_text(col("quantity"))} IS NULL THEN 1.0
                ELSE {_number(_text(col("quantity")))} END AS q_num,
              {_text(col("product_id"))} AS product_id,
              {_text(col("category"))} AS category,
              {_text(col("session_id"))} AS session_id,
              {_text(col("order_id"))} AS order_id,
              {blank} AS is_blank,
              filename AS src_file,
              src_row
            FROM {source}
          )
        )
    """


def _csv_source(files: list[Path], header: list[str]) -> tuple[str, dict[str, str]]:
    cols = "{" + ", ".join(f"{sql_string(n)}: 'VARCHAR'" for n in header) + "}"
    file_list = "[" + ", ".join(sql_string(str(f)) for f in files) + "]"
    # No sniffing: pandas' dialect (comma, double quote, quote doubled), every field text;
    # short lines padded with NULL as pandas pads them; lines with too many fields go to the
    # rejects table (pandas: malformed_line). Row numbers come from the table's rowid.
    # An 8 MB read buffer (DuckDB's default is 32 MB a thread): the default alone did not fit
    # a 64 MB memory limit; events are short lines (max_line_size stays 2 MB).
    source = (
        f"(SELECT *, NULL::BIGINT AS src_row FROM read_csv({file_list}, columns={cols}, "
        "delim=',', quote='\"', escape='\"', header=true, auto_detect=false, "
        "null_padding=true, ignore_errors=true, store_rejects=true, filename=true, "
        "compression='auto', buffer_size=8388608))"
    )
    return source, {n: _ident(n) for n in header}


def _parquet_source(con: Any, files: list[Path]) -> tuple[str, dict[str, str], list[str]]:
    file_list = "[" + ", ".join(sql_string(str(f)) for f in files) + "]"
    reader = f"read_parquet({file_list}, union_by_name=true, filename=true, file_row_number=true)"
    described = con.execute(f"DESCRIBE SELECT * FROM {reader}").fetchall()
    exprs: dict[str, str] = {}
    names: list[str] = []
    for name, dtype, *_ in described:
        if name in ("filename", "file_row_number"):
            continue
        names.append(name)
        ident = _ident(name)
        upper = str(dtype).upper()
        if upper in ("DOUBLE", "FLOAT", "REAL"):
            # NaN is pandas' missing value in a float column: blank, not a bad number.
            exprs[name] = f"CASE WHEN isnan({ident}) THEN NULL ELSE {ident}::VARCHAR END"
        else:
            exprs[name] = f"{ident}::VARCHAR"
    source = f"(SELECT *, file_row_number + 1 AS src_row FROM {reader})"
    return source, exprs, names


def connect(cfg: EngineConfig, name: str) -> tuple[Path, Any]:
    """A new directory under ``cfg.temp_dir`` and a DuckDB database ``name`` in it, with the
    memory limit, spill directory and threads of ``cfg``; the caller removes the directory."""
    import duckdb

    if cfg.temp_dir is not None:
        # A directory named for the spill files need not exist yet (as DuckDB's own temp dir).
        cfg.temp_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="clicksignals-duckdb-", dir=cfg.temp_dir))
    try:
        con = duckdb.connect(str(workdir / f"{name}.duckdb"))
        con.execute(f"SET memory_limit = {sql_string(cfg.memory_limit)}")
        con.execute(f"SET temp_directory = {sql_string(str(workdir / 'spill'))}")
        if cfg.threads is not None:
            con.execute(f"SET threads = {int(cfg.threads)}")
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return workdir, con


# --- the entry point --------------------------------------------------------------------------


def open_events(
    patterns: Sequence[str | Path],
    *,
    min_event_time_ms: int = MIN_EVENT_TIME_MS_DEFAULT,
    now_ms: int | None = None,
    max_future_skew_ms: int = DAY_MS,
    config: EngineConfig | None = None,
) -> EventStore:
    """Read and validate canonical event files into a DuckDB database on disk.

    ``patterns``: files or globs, all CSV (optionally gzipped) with one header, or all
    Parquet. Bad rows are skipped and reported in the store's :class:`IngestSummary` by the
    canonical reader's reasons; a file that cannot be read or lacks the canonical columns
    raises :class:`IngestError` naming it.
    """
    import duckdb

    cfg = config or EngineConfig()
    files = resolve_paths(patterns)
    if not files:
        raise IngestError("no event files given")
    kinds = {is_parquet(f) for f in files}
    if len(kinds) > 1:
        raise IngestError("mixing Parquet and CSV files in one run is not supported")
    parquet = kinds == {True}
    for f in files:
        suffixes = [s.lower() for s in f.suffixes if s.lower() != ".gz"]
        if suffixes and suffixes[-1] in (".jsonl", ".ndjson", ".json"):
            raise IngestError(f"{f}: canonical JSONL is read by the pandas engine only")
    started = time.perf_counter()
    now = int(time.time() * 1000) if now_ms is None else now_ms
    lo, hi = min_event_time_ms, now + max_future_skew_ms
    workdir, con = connect(cfg, "events")
    try:
        # Row order within a file is what the line numbers of bad rows are read from.
        con.execute("SET preserve_insertion_order = true")
        con.execute("SET TimeZone = 'UTC'")
        # Each query's profile (JSON, overwritten by the next) says how much it spilled.
        con.execute("SET enable_profiling = 'json'")
        con.execute("SET profiling_coverage = 'ALL'")
        con.execute(f"SET profiling_output = {sql_string(str(workdir / _PROFILE))}")
        where = ", ".join(str(f) for f in files)
        if parquet:
            try:
                source, exprs, names = _parquet_source(con, files)
            except duckdb.Error as exc:
                raise IngestError(f"{where}: cannot read as Parquet: {exc}") from exc
            time_col = _require(names, where)
        else:
            header = _csv_header(files[0])
            for other in files[1:]:
                if _csv_header(other) != header:
                    raise IngestError(
                        f"{other}: header differs from {files[0]}'s: "
                        f"{', '.join(_csv_header(other))} vs {', '.join(header)}"
                    )
            time_col = _require(header, where)
            source, exprs = _csv_source(files, header)
        select = _validated_select(source, exprs, time_col, lo, hi)
        try:
            con.execute(f"CREATE TABLE events AS {select}")
        except duckdb.Error as exc:
            raise IngestError(f"{where}: cannot read: {exc}") from exc
        load_spilled = _spilled(workdir / _PROFILE)
        summary = _summary(con, where, parquet, several=len(files) > 1)
        con.execute(
            "CREATE TABLE users AS SELECT user_id, "
            "(row_number() OVER (ORDER BY min(t), user_id) - 1)::BIGINT AS u "
            "FROM events WHERE reason IS NULL GROUP BY user_id"
        )
        stats = con.execute(
            "SELECT count(*), min(t), max(t) FROM events WHERE reason IS NULL"
        ).fetchone()
        type_rows = con.execute(
            "SELECT et, count(*) FROM events WHERE reason IS NULL GROUP BY et ORDER BY et"
        ).fetchall()
        users = con.execute("SELECT count(*) FROM users").fetchone()
    except BaseException:
        with contextlib.suppress(Exception):
            con.close()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    assert stats is not None and users is not None
    rows = int(stats[0])
    summary.events_out = rows
    summary.seconds = time.perf_counter() - started
    store = EventStore(
        con=con,
        workdir=workdir,
        summary=summary,
        rows=rows,
        users=int(users[0]),
        start_ms=int(stats[1]) if rows else 0,
        stop_ms=int(stats[2]) if rows else 0,
        event_types={EVENT_TYPES[int(code)]: int(n) for code, n in type_rows},
        spilled_bytes=load_spilled,
    )
    log.info(
        "duckdb: %d events of %d users validated in %.1fs (database in %s)",
        rows,
        store.users,
        summary.seconds,
        workdir,
    )
    return store


def _summary(con: Any, where: str, parquet: bool, several: bool) -> IngestSummary:
    """The canonical reader's summary: rows read, refused by reason, excluded, first bad.

    With several files a listed line names its file (``"<reason> in <file>"``): a line number
    alone would not say which.
    """
    summary = IngestSummary(path=where, format="canonical")
    reasons = con.execute(
        "SELECT reason, count(*) FROM events WHERE reason IS NOT NULL GROUP BY reason"
    ).fetchall()
    total = con.execute("SELECT count(*) FROM events").fetchone()
    # Lines the CSV reader refused, by file (one line can carry several errors).
    rejected: dict[str, dict[int, str]] = {}
    if not parquet:
        for path, line, error_type in con.execute(
            "SELECT s.file_path, e.line, e.error_type FROM reject_errors e "
            "JOIN reject_scans s USING (scan_id, file_id) ORDER BY s.file_path, e.line"
        ).fetchall():
            if error_type == "UNQUOTED VALUE":
                # pandas refuses such a file whole; DuckDB would swallow the rest of the file
                # into one refused line.
                raise IngestError(f"{path}: cannot read as CSV: unterminated quote on line {line}")
            reason = "malformed_line" if error_type == "TOO MANY COLUMNS" else "unreadable_line"
            rejected.setdefault(str(path), {}).setdefault(int(line), reason)
    bad: dict[str, int] = {}
    for reason, n in reasons:
        if reason == "blank_line":
            summary.excluded[reason] = int(n)
        else:
            bad[reason] = int(n)
    listed: list[tuple[int, str]] = []
    for path, lines in rejected.items():
        for line, reason in lines.items():
            bad[reason] = bad.get(reason, 0) + 1
            listed.append((line, _named(reason, path, several)))
    summary.bad_rows = bad
    summary.rows_read = (int(total[0]) if total else 0) + sum(map(len, rejected.values()))
    if any(r != "blank_line" for r, _ in reasons):
        if parquet:
            first = con.execute(
                "SELECT src_file, src_row, reason FROM events "
                "WHERE reason IS NOT NULL AND reason <> 'blank_line' "
                f"ORDER BY src_file, src_row LIMIT {FIRST_BAD_LISTED}"
            ).fetchall()
            listed += [(int(n), _named(str(r), str(f), several)) for f, n, r in first]
        else:
            # rowid is insertion order; a file's first row has its file's lowest rowid, so
            # rowid - lo is the row's data record number in its file, and the line is that
            # plus the header and every refused line above it (blank lines: RULE_DIFFERENCES).
            first = con.execute(
                "SELECT src_file, (e.rowid - f.lo)::BIGINT, e.reason FROM events e JOIN "
                "(SELECT src_file, min(rowid) AS lo FROM events GROUP BY src_file) f "
                "USING (src_file) WHERE e.reason IS NOT NULL AND e.reason <> 'blank_line' "
                f"ORDER BY e.rowid LIMIT {FIRST_BAD_LISTED}"
            ).fetchall()
            for path, record, reason in first:
                line = int(record) + 2
                for refused in rejected.get(str(path), {}):  # ascending
                    if refused <= line:
                        line += 1
                listed.append((line, _named(str(reason), str(path), several)))
    summary.first_bad = sorted(listed)[:FIRST_BAD_LISTED]
    return summary


def _named(reason: str, path: str, several: bool) -> str:
    return f"{reason} in {path}" if several else reason


__all__ = [
    "DEFAULT_MEMORY_LIMIT",
    "RULE_DIFFERENCES",
    "EngineConfig",
    "EventStore",
    "is_parquet",
    "open_events",
    "resolve_paths",
]
