"""Shared fixtures: where the real benchmark data lives."""
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real benchmark data: $LTH_DATA, else <repo root>/../shared/data."""
    path = Path(os.environ.get("LTH_DATA") or Path(__file__).resolve().parent.parent / ".." / "shared" / "data")
    if not path.is_dir():
        # Failing, not skipping: CI has the data, and a skip would hide an untested loader.
        pytest.fail(f"benchmark data folder {path} not found; set LTH_DATA to the shared data folder")
    return path.resolve()
