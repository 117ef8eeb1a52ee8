"""The backup pipeline in-process: compression choice, vanishing files, crash ordering."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import PASSPHRASE

from enigma import crypto, hookimpl
from enigma.backup import run_backup
from enigma.chunkstore import ChunkStore, chunk_key
from enigma.config import parse_config
from enigma.errors import StorageError
from enigma.packs import pack_key
from enigma.plugin_manager import PluginManager
from enigma.plugins.cdc import CdcChunker
from enigma.plugins.local_storage import LocalStorage
from enigma.repository import Repository

SMALL_CDC = "[enigma.chunk_strategy.Cdc]\nmin_size = 4096\navg_size = 16384\nmax_size = 65536\n"


def make_repo(tmp_path: Path, extra: str = "", plugins: PluginManager | None = None,
              providers: str = "", chunking: str = SMALL_CDC) -> Repository:
    config_dir = tmp_path / "config"
    config_dir.mkdir(exist_ok=True)
    text = f"[enigma]\n{extra}\n{chunking}{providers}"
    config = parse_config(text, config_dir, config_dir / "enigma.toml")
    repo = Repository(config, plugins or PluginManager(), lambda confirm: PASSPHRASE)
    if not repo.key_provider.exists():
        repo.create_keys()
    for provider in repo.providers.values():
        provider.create_bucket()
    return repo


def test_incompressible_chunks_are_stored_raw(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "compression = true")
    store = ChunkStore(repo)
    words, random_data = b"the same words again and again " * 1000, os.urandom(30_000)
    text, noise = store.put(words), store.put(random_data)
    assert text.record.compression == "zstd" and text.record.stored_size < 10_000
    assert noise.record.compression == ""
    storage = repo.providers["local"]
    for stored, original in ((text, words), (noise, random_data)):
        header, _ = crypto.parse_header(storage.get(chunk_key(stored.chunk_id)))
        assert header.compression == stored.record.compression
        assert store.get(stored.record) == original
    repo.manifest.add_chunks([text.record])
    assert store.put(words).record is None  # dedup against the manifest


def test_a_chunk_that_starts_random_and_goes_on_as_text_is_compressed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "compression = true")
    store = ChunkStore(repo)
    text = b"a line of a log file that repeats with small changes 0123456789\n" * 16_000
    mixed = os.urandom(128 * 1024) + text  # the first 64 KiB alone looks incompressible
    noise = os.urandom(len(mixed))
    assert store.worth_compressing(mixed) and not store.worth_compressing(noise)
    stored = store.put(mixed)
    assert stored.record.compression == "zstd" and stored.record.stored_size < len(mixed) // 2
    assert store.get(stored.record) == mixed
    assert store.put(noise).record.compression == ""


def test_file_vanishing_mid_backup_is_logged_and_partial(tmp_path: Path) -> None:
    """A chunker that deletes the next file while the first is read: a real race, staged."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_text("first")
    (source / "b.txt").write_text("second, about to vanish")
    (source / "c.txt").write_text("third")

    class DeletingChunker(CdcChunker):
        name = "deleting"

        single_chunk_limit = 0  # route every file through chunks_of

        def chunks_of(self, buffer):
            if bytes(buffer) == b"first":  # reading a.txt: b.txt goes away now
                os.unlink(source / "b.txt")
            yield from super().chunks_of(buffer)

    plugins = PluginManager()
    plugins.register(SimpleNamespace(register_chunkers=hookimpl(lambda: [DeletingChunker])),
                     "test-deleting")
    repo = make_repo(tmp_path, plugins=plugins,
                     chunking="[enigma.chunk_strategy.Deleting]\navg_size = 16384\n")
    result = run_backup(repo, [source])
    assert result.status == "partial"
    assert any("b.txt" in p and "vanished" in p for p in result.problems)
    paths = [f.path.rsplit("/", 1)[-1] for f in repo.manifest.iter_files(result.backup_id)]
    assert paths == ["src", "a.txt", "c.txt"]
    events = [(e.event, e.path) for e in repo.manifest.backup_log(result.backup_id)]
    assert ("vanished", f"{source}/b.txt".lstrip("/")) in events


