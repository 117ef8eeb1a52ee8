"""Fixtures shared by the core tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.register_assert_rewrite("enigma.testing")
# Keystores made by the tests use cheap Argon2id parameters (recorded in their header):
# the suite unlocks keystores thousands of times. Users get DEFAULT_ARGON2 (~0.5 s);
# tests/test_local_keys.py checks that default with this unset.
os.environ["ENIGMA_TEST_FAST_KDF"] = "1"

from helpers import Enigma  # noqa: E402


@pytest.fixture
def enigma(tmp_path: Path) -> Enigma:
    """A fresh, initialised repository with default (local) storage."""
    runner = Enigma(tmp_path / "config")
    runner.ok("init")
    return runner
