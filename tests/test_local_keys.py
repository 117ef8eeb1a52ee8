"""The local hybrid keystore (real Argon2id, ML-KEM-768, AES-GCM) and atomic_write."""

from __future__ import annotations

import base64
import json
import os
import stat
import struct
import sys

import pytest
from argon2.low_level import Type, hash_secret_raw
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from enigma import fsutil
from enigma.errors import AuthError, ConfigError, IntegrityError
from enigma.fsutil import atomic_write
from enigma.interfaces import KeyMaterial, KeyProvider
from enigma.plugins import local_keys
from enigma.plugins.local_keys import KEY_PROVIDERS, LocalKeyProvider

PASS = "correct horse battery staple"
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")


def _read(path: str | os.PathLike[str]) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _mode(path: str | os.PathLike[str]) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def provider(tmp_path) -> LocalKeyProvider:
    return LocalKeyProvider(config_dir=str(tmp_path / "cfg"))


def _open_by_hand(path: str, passphrase: str) -> tuple[dict, bytes]:
    """Decrypt a keystore from its documented format (2) alone; return (json, master key)."""
    blob = _read(path)
    magic, version, time_cost, memory_cost, parallelism = struct.unpack(">4sBIIB", blob[:14])
    assert (magic, version) == (b"ENKS", 2)
    header, body = blob[:14], blob[14:]
    salt, nonce, sealed = body[:32], body[32:44], body[44:]
    outer = hash_secret_raw(
        secret=passphrase.encode(),
        salt=salt,
        time_cost=time_cost,
        memory_cost=memory_cost,
        parallelism=parallelism,
        hash_len=32,
        type=Type.ID,
    )
    doc = json.loads(AESGCM(outer).decrypt(nonce, sealed, b"enigma-keystore-v1" + header))
    seed = base64.b64decode(doc["mlkem768_seed"])
    shared = MLKEM768PrivateKey.from_seed_bytes(seed).decapsulate(
        base64.b64decode(doc["kem_ciphertext"])
    )
    master = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"enigma-hybrid-v1").derive(
        outer + shared
    )
    return doc, master


def _unwrap_by_hand(master: bytes, wrapped: str, aad: bytes) -> bytes:
    raw = base64.b64decode(wrapped)
    return AESGCM(master).decrypt(raw[:12], raw[12:], aad)


# --------------------------------------------------------------------------- plugin shape


def test_plugin_shape() -> None:
    assert list(KEY_PROVIDERS) == [LocalKeyProvider]
    assert issubclass(LocalKeyProvider, KeyProvider)
    assert LocalKeyProvider.name == "local"
    assert set(LocalKeyProvider.aliases) == {"keyfile", "hybrid"}
    assert LocalKeyProvider.needs_passphrase is True


def test_keystore_path_resolution(tmp_path, monkeypatch) -> None:
    cfg = tmp_path / "cfg"
    assert LocalKeyProvider(config_dir=str(cfg)).path == str(cfg / "keystore.enc")
    rel = LocalKeyProvider(config_dir=str(cfg), keyfile_path="keys/my.enc")
    assert rel.path == str(cfg / "keys" / "my.enc")
    absolute = LocalKeyProvider(config_dir=str(cfg), keyfile_path=str(tmp_path / "abs.enc"))
    assert absolute.path == str(tmp_path / "abs.enc")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home = LocalKeyProvider(config_dir=str(cfg), keyfile_path="~/ks.enc")
    assert home.path == str(tmp_path / "home" / "ks.enc")


# --------------------------------------------------------------------------- create / load


@posix_only
def test_create_load_round_trip_and_modes(provider: LocalKeyProvider) -> None:
    assert not provider.exists()
    created = provider.create(PASS)
    assert provider.exists()
    assert isinstance(created, KeyMaterial)
    assert created.current_key_id == 1 and sorted(created.data_keys) == [1]
    assert len(created.id_key) == 32 and len(created.credential_key) == 32
    assert len(created.data_keys[1]) == 32
    assert len({created.id_key, created.credential_key, created.data_keys[1]}) == 3

    loaded = provider.load(PASS)
    assert loaded == created
    assert _mode(provider.path) == 0o600
    assert _mode(os.path.dirname(provider.path)) == 0o700
    assert provider.versions(PASS) == [1]
    # Nothing else (no temp file) next to the keystore.
    assert os.listdir(os.path.dirname(provider.path)) == ["keystore.enc"]


