"""Property-based fuzzing of every parser that reads bytes an attacker may control.

Keystore files, sealed chunks, manifest snapshots and erasure shards come back from
storage providers; ``enc:`` tokens and ``enigma.toml`` are text a user pastes. Arbitrary
and mutated inputs must give only the documented clean errors (EnigmaError subclasses;
``ValueError`` where a function documents it), never another exception, a hang or a
crash. Examples are derandomized (the same every run) and bounded, so the file stays well
under 20 s; each test has a deadline, which catches a pathological slowdown.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import time
from pathlib import Path
from unittest import mock

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enigma import crypto, erasure, recovery
from enigma.config import parse_config
from enigma.errors import ConfigError, EnigmaError, IntegrityError
from enigma.plugins import local_keys

FUZZ = settings(max_examples=400, deadline=1000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])
KEY = bytes(range(32))
CHUNK_ID = bytes(32)


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """``valid`` with bit flips, overwritten bytes, a cut, an insertion or junk appended."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert", "append"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:
            data += draw(st.binary(min_size=1, max_size=64))
    return bytes(data)


# -- sealed chunks (enigma/crypto.py) ----------------------------------------------------

SEALED = crypto.seal_chunk(CHUNK_ID, b"plaintext " * 50, key=KEY, key_id=1,
                           compression="zstd")
HEADER = crypto.encode_header(1, "zstd")


@FUZZ
@given(st.one_of(st.binary(max_size=600), mutated(SEALED),
                 st.binary(max_size=300).map(lambda tail: HEADER + tail)))
def test_sealed_chunk_parser(blob: bytes) -> None:
    try:
        header, _ = crypto.parse_header(blob)
        assert header.version == crypto.FORMAT_VERSION
    except IntegrityError:
        pass
    sealer = crypto.ChunkSealer({1: KEY, 2: bytes(32)}, 1)
    for opener in (lambda: crypto.open_chunk(CHUNK_ID, blob, {1: KEY}),
                   lambda: sealer.open(CHUNK_ID, memoryview(blob))):
        try:
            _, _payload = opener()
        except IntegrityError:
            continue
        assert blob == SEALED  # only the untouched object opens


# -- enc: credentials (enigma/crypto.py) --------------------------------------------------

TOKEN = crypto.encrypt_credential(KEY, "s3 secret key")


@FUZZ
@given(st.one_of(st.text(max_size=200), st.text(max_size=200).map(lambda t: "enc:" + t),
                 mutated(TOKEN.encode()).map(lambda b: b.decode("latin-1"))))
def test_credential_parser(token: str) -> None:
    try:
        value = crypto.decrypt_credential(KEY, token)
    except IntegrityError as exc:
        # Never echoes the token (short remnants may match the fixed message by chance).
        secret = token.removeprefix("enc:")
        assert len(secret) < 8 or secret not in str(exc)
        return
    assert value == "s3 secret key"


# -- erasure shards (enigma/erasure.py) ---------------------------------------------------

SHARDS = erasure.encode(SEALED, 3, 2)


@FUZZ
@given(st.one_of(st.binary(max_size=400), mutated(SHARDS[0]), mutated(SHARDS[4]),
                 st.binary(max_size=200).map(lambda tail: SHARDS[1][:erasure.HEADER_SIZE]
                                             + tail)))
def test_shard_parser(blob: bytes) -> None:
    try:
        shard = erasure.parse(blob)
    except IntegrityError:
        return
    assert shard.data_shards >= 1 and shard.index < shard.data_shards + shard.parity_shards
    assert len(shard.payload) == -(-shard.sealed_length // shard.data_shards)


@FUZZ
@given(st.lists(st.sampled_from(range(5)), min_size=1, max_size=5), st.data())
def test_shard_decoding_of_mutated_sets(indices: list[int], data: st.DataObject) -> None:
    """Parsed shards, some mutated, decoded together: a clean error or the sealed chunk,
    which the AES-GCM tag then checks."""
    shards = []
    for index in indices:
        blob = data.draw(st.one_of(st.just(SHARDS[index]), mutated(SHARDS[index])))
        with contextlib.suppress(IntegrityError):
            shards.append(erasure.parse(blob))
    try:
        sealed = erasure.decode(shards)
    except ValueError:
        return
    try:
        crypto.open_chunk(CHUNK_ID, sealed, {1: KEY})
    except IntegrityError:
        return
    assert sealed == SEALED


# -- manifest snapshots (enigma/recovery.py) ----------------------------------------------

SNAPSHOT_NAME = "20240101T000000Z-0123abcd"


def _sealed_snapshot(tmp: Path) -> bytes:
    db = tmp / "db"
    db.write_bytes(b"SQLite format 3\0" + bytes(range(256)) * 8)
    out = io.BytesIO()
    recovery.seal_snapshot(db, out, KEY, SNAPSHOT_NAME, 1_700_000_000_000_000_000)
    return out.getvalue()


@pytest.fixture(scope="module")
def snapshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("snapshots")


with tempfile.TemporaryDirectory(prefix="enigma-fuzz-") as _tmp:
    SNAPSHOT = _sealed_snapshot(Path(_tmp))
SNAPSHOT_HEADER = SNAPSHOT[:26]


@FUZZ
@given(st.one_of(st.binary(max_size=400), mutated(SNAPSHOT),
                 st.binary(max_size=200).map(lambda tail: SNAPSHOT_HEADER + tail)),
       st.sampled_from([SNAPSHOT_NAME, "20240101T000000Z-ffffffff"]))
def test_snapshot_parser(snapshot_dir: Path, blob: bytes, name: str) -> None:
    db_out, scratch = snapshot_dir / "out.db", snapshot_dir / "scratch"
    try:
        created = recovery.open_snapshot(io.BytesIO(blob), KEY, name, db_out, scratch)
    except IntegrityError:
        return
    assert (blob, name) == (SNAPSHOT, SNAPSHOT_NAME) and created == 1_700_000_000_000_000_000


def test_snapshot_parser_with_zstd_bomb_header(snapshot_dir: Path) -> None:
    """Authenticated but not zstd (sealed by a key holder): a clean IntegrityError."""
    import struct

    header = struct.pack(">4sBBQ", b"ENGM", 1, 1, 5)
    nonce = os.urandom(12)
    body = AESGCM(KEY).encrypt(nonce, b"\x28\xb5\x2f\xfd" + os.urandom(64),
                               header + SNAPSHOT_NAME.encode())
    with pytest.raises(IntegrityError, match="corrupt compressed"):
        recovery.open_snapshot(io.BytesIO(header + nonce + body), KEY, SNAPSHOT_NAME,
                               snapshot_dir / "o.db", snapshot_dir / "s")


# -- keystore (enigma/plugins/local_keys.py) ----------------------------------------------

PASSPHRASE = "fuzz passphrase"


def _fast_kdf(passphrase: str, salt: bytes, params: object = None) -> bytes:
    """Stands in for Argon2id (0.1-0.5 s a call) so the parser behind it gets examples."""
    import hashlib

    return hashlib.sha256(passphrase.encode() + salt).digest()


def _valid_keystore() -> tuple[bytes, dict]:
    with mock.patch.object(local_keys, "argon2_key", _fast_kdf):
        state = local_keys._Keystore(os.urandom(32), os.urandom(32), {1: os.urandom(32)}, 1,
                                     local_keys._new_mlkem_seed(), "2024-01-01T00:00:00Z")
        blob = local_keys._encode(state, PASSPHRASE)
    _params, salt, nonce, sealed, aad = local_keys.split_keystore(blob, "fuzz")
    outer = _fast_kdf(PASSPHRASE, salt)
    doc = json.loads(AESGCM(outer).decrypt(nonce, sealed, aad))
    return blob, doc


KEYSTORE, KEYSTORE_DOC = _valid_keystore()
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=40) | st.binary(max_size=80).map(lambda b: __import__(
        "base64").b64encode(b).decode()),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12)


def _reseal(doc_bytes: bytes) -> bytes:
    """A keystore whose outer layer opens: the JSON parser and key unwrapping are reached."""
    _params, salt, _nonce, _sealed, aad = local_keys.split_keystore(KEYSTORE, "fuzz")
    nonce = os.urandom(12)
    header = KEYSTORE[:len(KEYSTORE) - len(_sealed) - len(_nonce) - len(salt)]
    return header + salt + nonce + AESGCM(_fast_kdf(PASSPHRASE, salt)).encrypt(
        nonce, doc_bytes, aad)


@st.composite
def mutated_documents(draw: st.DrawFn) -> bytes:
    doc = json.loads(json.dumps(KEYSTORE_DOC))
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from([*sorted(doc), "data_keys.1", "data_keys.x"]))
        action = draw(st.sampled_from(["drop", "replace"]))
        target, name = (doc["data_keys"], field.split(".")[1]) \
            if field.startswith("data_keys.") and isinstance(doc.get("data_keys"), dict) \
            else (doc, field)
        if action == "drop":
            target.pop(name, None)
        else:
            target[name] = draw(JSON_VALUES)
    return json.dumps(doc).encode()


@FUZZ
@given(st.one_of(mutated_documents(), mutated(json.dumps(KEYSTORE_DOC).encode()),
                 st.binary(max_size=300), JSON_VALUES.map(lambda v: json.dumps(v).encode())))
def test_keystore_document_parser(document: bytes) -> None:
    with mock.patch.object(local_keys, "argon2_key", _fast_kdf), \
            contextlib.suppress(EnigmaError):
        local_keys._decode(_reseal(document), PASSPHRASE, "fuzz")


@FUZZ
@given(st.one_of(mutated(KEYSTORE), st.binary(max_size=120)))
def test_keystore_file_parser(blob: bytes) -> None:
    with mock.patch.object(local_keys, "argon2_key", _fast_kdf):
        try:
            local_keys._decode(blob, PASSPHRASE, "fuzz")
        except EnigmaError:
            return
    assert blob == KEYSTORE


