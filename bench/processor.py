"""The worker's processor alone, on generator events, for profiling without a broker.

Owns one entry point: ``python -m bench.processor [--events N] [--users U]`` builds the bench's
generator dataset (:func:`bench.worker.harness.make_dataset`) and runs it through
:func:`bench.worker.phases.run_processor_only` (the worker's own :class:`stream.processor.Processor`
with a dict store, in micro-batches, signals serialised as the agent does, the collector tuned
as the worker tunes it), then prints the phase's figures. The full harness (``python -m
bench.worker``) measures the same phase beside the worker; this one is small enough to run
under a sampling profiler, e.g. ``py-spy record -f raw -- python -m bench.processor``, and
costs no Kafka.
"""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger("bench.processor")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.processor", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000, help="generator events")
    parser.add_argument("--users", type=int, default=20_000, help="generator users")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from bench.worker.harness import BenchConfig, make_dataset
    from bench.worker.phases import run_processor_only
    from settings import load_settings

    data = make_dataset(BenchConfig(events=args.events, users=args.users))
    figures = run_processor_only(load_settings(), data.records)
    for name, value in figures.items():
        if not isinstance(value, dict | list):
            log.info("%-32s %s", name, f"{value:,.4g}" if isinstance(value, float) else value)
    return 0


if __name__ == "__main__":
    sys.exit(main())
