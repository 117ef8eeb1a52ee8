"""Write-only clients: a hybrid ML-KEM-768 + X25519 recipient key, sealed per-process data
keys, and a reader that restores what the client can no longer read (docs/write-only.md).

End-to-end tests drive the real CLI against local storage shared by the client and the
reader; the KEM itself is pinned by vectors in tests/data/hybrid_kem_vectors.json.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from helpers import (
    PASSPHRASE,
    Enigma,
    assert_clean_error,
    file_digest,
    make_tree,
    restored_root,
    snapshot,
)

from enigma import crypto, recipient
from enigma.errors import AuthError, ConfigError, IntegrityError
from enigma.manifest import Manifest
from enigma.plugins.local_keys import LocalKeyProvider
from enigma.recipient import RecipientSecret

VECTORS = Path(__file__).parent / "data" / "hybrid_kem_vectors.json"
MESSAGE = "write-only client: cannot decrypt; restore with the reader's keystore"


# --------------------------------------------------------------------------- hybrid KEM


def _vectors() -> list[dict]:
    return json.loads(VECTORS.read_text())["vectors"]


@pytest.mark.parametrize("vector", _vectors(), ids=lambda v: v["fingerprint"][:8])
def test_hybrid_kem_vectors(vector: dict) -> None:
    secret = RecipientSecret(bytes.fromhex(vector["seed"]))
    public = secret.public_key()
    assert public.hex() == vector["public_key"]
    assert secret.fingerprint().hex() == vector["fingerprint"]
    encapsulation = bytes.fromhex(vector["encapsulation"])
    eph = X25519PrivateKey.from_private_bytes(bytes.fromhex(vector["x25519_ephemeral_private"]))
    assert encapsulation[-32:] == eph.public_key().public_bytes_raw()
    assert recipient.decapsulate(secret, encapsulation).hex() == vector["kek"]
    blob = bytes.fromhex(vector["sealed_key_object"])
    key = recipient.open_key({secret.fingerprint(): secret}, blob, kind=recipient.KIND_DATA,
                             key_id=vector["sealed_key_id"])
    assert key.hex() == vector["sealed_key"]


def test_encapsulation_round_trip_is_fresh_each_time() -> None:
    secret = RecipientSecret.generate()
    public = secret.public_key()
    assert len(public) == recipient.PUBLIC_KEY_SIZE
    (kek1, enc1), (kek2, enc2) = recipient.encapsulate(public), recipient.encapsulate(public)
    assert kek1 != kek2 and enc1 != enc2
    assert recipient.decapsulate(secret, enc1) == kek1
    assert recipient.decapsulate(secret, enc2) == kek2
    # The X25519 half alone changes the key: the combiner binds both halves.
    other_eph = X25519PrivateKey.generate().public_key().public_bytes_raw()
    assert recipient.decapsulate(secret, enc1[:-32] + other_eph) != kek1


def _sealed() -> tuple[dict[bytes, RecipientSecret], bytes, bytes]:
    secret = RecipientSecret.generate()
    key = os.urandom(32)
    blob = recipient.seal_key(secret.public_key(), key, kind=recipient.KIND_DATA,
                              key_id=0x8000_0007)
    assert len(blob) == recipient.SEALED_KEY_SIZE
    return {secret.fingerprint(): secret}, blob, key


@pytest.mark.parametrize("offset", [4, 5, 9, 26, 600, 1113, 1140, 1146, 1160, 1205])
def test_tampered_sealed_key_is_refused(offset: int) -> None:
    secrets, blob, key = _sealed()
    assert recipient.open_key(secrets, blob, kind=recipient.KIND_DATA, key_id=0x8000_0007) == key
    bad = bytearray(blob)
    bad[offset] ^= 0x01
    with pytest.raises(IntegrityError):
        recipient.open_key(secrets, bytes(bad), kind=recipient.KIND_DATA, key_id=0x8000_0007)


def test_sealed_key_for_another_recipient_or_id() -> None:
    secrets, blob, _key = _sealed()
    stranger = RecipientSecret.generate()
    with pytest.raises(AuthError, match="which this keystore does not hold"):
        recipient.open_key({stranger.fingerprint(): stranger}, blob, kind=recipient.KIND_DATA,
                           key_id=0x8000_0007)
    with pytest.raises(IntegrityError, match="another key"):  # moved under another name
        recipient.open_key(secrets, blob, kind=recipient.KIND_DATA, key_id=0x8000_0008)
    with pytest.raises(IntegrityError, match="bytes, not"):
        recipient.open_key(secrets, blob[:-1], kind=recipient.KIND_DATA, key_id=0x8000_0007)


def test_recipient_file_round_trip_and_bad_input() -> None:
    public = RecipientSecret.generate().public_key()
    assert recipient.parse_recipient(recipient.format_recipient(public)) == public
    for text in ["", "hello", "enigma-recipient-v1:!!!!", "enigma-recipient-v1:AAAA",
                 recipient.format_recipient(public) * 2]:
        with pytest.raises(ConfigError):
            recipient.parse_recipient(text)


def test_session_key_ids_stay_out_of_keystore_versions() -> None:
    ids = {recipient.new_session_key_id() for _ in range(200)}
    assert all(recipient.SESSION_KEY_ID_MIN <= i <= 0xFFFF_FFFF for i in ids)
    assert len(ids) > 190


# --------------------------------------------------------------------------- keystore


def test_keystore_write_only_and_reader_seeds(tmp_path: Path) -> None:
    reader = LocalKeyProvider(config_dir=str(tmp_path / "r"))
    reader.create(PASSPHRASE)
    first = reader.new_recipient(PASSPHRASE)
    second = reader.new_recipient(PASSPHRASE)
    assert first.current_recipient in second.recipient_seeds  # old seeds stay
    assert second.current_recipient != first.current_recipient
    assert reader.load(PASSPHRASE).recipient_seeds == second.recipient_seeds

    public = RecipientSecret(second.recipient_seeds[second.current_recipient]).public_key()
    writer = LocalKeyProvider(config_dir=str(tmp_path / "w"))
    keys = writer.create_write_only(PASSPHRASE, public)
    loaded = writer.load(PASSPHRASE)
    assert loaded.write_only and loaded.data_keys == {} and loaded.recipient == public
    assert loaded.id_key == keys.id_key and not loaded.recipient_seeds
    assert stat.S_IMODE(os.stat(writer.path).st_mode) == 0o600
    with pytest.raises(ConfigError, match="none to rotate"):
        writer.rotate(PASSPHRASE)
    with pytest.raises(ConfigError, match="write-only client cannot hold"):
        writer.new_recipient(PASSPHRASE)
    with pytest.raises(ConfigError, match="not a write-only client"):
        reader.set_recipient(PASSPHRASE, public)


# --------------------------------------------------------------------------- end to end


@dataclass
class Setup:
    root: Path
    reader: Enigma
    writer: Enigma
    source: Path
    store: Path
    backup_id: str

    def reader_at(self, name: str, keystore: Path | None = None) -> Enigma:
        """A reader machine: its own config dir over the shared storage, with the reader's
        keystore, and the writer's manifest recovered from the snapshots there."""
        config = self.root / name
        config.mkdir()
        keyfile = keystore or self.reader.config_dir / "keystore.enc"
        (config / "enigma.toml").write_text(
            f'[enigma]\nkeyfile_path = "{keyfile}"\n\n'
            f'[[providers]]\nname = "shared"\ntype = "local"\npath = "{self.store}"\n')
        runner = Enigma(config)
        runner.ok("recover")
        return runner

    def sealed(self) -> dict[str, recipient.SealedKeyHeader]:
        folder = self.store / "keys" / "sealed"
        return {p.name: recipient.parse_sealed_header(p.read_bytes())
                for p in sorted(folder.iterdir())}


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    reader = Enigma(tmp_path / "reader")
    reader.ok("init")
    reader.ok("key", "export-recipient", str(tmp_path / "reader.pub"))
    store = tmp_path / "store"
    writer = Enigma(tmp_path / "writer")
    writer.config_dir.mkdir()
    (writer.config_dir / "enigma.toml").write_text(
        f'[[providers]]\nname = "shared"\ntype = "local"\npath = "{store}"\n')
    out = writer.ok("init", "--recipient", str(tmp_path / "reader.pub"))
    assert "write-only client" in out.err
    source = make_tree(tmp_path / "src")
    backup_id = writer.ok("backup", str(source)).out.strip()
    return Setup(tmp_path, reader, writer, source, store, backup_id)


