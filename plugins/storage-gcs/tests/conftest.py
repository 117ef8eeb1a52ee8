"""Fixtures: one fake-gcs-server for the whole session, a fresh bucket per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

pytest.register_assert_rewrite("enigma.testing")

from servers.gcs import GcsServer, gcs_server  # noqa: E402


@pytest.fixture(scope="session")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsServer]:
    """A real fake-gcs-server on a free loopback port, stopped after the session."""
    with gcs_server(tmp_path_factory.mktemp("fake-gcs")) as server:
        yield server


@pytest.fixture
def bucket_name() -> str:
    """A bucket name no other test uses."""
    return f"enigma-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No emulator or credentials from the environment unless a test sets them."""
    for name in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS",
                 "GOOGLE_CLOUD_PROJECT", "API_ENDPOINT_OVERRIDE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch
