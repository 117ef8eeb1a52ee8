"""Pack objects: small chunks stored many to an object (enigma/packs.py, enigma/packer.py).

The format on its own (index sealed and bound to its pack, damage refused), then the whole
life of packed chunks through the real CLI on local disks: a backup of many small files
makes a few packs instead of an object per file and restores bit-exact; check finds a
lost, cut-short or orphan pack; repair takes a lost pack's chunks out of it (Replicate);
recover without a manifest snapshot rebuilds packed chunks from the packs' indexes; gc
deletes a pack once nothing uses its chunks and keeps one that is still partly used.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from concurrent.futures import Future
from pathlib import Path

import pytest
from helpers import Enigma, restored_root, snapshot

from enigma import crypto
from enigma.errors import IntegrityError
from enigma.manifest import ChunkRecord, Manifest
from enigma.packer import Packer
from enigma.packs import (
    PackEntry,
    encode_trailer,
    index_id,
    new_pack_id,
    pack_id_from_key,
    pack_key,
    read_index,
)

KEY = bytes(range(32))


def sealer() -> crypto.ChunkSealer:
    return crypto.ChunkSealer({1: KEY}, 1)


def build_pack(chunks: list[bytes]) -> tuple[bytes, bytes, list[PackEntry]]:
    """A pack of sealed chunks the way the packer builds one; (id, blob, entries)."""
    seal = sealer()
    pack_id = new_pack_id()
    body, entries = b"", []
    for n, data in enumerate(chunks):
        chunk_id = bytes([n]) * 32
        sealed = seal.seal(chunk_id, data)
        entries.append(PackEntry(chunk_id, len(body), len(sealed)))
        body += sealed
    blob = body + encode_trailer(pack_id, entries, lambda i, p: seal.seal(i, p))
    return pack_id, blob, entries


def open_index(pack_id: bytes, blob: bytes) -> list[PackEntry]:
    seal = sealer()
    return read_index(pack_id, blob, lambda i, s: seal.open(i, s)[1])


# -- the format ----------------------------------------------------------------------------


def test_index_lists_every_chunk_and_each_chunk_opens_on_its_own() -> None:
    chunks = [random.Random(n).randbytes(100 + 997 * n) for n in range(5)]
    pack_id, blob, entries = build_pack(chunks)
    assert open_index(pack_id, blob) == entries
    for entry, data in zip(entries, chunks, strict=True):
        piece = blob[entry.offset:entry.offset + entry.length]
        assert sealer().open(entry.chunk_id, piece)[1] == data
    assert blob[-9:-5] == b"ENGP" and blob[-5] == 1
    # No chunk id or plaintext byte is visible anywhere in the pack.
    assert all(entry.chunk_id not in blob for entry in entries)


def test_a_pack_names_itself_and_nothing_else() -> None:
    pack_id = bytes([0xA7]) + new_pack_id()[1:]
    key = pack_key(pack_id)
    assert key == f"packs/a7/{pack_id.hex()}"
    assert pack_id_from_key(key) == pack_id
    for other in ("chunks/ab/" + "ab" * 32, "packs/zz/" + "zz" * 32, "packs/" + "ab" * 32,
                  f"packs/00/{pack_id.hex()}", key + "x"):
        assert pack_id_from_key(other) is None, other


@pytest.mark.parametrize(("damage", "message"), [
    (lambda b: b[:5], "shorter than its footer"),
    (lambda b: b[:-9] + b"XXXX" + b[-5:], "bad magic"),
    (lambda b: b[:-5] + b"\x02" + b[-4:], "format version 2"),
    (lambda b: b[:-4] + (len(b) + 1).to_bytes(4, "big"), "cut short"),
    (lambda b: b[:-20] + bytes([b[-20] ^ 1]) + b[-19:], None),  # a flipped index byte
])
def test_a_damaged_index_is_refused(damage, message: str | None) -> None:
    pack_id, blob, _entries = build_pack([b"a" * 500, b"b" * 700])
    with pytest.raises(IntegrityError, match=message):
        open_index(pack_id, damage(blob))


def test_an_index_cannot_be_moved_to_another_pack() -> None:
    pack_id, blob, _entries = build_pack([b"a" * 500])
    with pytest.raises(IntegrityError):
        open_index(new_pack_id(), blob)
    assert index_id(pack_id) != index_id(new_pack_id())


def test_an_index_pointing_past_the_chunks_is_refused() -> None:
    seal = sealer()
    pack_id = new_pack_id()
    sealed = seal.seal(b"\x01" * 32, b"x" * 100)
    entries = [PackEntry(b"\x01" * 32, 0, len(sealed) + 1)]
    blob = sealed + encode_trailer(pack_id, entries, lambda i, p: seal.seal(i, p))
    with pytest.raises(IntegrityError, match="points past"):
        open_index(pack_id, blob)


class Waiter:
    """A packed chunk's stand-in for the pipeline's completion."""

    def __init__(self) -> None:
        self.future: Future[int] = Future()
        self.calls = 0

    def stored(self) -> None:
        self.calls += 1
        self.future.set_result(self.calls)

    def failed(self, exc: BaseException) -> None:
        self.future.set_exception(exc)


def record(n: int, providers: tuple[str, ...] = ("a",)) -> ChunkRecord:
    return ChunkRecord(id=bytes([n]) * 32, size=10, stored_size=10, compression="",
                       key_id=1, providers=providers)


def test_packer_fills_one_pack_per_provider_set_and_ships_when_full_or_flushed() -> None:
    shipped: list[tuple[tuple[str, ...], str, bytes, list]] = []
    packer = Packer(lambda i, p: sealer().seal(i, p),
                    lambda labels, key, blob, members: shipped.append((labels, key, blob,
                                                                       members)),
                    target=250)
    records = [record(n, ("a",) if n % 2 else ("a", "b")) for n in range(6)]
    for r in records:
        packer.add(r, bytes([r.id[0]]) * 100, Waiter())
    # Three chunks of 100 bytes fill a 250-byte pack: one pack per provider set shipped.
    assert sorted(labels for labels, *_ in shipped) == [("a",), ("a", "b")]
    assert not packer._open
    for labels, key, blob, members in shipped:
        pack_id = pack_id_from_key(key)
        mine = [r for r in records if r.providers == labels]
        assert [r.pack for r in mine] == [pack_id] * 3
        assert [r.offset for r in mine] == [0, 100, 200]
        assert [e.chunk_id for e in open_index(pack_id, blob)] == [r.id for r in mine]
        assert len(members) == 3
    packer.add(record(9), b"z" * 10, Waiter())
    assert len(shipped) == 2  # not full: waits
    packer.flush()
    assert len(shipped) == 3 and shipped[-1][0] == ("a",)


# -- through the CLI -----------------------------------------------------------------------


def small_tree(root: Path, files: int = 300, seed: int = 4) -> Path:
    rng = random.Random(seed)
    for n in range(files):
        folder = root / f"d{n % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{n}.txt").write_bytes(rng.randbytes(rng.randrange(1, 20_000)))
    (root / "big.bin").write_bytes(rng.randbytes(3_000_000))
    return root


def objects(store: Path, prefix: str) -> list[Path]:
    return sorted(p for p in (store / prefix).rglob("*") if p.is_file())


def records(config_dir: Path) -> list[ChunkRecord]:
    with Manifest(config_dir / "manifest.db") as manifest:
        return list(manifest.iter_chunks())


def restores_bit_exact(enigma: Enigma, backup_id: str, source: Path, dest: Path) -> bool:
    enigma.ok("restore", backup_id, str(dest))
    return snapshot(restored_root(dest, source)) == snapshot(source)


def backup(enigma: Enigma, source: Path) -> dict:
    """The summary: a run over a second prints status lines before it (docs/json.md)."""
    return json.loads(enigma.ok("backup", "--json", str(source)).out.splitlines()[-1])


def test_small_files_go_into_a_few_packs_and_restore_bit_exact(tmp_path: Path) -> None:
    enigma = Enigma(tmp_path / "config")
    enigma.ok("init")
    source = small_tree(tmp_path / "src")
    backup_id = backup(enigma, source)["backup_id"]
    store = enigma.config_dir / "storage"
    packs = objects(store, "packs")
    singles = objects(store, "chunks")
    rows = records(enigma.config_dir)
    packed = [r for r in rows if r.pack is not None]
    assert len(packed) >= 300 and 1 <= len(packs) <= 3
    # Only the big random file's full-size chunks are objects of their own.
    assert len(singles) == len(rows) - len(packed) >= 2
    assert {pack_key(r.pack) for r in packed} == {p.relative_to(store).as_posix()
                                                 for p in packs}
    assert all(r.stored_size >= 512 * 1024 for r in rows if r.pack is None)
    assert "all good" in enigma.ok("verify", backup_id).out
    assert restores_bit_exact(enigma, backup_id, source, tmp_path / "out")


def test_pack_size_zero_stores_every_chunk_as_its_own_object(tmp_path: Path) -> None:
    enigma = Enigma(tmp_path / "config")
    enigma.ok("init")
    config = enigma.config_dir / "enigma.toml"
    config.write_text(config.read_text().replace("[enigma]\n", "[enigma]\npack_size = 0\n", 1))
    backup(enigma, small_tree(tmp_path / "src", files=40))
    store = enigma.config_dir / "storage"
    assert objects(store, "packs") == []
    assert len(objects(store, "chunks")) == len(records(enigma.config_dir)) >= 40
    config.write_text(config.read_text().replace("pack_size = 0", "pack_size = -1"))
    result = enigma("backup", str(tmp_path / "src"))
    assert result.code != 0 and "pack_size" in result.err and "Traceback" not in result.err


def test_check_finds_a_lost_a_short_and_an_orphan_pack(tmp_path: Path) -> None:
    enigma = Enigma(tmp_path / "config")
    enigma.ok("init")
    config = enigma.config_dir / "enigma.toml"
    # Packs of 1 MiB: several of them, so each kind of damage hits a different one.
    config.write_text(config.read_text().replace("[enigma]\n", "[enigma]\npack_size = 1\n", 1))
    source = small_tree(tmp_path / "src", files=400)
    backup(enigma, source)
    clean = json.loads(enigma.ok("check", "--json").out)
    assert clean["problems"] == [] and clean["orphans"] == {}
    store = enigma.config_dir / "storage"
    packs = objects(store, "packs")
    assert len(packs) >= 3
    by_pack: dict[bytes, set[str]] = {}
    for r in records(enigma.config_dir):
        if r.pack is not None:
            by_pack.setdefault(r.pack, set()).add(r.id.hex())
    lost, short, kept = packs[0], packs[1], packs[2]
    lost_ids = by_pack[pack_id_from_key(lost.relative_to(store).as_posix())]
    short_ids = by_pack[pack_id_from_key(short.relative_to(store).as_posix())]
    lost.unlink()
    short.write_bytes(short.read_bytes()[:100])
    orphan = store / pack_key(bytes(32))
    orphan.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(kept, orphan)
    result = enigma("check", "--json")
    assert result.code == 1
    report = json.loads(result.out)
    kinds: dict[str, set[str]] = {}
    for problem in report["problems"]:
        kinds.setdefault(problem["kind"], set()).add(problem["chunk"])
    assert kinds["missing"] == lost_ids
    # The first chunk of the cut pack may still fit in its first 100 bytes only if tiny.
    assert kinds["size"] <= short_ids and len(kinds["size"]) >= len(short_ids) - 1
    assert report["orphans"] == {"local": [pack_key(bytes(32))]}


REPLICATE_TWO = ('[enigma]\ndistribution = "Replicate"\n[enigma.replication]\ncopies = 2\n'
                 '[[providers]]\nname = "a"\ntype = "Local"\npath = "{root}/a"\n'
                 '[[providers]]\nname = "b"\ntype = "Local"\npath = "{root}/b"\n')


def test_repair_takes_a_lost_packs_chunks_out_of_it_and_gc_drops_the_other_copy(
        tmp_path: Path) -> None:
    enigma = Enigma(tmp_path / "config")
    enigma.config_dir.mkdir()
    (enigma.config_dir / "enigma.toml").write_text(REPLICATE_TWO.format(root=tmp_path))
    enigma.ok("init")
    source = small_tree(tmp_path / "src", files=120)
    backup_id = backup(enigma, source)["backup_id"]
    packs_a = objects(tmp_path / "a", "packs")
    packs_b = objects(tmp_path / "b", "packs")
    assert packs_a  # the same packs on both providers, whatever order Replicate chose
    assert [p.read_bytes() for p in packs_a] == [p.read_bytes() for p in packs_b]
    for pack in packs_a:
        pack.unlink()
    assert json.loads(enigma("check", "--json").out)["problems"]
    repaired = json.loads(enigma.ok("repair", "--json").out)
    assert repaired["repaired"] >= 120 and repaired["failed"] == {}
    rows = records(enigma.config_dir)
    assert all(r.pack is None for r in rows)
    # Every chunk is now a whole object on both providers; the surviving packs are unused.
    assert len(objects(tmp_path / "a", "chunks")) == len(rows)
    assert len(objects(tmp_path / "b", "chunks")) == len(rows)
    report = json.loads(enigma("check", "--json").out)
    assert report["problems"] == []
    assert report["orphans"] == {"b": [p.relative_to(tmp_path / "b").as_posix()
                                       for p in packs_b]}
    gc = json.loads(enigma.ok("gc", "--json").out)
    assert gc["orphans"] == len(packs_b) and objects(tmp_path / "b", "packs") == []
    assert restores_bit_exact(enigma, backup_id, source, tmp_path / "out")


def test_recover_without_a_snapshot_rebuilds_packed_chunks(tmp_path: Path) -> None:
    enigma = Enigma(tmp_path / "config")
    enigma.ok("init")
    source = small_tree(tmp_path / "src", files=80)
    backup(enigma, source)
    before = {r.id: r for r in records(enigma.config_dir)}
    assert sum(r.pack is not None for r in before.values()) >= 80
    store = enigma.config_dir / "storage"
    shutil.rmtree(store / "meta")
    os.unlink(enigma.config_dir / "manifest.db")
    enigma.ok("recover")
    after = {r.id: r for r in records(enigma.config_dir)}
    assert after.keys() == before.keys()
    for chunk_id, r in after.items():
        old = before[chunk_id]
        assert (r.pack, r.offset, r.stored_size, r.size) == \
            (old.pack, old.offset, old.stored_size, old.size)
    # New backups deduplicate against the rebuilt packed chunks: nothing new is stored.
    again = backup(enigma, source)["stats"]
    assert again["chunks_new"] == 0


def write_files(folder: Path, stem: str, seeds: range) -> None:
    """One 3000-byte random file per seed: each a small chunk of its own."""
    folder.mkdir(exist_ok=True)
    for n in seeds:
        (folder / f"{stem}{n}.txt").write_bytes(random.Random(n).randbytes(3000))


def test_gc_deletes_a_pack_only_once_none_of_its_chunks_is_used(tmp_path: Path) -> None:
    enigma = Enigma(tmp_path / "config")
    enigma.ok("init")
    first = tmp_path / "first"
    write_files(first, "shared", range(30))
    first_id = backup(enigma, first)["backup_id"]
    second = tmp_path / "second"
    shutil.copytree(first, second)
    write_files(second, "own", range(100, 130))  # a second pack beside the shared one
    second_id = backup(enigma, second)["backup_id"]
    store = enigma.config_dir / "storage"
    assert len(objects(store, "packs")) == 2
    enigma.ok("forget", first_id)
    kept = json.loads(enigma.ok("gc", "--json").out)
    assert kept["chunks"] == 0 and kept["packs"] == 0  # the second backup uses both packs
    enigma.ok("forget", second_id)
    dry = json.loads(enigma.ok("gc", "--dry-run", "--json").out)
    assert (dry["chunks"], dry["packs"]) == (60, 2)
    assert len(objects(store, "packs")) == 2
    done = json.loads(enigma.ok("gc", "--json").out)
    assert (done["chunks"], done["packs"], done["orphans"]) == (60, 2, 0)
    assert objects(store, "packs") == [] and records(enigma.config_dir) == []


def pack_with_kept_and_forgotten_chunks(tmp_path: Path) -> tuple[Enigma, Path, str]:
    """One pack holding 30 chunks a kept backup uses and 30 only a forgotten one used."""
    enigma = Enigma(tmp_path / "config")
    enigma.ok("init")
    source = tmp_path / "src"
    write_files(source, "f", range(60))
    first = backup(enigma, source)["backup_id"]
    for n in range(30, 60):
        (source / f"f{n}.txt").unlink()
    second = backup(enigma, source)["backup_id"]
    enigma.ok("forget", first)
    return enigma, source, second


def test_gc_repacks_a_pack_whose_chunks_are_partly_unused(tmp_path: Path) -> None:
    enigma, source, kept = pack_with_kept_and_forgotten_chunks(tmp_path)
    store = enigma.config_dir / "storage"
    [old] = objects(store, "packs")
    old_size = old.stat().st_size
    dry = json.loads(enigma.ok("gc", "--dry-run", "--json").out)
    assert (dry["chunks"], dry["packs"], dry["repacked"]) == (30, 0, 1) and old.exists()
    done = json.loads(enigma.ok("gc", "--json").out)
    assert (done["chunks"], done["packs"], done["repacked"], done["orphans"]) == (30, 0, 1, 0)
    [new] = objects(store, "packs")
    assert new != old and not old.exists()
    assert new.stat().st_size < old_size * 0.6  # the unused half is gone
    rows = records(enigma.config_dir)
    assert len(rows) == 30 and {r.pack for r in rows} == {pack_id_from_key(
        new.relative_to(store).as_posix())}
    report = json.loads(enigma.ok("check", "--read-data", "--json").out)
    assert report["problems"] == [] and report["orphans"] == {} and report["read"] == 30
    assert restores_bit_exact(enigma, kept, source, tmp_path / "out")


def test_gc_leaves_a_pack_with_a_damaged_used_chunk_as_it_is(tmp_path: Path) -> None:
    enigma, _source, kept = pack_with_kept_and_forgotten_chunks(tmp_path)
    store = enigma.config_dir / "storage"
    [pack] = objects(store, "packs")
    with Manifest(enigma.config_dir / "manifest.db") as manifest:
        kept_ids = set(manifest.backup_chunk_ids(kept))
    used = next(r for r in records(enigma.config_dir) if r.id in kept_ids)
    blob = bytearray(pack.read_bytes())
    blob[used.offset + used.stored_size // 2] ^= 0x01
    pack.write_bytes(bytes(blob))
    done = json.loads(enigma.ok("gc", "--json").out)
    assert (done["chunks"], done["repacked"]) == (30, 0)
    assert objects(store, "packs") == [pack] and pack.read_bytes() == bytes(blob)
    problems = json.loads(enigma("check", "--read-data", "--json").out)["problems"]
    assert {p["chunk"] for p in problems} == {used.id.hex()}
