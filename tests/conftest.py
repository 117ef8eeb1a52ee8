"""Fixtures shared by the core tests."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.register_assert_rewrite("enigma.testing")

from helpers import Enigma  # noqa: E402


@pytest.fixture
def enigma(tmp_path: Path) -> Enigma:
    """A fresh, initialised repository with default (local) storage."""
    runner = Enigma(tmp_path / "config")
    runner.ok("init")
    return runner
