"""``python -m bench.worker``: the worker benchmark's one entry point (:mod:`bench.worker.cli`)."""

import sys

from bench.worker.cli import main

sys.exit(main())