def test_write_only_client_backs_up_but_cannot_decrypt(setup: Setup) -> None:
    w = setup.writer
    assert stat.S_IMODE(os.stat(setup.root / "reader.pub").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(w.config_dir / "keystore.enc").st_mode) == 0o600
    # One data key for the process that stored chunks, sealed to the reader, in the
    # write-only id range; every chunk names it.
    sealed = setup.sealed()
    assert len(sealed) == 1
    (name, header), = sealed.items()
    assert int(name, 16) == header.key_id >= recipient.SESSION_KEY_ID_MIN
    fp = (setup.root / "reader.pub").read_text().split("fingerprint ")[1].split()[0]
    assert header.recipient.hex() == fp
    assert (setup.store / "keys" / "writer" / fp).is_file()
    # Whole chunk objects, chunks inside packs and the packs' sealed indexes alike.
    with Manifest(w.config_dir / "manifest.db") as manifest:
        records = list(manifest.iter_chunks())
    blobs = [p.read_bytes() for p in (setup.store / "chunks").rglob("*") if p.is_file()]
    packs = {p.name: p.read_bytes() for p in (setup.store / "packs").rglob("*") if p.is_file()}
    assert packs and len(blobs) == sum(r.pack is None for r in records)
    for r in records:
        if r.pack is not None:
            blobs.append(packs[r.pack.hex()][r.offset:r.offset + r.stored_size])
    for pack in packs.values():  # ... | sealed index | ENGP | version | index length u32
        blobs.append(pack[-9 - int.from_bytes(pack[-4:], "big"):-9])
    assert len(blobs) == len(records) + len(packs)
    assert all(crypto.parse_header(b)[0].key_id == header.key_id for b in blobs)
    # Incremental and dedup work without any readable key: nothing new, no new data key.
    again = w.ok("backup", str(setup.source))
    assert "0 new chunks" in again.err
    assert len(setup.sealed()) == 1
    # Its own metadata stays listable...
    assert "readme.txt" in w.ok("restore", setup.backup_id, "--list").out
    # ...but nothing decrypts, and nothing is written first.
    dest = setup.root / "out"
    assert_clean_error(w("restore", setup.backup_id, str(dest)), MESSAGE)
    assert not dest.exists()
    assert_clean_error(w("verify", setup.backup_id), MESSAGE)
    assert_clean_error(w("check", "--read-data"), MESSAGE)
    assert_clean_error(w("key", "rotate"), "none to rotate")
    assert "no data keys" in w.ok("key", "list").out