def test_create_refuses_existing_and_empty_passphrase(provider: LocalKeyProvider) -> None:
    with pytest.raises(ConfigError):
        provider.create("")
    with pytest.raises(ConfigError):
        provider.create(None)
    assert not provider.exists()
    provider.create(PASS)
    before = _read(provider.path)
    with pytest.raises(ConfigError, match="already exists"):
        provider.create(PASS)
    assert _read(provider.path) == before


def test_wrong_passphrase(provider: LocalKeyProvider) -> None:
    provider.create(PASS)
    with pytest.raises(AuthError) as info:
        provider.load(PASS + "!")
    assert str(info.value) == f"wrong passphrase for keystore {provider.path}"
    with pytest.raises(AuthError):
        provider.load(None)
    with pytest.raises(AuthError):
        provider.rotate("nope")
    with pytest.raises(AuthError):
        provider.versions("nope")


def test_missing_keystore(provider: LocalKeyProvider) -> None:
    with pytest.raises(ConfigError) as info:
        provider.load(PASS)
    assert str(info.value) == f"no keystore at {provider.path}; run: enigma init"
    with pytest.raises(ConfigError):
        provider.rotate(PASS)


def test_truncated_or_garbage_keystore(provider: LocalKeyProvider) -> None:
    provider.create(PASS)
    good = _read(provider.path)
    for bad in (b"", good[:40], good[:-1], os.urandom(len(good)), good[:50] + b"\x00" + good[51:]):
        with open(provider.path, "wb") as fh:
            fh.write(bad)
        with pytest.raises((AuthError, IntegrityError)) as info:
            provider.load(PASS)
        message = str(info.value)
        assert "\n" not in message and PASS not in message


def test_nfc_and_nfd_passphrases_are_the_same(provider: LocalKeyProvider) -> None:
    nfc = "caf\u00e9-pass"
    nfd = "cafe\u0301-pass"
    made = provider.create(nfc)
    assert provider.load(nfd) == made


def test_no_secret_in_repr_or_messages(provider: LocalKeyProvider) -> None:
    keys = provider.create(PASS)
    text = repr(keys) + repr(provider)
    for secret in (keys.id_key, keys.credential_key, keys.data_keys[1]):
        assert secret.hex() not in text
    assert PASS not in text


# --------------------------------------------------------------------------- file format


def test_layout_matches_the_documented_scheme(provider: LocalKeyProvider) -> None:
    keys = provider.create(PASS)
    doc, master = _open_by_hand(provider.path, PASS)
    assert doc["format"] == 1
    assert len(base64.b64decode(doc["mlkem768_seed"])) == 64
    assert doc["current_key_id"] == 1
    # The JSON repeats the header's parameters (the tests' cheap ones: see conftest.py).
    assert {k: doc["kdf"][k] for k in ("time_cost", "memory_cost", "parallelism")} == {
        k: local_keys.TEST_ARGON2[k] for k in ("time_cost", "memory_cost", "parallelism")}
    assert "created_at" in doc
    # Every key unwraps with the independently recomputed hybrid master key.
    assert (
        _unwrap_by_hand(master, doc["data_keys"]["1"], b"enigma-key:data:1") == (keys.data_keys[1])
    )
    assert _unwrap_by_hand(master, doc["id_key"], b"enigma-key:id") == keys.id_key
    assert _unwrap_by_hand(master, doc["credential_key"], b"enigma-key:credential") == (
        keys.credential_key
    )
    # The keystore file holds no key in the clear.
    raw = _read(provider.path)
    for secret in (keys.id_key, keys.credential_key, keys.data_keys[1]):
        assert secret not in raw
        assert base64.b64encode(secret) not in raw


