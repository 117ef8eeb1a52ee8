"""enigma-storage-flatdir: the storage contract suite, the file-name layout, registration."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from enigma_storage_flatdir.storage import FlatDirStorage, key_to_name, name_to_key

from enigma.errors import ConfigError, ObjectNotFound, StorageError
from enigma.plugin_manager import PluginManager
from enigma.testing import StorageProviderContract

# -- the contract: everything the core relies on ------------------------------------------


class TestFlatDirContract(StorageProviderContract):
    """The shared suite, as-is: a fresh, empty directory per test."""

    @pytest.fixture
    def provider(self, tmp_path: Path) -> Iterator[FlatDirStorage]:
        store = FlatDirStorage(path=str(tmp_path / "flat"))
        assert store.create_bucket()
        yield store
        store.close()


class TestFlatDirFsyncAlwaysContract(StorageProviderContract):
    """The same suite with a durable put per object; fewer objects keep it quick."""

    listing_count = 300

    @pytest.fixture
    def provider(self, tmp_path: Path) -> Iterator[FlatDirStorage]:
        store = FlatDirStorage(path=str(tmp_path / "flat"), fsync="always")
        store.create_bucket()
        yield store


# -- what only this provider promises: the layout -----------------------------------------

CHUNK = "chunks/0f/" + "0f1e2d3c4b5a6978" * 4


@pytest.mark.parametrize(
    ("key", "name"),
    [
        (CHUNK, "chunks%2F0f%2F" + "0f1e2d3c4b5a6978" * 4),
        ("meta/config", "meta%2Fconfig"),
        ("keys/Keystore", "keys%2F%4Beystore"),
        (".hidden", "%2Ehidden"),
        ("ends.", "ends%2E"),
        ("..", "%2E%2E"),
        ("con", "%63on"),
        ("nul.txt", "%6Eul.txt"),
        ("meta/con", "meta%2Fcon"),
        ("100%", "100%25"),
        ("ü ", "%C3%BC%20"),
    ],
)
def test_key_to_name_and_back(key: str, name: str) -> None:
    assert key_to_name(key) == name
    assert name_to_key(name) == key


def test_names_never_collide_on_case_insensitive_file_systems() -> None:
    keys = ["a", "A", "%41", "%61", "ab", "aB", "Ab", "AB", "meta/X", "meta/x", "meta%2Fx"]
    names = [key_to_name(k) for k in keys]
    assert len({n.lower() for n in names}) == len(keys)


@pytest.mark.parametrize("name", ["A", "%2f", "%4", "%ZZ", "x y", "%2E.", ".tmp-123",
                                  "%61", "con"])
def test_foreign_or_non_canonical_names_are_not_keys(name: str) -> None:
    assert name_to_key(name) is None


@pytest.mark.parametrize("key", ["", "x" * 256, "\ud800"])
def test_unstorable_keys_are_refused(key: str) -> None:
    with pytest.raises(StorageError):
        key_to_name(key)


def test_objects_are_files_in_one_directory(tmp_path: Path) -> None:
    store = FlatDirStorage(path=str(tmp_path / "flat"))
    store.create_bucket()
    store.put(CHUNK, b"sealed chunk")
    store.put("meta/config", b"config")
    (tmp_path / "flat" / "README.txt").write_text("not ours")  # upper case: never a key
    assert sorted(os.listdir(tmp_path / "flat")) == sorted(
        ["README.txt", key_to_name(CHUNK), "meta%2Fconfig"])
    assert all(p.is_file() for p in (tmp_path / "flat").iterdir())
    assert set(store.list()) == {CHUNK, "meta/config"}


def test_a_missing_directory_is_not_an_empty_repository(tmp_path: Path) -> None:
    store = FlatDirStorage(path=str(tmp_path / "not-mounted"))
    for call in (lambda: list(store.list()), lambda: store.get("meta/config"),
                 lambda: store.put("meta/config", b"x"), lambda: store.exists("meta/x"),
                 store.check):
        with pytest.raises(StorageError, match="directory does not exist") as err:
            call()
        assert not isinstance(err.value, ObjectNotFound)


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="'fsync' must be"):
        FlatDirStorage(path="/tmp/x", fsync="sometimes")
    with pytest.raises(ConfigError, match="'path' must be a non-empty string"):
        FlatDirStorage(path="")


# -- registration: what `pip install` plus the entry point give the core ------------------


def test_the_entry_point_registers_flatdir() -> None:
    pm = PluginManager()
    assert pm.get("storage", "FlatDir") is FlatDirStorage
    assert pm.get("storage", "flat-dir") is FlatDirStorage
    rows = {row.name: row for row in pm.describe()}
    assert rows["enigma-storage-flatdir"].provides == {"storage": ["flatdir"]}
    assert rows["enigma-storage-flatdir"].errors == []
