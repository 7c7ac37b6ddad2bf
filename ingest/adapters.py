"""Adapters: real clickstream / order files -> the canonical event DataFrame.

This module owns reading files from outside the system (REES46, Taobao UserBehavior, UCI Online
Retail order lines, and files already in the canonical shape) and turning them into one
DataFrame with :data:`CANONICAL_COLUMNS`, plus the replay helpers :func:`iter_events` and
:func:`to_wire_bytes`. Every transformation is a vectorised pandas/numpy operation over whole
columns (UCI Online Retail's 541,909 lines take well under a few seconds); the one exception is
canonical JSONL, whose lines *are* wire messages and go through the worker's own
:func:`features.validation.validate` so a replay file and the live topic obey the same rules.

Bad rows are skipped and reported (:class:`IngestSummary`, with file line numbers, header = line 1);
an unreadable file or one without the needed columns raises :class:`IngestError`.

Line numbers assume one record per physical line (true of all supported sources); a quoted field
with an embedded newline would shift the numbers reported after it.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import orjson
import pandas as pd

from features.events import EVENT_TYPES, ClickEvent
from features.validation import (
    MIN_EVENT_TIME_MS_DEFAULT,
    NUMBER_TIME_MIN_MS,
    PLAIN_DATE_PATTERN,
    Invalid,
    ValidationPolicy,
    validate,
)
from features.windows import DAY_MS

Format = Literal["auto", "rees46", "taobao", "transactions", "canonical"]
FORMATS: Final[tuple[str, ...]] = ("rees46", "taobao", "transactions", "canonical")

CANONICAL_COLUMNS: Final[tuple[str, ...]] = (
    "event_time_ms",
    "event_type",
    "user_id",
    "product_id",
    "category",
    "brand",
    "price",
    "quantity",
    "session_id",
    "order_id",
)
OPTIONAL_STRING_COLUMNS: Final[tuple[str, ...]] = (
    "product_id",
    "category",
    "brand",
    "session_id",
    "order_id",
)
# pandas' own string dtype with NaN for missing (the pandas 3 default for text columns).
STR_DTYPE: Final = pd.StringDtype(na_value=np.nan)
MAX_QUANTITY: Final = 1_000_000
FIRST_BAD_LISTED: Final = 20

REES46_TYPES: Final = {
    "view": "view",
    "cart": "cart",
    "remove_from_cart": "remove_from_cart",
    "purchase": "purchase",
}
TAOBAO_TYPES: Final = {"pv": "view", "cart": "cart", "fav": "wishlist", "buy": "purchase"}
TAOBAO_COLUMNS: Final = ("user_id", "item_id", "category_id", "behavior", "timestamp")

# Required source columns per format (detection and clear errors use the same sets).
REQUIRED_COLUMNS: Final[dict[str, frozenset[str]]] = {
    "transactions": frozenset(
        {"InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID"}
    ),
    "rees46": frozenset({"event_time", "event_type", "product_id", "user_id", "user_session"}),
    "taobao": frozenset({"user_id", "item_id", "behavior", "timestamp"}),
    "canonical": frozenset({"event_type", "user_id"}),  # + event_time or event_time_ms
}
# UCI "Online Retail II" spells some columns differently; same meaning.
TRANSACTION_ALIASES: Final = {
    "Invoice": "InvoiceNo",
    "Price": "UnitPrice",
    "Customer ID": "CustomerID",
}

_ZONED_ISO: Final = re.compile(
    r"\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[Zz]|UTC|[+-]\d{2}(?::?\d{2})?)$"
)
_SKIPPED_LINE: Final = re.compile(r"Skipping line (\d+): ([^\n]*)")
_READ_ERRORS: Final = (
    OSError,
    EOFError,
    zlib.error,
    UnicodeError,
    pd.errors.ParserError,
    pd.errors.EmptyDataError,
    csv.Error,
)


_RULES: Final = {
    "bad_value:event_time": "must be ISO-8601 with a zone ('Z' or an offset such as '+00:00': "
    "without one the instant would be a guess), a date (YYYY-MM-DD: that UTC day) or epoch "
    "milliseconds (a number under 10^11 is epoch seconds or a YYYYMMDD date, not 1970)",
    "bad_value:event_time_ms": "must be epoch milliseconds (a number under 10^11 is epoch "
    "seconds or a YYYYMMDD date, not 1970)",
    "bad_value:price": "must be a number >= 0 (blank: unknown)",
    "bad_value:quantity": "must be a whole number >= 1 (blank: 1)",
    "missing_field": "must not be blank",
    "unknown_event_type": f"must be one of {', '.join(EVENT_TYPES)}",
    "time_too_old": "lies before the reader's time floor",
    "time_in_future": "lies after now plus the allowed clock skew",
}
"""What each refusal reason's rule asks, for :meth:`IngestSummary.explain`."""