def test_wrapped_keys_are_bound_to_their_names(provider: LocalKeyProvider) -> None:
    provider.create(PASS)
    doc, master = _open_by_hand(provider.path, PASS)
    with pytest.raises(Exception):  # noqa: B017 - InvalidTag; the point is it does not open
        _unwrap_by_hand(master, doc["data_keys"]["1"], b"enigma-key:id")
    # Swap id_key and data key 1 and re-encrypt the outer layer: the keystore must refuse.
    doc["id_key"], doc["data_keys"]["1"] = doc["data_keys"]["1"], doc["id_key"]
    blob = _read(provider.path)
    params, salt, _nonce, _sealed, aad = local_keys.split_keystore(blob, "test")
    outer = local_keys.argon2_key(PASS, salt, params)
    nonce = os.urandom(12)
    sealed = AESGCM(outer).encrypt(nonce, json.dumps(doc).encode(), aad)
    with open(provider.path, "wb") as fh:
        fh.write(blob[:14] + salt + nonce + sealed)
    with pytest.raises(IntegrityError, match="damaged"):
        provider.load(PASS)


def test_argon2_parameters_are_a_module_constant() -> None:
    assert dict(local_keys.ARGON2_PARAMS) == {
        "time_cost": 3,
        "memory_cost": 65536,
        "parallelism": 4,
        "hash_len": 32,
    }


# --------------------------------------------------------------------------- rotation


@posix_only
def test_rotate_keeps_old_versions_and_id_key(provider: LocalKeyProvider) -> None:
    first = provider.create(PASS)
    salt_before = _read(provider.path)[14:46]
    second = provider.rotate(PASS)
    assert second.current_key_id == 2
    assert sorted(second.data_keys) == [1, 2]
    assert second.data_keys[1] == first.data_keys[1]
    assert second.data_keys[2] != first.data_keys[1]
    assert second.id_key == first.id_key
    assert second.credential_key == first.credential_key
    assert provider.load(PASS) == second
    assert _mode(provider.path) == 0o600
    assert _read(provider.path)[14:46] != salt_before

    third = provider.rotate(PASS)
    assert third.current_key_id == 3
    assert provider.versions(PASS) == [1, 2, 3]
    doc, master = _open_by_hand(provider.path, PASS)
    assert doc["current_key_id"] == 3
    for kid in (1, 2, 3):
        aad = f"enigma-key:data:{kid}".encode()
        assert _unwrap_by_hand(master, doc["data_keys"][str(kid)], aad) == third.data_keys[kid]
    assert os.listdir(os.path.dirname(provider.path)) == ["keystore.enc"]


def test_read_bytes_and_restore(tmp_path, provider: LocalKeyProvider) -> None:
    keys = provider.create(PASS)
    blob = provider.read_bytes()
    other = LocalKeyProvider(config_dir=str(tmp_path / "elsewhere"))
    with pytest.raises(AuthError):
        other.restore(blob, "wrong")
    assert not other.exists()
    assert other.restore(blob, PASS) == keys
    assert other.load(PASS) == keys
    with pytest.raises(ConfigError):
        other.restore(blob, PASS)


def test_key_provider_contract_like_sequence(tmp_path) -> None:
    """What a generic contract suite does: exists -> create -> load -> rotate -> versions."""
    kp = LocalKeyProvider(config_dir=str(tmp_path), keyfile_path="sub/dir/ks.enc")
    assert kp.exists() is False
    made = kp.create(PASS)
    assert kp.exists() is True
    assert kp.load(PASS).id_key == made.id_key
    rotated = kp.rotate(PASS)
    assert rotated.current_key_id == max(rotated.data_keys) == 2
    assert kp.versions(PASS) == sorted(rotated.data_keys) == [1, 2]
    assert KeyProvider.versions(kp, PASS) == [1, 2]
    with pytest.raises(ConfigError):
        kp.create(PASS)


# --------------------------------------------------------------------------- atomic_write


