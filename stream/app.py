"""Entry point of ``faust -A stream.app worker``: the worker built from the environment.

Faust finds the app as this module's ``app``, so the module builds one worker at import, from
:func:`settings.load_settings`, through :func:`stream.worker.create_worker`; everything else
(tests, the bench, the demo) calls the factory itself. A worker that cannot start (a model that
does not match, a Faust without a part the worker relies on, Kafka client options that do not
hold) says why on stderr and exits 3 (the model) or 2 (the rest), before it joins the group.
"""

from __future__ import annotations

import logging
import sys

from settings import load_settings
from stream import memory
from stream.worker import StartupError, Worker, create_worker

log = logging.getLogger(__name__)


def create_or_exit() -> Worker:
    settings = load_settings()
    try:
        worker = create_worker(settings)
    except StartupError as exc:
        log.critical("refusing to start: %s", exc)
        print(f"clicksignals worker: refusing to start: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    # Here, not in the factory: the collector is the process's, and tests build workers in
    # theirs.
    memory.tune_collector(settings.worker.gc_young_threshold)
    return worker


worker = create_or_exit()
app = worker.app
