#!/usr/bin/env bash
# Make this clone runnable: a .venv with the project and its [train,dev] extras, and the Kafka
# broker's jars from Maven Central. Idempotent and quick when nothing changed (a stamp keyed
# on pyproject.toml skips the pip step), so the demo and test scripts call it every time.
#
# Needs: python3.11, a JDK 17+ (java on PATH), Maven (mvn), network to PyPI and Maven Central.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY="${PYTHON:-python3.11}"
if [[ ! -x .venv/bin/python ]]; then
  echo "== creating .venv with $PY" >&2
  "$PY" -m venv .venv
fi
stamp=".venv/.clicksignals-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "== installing the project into .venv" >&2
  .venv/bin/python -m pip install -q -e '.[train,dev]'
  echo "$want" > "$stamp"
fi
.venv/bin/clicksignals kafka fetch >&2