def test_keystore_parser_with_real_argon2(tmp_path: Path) -> None:
    """A few inputs through the real KDF: garbage and a cut file are clean errors."""
    for blob in (b"", b"x" * 59, os.urandom(60), os.urandom(4096), KEYSTORE[:-1]):
        with pytest.raises(EnigmaError):
            local_keys._decode(blob, PASSPHRASE, "fuzz")


def test_keystore_json_nesting_bomb() -> None:
    """Deeply nested JSON inside an authentic keystore (only a passphrase holder can make
    one): json.loads raises RecursionError, which must come out as a clean error."""
    with mock.patch.object(local_keys, "argon2_key", _fast_kdf), \
            pytest.raises(EnigmaError):
        local_keys._decode(_reseal(b"[" * 200_000 + b"]" * 200_000), PASSPHRASE, "fuzz")


# -- config (enigma/config.py) ------------------------------------------------------------

EXAMPLE = (Path(__file__).parent.parent / "examples" / "enigma.toml").read_text()
TOML_SCALARS = (st.integers(-(2 ** 63), 2 ** 63 - 1) | st.booleans()
                | st.text(max_size=20) | st.floats(allow_nan=False, allow_infinity=False)
                | st.sampled_from(["~nosuchuser/x", "Cdc", "zstd", "local", "", "/"]))
TOML_VALUES = st.recursive(TOML_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                           max_leaves=10)
KNOWN_KEYS = ["enigma", "providers", "s3_proxy", "raft", "db_path", "key_provider",
              "distribution", "chunk_strategy", "compression", "replication", "erasure",
              "name", "type", "weight", "copies", "data_shards", "parity_shards", "Cdc",
              "enabled", "algorithm", "keyfile_path"]


def toml_value(value: object) -> str:
    """TOML for a JSON-like value (inline tables and arrays; strings as JSON strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) \
        + "}"


@st.composite
def config_texts(draw: st.DrawFn) -> str:
    keys = st.sampled_from(KNOWN_KEYS) | st.text(max_size=10)
    doc = draw(st.dictionaries(keys, st.dictionaries(keys, TOML_VALUES, max_size=5)
                               | st.lists(st.dictionaries(keys, TOML_VALUES, max_size=4),
                                          max_size=3) | TOML_VALUES, max_size=4))
    return "\n".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in doc.items())


@st.composite
def mutated_example(draw: st.DrawFn) -> str:
    lines = EXAMPLE.splitlines()
    for _ in range(draw(st.integers(1, 5))):
        at = draw(st.integers(0, len(lines) - 1))
        kind = draw(st.sampled_from(["drop", "replace", "insert", "chars"]))
        if kind == "drop":
            del lines[at]
        elif kind == "replace":
            key = draw(st.sampled_from(KNOWN_KEYS))
            lines[at] = f"{key} = {toml_value(draw(TOML_VALUES))}"
        elif kind == "insert":
            lines.insert(at, draw(st.text(max_size=40)))
        else:
            line = lines[at]
            cut = draw(st.integers(0, len(line)))
            lines[at] = line[:cut] + draw(st.text(max_size=5)) + line[cut:]
    return "\n".join(lines)


@FUZZ
@given(st.one_of(st.text(max_size=300), config_texts(), mutated_example()))
def test_config_parser(text: str) -> None:
    started = time.monotonic()
    try:
        config = parse_config(text, Path("/nonexistent/config"), None)
        # What commands read next: each a value or a ConfigError naming the line.
        config.db_path  # noqa: B018
        config.chunker  # noqa: B018
        config.compression  # noqa: B018
        config.key_options  # noqa: B018
        for table in ("replication", "erasure", "Weighted"):
            config.subtable(table)
        for entry in config.providers:
            config.where("providers", "type", entry.index if entry.index >= 0 else None)
        config.server_options("s3_proxy")
    except ConfigError:
        pass
    assert time.monotonic() - started < 1.0


def test_config_header_scan_is_linear() -> None:
    """A long '[   ' line (inside a multi-line string, so the TOML is valid) made the
    error-location scan backtrack cubically: ~3 s at 2000 spaces, hours at 20000."""
    text = '[enigma]\nnote = """\n[' + " " * 50_000 + 'x\n"""\ndb_path = 1\n'
    started = time.monotonic()
    with pytest.raises(ConfigError, match="db_path"):
        parse_config(text, Path("/nonexistent"), None)
    assert time.monotonic() - started < 1.0


def test_config_db_path_with_unknown_user() -> None:
    """``~nosuchuser/x``: Path.expanduser raises RuntimeError, which must be a ConfigError."""
    config = parse_config('[enigma]\ndb_path = "~nosuchuser-enigma/x"\n', Path("/x"), None)
    with pytest.raises(ConfigError, match="nosuchuser-enigma"):
        config.db_path  # noqa: B018
