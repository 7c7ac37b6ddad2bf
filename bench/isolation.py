"""Isolation benchmark: what finding one poison message in a micro-batch costs.

``python -m bench.isolation`` runs the processor alone (no broker) on the 512-message
scenario of ``tests/stream/test_poison.py`` -- 2,600 generated events of warm-up, then one
batch of 511 events and one purchase for which the scorer raises -- and prints the median time
of that batch (5 runs each) without the poison message and with it, and the number of extra
processor runs the bisection took. Figures, not assertions (docs/reliability.md quotes them).
"""

from __future__ import annotations

import logging
import statistics
import time

from serving.scorer import load_model
from stream.processor import BatchOutput, DictStore, Processor
from tests.support import poison as scenario

log = logging.getLogger(__name__)


def _batch_seconds(
    proc: Processor, store: DictStore, with_poison: bool
) -> tuple[float, BatchOutput]:
    offsets = [0] * scenario.PARTITIONS
    warm = scenario.keyed_messages(scenario.STREAM[:2600], offsets)
    for lo in range(0, len(warm), 512):
        store.apply(proc.process(warm[lo : lo + 512]).writes)
    pairs = list(scenario.STREAM[2600:3111])
    pairs.insert(300, (scenario.POISON_USER.encode(), scenario.POISON_EVENT))
    batch = scenario.keyed_messages(pairs, offsets)
    if not with_poison:
        batch.pop(300)
    started = time.perf_counter()
    out = proc.process(batch)
    return time.perf_counter() - started, out


def main(repeats: int = 5) -> None:
    # The poisoned runs log each isolation at WARNING/ERROR with a traceback: not the figures.
    logging.basicConfig(level=logging.CRITICAL)
    scorer = load_model(scenario.MODEL_DIR)
    faulty = scenario.FaultyScorer(scorer, scenario.poison_sequence(scorer))
    for label, model, with_poison in (("clean", scorer, False), ("poisoned", faulty, True)):
        times: list[float] = []
        out = BatchOutput()
        for _ in range(repeats):
            store = DictStore()
            seconds, out = _batch_seconds(scenario.make_processor(model, store), store, with_poison)
            times.append(seconds)
        print(  # the benchmark's report is its output
            f"{label:8s} batch of {512 if with_poison else 511}: median "
            f"{1000 * statistics.median(times):.1f} ms over {repeats} runs; extra runs "
            f"{out.isolation_runs}, processing errors {out.processing_errors}"
        )


if __name__ == "__main__":
    main()
