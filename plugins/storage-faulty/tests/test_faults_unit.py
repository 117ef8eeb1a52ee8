"""The fault dice themselves: seeded, per call, bounded by the configured shares."""

from __future__ import annotations

from pathlib import Path

import pytest
from enigma_storage_faulty.storage import ENV, FaultyStorage

from enigma.errors import ConfigError, StorageError, TransientStorageError

KEYS = [f"chunks/{i:02x}/{i:064x}" for i in range(200)]


def outcomes(store: FaultyStorage) -> list[str]:
    """What each of 200 puts and gets did, as a list of words."""
    seen = []
    for key in KEYS:
        for op in (lambda k=key: store.put(k, b"x" * 100), lambda k=key: store.get(k)):
            try:
                result = op()
            except TransientStorageError:
                seen.append("transient")
            except StorageError:
                seen.append("permanent")
            else:
                seen.append("damaged" if result not in (None, b"x" * 100) else "ok")
    return seen


def faulty(path: Path, **options: object) -> FaultyStorage:
    store = FaultyStorage(path=str(path), **options)  # type: ignore[arg-type]
    store.create_bucket()
    return store


def test_same_seed_same_faults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    options = dict(put_error=0.2, put_permanent=0.05, get_error=0.2, bitflip=0.1,
                   truncate=0.1)
    first = outcomes(faulty(tmp_path / "a", seed=3, **options))
    again = outcomes(faulty(tmp_path / "b", seed=3, **options))
    other = outcomes(faulty(tmp_path / "c", seed=4, **options))
    assert first == again
    assert first != other
    for word in ("ok", "transient", "permanent", "damaged"):
        assert word in first
    # The shares hold roughly (400 draws; generous bounds).
    assert 20 < first.count("transient") < 140


def test_retry_is_a_fresh_draw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    store = faulty(tmp_path, put_error=0.5)
    for key in KEYS[:20]:
        for _attempt in range(40):
            try:
                store.put(key, b"data")
                break
            except TransientStorageError:
                continue
        assert store.get(key) == b"data"


def test_damage_and_stale_listing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    store = faulty(tmp_path, stale_list=1, stale_window=3, journal=str(tmp_path / "j"))
    for key in KEYS[:5]:
        store.put(key, bytes(range(256)))
    store.delete(KEYS[0])
    listed = set(store.list("chunks/"))
    assert KEYS[0] in listed  # a deletion the listing has not caught up with
    assert not listed & set(KEYS[2:5])  # puts it has not seen yet
    monkeypatch.setenv(ENV, '{"bitflip": 1}')
    flipped = faulty(tmp_path)
    data = flipped.get(KEYS[1])
    assert len(data) == 256 and data != bytes(range(256))
    assert sum(bin(a ^ b).count("1") for a, b in zip(data, bytes(range(256)), strict=True)) == 1
    monkeypatch.setenv(ENV, '{"truncate": 1}')
    assert faulty(tmp_path).get(KEYS[1]) == bytes(range(128))
    assert "stale list chunks/" in (tmp_path / "j").read_text()


def test_faults_only_under_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, '{"put_permanent": 1, "get_permanent": 1}')
    store = faulty(tmp_path)
    store.put("meta/config", b"fine")
    assert store.get("meta/config") == b"fine"
    with pytest.raises(StorageError, match="injected permanent failure"):
        store.put(KEYS[0], b"no")


@pytest.mark.parametrize(("env", "message"), [
    ('{"bitflip": 2}', "'bitflip' must be a number from 0 to 1"),
    ('{"nonsense": 1}', "unknown Faulty storage option 'nonsense'"),
    ("[1]", "must be a JSON object"),
])
def test_bad_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: str,
                     message: str) -> None:
    monkeypatch.setenv(ENV, env)
    with pytest.raises(ConfigError, match=message):
        FaultyStorage(path=str(tmp_path))