class IngestError(Exception):
    """A file cannot be ingested at all (unreadable, unknown format, required columns missing)."""


@dataclass
class IngestSummary:
    """What happened to a file's rows: read = out + bad + excluded."""

    path: str
    format: str
    rows_read: int = 0
    """Data records in the file (header not counted; malformed and blank lines counted)."""
    events_out: int = 0
    bad_rows: dict[str, int] = field(default_factory=dict)
    """Rows refused, by reason (``"<reason>:<source column>"``)."""
    excluded: dict[str, int] = field(default_factory=dict)
    """Rows skipped by design, not errors: ``guest`` (no customer id), ``blank_line``."""
    first_bad: list[tuple[int, str]] = field(default_factory=list)
    """The first bad rows in file order, as ``(line_number, reason)``; header is line 1."""
    seconds: float = 0.0

    @property
    def bad_total(self) -> int:
        return sum(self.bad_rows.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "rows_read": self.rows_read,
            "events_out": self.events_out,
            "bad_rows": dict(self.bad_rows),
            "excluded": dict(self.excluded),
            "first_bad": [list(x) for x in self.first_bad],
            "seconds": round(self.seconds, 3),
        }

    def explain(self) -> str | None:
        """The most frequent refusal in words, with its first line and the rule it broke (for
        a file none of whose rows could be used); ``None`` when no row was refused."""
        if not self.bad_rows:
            return None
        reason, count = max(self.bad_rows.items(), key=lambda item: item[1])
        line = next((n for n, r in self.first_bad if r == reason), None)
        where = f", the first on line {line}" if line is not None else ""
        kind, _, column = reason.partition(":")
        rule = _RULES.get(reason) or _RULES.get(kind)
        said = f": {column} {rule}" if rule and column else ""
        return f"{count} of {self.rows_read} rows refused as {reason}{where}{said}"

    def describe(self) -> str:
        """One human line, e.g. for a CLI."""
        parts = [f"{self.path} [{self.format}]: {self.rows_read} rows -> {self.events_out} events"]
        if self.excluded:
            parts.append("excluded " + ", ".join(f"{k}={v}" for k, v in self.excluded.items()))
        if self.bad_rows:
            parts.append("bad " + ", ".join(f"{k}={v}" for k, v in self.bad_rows.items()))
            parts.append("first bad " + ", ".join(f"line {n}: {r}" for n, r in self.first_bad[:5]))
        return "; ".join(parts)


@dataclass(frozen=True)
class AdapterResult:
    events: pd.DataFrame
    summary: IngestSummary


# --- row bookkeeping -------------------------------------------------------------------------


class _Rows:
    """Per-row fate of a source frame: ok, bad (reason) or excluded; first reason wins."""

    def __init__(self, n: int, lines: np.ndarray) -> None:
        self.lines = lines
        self.code = np.zeros(n, dtype=np.int16)  # 0 = ok
        self.reasons: list[str] = [""]
        self.excluded_reasons: set[str] = set()

    def _code(self, reason: str) -> int:
        try:
            return self.reasons.index(reason)
        except ValueError:
            self.reasons.append(reason)
            return len(self.reasons) - 1

    def mark(self, mask: np.ndarray | pd.Series, reason: str) -> None:
        m = np.asarray(mask, dtype=bool) & (self.code == 0)
        if m.any():
            self.code[m] = self._code(reason)

    def exclude(self, mask: np.ndarray | pd.Series, reason: str) -> None:
        self.excluded_reasons.add(reason)
        self.mark(mask, reason)

    @property
    def ok(self) -> np.ndarray:
        return np.asarray(self.code == 0, dtype=bool)

    def fill_summary(self, summary: IngestSummary, extra_bad: list[tuple[int, str]]) -> None:
        counts = np.bincount(self.code, minlength=len(self.reasons))
        bad_counter: Counter[str] = Counter(r for _, r in extra_bad)
        for code in np.flatnonzero(counts[1:]) + 1:
            reason = self.reasons[code]
            target = summary.excluded if reason in self.excluded_reasons else bad_counter
            target[reason] = target.get(reason, 0) + int(counts[code])
        summary.bad_rows = dict(bad_counter)
        bad_codes = [i for i, r in enumerate(self.reasons) if i and r not in self.excluded_reasons]
        listed = list(extra_bad)
        if bad_codes:
            idx = np.flatnonzero(np.isin(self.code, bad_codes))[:FIRST_BAD_LISTED]
            listed += [(int(self.lines[i]), self.reasons[self.code[i]]) for i in idx]
        summary.first_bad = sorted(listed)[:FIRST_BAD_LISTED]