# Single objects: the 7th put of 5 files' dozen chunks fails. Packs of 1 MiB: 40 files'
# 1.6 MB of small chunks fill two packs at least (more if the pipeline idles), the second
# fails after the first is stored.
@pytest.mark.parametrize(("pack_size", "files", "fail_at", "prefix"),
                         [(0, 5, 7, ""), (1, 40, 2, "packs/")], ids=["single", "packs"])
def test_storage_failure_leaves_only_stored_chunks_in_the_manifest(
        tmp_path: Path, pack_size: int, files: int, fail_at: int, prefix: str) -> None:
    """Fail the Nth put: the backup is 'failed', and every recorded chunk exists in storage."""
    failed: list[str] = []

    class FlakyStorage(LocalStorage):
        name = "flaky"
        puts = 0

        def put(self, key, data):
            if key.startswith(prefix):
                FlakyStorage.puts += 1
                if FlakyStorage.puts == fail_at:
                    failed.append(key)
                    raise StorageError("simulated permanent failure")
            super().put(key, data)

    plugins = PluginManager()
    plugins.register(SimpleNamespace(register_storage_providers=hookimpl(lambda: [FlakyStorage])),
                     "test-flaky")
    repo = make_repo(tmp_path, f"pack_size = {pack_size}", plugins=plugins, providers=(
        f'[[providers]]\nname = "f"\ntype = "flaky"\npath = "{tmp_path}/store"\n'))
    source = tmp_path / "src"
    source.mkdir()
    for i in range(files):
        (source / f"{i}.bin").write_bytes(os.urandom(40_000))
    with pytest.raises(StorageError, match="provider 'f': simulated permanent failure"):
        run_backup(repo, [source])
    (backup,) = repo.manifest.list_backups()
    assert backup.status == "failed"
    storage = repo.providers["f"]
    recorded = list(repo.manifest.iter_chunks())
    assert recorded, "chunks stored before the failure are recorded"
    assert all((r.pack is not None) == (pack_size > 0) for r in recorded)
    store = ChunkStore(repo)
    for record in recorded:
        key = chunk_key(record.id) if record.pack is None else pack_key(record.pack)
        assert key != failed[0] and storage.exists(key)
        store.get(record)  # whole and authentic where the record says (pack and offset)
    for entry in repo.manifest.iter_files(backup.id):
        for ref in entry.chunks:
            assert repo.manifest.has_chunk(ref.chunk_id)
    # Re-running completes and re-uses what was stored.
    FlakyStorage.puts = -1000
    result = run_backup(repo, [source])
    assert result.status == "complete"
    assert result.stats.chunks_new == result.stats.chunks - len(recorded)


def test_transient_failures_are_retried_within_the_budget(monkeypatch) -> None:
    from enigma.chunkstore import with_retries
    from enigma.errors import TransientStorageError

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise TransientStorageError("503 slow down")
        return "ok"

    monkeypatch.setenv("ENIGMA_RETRY_SECONDS", "10")
    assert with_retries("storing on provider 'p'", flaky) == "ok" and len(calls) == 3

    def dead():
        raise TransientStorageError("connection refused")

    monkeypatch.setenv("ENIGMA_RETRY_SECONDS", "0.5")
    import time

    start = time.monotonic()
    with pytest.raises(StorageError, match=r"provider 'p': connection refused \(gave up after"):
        with_retries("provider 'p'", dead)
    assert time.monotonic() - start < 1.5

    def denied():
        calls.append(1)
        raise StorageError("access denied")

    calls.clear()
    with pytest.raises(StorageError, match="provider 'p': access denied"):
        with_retries("provider 'p'", denied)
    assert len(calls) == 1  # permanent: no retry


def test_incompressible_large_chunks_skip_full_compression(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "compression = true")
    store = ChunkStore(repo)
    sizes: list[int] = []
    real = repo.compressor.compress

    def spy(data):
        sizes.append(len(data))
        return real(data)

    repo.compressor.compress = spy  # type: ignore[method-assign]
    noise = os.urandom(1 << 20)
    record, _sealed = store.seal(store.identify(noise), noise)
    assert record.compression == "" and sizes == [64 * 1024]  # only the probe ran
    sizes.clear()
    text = b"compressible text, over and over. " * 40_000
    record, _sealed = store.seal(store.identify(text), text)
    assert record.compression == "zstd" and sizes == [64 * 1024, len(text)]


def test_a_copy_met_after_its_chunk_was_recorded_is_not_stored_again(
        tmp_path: Path) -> None:
    """The prefilter is a snapshot of the manifest's ids taken at start; chunks recorded
    during the run must pass it too, or a later copy of one is packed a second time (an
    unused copy: 15 MiB of the 1 GB benchmark tree's packs were such copies)."""
    from enigma.pipeline import ChunkUploader

    repo = make_repo(tmp_path)
    uploader = ChunkUploader(ChunkStore(repo), pack_size=1 << 20)
    try:
        data = os.urandom(3000)
        first = uploader.submit(data).result()
        assert first.record is not None and first.record.pack is not None
        repo.manifest.add_chunks([first.record])
        uploader.recorded([first.chunk_id])
        again = uploader.submit(data).result()
        assert again.chunk_id == first.chunk_id
        assert again.record is None  # found in the manifest: not sealed, not packed again
    finally:
        uploader.close()
    packs = [p for p in (tmp_path / "config" / "storage" / "packs").rglob("*") if p.is_file()]
    assert len(packs) == 1


def test_a_copy_whose_file_drains_before_the_original_records_the_chunk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small files are read and identified in groups on parallel workers, so a later
    file's copy of a chunk can claim it first. The earlier file then drains first, with
    no record of its own; it must record the chunk before its file row (this used to fail
    with "referenced chunk(s) are not in the manifest" when a flush fell in between)."""
    import time

    import enigma.backup as backup_module

    monkeypatch.setattr(backup_module, "FLUSH_SECONDS", 0.0)  # a flush after every file
    real_read = backup_module.read_small_file

    def slow_original(path: str, limit: int) -> bytes:
        if path.endswith("original"):
            time.sleep(0.5)  # the copy's group, on the other worker, claims it first
        return real_read(path, limit)

    monkeypatch.setattr(backup_module, "read_small_file", slow_original)
    repo = make_repo(tmp_path)
    source = tmp_path / "src"
    for folder in ("a", "m", "z"):
        (source / folder).mkdir(parents=True)
    data = os.urandom(3000)
    (source / "a" / "original").write_bytes(data)
    for i in range(backup_module.SMALL_GROUP_FILES + 5):  # the copy lands in group 2
        (source / "m" / f"filler-{i:03}").write_bytes(os.urandom(2000))
    (source / "z" / "copy").write_bytes(data)
    result = run_backup(repo, [source])
    assert result.status == "complete"
    assert {e.path.rpartition("/")[2]: e.chunks[0].chunk_id
            for e in repo.manifest.iter_files(result.backup_id)
            if e.type == "file" and not e.path.endswith(tuple("0123456789"))} == {
        "original": crypto_id(repo, data), "copy": crypto_id(repo, data)}


def crypto_id(repo: Repository, data: bytes) -> bytes:
    return ChunkStore(repo).identify(data)


def unlock_only_after(event: threading.Event, repo: Repository,
                      monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Make ``repo``'s key unlock wait (up to 5 s) for ``event``; the returned list gets
    whether it came in time, once per unlock."""
    real_load = type(repo.key_provider).load
    seen: list[bool] = []

    def load(self, passphrase):  # type: ignore[no-untyped-def]
        seen.append(event.wait(5))
        return real_load(self, passphrase)

    monkeypatch.setattr(type(repo.key_provider), "load", load)
    return seen


