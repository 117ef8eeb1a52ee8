"""Fixtures: one Azurite for the whole session, a fresh container per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

pytest.register_assert_rewrite("enigma.testing")

from servers.azurite import AzuriteServer, azurite_server  # noqa: E402


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    """A real Azurite blob service on a free loopback port, stopped after the session."""
    with azurite_server(tmp_path_factory.mktemp("azurite")) as server:
        yield server


@pytest.fixture
def container_name() -> str:
    """A container name no other test uses."""
    return f"enigma-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No Azure credentials from the environment unless a test sets them."""
    for name in ("AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_KEY",
                 "AZURE_STORAGE_CONNECTION_STRING"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch
