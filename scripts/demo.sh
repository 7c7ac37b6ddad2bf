#!/usr/bin/env bash
# The README's first command: make the clone runnable (scripts/bootstrap.sh), then run the whole
# system locally — Kafka, topics, the worker with the shipped model, replayed traffic — and
# shut it down. Arguments go to `clicksignals demo` (e.g. --events FILE, --rate N).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
exec .venv/bin/clicksignals demo "$@"
