"""The sealed chunk format, chunk ids and ``enc:`` credentials, with real AES-GCM."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from enigma import crypto
from enigma.crypto import (
    ChunkHeader,
    ChunkSealer,
    chunk_id,
    decrypt_credential,
    derive_key,
    encrypt_credential,
    is_encrypted,
    open_chunk,
    parse_header,
    seal_chunk,
)
from enigma.errors import IntegrityError

KEY1 = bytes(range(32))
KEY2 = bytes(range(100, 132))
ID_KEY = b"\x07" * 32
PAYLOAD = b"The quick brown fox jumps over the lazy dog. " * 50


def _cid(data: bytes = PAYLOAD) -> bytes:
    return chunk_id(ID_KEY, data)


# --------------------------------------------------------------------------- chunk ids


def test_chunk_id_matches_independent_hmac_vector() -> None:
    # RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?"
    expected = bytes.fromhex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    assert chunk_id(b"Jefe", b"what do ya want for nothing?") == expected
    data = os.urandom(5000)
    assert chunk_id(ID_KEY, data) == hmac.new(ID_KEY, data, hashlib.sha256).digest()
    assert chunk_id(ID_KEY, memoryview(data)) == chunk_id(ID_KEY, data)
    assert len(chunk_id(ID_KEY, b"")) == 32


def test_chunk_id_is_keyed() -> None:
    assert chunk_id(KEY1, PAYLOAD) != chunk_id(KEY2, PAYLOAD)
    assert chunk_id(KEY1, PAYLOAD) != hashlib.sha256(PAYLOAD).digest()


def test_derive_key_is_hkdf_sha256() -> None:
    expected = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"x").derive(KEY1)
    assert derive_key(KEY1, b"x") == expected
    assert derive_key(KEY1, b"y") != expected
    assert len(derive_key(KEY1, b"x", 64)) == 64


# --------------------------------------------------------------------------- seal / open


def test_seal_open_round_trip_and_layout() -> None:
    cid = _cid()
    blob = seal_chunk(cid, PAYLOAD, key=KEY1, key_id=7, compression="zstd")
    header, payload = open_chunk(cid, blob, {7: KEY1})
    assert payload == PAYLOAD
    assert header == ChunkHeader(version=1, key_id=7, compression="zstd")

    # The documented layout, decoded and decrypted by hand.
    assert blob[:4] == b"ENGC"
    assert blob[4] == 1
    assert struct.unpack(">I", blob[5:9]) == (7,)
    assert blob[9] == 4 and blob[10:14] == b"zstd"
    nonce, sealed = blob[14:26], blob[26:]
    assert len(sealed) == len(PAYLOAD) + 16
    assert AESGCM(KEY1).decrypt(nonce, sealed, cid + blob[:14]) == PAYLOAD
    assert parse_header(blob) == (header, 14)


def test_uncompressed_empty_and_memoryview_payloads() -> None:
    cid = _cid(b"")
    blob = seal_chunk(cid, b"", key=KEY1, key_id=1)
    assert open_chunk(cid, blob, {1: KEY1}) == (ChunkHeader(1, 1, ""), b"")
    assert parse_header(blob)[1] == 10

    cid = _cid()
    blob = seal_chunk(cid, memoryview(PAYLOAD), key=KEY1, key_id=1)
    assert open_chunk(cid, memoryview(blob), {1: KEY1})[1] == PAYLOAD


def test_nonces_are_fresh() -> None:
    cid = _cid()
    a = seal_chunk(cid, PAYLOAD, key=KEY1, key_id=1)
    b = seal_chunk(cid, PAYLOAD, key=KEY1, key_id=1)
    assert a[10:22] != b[10:22] and a != b


def test_every_single_byte_tamper_is_detected() -> None:
    data = b"short payload!"
    cid = _cid(data)
    blob = seal_chunk(cid, data, key=KEY1, key_id=1, compression="zstd")
    keys = {1: KEY1, 2: KEY2}
    for i in range(len(blob)):
        for flip in (0x01, 0x80):
            bad = bytearray(blob)
            bad[i] ^= flip
            with pytest.raises(IntegrityError):
                open_chunk(cid, bytes(bad), keys)


def test_truncation_and_extension_are_detected() -> None:
    cid = _cid()
    blob = seal_chunk(cid, PAYLOAD, key=KEY1, key_id=1)
    for cut in (0, 3, 9, 10, 21, 22, 37, len(blob) - 1):
        with pytest.raises(IntegrityError):
            open_chunk(cid, blob[:cut], {1: KEY1})
    with pytest.raises(IntegrityError, match="authentication failed"):
        open_chunk(cid, blob + b"\x00", {1: KEY1})


def test_wrong_chunk_id_fails_authentication() -> None:
    cid = _cid()
    blob = seal_chunk(cid, PAYLOAD, key=KEY1, key_id=1)
    other = _cid(b"another chunk")
    with pytest.raises(IntegrityError) as info:
        open_chunk(other, blob, {1: KEY1})
    assert str(info.value) == (
        f"chunk {other[:6].hex()}: authentication failed (corrupted or tampered)"
    )


def test_wrong_key_same_id_fails_authentication() -> None:
    cid = _cid()
    blob = seal_chunk(cid, PAYLOAD, key=KEY1, key_id=1)
    with pytest.raises(IntegrityError, match="authentication failed"):
        open_chunk(cid, blob, {1: KEY2})


def test_unknown_key_id_message() -> None:
    cid = _cid()
    blob = seal_chunk(cid, PAYLOAD, key=KEY2, key_id=3)
    with pytest.raises(IntegrityError) as info:
        open_chunk(cid, blob, {1: KEY1, 2: KEY1})
    assert str(info.value) == (
        f"chunk {cid[:6].hex()}: sealed with key version 3, which this keystore does not have"
    )
    assert KEY1.hex() not in str(info.value) and KEY2.hex() not in str(info.value)


def test_parse_header_errors() -> None:
    good = seal_chunk(_cid(), PAYLOAD, key=KEY1, key_id=1, compression="zstd")
    with pytest.raises(IntegrityError, match="bad magic"):
        parse_header(b"XXXX" + good[4:])
    with pytest.raises(IntegrityError, match="format version 2"):
        parse_header(good[:4] + b"\x02" + good[5:])
    with pytest.raises(IntegrityError, match="truncated"):
        parse_header(good[:9])
    with pytest.raises(IntegrityError, match="truncated"):
        parse_header(good[:12])  # inside the compression name
    with pytest.raises(IntegrityError, match="truncated"):
        parse_header(b"")
    with pytest.raises(IntegrityError, match="non-ASCII"):
        parse_header(good[:10] + b"\xffstd" + good[14:])


def test_seal_rejects_values_the_format_cannot_hold() -> None:
    cid = _cid()
    with pytest.raises(ValueError):
        seal_chunk(cid, b"x", key=KEY1, key_id=2**32)
    with pytest.raises(ValueError):
        seal_chunk(cid, b"x", key=KEY1, key_id=1, compression="z" * 256)
    with pytest.raises(ValueError):
        seal_chunk(cid, b"x", key=KEY1, key_id=1, compression="zstd\u00e9")
    with pytest.raises(ValueError):
        seal_chunk(cid, b"x", key=KEY1[:16], key_id=1)
    with pytest.raises(ValueError):
        seal_chunk(cid[:16], b"x", key=KEY1, key_id=1)


def test_chunk_sealer_uses_current_key_and_opens_old_versions() -> None:
    cid = _cid()
    old = seal_chunk(cid, PAYLOAD, key=KEY1, key_id=1)
    sealer = ChunkSealer({1: KEY1, 2: KEY2}, current_key_id=2)
    new = sealer.seal(cid, PAYLOAD, compression="zstd")
    assert parse_header(new)[0] == ChunkHeader(1, 2, "zstd")
    assert sealer.open(cid, new) == (ChunkHeader(1, 2, "zstd"), PAYLOAD)
    assert sealer.open(cid, old)[1] == PAYLOAD
    # Interoperates with the module-level functions both ways.
    assert open_chunk(cid, new, {2: KEY2})[1] == PAYLOAD
    assert sealer.key_ids == [1, 2]
    assert KEY2.hex() not in repr(sealer)

    only_one = ChunkSealer({1: KEY1}, current_key_id=1)
    with pytest.raises(IntegrityError, match="key version 2"):
        only_one.open(cid, new)
    with pytest.raises(IntegrityError, match="authentication failed"):
        sealer.open(_cid(b"other"), new)
    with pytest.raises(ValueError):
        ChunkSealer({1: KEY1}, current_key_id=2)


# --------------------------------------------------------------------------- credentials


def test_credential_round_trip() -> None:
    secret = "AKIA/very+secret=key with ünïcode"
    token = encrypt_credential(KEY1, secret)
    assert token.startswith("enc:")
    assert is_encrypted(token)
    assert not is_encrypted(secret) and not is_encrypted(None) and not is_encrypted(42)
    assert "=" not in token and "+" not in token and "/" not in token
    assert secret not in token
    assert decrypt_credential(KEY1, token) == secret
    assert encrypt_credential(KEY1, secret) != token  # fresh nonce
    assert decrypt_credential(KEY1, encrypt_credential(KEY1, "")) == ""

    # The documented token layout, opened by hand.
    body = token[4:]
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    assert raw[0] == 1
    plain = AESGCM(KEY1).decrypt(raw[1:13], raw[13:], b"enigma-credential-v1")
    assert plain.decode() == secret


def test_credential_wrong_key_or_malformed_never_leaks() -> None:
    secret = "hunter2-super-secret"
    token = encrypt_credential(KEY1, secret)
    body = token[4:]
    flipped = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    bad_tokens = [
        token,  # with the wrong key below
        flipped,
        "enc:",
        "enc:!!!not base64!!!",
        "enc:" + body[:10],
        "enc:"
        + base64.urlsafe_b64encode(b"\x02" + base64.urlsafe_b64decode(body + "==")[1:])
        .decode()
        .rstrip("="),
        "plain-value",
    ]
    for i, bad in enumerate(bad_tokens):
        key = KEY2 if i == 0 else KEY1
        with pytest.raises(IntegrityError) as info:
            decrypt_credential(key, bad)
        message = str(info.value)
        assert message == "cannot decrypt enc: credential (made with another keystore?)"
        assert secret not in message and body not in message


def test_module_exports_constants() -> None:
    assert crypto.MAGIC == b"ENGC"
    assert crypto.FORMAT_VERSION == 1