# --- reading ---------------------------------------------------------------------------------


def _open_text(path: Path) -> io.TextIOBase:
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")


def _first_line(path: Path) -> str:
    try:
        with _open_text(path) as f:
            return f.readline().strip("\r\n").lstrip("\ufeff")
    except _READ_ERRORS as exc:
        raise IngestError(f"{path}: cannot read: {exc}") from exc


def _read_csv(
    path: Path, *, names: tuple[str, ...] | None = None
) -> tuple[pd.DataFrame, np.ndarray, list[tuple[int, str]]]:
    """All columns as strings ('' for empty), file line number per row, malformed lines.

    Malformed lines (too many fields) are collected from the parser's warnings, which carry
    their line numbers; blank lines are kept as empty rows so that row -> line stays exact.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pd.errors.ParserWarning)
        try:
            df = pd.read_csv(
                path,
                dtype=str,
                keep_default_na=False,
                na_filter=False,
                skip_blank_lines=False,
                on_bad_lines="warn",
                header=None if names else 0,
                names=list(names) if names else None,
                encoding="utf-8",
                encoding_errors="replace",
                compression="infer",
            )
        except _READ_ERRORS as exc:
            raise IngestError(f"{path}: cannot read as CSV: {exc}") from exc
    malformed: list[tuple[int, str]] = []
    for w in caught:
        for line, _ in _SKIPPED_LINE.findall(str(w.message)):
            malformed.append((int(line), "malformed_line"))
    df.columns = [str(c).strip().lstrip("\ufeff") for c in df.columns]
    first = 1 if names else 2
    skipped = np.array(sorted(n for n, _ in malformed), dtype=np.int64)
    all_lines = np.arange(first, first + len(df) + len(skipped), dtype=np.int64)
    lines = np.setdiff1d(all_lines, skipped, assume_unique=True) if len(skipped) else all_lines
    return df, lines, malformed


def _require(df: pd.DataFrame, path: Path, fmt: str, required: frozenset[str]) -> None:
    missing = sorted(required - set(df.columns))
    if missing:
        raise IngestError(
            f"{path}: not a {fmt} file: missing column(s) {', '.join(missing)}; "
            f"columns found: {', '.join(map(str, df.columns)) or '(none)'}"
        )


def _blank(s: pd.Series) -> np.ndarray:
    return np.asarray(s.str.strip() == "", dtype=bool)


def _blank_rows(df: pd.DataFrame) -> np.ndarray:
    """Rows that were empty lines (every field empty)."""
    mask = np.ones(len(df), dtype=bool)
    for col in df.columns:
        mask &= np.asarray(df[col] == "", dtype=bool)
    return mask


def _to_str(s: pd.Series | np.ndarray) -> pd.Series:
    """Text column: stripped, '' -> NaN, pandas ``str`` dtype."""
    series = pd.Series(s, dtype=STR_DTYPE).str.strip()
    return series.where(series != "", np.nan)


def _numeric(s: pd.Series) -> np.ndarray:
    return np.array(pd.to_numeric(s, errors="coerce"), dtype=np.float64)  # writable copy


def _datetime_to_ms(ts: pd.Series) -> np.ndarray:
    """tz-aware datetimes -> epoch ms as float (NaN for NaT), whatever the resolution."""
    ok = np.asarray(ts.notna(), dtype=bool)
    out = np.full(len(ts), np.nan)
    if ok.any():
        out[ok] = ts[ok].dt.as_unit("ms").array.asi8
    return out


def _iso_to_ms(s: pd.Series, *, assume_utc: bool) -> tuple[np.ndarray, np.ndarray]:
    """ISO-8601 text -> (epoch ms float, NaN if unparseable; mask of naive values)."""
    text = s.str.strip()
    naive = np.zeros(len(s), dtype=bool)
    if not assume_utc:
        naive = ~np.asarray(text.str.contains(_ZONED_ISO), dtype=bool) & ~np.asarray(
            text.str.fullmatch(PLAIN_DATE_PATTERN, flags=re.ASCII), dtype=bool
        )
    ms = _datetime_to_ms(pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce"))
    failed = np.isnan(ms)
    if failed.any():  # "... UTC" is not ISO-8601 but is common (REES46): retry just those
        retry = text[failed].str.replace(r"\s*UTC$", "+00:00", regex=True)
        ms[failed] = _datetime_to_ms(
            pd.to_datetime(retry, format="ISO8601", utc=True, errors="coerce")
        )
    return ms, naive


def _check_time(rows: _Rows, ms: np.ndarray, col: str, min_ms: int, max_ms: int) -> None:
    rows.mark(np.isnan(ms), f"bad_value:{col}")
    with np.errstate(invalid="ignore"):
        rows.mark(ms < min_ms, f"time_too_old:{col}")
        rows.mark(ms > max_ms, f"time_in_future:{col}")


def _check_price(rows: _Rows, s: pd.Series, col: str) -> np.ndarray:
    """Price column: blank -> NaN (unknown); non-numeric, non-finite or negative -> bad."""
    blank = _blank(s)
    price = _numeric(s)
    rows.mark(~blank & ~np.isfinite(price), f"bad_value:{col}")
    with np.errstate(invalid="ignore"):
        rows.mark(price < 0, f"bad_value:{col}")
    price[blank] = np.nan
    return price


def _check_quantity(rows: _Rows, qty: np.ndarray, col: str) -> np.ndarray:
    """Quantity floats -> int64; non-integral, < 1 or > MAX_QUANTITY -> bad."""
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(qty) | (qty != np.floor(qty)) | (qty < 1) | (qty > MAX_QUANTITY)
    rows.mark(bad, f"bad_value:{col}")
    return np.where(bad, 1, qty).astype(np.int64)


def _time_bounds(min_event_time_ms: int, now_ms: int | None, skew_ms: int) -> tuple[int, int]:
    now = int(time.time() * 1000) if now_ms is None else now_ms
    return min_event_time_ms, now + skew_ms


def _finish(
    path: Path,
    fmt: str,
    rows: _Rows,
    malformed: list[tuple[int, str]],
    columns: dict[str, Any],
    started: float,
) -> AdapterResult:
    """Keep the ok rows, build the canonical frame sorted by (time, user), fill the summary."""
    keep = rows.ok
    data: dict[str, Any] = {}
    for name in CANONICAL_COLUMNS:
        value = columns.get(name)
        if name == "event_time_ms":
            data[name] = np.asarray(value)[keep].astype(np.int64)
        elif name == "price":
            data[name] = (
                np.full(int(keep.sum()), np.nan)
                if value is None
                else np.asarray(value, dtype=np.float64)[keep]
            )
        elif name == "quantity":
            data[name] = (
                np.ones(int(keep.sum()), dtype=np.int64)
                if value is None
                else np.asarray(value, dtype=np.int64)[keep]
            )
        elif value is None:
            data[name] = pd.Series(np.full(int(keep.sum()), np.nan), dtype=STR_DTYPE)
        else:
            data[name] = pd.Series(value, dtype=STR_DTYPE)[keep].reset_index(drop=True)
    events = pd.DataFrame(data, columns=list(CANONICAL_COLUMNS))
    events = sort_events(events)
    summary = IngestSummary(path=str(path), format=fmt)
    summary.rows_read = len(rows.code) + len(malformed)
    summary.events_out = len(events)
    rows.fill_summary(summary, malformed)
    summary.seconds = time.perf_counter() - started
    return AdapterResult(events=events, summary=summary)


def sort_events(events: pd.DataFrame) -> pd.DataFrame:
    """Stable sort by (event_time_ms, user_id): ties keep file order."""
    if len(events) == 0:
        return events.reset_index(drop=True)
    user_codes, _ = pd.factorize(events["user_id"], sort=True)
    order = np.lexsort((user_codes, events["event_time_ms"].to_numpy()))  # lexsort is stable
    return events.take(order).reset_index(drop=True)


def empty_events() -> pd.DataFrame:
    """A zero-row canonical frame with the right dtypes."""
    return pd.DataFrame(
        {
            name: pd.Series(
                [],
                dtype=(
                    np.int64
                    if name in ("event_time_ms", "quantity")
                    else np.float64
                    if name == "price"
                    else STR_DTYPE
                ),
            )
            for name in CANONICAL_COLUMNS
        }
    )


# --- formats ---------------------------------------------------------------------------------


def read_transactions(
    path: str | Path,
    *,
    min_event_time_ms: int = MIN_EVENT_TIME_MS_DEFAULT,
    now_ms: int | None = None,
    max_future_skew_ms: int = DAY_MS,
) -> AdapterResult:
    """UCI Online Retail order lines -> ``purchase`` / ``return`` events, one per line.

    InvoiceNo -> order_id, StockCode -> product_id, UnitPrice -> price, InvoiceDate (naive, read
    as UTC) -> time, CustomerID ``17850.0`` -> ``17850``. Cancellations (invoice ``C...`` or
    negative quantity) become ``return`` with a positive quantity. Lines without a CustomerID
    are guest checkouts: excluded (``excluded["guest"]``), not bad — they cannot be attributed
    to a user. Guests are set aside before any other check, so a guest line that is also
    malformed counts as a guest. Non-product stock codes (POST, M, BANK CHARGES...) are kept:
    they are real lines of the order as the customer paid it.
    """
    started = time.perf_counter()
    path = Path(path)
    df, lines, malformed = _read_csv(path)
    df = df.rename(columns={k: v for k, v in TRANSACTION_ALIASES.items() if k in df.columns})
    _require(df, path, "transactions", REQUIRED_COLUMNS["transactions"])
    rows = _Rows(len(df), lines)
    rows.exclude(_blank_rows(df), "blank_line")

    customer = df["CustomerID"].str.strip()
    rows.exclude(np.asarray(customer == "", dtype=bool), "guest")
    # '17850.0' -> '17850': the export wrote the id as a float; the id itself is an integer.
    customer = customer.str.removesuffix(".0")

    invoice = df["InvoiceNo"].str.strip()
    rows.mark(np.asarray(invoice == "", dtype=bool), "missing_field:InvoiceNo")
    rows.mark(_blank(df["StockCode"]), "missing_field:StockCode")

    qty_raw = _numeric(df["Quantity"])
    is_return = np.asarray(invoice.str.startswith("C"), dtype=bool) | (
        np.nan_to_num(qty_raw, nan=0.0) < 0
    )
    qty = _check_quantity(rows, np.abs(qty_raw), "Quantity")
    price = _check_price(rows, df["UnitPrice"], "UnitPrice")

    ms, _ = _iso_to_ms(df["InvoiceDate"], assume_utc=True)
    if np.isnan(ms).all() and len(ms):
        # The original UCI export writes "12/1/2010 8:26"; accept it when no ISO date parsed.
        ts = pd.to_datetime(df["InvoiceDate"], format="%m/%d/%Y %H:%M", utc=True, errors="coerce")
        ms = _datetime_to_ms(ts)
    lo, hi = _time_bounds(min_event_time_ms, now_ms, max_future_skew_ms)
    _check_time(rows, ms, "InvoiceDate", lo, hi)

    columns = {
        "event_time_ms": np.nan_to_num(ms, nan=0.0),
        "event_type": np.where(is_return, "return", "purchase"),
        "user_id": customer,
        "product_id": _to_str(df["StockCode"]),
        "price": price,
        "quantity": qty,
        "order_id": invoice,
    }
    return _finish(path, "transactions", rows, malformed, columns, started)


def read_rees46(
    path: str | Path,
    *,
    min_event_time_ms: int = MIN_EVENT_TIME_MS_DEFAULT,
    now_ms: int | None = None,
    max_future_skew_ms: int = DAY_MS,
) -> AdapterResult:
    """REES46 eCommerce events (view / cart / remove_from_cart / purchase).

    category = category_code when present, else category_id; user_session -> session_id.
    REES46 has no order id: purchases keep ``order_id`` missing.
    """
    started = time.perf_counter()
    path = Path(path)
    df, lines, malformed = _read_csv(path)
    _require(df, path, "rees46", REQUIRED_COLUMNS["rees46"])
    rows = _Rows(len(df), lines)
    rows.exclude(_blank_rows(df), "blank_line")

    etype = df["event_type"].str.strip().map(REES46_TYPES)
    rows.mark(np.asarray(etype.isna(), dtype=bool), "unknown_event_type:event_type")
    rows.mark(_blank(df["user_id"]), "missing_field:user_id")
    ts = pd.to_datetime(df["event_time"], format="%Y-%m-%d %H:%M:%S UTC", utc=True, errors="coerce")
    ms = _datetime_to_ms(ts)
    failed = np.isnan(ms)
    if failed.any():  # other spellings (ISO with zone) of the same instant
        iso_ms, naive = _iso_to_ms(df["event_time"][failed], assume_utc=False)
        iso_ms[naive] = np.nan  # REES46 times carry a zone; a naive one is a broken line
        ms[failed] = iso_ms
    lo, hi = _time_bounds(min_event_time_ms, now_ms, max_future_skew_ms)
    _check_time(rows, ms, "event_time", lo, hi)
    price = (
        _check_price(rows, df["price"], "price")
        if "price" in df.columns
        else np.full(len(df), np.nan)
    )

    category = _to_str(df["category_code"]) if "category_code" in df.columns else None
    if "category_id" in df.columns:
        cat_id = _to_str(df["category_id"])
        category = cat_id if category is None else category.fillna(cat_id)

    columns = {
        "event_time_ms": np.nan_to_num(ms, nan=0.0),
        "event_type": etype.fillna("view"),
        "user_id": df["user_id"].str.strip(),
        "product_id": _to_str(df["product_id"]),
        "category": category,
        "brand": _to_str(df["brand"]) if "brand" in df.columns else None,
        "price": price,
        "session_id": _to_str(df["user_session"]),
    }
    return _finish(path, "rees46", rows, malformed, columns, started)


def _taobao_headerless(first_line: str) -> bool:
    parts = first_line.split(",")
    return (
        len(parts) == 5
        and parts[3].strip() in TAOBAO_TYPES
        and all(p.strip().isdigit() for i, p in enumerate(parts) if i != 3)
    )


def read_taobao(
    path: str | Path,
    *,
    min_event_time_ms: int = MIN_EVENT_TIME_MS_DEFAULT,
    now_ms: int | None = None,
    max_future_skew_ms: int = DAY_MS,
) -> AdapterResult:
    """Taobao UserBehavior: pv -> view, cart -> cart, fav -> wishlist, buy -> purchase.

    ``timestamp`` is unix *seconds*. item_id -> product_id, category_id -> category. No price,
    session or order. The original file has no header; both forms are accepted.
    """
    started = time.perf_counter()
    path = Path(path)
    headerless = _taobao_headerless(_first_line(path))
    df, lines, malformed = _read_csv(path, names=TAOBAO_COLUMNS if headerless else None)
    _require(df, path, "taobao", REQUIRED_COLUMNS["taobao"])
    rows = _Rows(len(df), lines)
    rows.exclude(_blank_rows(df), "blank_line")

    etype = df["behavior"].str.strip().map(TAOBAO_TYPES)
    rows.mark(np.asarray(etype.isna(), dtype=bool), "unknown_event_type:behavior")
    rows.mark(_blank(df["user_id"]), "missing_field:user_id")
    seconds = _numeric(df["timestamp"])
    with np.errstate(invalid="ignore"):
        rows.mark(seconds != np.floor(seconds), "bad_value:timestamp")
    ms = seconds * 1000.0
    lo, hi = _time_bounds(min_event_time_ms, now_ms, max_future_skew_ms)
    _check_time(rows, ms, "timestamp", lo, hi)

    columns = {
        "event_time_ms": np.nan_to_num(ms, nan=0.0, posinf=0.0, neginf=0.0),
        "event_type": etype.fillna("view"),
        "user_id": df["user_id"].str.strip(),
        "product_id": _to_str(df["item_id"]),
        "category": _to_str(df["category_id"]) if "category_id" in df.columns else None,
    }
    return _finish(path, "taobao", rows, malformed, columns, started)


def _is_jsonl(path: Path) -> bool:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    return bool(suffixes) and suffixes[-1] in (".jsonl", ".ndjson", ".json")


def read_canonical(
    path: str | Path,
    *,
    min_event_time_ms: int = MIN_EVENT_TIME_MS_DEFAULT,
    now_ms: int | None = None,
    max_future_skew_ms: int = DAY_MS,
) -> AdapterResult:
    """Files already in the canonical shape: CSV (vectorised) or JSONL (one wire message a line).

    CSV: ``event_time`` (ISO-8601 with zone, or integer epoch ms — a CSV has no number type, so
    digits are ms here) or ``event_time_ms``; ``event_type``; ``user_id``; optional
    product_id, category, brand, price (blank = unknown), quantity (blank = 1; integral values
    such as ``2.0`` accepted, as in :mod:`features.validation`), session_id, order_id.
    JSONL: each line is validated by :func:`features.validation.validate`, exactly as the
    worker would (so digit strings as times are refused there, as on the wire).
    """
    path = Path(path)
    if _is_jsonl(path):
        return _read_canonical_jsonl(path, min_event_time_ms, now_ms, max_future_skew_ms)
    started = time.perf_counter()
    df, lines, malformed = _read_csv(path)
    _require(df, path, "canonical", REQUIRED_COLUMNS["canonical"])
    time_col = next((c for c in ("event_time", "event_time_ms") if c in df.columns), None)
    if time_col is None:
        raise IngestError(
            f"{path}: not a canonical file: missing column event_time (or event_time_ms); "
            f"columns found: {', '.join(map(str, df.columns))}"
        )
    rows = _Rows(len(df), lines)
    rows.exclude(_blank_rows(df), "blank_line")

    etype = df["event_type"].str.strip()
    rows.mark(np.asarray(etype == "", dtype=bool), "missing_field:event_type")
    rows.mark(~np.asarray(etype.isin(EVENT_TYPES), dtype=bool), "unknown_event_type:event_type")
    rows.mark(_blank(df["user_id"]), "missing_field:user_id")

    raw_time = df[time_col].str.strip()
    rows.mark(np.asarray(raw_time == "", dtype=bool), f"missing_field:{time_col}")
    digits = np.asarray(raw_time.str.fullmatch(r"-?\d{1,18}"), dtype=bool)
    ms = np.full(len(df), np.nan)
    ms[digits] = pd.to_numeric(raw_time[digits]).to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        rows.mark(digits & (ms >= 0) & (ms < NUMBER_TIME_MIN_MS), f"bad_value:{time_col}")
    if (~digits).any():
        iso_ms, naive = _iso_to_ms(raw_time[~digits], assume_utc=False)
        bad_naive = np.zeros(len(df), dtype=bool)
        bad_naive[~digits] = naive & ~np.isnan(iso_ms)
        rows.mark(bad_naive, f"bad_value:{time_col}")  # naive ISO: the zone would be a guess
        ms[~digits] = iso_ms
    lo, hi = _time_bounds(min_event_time_ms, now_ms, max_future_skew_ms)
    _check_time(rows, ms, time_col, lo, hi)

    price = (
        _check_price(rows, df["price"], "price")
        if "price" in df.columns
        else np.full(len(df), np.nan)
    )
    qty = np.ones(len(df), dtype=np.int64)
    if "quantity" in df.columns:
        qty_num = _numeric(df["quantity"])
        qty_num[_blank(df["quantity"])] = 1.0
        qty = _check_quantity(rows, qty_num, "quantity")

    columns: dict[str, Any] = {
        "event_time_ms": np.nan_to_num(ms, nan=0.0),
        "event_type": etype,
        "user_id": df["user_id"],  # kept as written: it is the partitioning key
        "price": price,
        "quantity": qty,
    }
    for name in OPTIONAL_STRING_COLUMNS:
        if name in df.columns:
            columns[name] = _to_str(df[name])
    return _finish(path, "canonical", rows, malformed, columns, started)


def _read_canonical_jsonl(
    path: Path, min_event_time_ms: int, now_ms: int | None, max_future_skew_ms: int
) -> AdapterResult:
    started = time.perf_counter()
    now = int(time.time() * 1000) if now_ms is None else now_ms
    policy = ValidationPolicy(
        min_event_time_ms=min_event_time_ms, max_future_skew_ms=max_future_skew_ms
    )
    events: list[ClickEvent] = []
    bad: Counter[str] = Counter()
    blank = 0
    first_bad: list[tuple[int, str]] = []
    rows_read = 0
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            for lineno, line in enumerate(f, start=1):
                rows_read += 1
                if not line.strip():
                    blank += 1
                    continue
                result = validate(line, now_ms=now, policy=policy)
                if isinstance(result, Invalid):
                    reason = f"{result.reason}:{result.field}" if result.field else result.reason
                    bad[reason] += 1
                    if len(first_bad) < FIRST_BAD_LISTED:
                        first_bad.append((lineno, reason))
                else:
                    events.append(result)
    except _READ_ERRORS as exc:
        raise IngestError(f"{path}: cannot read: {exc}") from exc
    frame = events_to_frame(events)
    summary = IngestSummary(
        path=str(path),
        format="canonical",
        rows_read=rows_read,
        events_out=len(frame),
        bad_rows=dict(bad),
        excluded={"blank_line": blank} if blank else {},
        first_bad=first_bad,
        seconds=time.perf_counter() - started,
    )
    return AdapterResult(events=frame, summary=summary)


def events_to_frame(events: list[ClickEvent]) -> pd.DataFrame:
    """ClickEvents -> canonical frame (sorted by time, user)."""
    if not events:
        return empty_events()
    data: dict[str, Any] = {}
    for name in CANONICAL_COLUMNS:
        values = [getattr(e, name) for e in events]
        if name in ("event_time_ms", "quantity"):
            data[name] = np.array(values, dtype=np.int64)
        elif name == "price":
            data[name] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        else:
            data[name] = pd.Series(values, dtype=STR_DTYPE)
    return sort_events(pd.DataFrame(data, columns=list(CANONICAL_COLUMNS)))


# --- detection and dispatch ------------------------------------------------------------------


def detect_format(path: str | Path) -> str:
    """Guess the format from extension and header; ``IngestError`` naming the columns if none."""
    path = Path(path)
    if not path.is_file():
        raise IngestError(f"{path}: no such file")
    if _is_jsonl(path):
        return "canonical"
    header = _first_line(path)
    if _taobao_headerless(header):
        return "taobao"
    cols = {c.strip().strip('"') for c in next(csv.reader([header]), [])}
    cols |= {TRANSACTION_ALIASES[c] for c in cols if c in TRANSACTION_ALIASES}
    for fmt in ("transactions", "rees46", "taobao", "canonical"):
        if REQUIRED_COLUMNS[fmt] <= cols and (
            fmt != "canonical" or bool({"event_time", "event_time_ms"} & cols)
        ):
            return fmt
    expected = "; ".join(f"{f}: {', '.join(sorted(c))}" for f, c in REQUIRED_COLUMNS.items())
    raise IngestError(
        f"{path}: unknown format; columns found: {', '.join(sorted(cols)) or '(none)'}; "
        f"expected one of -> {expected} (canonical also needs event_time or event_time_ms)"
    )


def read_events(
    path: str | Path,
    format: Format | str = "auto",
    *,
    min_event_time_ms: int = MIN_EVENT_TIME_MS_DEFAULT,
    now_ms: int | None = None,
    max_future_skew_ms: int = DAY_MS,
) -> AdapterResult:
    """Read a file in ``format`` (or detect it) into the canonical frame plus a summary."""
    path = Path(path)
    if not path.is_file():
        raise IngestError(f"{path}: no such file")
    fmt = detect_format(path) if format == "auto" else format
    readers = {
        "rees46": read_rees46,
        "taobao": read_taobao,
        "transactions": read_transactions,
        "canonical": read_canonical,
    }
    if fmt not in readers:
        raise IngestError(f"unknown format {fmt!r}; choose auto or one of {', '.join(FORMATS)}")
    return readers[fmt](
        path,
        min_event_time_ms=min_event_time_ms,
        now_ms=now_ms,
        max_future_skew_ms=max_future_skew_ms,
    )


# --- replay ----------------------------------------------------------------------------------


def _nullable(s: pd.Series) -> list[Any]:
    values: list[Any] = s.astype(object).where(s.notna(), None).tolist()
    return values


def iter_events(df: pd.DataFrame) -> Iterator[ClickEvent]:
    """Canonical frame rows as ClickEvents (missing values -> ``None``), in frame order."""
    cols = [
        df["event_time_ms"].astype(np.int64).tolist(),
        df["event_type"].astype(object).tolist(),
        df["user_id"].astype(object).tolist(),
        _nullable(df["product_id"]),
        _nullable(df["category"]),
        _nullable(df["brand"]),
        _nullable(df["price"]),
        df["quantity"].astype(np.int64).tolist(),
        _nullable(df["session_id"]),
        _nullable(df["order_id"]),
    ]
    for values in zip(*cols, strict=True):
        yield ClickEvent(*values)


def to_wire_bytes(df: pd.DataFrame) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` Kafka records for replay: key = user_id (UTF-8), value = JSON event."""
    dumps = orjson.dumps
    return [(e.user_id.encode("utf-8"), dumps(e.to_wire())) for e in iter_events(df)]


__all__ = [
    "CANONICAL_COLUMNS",
    "FORMATS",
    "AdapterResult",
    "IngestError",
    "IngestSummary",
    "detect_format",
    "empty_events",
    "events_to_frame",
    "iter_events",
    "read_canonical",
    "read_events",
    "read_rees46",
    "read_taobao",
    "read_transactions",
    "sort_events",
    "to_wire_bytes",
]
