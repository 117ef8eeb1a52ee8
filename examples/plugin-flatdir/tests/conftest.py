"""Detailed assertion messages from the contract suite (must run before it is imported)."""

import pytest

pytest.register_assert_rewrite("enigma.testing")
