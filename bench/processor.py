"""The worker's processor alone, on generator events, for profiling without a broker.

Owns one entry point: ``python -m bench.processor [--events N] [--users U]`` builds the bench's
generator dataset (:func:`bench.worker.harness.make_dataset`) and runs it through
:func:`bench.worker.phases.run_processor_only` (the worker's own :class:`stream.processor.Processor`
with a dict store, in micro-batches, signals serialised as the agent does, the collector tuned
as the worker tunes it), then prints the phase's figures. The full harness (``python -m
bench.worker``) measures the same phase beside the worker; this one is small enough to run
under a sampling profiler, e.g. ``py-spy record -f raw -- python -m bench.processor``, and
costs no Kafka.

``--repeat N`` runs the phase N times on the same events (a fresh processor each time) and
reports each run's rate, their median and their spread: this machine's rate drifts by ±10 %
within an hour (2026-12-07: 12,890-16,920 events/s on the same code), so a change worth a few
percent is told from the drift only by runs side by side, the old code's and the new's
alternated.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys

log = logging.getLogger("bench.processor")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.processor", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000, help="generator events")
    parser.add_argument("--users", type=int, default=20_000, help="generator users")
    parser.add_argument("--repeat", type=int, default=1, help="runs of the phase (median)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from bench.worker.harness import BenchConfig, make_dataset
    from bench.worker.phases import run_processor_only
    from settings import load_settings

    data = make_dataset(BenchConfig(events=args.events, users=args.users))
    settings = load_settings()
    runs = [run_processor_only(settings, data.records) for _ in range(args.repeat)]
    figures = runs[-1]
    for name, value in figures.items():
        if not isinstance(value, dict | list):
            log.info("%-32s %s", name, f"{value:,.4g}" if isinstance(value, float) else value)
    if args.repeat > 1:
        rates = [float(run["events_per_s"]) for run in runs]
        log.info("%-32s %s", "runs_events_per_s", " ".join(f"{r:,.0f}" for r in rates))
        median = statistics.median(rates)
        log.info("%-32s %s", "median_events_per_s", f"{median:,.4g}")
        log.info("%-32s %s", "spread", f"{(max(rates) - min(rates)) / median:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
