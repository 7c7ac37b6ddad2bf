"""Fixtures of the ingest tests: ``real_data_dir`` for the real-data tier.

Named ``real_data_dir`` (not ``shared_data``) so it cannot clash with the project-wide fixture
in ``tests/conftest.py``; both resolve to ``<repo>/../shared/data``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REAL_DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The real data folder beside the repository, or skip the test saying why."""
    if not REAL_DATA_DIR.is_dir():
        pytest.skip(f"real-data tier not run: {REAL_DATA_DIR} not found")
    return REAL_DATA_DIR
