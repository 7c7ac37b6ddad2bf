"""The ``train-and-export`` command: argument parsing and error reporting around the pipeline.

Owns the command line only; the work is in :mod:`training.pipeline`. Errors a user can fix
(bad file, unknown format, cutoff outside the data, too few users) end with one clear line
and exit code 2, not a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from features.demand import SeriesLevel, parse_level
from features.windows import DAY_MS
from training.outofcore import DEFAULT_MEMORY_LIMIT, EventStore
from training.resources import StageLog

log = logging.getLogger("train-and-export")

OFFLINE_MIN_EVENT_TIME_MS = -2_208_988_800_000
"""1900-01-01T00:00:00Z: the floor for history files (a date before it is a broken row)."""

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": DAY_MS, "w": 7 * DAY_MS}


def parse_duration_ms(text: str) -> int:
    """``7d``, ``12h``, ``1w`` → milliseconds."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 7d, 12h, 1w")
    value = int(float(match.group(1)) * _UNIT_MS[match.group(2)])
    if value <= 0:
        raise argparse.ArgumentTypeError("duration must be positive")
    return value


def parse_instant_ms(text: str) -> int:
    """ISO date or date-time; a bare date is 00:00 UTC, a naive time is taken as UTC."""
    try:
        ts = pd.Timestamp(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date: {exc}") from None
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return int(ts.value // 1_000_000)


def add_duckdb_arguments(p: argparse.ArgumentParser) -> None:
    """DuckDB's resources, for every command that runs it."""
    p.add_argument(
        "--duckdb-memory",
        default=DEFAULT_MEMORY_LIMIT,
        help=f"duckdb engine: DuckDB's memory limit, beyond it it spills ({DEFAULT_MEMORY_LIMIT})",
    )
    p.add_argument(
        "--duckdb-temp-dir",
        type=Path,
        help="duckdb engine: where its database and spill files go (the system temp dir)",
    )


def _demand_level(text: str) -> SeriesLevel:
    try:
        return parse_level(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train-and-export",
        description="Train the demand/churn LSTM on historical events, evaluate it against "
        "baselines on a time split, and export ONNX + manifest.",
    )
    p.add_argument(
        "--events",
        type=Path,
        help="events file; omit to use the seeded generator. With --engine duckdb: canonical "
        "CSV (.gz) or Parquet files, a glob allowed (quote it)",
    )
    p.add_argument(
        "--cells",
        help="train on per-(user, window) cells (Parquet shards, a glob allowed) made by "
        "python -m training.cells or by its SQL on another engine, with the same --window and "
        "--cutoff, instead of events",
    )
    p.add_argument(
        "--format",
        default="auto",
        choices=["auto", "canonical", "rees46", "taobao", "transactions"],
    )
    p.add_argument(
        "--engine",
        choices=["pandas", "duckdb"],
        default="pandas",
        help="how the window features are built: pandas (events in memory; every format) or "
        "duckdb (out of core, memory bounded by users x windows; canonical files only)",
    )
    add_duckdb_arguments(p)
    p.add_argument("--window", type=parse_duration_ms, default="7d", help="window length (7d)")
    p.add_argument("--seq-len", type=int, default=12, help="windows per input sequence (12)")
    p.add_argument("--horizon", type=int, default=4, help="windows predicted ahead (4)")
    p.add_argument("--lookback", type=int, help="score users active in the last N windows")
    p.add_argument(
        "--cutoff",
        type=parse_instant_ms,
        help="train strictly before this instant; predictions cover [cutoff, cutoff+H*window). "
        "Default: the data end minus horizon+1 windows, at 00:00 UTC",
    )
    p.add_argument("--end", type=parse_instant_ms, help="data end (default: last event)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument(
        "--epochs", type=int, default=12, help="most epochs; the count is chosen on a pseudo-cutoff"
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--seeds", type=int, default=3, help="models averaged into the exported one (3)")
    p.add_argument("--cell", choices=["lstm"], default="lstm")
    p.add_argument("--units", type=int, default=32)
    p.add_argument("--val-windows", type=int, default=4)
    p.add_argument("--quantize", action="store_true", help="also export dynamic int8")
    p.add_argument(
        "--cv-folds", type=int, default=0, help="rolling-origin folds before the cutoff (0)"
    )
    p.add_argument(
        "--demand",
        type=_demand_level,
        metavar="LEVEL",
        help="also train the inventory demand model (issue 17) on series by LEVEL: category, "
        "product or family:N (the first N characters of the product id), beside the dense "
        "products; written to OUT/demand. Pandas engine only",
    )
    p.add_argument("--gen-users", type=int, default=3000, help="generator: users")
    p.add_argument("--gen-days", type=int, default=364, help="generator: days of history")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _open_store(args: argparse.Namespace) -> EventStore:
    """The duckdb engine's events: canonical files only (it applies the canonical rules)."""
    from ingest.adapters import IngestError, detect_format
    from training.outofcore import EngineConfig, is_parquet, open_events, resolve_paths

    if args.format not in ("auto", "canonical"):
        raise IngestError(
            f"--engine duckdb reads canonical files only, not {args.format}; "
            "use --engine pandas (or convert the file to canonical first)"
        )
    files = resolve_paths([args.events])
    if args.format == "auto":
        for path in files:
            fmt = "canonical" if is_parquet(path) else detect_format(path)
            if fmt != "canonical":
                raise IngestError(
                    f"{path}: a {fmt} file; --engine duckdb reads canonical files only, "
                    "use --engine pandas"
                )
    config = EngineConfig(memory_limit=args.duckdb_memory, temp_dir=args.duckdb_temp_dir)
    return open_events(files, min_event_time_ms=OFFLINE_MIN_EVENT_TIME_MS, config=config)


def _store_source(store: EventStore) -> dict[str, Any]:
    log.info("%s", store.summary.describe())
    return {"engine": "duckdb", "ingest": store.summary.to_dict()}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from features.input_kind import input_kind_of
    from ingest.adapters import IngestError, IngestSummary, read_events
    from training.pipeline import TrainConfig, TrainingError

    stack = contextlib.ExitStack()
    stages = StageLog()
    stack.callback(stages.close)
    try:
        if args.demand is not None and (args.cells is not None or args.engine == "duckdb"):
            raise IngestError("--demand reads the events in memory: use --engine pandas")
        stages.start("read")
        events: pd.DataFrame | EventStore
        source: dict[str, Any]
        summary: IngestSummary | None = None  # what the reader refused, for the error below
        if args.cells is not None:
            from training.cells import open_cells
            from training.outofcore import EngineConfig

            if args.events is not None:
                raise IngestError("--cells and --events are two inputs; give one")
            if args.cutoff is None:
                raise IngestError("--cells needs the --cutoff the cells were laid on")
            config = EngineConfig(memory_limit=args.duckdb_memory, temp_dir=args.duckdb_temp_dir)
            events = store = stack.enter_context(open_cells([args.cells], config))
            source = {"cells": str(args.cells), **_store_source(store)}
            summary = store.summary
            n_rows, last_ms, n_users = store.rows, store.stop_ms, store.users
            type_counts = dict(store.event_types)
        elif args.engine == "duckdb":
            if args.events is None:
                raise IngestError("--engine duckdb reads --events files; give one")
            events = store = stack.enter_context(_open_store(args))
            source = {"events": str(args.events), **_store_source(store)}
            summary = store.summary
            n_rows, last_ms, n_users = store.rows, store.stop_ms, store.users
            type_counts = dict(store.event_types)
        elif args.events is not None:
            # History of any age trains: the worker's live-stream floor (min_event_time,
            # 2000-01-01 by default) guards against clock bugs in live traffic, not old files.
            result = read_events(
                args.events, args.format, min_event_time_ms=OFFLINE_MIN_EVENT_TIME_MS
            )
            log.info("%s", result.summary.describe())
            events = result.events
            summary = result.summary
            source = {
                "events": str(args.events),
                "ingest": result.summary.to_dict(),
            }
        else:
            from ingest.generator import generate_clickstream

            events = generate_clickstream(
                n_users=args.gen_users, start="2024-01-01", days=args.gen_days, seed=args.seed
            )
            source = {
                "generator": {"users": args.gen_users, "days": args.gen_days, "seed": args.seed}
            }
        if isinstance(events, pd.DataFrame):
            n_rows = len(events)
            last_ms = int(events["event_time_ms"].max()) if n_rows else 0
            n_users = int(events["user_id"].nunique())
            type_counts = {str(k): int(v) for k, v in events["event_type"].value_counts().items()}
        if n_rows == 0:
            why = summary.explain() if summary is not None else None
            raise TrainingError("no valid events to train on" + (f" ({why})" if why else ""))
        cutoff = args.cutoff
        if cutoff is None:
            day = DAY_MS
            cutoff = (last_ms - (args.horizon + 1) * args.window) // day * day
        source["events_rows"] = n_rows
        source["users"] = n_users
        # The worker compares this with the stream it scores (features.input_kind): a model
        # that never saw a view or a cart must say so, or it scores clickstream silently.
        source["event_types"] = dict(sorted(type_counts.items()))
        source["input_kind"] = input_kind_of(source["event_types"])
        cfg = TrainConfig(
            out=args.out,
            cutoff_ms=cutoff,
            window_ms=args.window,
            seq_len=args.seq_len,
            horizon=args.horizon,
            lookback=args.lookback,
            end_ms=args.end,
            val_windows=args.val_windows,
            epochs=args.epochs,
            seed=args.seed,
            seeds=args.seeds,
            cell=args.cell,
            units=args.units,
            quantize=args.quantize,
            cv_folds=args.cv_folds,
            source=source,
        )
        from training.pipeline import run

        report = run(events, cfg, stages)
        if args.demand is not None:
            from training.demand_model import DemandConfig
            from training.demand_pipeline import run_demand

            assert isinstance(events, pd.DataFrame)
            demand = DemandConfig(horizon=args.horizon, seed=args.seed)
            run_demand(events, cfg.spec, args.demand, args.out / "demand", demand)
            log.info("demand model written to %s", args.out / "demand")
    except (IngestError, TrainingError, ValueError) as exc:
        log.error("%s", exc)
        print(f"train-and-export: error: {exc}", file=sys.stderr)
        return 2
    finally:
        stack.close()
    headline = report.get("metrics", {})
    log.info("model %s written to %s", report["model_version"], args.out)
    if headline:
        log.info("see %s for model vs baselines", args.out / "report.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
