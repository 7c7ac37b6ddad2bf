"""The published JSON schemas (``docs/schemas``) as test assertions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def load_schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())
    return schema


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(load_schema(name))


def assert_valid(name: str, record: Any) -> None:
    errors = sorted(validator(name).iter_errors(record), key=lambda e: list(e.path))
    assert not errors, f"{name}: " + "; ".join(
        f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors
    )


def assert_invalid(name: str, record: Any) -> None:
    assert not validator(name).is_valid(record), f"{name} accepted {record!r}"
