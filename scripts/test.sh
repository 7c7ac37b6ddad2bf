#!/usr/bin/env bash
# The project's full check, as the README runs it and CI (.ci/run) runs it:
# lint, format check, type check, then every test tier.
#
# Kafka-tier tests start the project's own broker (ops/kafka_local/) unless
# CLICKSIGNALS_TEST_BOOTSTRAP names one; with CI=true they fail instead of skipping when no
# broker can be had. CI is read, never set, here.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff check" >&2
ruff check .
echo "== ruff format --check" >&2
ruff format --check .
echo "== mypy" >&2
mypy
echo "== pytest" >&2
# Exit code 5 (no tests collected) is a failure like any other non-zero code: set -e stops here.
pytest -q -ra "$@"