def test_the_walk_goes_ahead_while_the_keys_unlock(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2id takes 0.3-0.4 s and releases the GIL: a backup lists its sources (and
    loads its file cache) meanwhile instead of waiting. The unlock here finishes only
    once the walk has listed something, so a backup that waited would find nothing."""

    import enigma.backup as backup_module

    created = make_repo(tmp_path)
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "file").write_bytes(b"content")
    listed = threading.Event()
    real_walk = backup_module._Backup.walk

    def walk(self: backup_module._Backup, root: Path):  # type: ignore[no-untyped-def]
        for listing in real_walk(self, root):
            listed.set()
            yield listing

    monkeypatch.setattr(backup_module._Backup, "walk", walk)
    repo = Repository(created.config, PluginManager(), lambda confirm: PASSPHRASE)
    seen = unlock_only_after(listed, repo, monkeypatch)
    result = run_backup(repo, [source])
    assert seen == [True] and result.status == "complete"
    assert [e.path.rpartition("/")[2] for e in repo.manifest.iter_files(result.backup_id)] == [
        "src", "sub", "file"]


def test_a_re_backup_judges_its_directories_while_the_keys_unlock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a no-change re-backup does besides the unlock is mostly comparing directories
    with the file cache: that too happens before the keys are there. The unlock here
    finishes only once a directory was compared, so a backup that compared afterwards
    would time out and fail the assertion."""

    from enigma.filecache import FileCache

    created = make_repo(tmp_path)
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "file").write_bytes(b"content")
    first = Repository(created.config, PluginManager(), lambda confirm: PASSPHRASE)
    run_backup(first, [source])
    first.close()
    compared = threading.Event()
    real_compare = FileCache.unchanged_dir

    def unchanged_dir(self, *args):  # type: ignore[no-untyped-def]
        compared.set()
        return real_compare(self, *args)

    monkeypatch.setattr(FileCache, "unchanged_dir", unchanged_dir)
    repo = Repository(created.config, PluginManager(), lambda confirm: PASSPHRASE)
    seen = unlock_only_after(compared, repo, monkeypatch)
    result = run_backup(repo, [source])
    assert seen == [True] and result.status == "complete"
    assert result.stats.files_unchanged == 1


def test_unchanged_directories_do_not_count_against_the_walk_ahead_bound() -> None:
    """Only a changed directory's entries are held; an unchanged one is a version."""
    from enigma.backup import walk_ahead

    pulled: list[int] = []
    entry = ("path", os.lstat("."))

    def judged():  # type: ignore[no-untyped-def]
        for i in range(10):
            pulled.append(i)
            yield ([], object()) if i < 6 else ([entry, entry], None)

    listings = walk_ahead(judged(), lambda: True, limit=3)
    assert pulled == list(range(8))  # six unchanged, then two changed (4 entries >= 3)
    assert len(list(listings)) == 10


def test_a_backup_that_grows_the_manifest_leaves_it_compact(tmp_path: Path) -> None:
    """Random chunk ids fill B-tree pages to ~70 %; after a first backup (or any that
    grows the manifest by half) the manifest is rewritten full, so a further VACUUM finds
    nothing to give back."""
    repo = make_repo(tmp_path)
    source = tmp_path / "src"
    for d in range(20):
        (source / f"d{d}").mkdir(parents=True)
        for f in range(100):
            (source / f"d{d}" / f"f{f}").write_bytes(os.urandom(200))
    assert run_backup(repo, [source]).status == "complete"
    pages = repo.manifest.pages()
    repo.manifest.compact()
    assert repo.manifest.pages() == pages > 100
