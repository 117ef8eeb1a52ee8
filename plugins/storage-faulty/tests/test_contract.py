"""The core storage contract against ``Faulty`` with every fault off: a clean wrapper."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from enigma_storage_faulty.storage import ENV, FaultyStorage

from enigma.testing import StorageProviderContract


class TestFaultyContract(StorageProviderContract):
    @pytest.fixture
    def provider(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                 ) -> Iterator[FaultyStorage]:
        monkeypatch.delenv(ENV, raising=False)
        storage = FaultyStorage(path=str(tmp_path / "store"))
        storage.create_bucket()
        yield storage
        storage.close()
