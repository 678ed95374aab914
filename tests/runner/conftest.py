"""The toy project as a fixture (REPRO_ROOT points at it for the duration of a test)."""

from __future__ import annotations

from pathlib import Path

import pytest
from toyproject import make_toy


@pytest.fixture
def toy(tmp_path, monkeypatch) -> Path:
    root = make_toy(tmp_path / "toy")
    monkeypatch.setenv("REPRO_ROOT", str(root))
    return root
