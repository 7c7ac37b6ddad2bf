"""Which distribution's quantile to serve: the ZIP against the posterior's ZINB, on one model.

Owns one diagnostic for issue 14's MAE target: ``python -m bench.served_distribution RUN_DIR
EVENTS [RUN_DIR EVENTS ...] [--format F]`` reads a ``train-and-export`` output (its
``report.json`` and ``predictions.csv``: each customer's mean, P(no order) and actual order
days at the cutoff) and the events file it was trained on, and prints, for the customers at
the cutoff, the MAE and bias of

* the model's mean (``mean_orders``),
* the zero-inflated Poisson's quantile (``zip_quantile``, what models served before the shape),
* the zero-inflated negative binomial's of shape ``r + x`` (``zinb_quantile``, served since),
* and what the run serves (``expected_orders``),

the two quantiles at the level that keeps the run's served total (the model's or the prior's,
as its ``training.level`` says), so they differ only in the distribution. ``x``, each
customer's repeat order days before the cutoff, is read from the events with the project's
reader (:func:`ingest.adapters.read_events`) and BG/NBD's summary
(:func:`training.clv.rfm_from_orders`), as training reads it from the window features; ``r``
is the run's prior's. The quantiles are :mod:`features.forecast`'s own.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.forecast import posterior_shape, quantile_forecast, total_level

log = logging.getLogger("bench.served_distribution")


def repeat_days_at(events: Path, fmt: str, cutoff_ms: int, users: pd.Series) -> np.ndarray:
    """Each of ``users``' repeat order days before ``cutoff_ms`` (0 for a user without)."""
    from ingest.adapters import read_events
    from training.cli import OFFLINE_MIN_EVENT_TIME_MS
    from training.clv import rfm_from_orders

    frame = read_events(events, fmt, min_event_time_ms=OFFLINE_MIN_EVENT_TIME_MS).events
    orders = frame[frame["event_type"] == "purchase"]
    ids, x, _, _ = rfm_from_orders(
        orders["user_id"].astype(str).to_numpy(),
        orders["event_time_ms"].to_numpy(np.float64),
        float(cutoff_ms),
    )
    known = pd.Series(x, index=ids).reindex(users.astype(str)).fillna(0.0)
    return np.asarray(known.to_numpy(np.float64), dtype=np.float64)


def compare(run: Path, events: Path, fmt: str) -> dict[str, Any]:
    """The four forecasts' MAE and bias at the run's cutoff."""
    report = json.loads((run / "report.json").read_text())
    extra = report["extra"]
    prior = extra["prior"]
    r = float(prior[prior["model"]]["r"])
    rows = pd.read_csv(run / "predictions.csv")
    rows = rows[rows["actual_orders"].notna()]
    cutoff_ms = int(pd.Timestamp(extra["split"]["cutoff"]).value // 1_000_000)
    x = repeat_days_at(events, fmt, cutoff_ms, rows["user_id"])
    mean = rows["mean_orders"].to_numpy(np.float64)
    p0 = rows["churn_probability"].to_numpy(np.float64)
    actual = rows["actual_orders"].to_numpy(np.float64)
    level = extra["training"]["level"]
    scale = (
        float(level["prior_total"]) / max(float(mean.sum()), 1e-12)
        if level["source"] == "prior"
        else 1.0
    )
    shape = posterior_shape(r, x)
    forecasts = {
        "mean": mean,
        "zip_quantile": quantile_forecast(mean, p0, total_level(mean, p0, scale=scale)),
        "zinb_quantile": quantile_forecast(
            mean, p0, total_level(mean, p0, scale=scale, shape=shape), shape
        ),
        "served": rows["expected_orders"].to_numpy(np.float64),
    }
    bgnbd = report["models"]["bgnbd"]["orders"]
    return {
        "run": run.name,
        "customers": len(rows),
        "r": r,
        "median_repeat_days": float(np.median(x)),
        "served_kind": extra["orders_forecast"].get("kind", "zip_quantile"),
        "mae": {k: float(np.abs(v - actual).mean()) for k, v in forecasts.items()},
        "bias": {k: float(v.sum() / max(actual.sum(), 1e-12) - 1) for k, v in forecasts.items()},
        "bgnbd": {"mae": float(bgnbd["mae"]), "bias": float(bgnbd["bias"])},
    }


def render(results: list[dict[str, Any]]) -> str:
    head = (
        "| run | customers | r | median x | mean | ZIP quantile | ZINB quantile | served | "
        "BG/NBD | bias (served) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for res in results:
        mae = res["mae"]
        lines.append(
            f"| {res['run']} | {res['customers']:,} | {res['r']:.2f} | "
            f"{res['median_repeat_days']:.0f} | {mae['mean']:.4f} | {mae['zip_quantile']:.4f} | "
            f"{mae['zinb_quantile']:.4f} | {mae['served']:.4f} ({res['served_kind']}) | "
            f"{res['bgnbd']['mae']:.4f} | {res['bias']['served']:+.1%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.served_distribution", description=__doc__
    )
    parser.add_argument("pairs", nargs="+", help="RUN_DIR EVENTS, one pair per run")
    parser.add_argument("--format", default="auto", help="the events files' format (auto)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if len(args.pairs) % 2:
        parser.error("give a RUN_DIR and an EVENTS file for each run")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    pairs = list(zip(args.pairs[::2], args.pairs[1::2], strict=True))
    results = [compare(Path(run), Path(events), args.format) for run, events in pairs]
    log.info("%s", render(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