@posix_only
def test_atomic_write_replaces_content_without_temp_files(tmp_path) -> None:
    target = tmp_path / "file.bin"
    atomic_write(target, b"first")
    assert target.read_bytes() == b"first"
    assert _mode(target) == 0o600
    atomic_write(str(target), memoryview(b"second, longer content"), 0o640)
    assert target.read_bytes() == b"second, longer content"
    assert _mode(target) == 0o640 & ~_umask()
    big = os.urandom(3 * 1024 * 1024 + 7)
    atomic_write(target, big)
    assert target.read_bytes() == big
    assert os.listdir(tmp_path) == ["file.bin"]


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_atomic_write_cleans_up_and_keeps_old_content_on_error(tmp_path, monkeypatch) -> None:
    target = tmp_path / "file.bin"
    atomic_write(target, b"old")

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "simulated I/O error")

    monkeypatch.setattr(fsutil.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="simulated"):
        atomic_write(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file.bin"]


@posix_only
def test_atomic_write_temp_file_is_never_world_readable(tmp_path, monkeypatch) -> None:
    """Observe the temp file's mode at the moment data is written into it."""
    target = tmp_path / "secret.bin"
    seen: list[int] = []
    opened: list[tuple[int, int]] = []
    real_fsync, real_open = os.fsync, os.open

    def spying_open(path, flags, mode=0o777, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append((flags, mode))
        return real_open(path, flags, mode, *args, **kwargs)

    def spying_fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        real_fsync(fd)

    old_umask = os.umask(0)  # even with a permissive umask
    try:
        monkeypatch.setattr(fsutil.os, "fsync", spying_fsync)
        monkeypatch.setattr(fsutil.os, "open", spying_open)
        atomic_write(target, b"top secret")
    finally:
        os.umask(old_umask)
        monkeypatch.undo()
    assert seen == [0o600]
    # The temp file is created exclusively, with the final mode from the first moment.
    creates = [(f, m) for f, m in opened if f & os.O_CREAT]
    assert len(creates) == 1
    assert creates[0][0] & os.O_EXCL and creates[0][1] == 0o600
    assert _mode(target) == 0o600


def test_atomic_write_missing_directory_raises(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "missing" / "file.bin", b"x")
    fsutil.fsync_dir(tmp_path)


# --------------------------------------------------------------------------- Argon2id


def test_new_keystores_record_strong_argon2_parameters(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("ENIGMA_TEST_FAST_KDF", raising=False)  # what users get
    provider = LocalKeyProvider(config_dir=str(tmp_path / "cfg"))
    provider.create(PASS)
    magic, version, time_cost, memory_cost, parallelism = struct.unpack(
        ">4sBIIB", _read(provider.path)[:14])
    assert (magic, version) == (b"ENKS", 2)
    assert (time_cost, memory_cost, parallelism) == (12, 65536, 4)
    assert memory_cost >= 64 * 1024  # at least 64 MiB, readable before any key is derived
    assert provider.load(PASS).current_key_id == 1


def test_the_header_is_authenticated_and_bounded(provider: LocalKeyProvider) -> None:
    provider.create(PASS)
    blob = bytearray(_read(provider.path))
    changed = bytearray(blob)
    struct.pack_into(">I", changed, 5, struct.unpack_from(">I", blob, 5)[0] + 1)  # t + 1
    atomic_write(provider.path, bytes(changed), mode=0o600)
    with pytest.raises(AuthError):  # other parameters: another key, and the AAD differs
        provider.load(PASS)
    struct.pack_into(">I", changed, 9, 2**31)  # 2 TiB of memory: refused before Argon2
    atomic_write(provider.path, bytes(changed), mode=0o600)
    with pytest.raises(IntegrityError, match="memory_cost"):
        provider.load(PASS)


def test_format_1_keystores_still_open(tmp_path, monkeypatch) -> None:
    """Keystores written before format 2 have no header and the fixed ARGON2_PARAMS."""
    provider = LocalKeyProvider(config_dir=str(tmp_path / "cfg"))
    with monkeypatch.context() as old_writer:
        old_writer.setattr(local_keys, "keystore_header", lambda params: b"")
        old_writer.setattr(local_keys, "new_keystore_params", lambda: local_keys.ARGON2_PARAMS)
        created = provider.create(PASS)
    assert _read(provider.path)[:4] != b"ENKS"
    assert provider.load(PASS) == created
    provider.rotate(PASS)  # rewritten as format 2
    assert _read(provider.path)[:4] == b"ENKS"
    assert provider.load(PASS).data_keys[1] == created.data_keys[1]