def test_reader_restores_bit_exact(setup: Setup) -> None:
    reader = setup.reader_at("reader-machine")
    dest = setup.root / "restored"
    reader.ok("restore", setup.backup_id, str(dest))
    assert snapshot(restored_root(dest, setup.source)) == snapshot(setup.source)
    assert "all good" in reader.ok("verify", setup.backup_id).out


def test_recipient_rotation(setup: Setup) -> None:
    old_keystore = setup.root / "reader-before-rotation.enc"
    shutil.copyfile(setup.reader.config_dir / "keystore.enc", old_keystore)
    setup.reader.ok("key", "export-recipient", "--new", str(setup.root / "reader-2.pub"))
    assert setup.reader.ok("key", "list").out.count("recipient ") == 2
    setup.writer.ok("key", "set-recipient", str(setup.root / "reader-2.pub"))
    (setup.source / "docs" / "new.bin").write_bytes(os.urandom(50_000))
    second = setup.writer.ok("backup", str(setup.source)).out.strip()

    sealed = setup.sealed()
    assert len(sealed) == 2
    assert len({h.recipient for h in sealed.values()}) == 2  # old key, new key
    assert len(list((setup.store / "keys" / "writer").iterdir())) == 2

    reader = setup.reader_at("reader-machine")  # holds both seeds: reads old and new
    reader.ok("restore", second, str(setup.root / "out-2"))
    assert snapshot(restored_root(setup.root / "out-2", setup.source)) == \
        snapshot(setup.source)
    reader.ok("restore", setup.backup_id, str(setup.root / "out-1"))
    first = restored_root(setup.root / "out-1", setup.source)
    assert not (first / "docs" / "new.bin").exists()
    assert file_digest(first / "docs" / "nested" / "data.bin") == \
        file_digest(setup.source / "docs" / "nested" / "data.bin")

    # The keystore from before the rotation cannot open what went to the new recipient.
    stale = setup.reader_at("stale-reader", keystore=old_keystore)
    assert stale.ok("verify", setup.backup_id)
    result = stale("verify", second)
    assert result.code != 0 and "which this keystore does not hold" in result.err


def test_tampered_sealed_key_is_detected_on_restore(setup: Setup) -> None:
    (path,) = (setup.store / "keys" / "sealed").iterdir()
    blob = bytearray(path.read_bytes())
    blob[-20] ^= 0x40  # inside the AES-GCM ciphertext of the data key
    path.write_bytes(bytes(blob))
    reader = setup.reader_at("reader-machine")
    result = reader("restore", setup.backup_id, str(setup.root / "out"))
    assert result.code != 0
    assert "sealed key" in result.err and "authentication failed" in result.err
    assert "Traceback" not in result.err


def test_bad_recipient_input(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("enigma-recipient-v1:AAAA\n")
    client = Enigma(tmp_path / "client")
    assert_clean_error(client("init", "--recipient", str(garbage)), "damaged")
    assert not (client.config_dir / "keystore.enc").exists()
    assert_clean_error(client("init", "--recipient", str(tmp_path / "missing.pub")),
                       "cannot read recipient key")
    reader = Enigma(tmp_path / "reader")
    reader.ok("init")
    assert_clean_error(reader("key", "export-recipient", str(garbage)), "exists")
    reader.ok("key", "export-recipient", str(tmp_path / "r.pub"))
    assert_clean_error(reader("key", "set-recipient", str(tmp_path / "r.pub")),
                       "not a write-only client")
    assert_clean_error(reader("init", "--recipient", str(tmp_path / "r.pub")), "keys exist")
