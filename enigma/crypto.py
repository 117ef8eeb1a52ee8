"""Chunk ids, the sealed chunk format, and ``enc:`` credential tokens (DESIGN §4, §5).

Sealed chunk object, format version 1 (stable; changing it needs a version bump)::

    offset  size  field
    0       4     magic b"ENGC"
    4       1     format version (1)
    5       4     key id, u32 big-endian (which data key version sealed it)
    9       1     n = length of the compression name
    10      n     compression name, ASCII ("" = stored uncompressed)
    10+n    12    random nonce
    22+n    ...   AES-256-GCM ciphertext followed by the 16-byte tag

The AAD is ``chunk_id (32 bytes) || header bytes``: a sealed object cannot be moved under
another chunk id, nor can its header (key id, compression) be altered, without failing
authentication. The object is self-describing, so it can be verified and decrypted
without the manifest. Random 96-bit nonces are safe for well over 2**32 chunks per key
version at a negligible collision risk; key rotation resets the count.

Credential token (``enc:`` values in config files)::

    "enc:" + urlsafe_base64_without_padding(0x01 || nonce(12) || AES-256-GCM(value))

with AAD ``b"enigma-credential-v1"`` under the keystore's credential key.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from enigma.errors import IntegrityError

__all__ = [
    "CHUNK_ID_SIZE",
    "CREDENTIAL_PREFIX",
    "FORMAT_VERSION",
    "KEY_SIZE",
    "MAGIC",
    "NONCE_SIZE",
    "TAG_SIZE",
    "ChunkHeader",
    "ChunkSealer",
    "chunk_id",
    "decrypt_credential",
    "derive_key",
    "encode_header",
    "encrypt_credential",
    "is_encrypted",
    "open_chunk",
    "parse_header",
    "seal_chunk",
]

MAGIC = b"ENGC"
FORMAT_VERSION = 1
KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
CHUNK_ID_SIZE = 32
MAX_KEY_ID = 0xFFFFFFFF

# magic(4) | version u8 | key id u32 BE | compression-name length u8
_FIXED = struct.Struct(">4sBIB")

CREDENTIAL_PREFIX = "enc:"
_CREDENTIAL_VERSION = 1
_CREDENTIAL_AAD = b"enigma-credential-v1"
_CREDENTIAL_ERROR = "cannot decrypt enc: credential (made with another keystore?)"


def _check_key(key: bytes) -> None:
    if len(key) != KEY_SIZE:
        raise ValueError(f"an AES-256 key must be {KEY_SIZE} bytes, got {len(key)}")


def _label(chunk_id: bytes | memoryview) -> str:
    """Short id for messages: enough to find the object, never the whole thing."""
    return bytes(chunk_id[:6]).hex()


# --------------------------------------------------------------------------- chunk ids


def chunk_id(id_key: bytes, data: bytes | memoryview) -> bytes:
    """HMAC-SHA256 of the plaintext: keyed, so a provider cannot test for a known file."""
    return hmac.digest(id_key, data, "sha256")


def derive_key(master: bytes, info: bytes, length: int = 32, *, salt: bytes | None = None) -> bytes:
    """HKDF-SHA256: one independent subkey per purpose (``info``) from one master secret."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(master)


# --------------------------------------------------------------------------- chunk header


@dataclass(frozen=True)
class ChunkHeader:
    """What a sealed chunk says about itself before it is decrypted."""

    version: int
    key_id: int
    compression: str


def encode_header(key_id: int, compression: str = "") -> bytes:
    """Encode a format-1 header; ``ValueError`` for values that do not fit the format."""
    if not 0 <= key_id <= MAX_KEY_ID:
        raise ValueError(f"key id {key_id} does not fit in 32 bits")
    name = compression.encode("ascii")  # UnicodeEncodeError is a ValueError
    if len(name) > 255:
        raise ValueError("compression name longer than 255 bytes")
    return _FIXED.pack(MAGIC, FORMAT_VERSION, key_id, len(name)) + name


def parse_header(blob: bytes | memoryview) -> tuple[ChunkHeader, int]:
    """Decode the header of a sealed chunk; return it and its length in bytes.

    Raises ``IntegrityError`` on a bad magic, an unknown version or a truncated header.
    The header is not authenticated until ``open_chunk`` succeeds.
    """
    if len(blob) < _FIXED.size:
        raise IntegrityError(f"sealed chunk truncated: {len(blob)} bytes is shorter than a header")
    magic, version, key_id, name_len = _FIXED.unpack_from(blob)
    if magic != MAGIC:
        raise IntegrityError("not an Enigma sealed chunk (bad magic)")
    if version != FORMAT_VERSION:
        raise IntegrityError(
            f"sealed chunk has format version {version}; this Enigma reads version "
            f"{FORMAT_VERSION} (upgrade Enigma?)"
        )
    end = _FIXED.size + name_len
    if len(blob) < end:
        raise IntegrityError("sealed chunk truncated inside its header")
    try:
        compression = bytes(blob[_FIXED.size : end]).decode("ascii")
    except UnicodeDecodeError:
        raise IntegrityError("sealed chunk header has a non-ASCII compression name") from None
    return ChunkHeader(version, key_id, compression), end


# --------------------------------------------------------------------------- seal / open


def _seal(aead: AESGCM, chunk_id: bytes, payload: bytes | memoryview, header: bytes) -> bytes:
    if len(chunk_id) != CHUNK_ID_SIZE:
        raise ValueError(f"chunk id must be {CHUNK_ID_SIZE} bytes, got {len(chunk_id)}")
    nonce = os.urandom(NONCE_SIZE)
    return b"".join((header, nonce, aead.encrypt(nonce, payload, bytes(chunk_id) + header)))


class ChunkSealer:
    """Seals with the current data key and opens with any known version.

    Holds one ``AESGCM`` per key version so the pipeline does not rebuild cipher contexts
    per chunk; safe to share between threads (``AESGCM`` objects are immutable).
    ``resolve`` finds a key version the mapping lacks (a reader unsealing a write-only
    client's data key); it returns None for "no such key" and may raise ``IntegrityError``.
    """

    def __init__(self, keys: Mapping[int, bytes], current_key_id: int, *,
                 resolve: Callable[[int], bytes | None] | None = None) -> None:
        if current_key_id not in keys:
            raise ValueError(f"current key id {current_key_id} is not among the keys")
        for key in keys.values():
            _check_key(key)
        self.current_key_id = current_key_id
        self._aeads = {int(kid): AESGCM(bytes(key)) for kid, key in keys.items()}
        self._headers: dict[str, bytes] = {}
        self._resolve = resolve
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never print key bytes
        return f"ChunkSealer(versions={sorted(self._aeads)}, current={self.current_key_id})"

    @property
    def key_ids(self) -> list[int]:
        """The data key versions this sealer can open."""
        return sorted(self._aeads)

    def seal(self, chunk_id: bytes, payload: bytes | memoryview, compression: str = "") -> bytes:
        """Seal ``payload`` (already compressed with ``compression``, if any) for ``chunk_id``."""
        header = self._headers.get(compression)
        if header is None:
            header = self._headers[compression] = encode_header(self.current_key_id, compression)
        return _seal(self._aeads[self.current_key_id], chunk_id, payload, header)

    def open(self, chunk_id: bytes, blob: bytes | memoryview) -> tuple[ChunkHeader, bytes]:
        """Verify and decrypt; return the header and the (possibly still compressed) payload."""
        header, end = parse_header(blob)
        aead = self._aeads.get(header.key_id) or self._resolved(chunk_id, header.key_id)
        if aead is None:
            raise IntegrityError(
                f"chunk {_label(chunk_id)}: sealed with key version {header.key_id}, "
                "which this keystore does not have"
            )
        return header, _decrypt(aead, chunk_id, blob, end)

    def _resolved(self, chunk_id: bytes, key_id: int) -> AESGCM | None:
        if self._resolve is None:
            return None
        try:
            key = self._resolve(key_id)
        except IntegrityError as exc:
            raise IntegrityError(f"chunk {_label(chunk_id)}: {exc}") from None
        if key is None:
            return None
        _check_key(key)
        with self._lock:
            return self._aeads.setdefault(key_id, AESGCM(bytes(key)))


def _decrypt(aead: AESGCM, chunk_id: bytes, blob: bytes | memoryview, end: int) -> bytes:
    view = memoryview(blob)
    if len(view) < end + NONCE_SIZE + TAG_SIZE:
        raise IntegrityError(f"chunk {_label(chunk_id)}: truncated (no room for nonce and tag)")
    nonce = view[end : end + NONCE_SIZE]
    aad = bytes(chunk_id) + bytes(view[:end])
    try:
        return aead.decrypt(bytes(nonce), view[end + NONCE_SIZE :], aad)
    except InvalidTag:
        raise IntegrityError(
            f"chunk {_label(chunk_id)}: authentication failed (corrupted or tampered)"
        ) from None


def seal_chunk(
    chunk_id: bytes,
    payload: bytes | memoryview,
    *,
    key: bytes,
    key_id: int,
    compression: str = "",
) -> bytes:
    """Seal one chunk (one-off form; the pipeline uses ``ChunkSealer``)."""
    _check_key(key)
    return _seal(AESGCM(key), chunk_id, payload, encode_header(key_id, compression))


def open_chunk(
    chunk_id: bytes, blob: bytes | memoryview, keys: Mapping[int, bytes]
) -> tuple[ChunkHeader, bytes]:
    """Verify and decrypt one sealed chunk with whichever key version its header names."""
    header, end = parse_header(blob)
    key = keys.get(header.key_id)
    if key is None:
        raise IntegrityError(
            f"chunk {_label(chunk_id)}: sealed with key version {header.key_id}, "
            "which this keystore does not have"
        )
    _check_key(key)
    return header, _decrypt(AESGCM(key), chunk_id, blob, end)


# --------------------------------------------------------------------------- credentials


def is_encrypted(value: object) -> bool:
    """Whether a config value is an ``enc:`` token rather than a plain secret."""
    return isinstance(value, str) and value.startswith(CREDENTIAL_PREFIX)


def encrypt_credential(credential_key: bytes, value: str) -> str:
    """Encrypt a secret for a config file; the token is safe to paste into TOML or a shell."""
    _check_key(credential_key)
    nonce = os.urandom(NONCE_SIZE)
    sealed = AESGCM(credential_key).encrypt(nonce, value.encode("utf-8"), _CREDENTIAL_AAD)
    raw = bytes([_CREDENTIAL_VERSION]) + nonce + sealed
    return CREDENTIAL_PREFIX + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decrypt_credential(credential_key: bytes, token: str) -> str:
    """Decrypt an ``enc:`` token; ``IntegrityError`` (never echoing the token) if it fails."""
    _check_key(credential_key)
    if not is_encrypted(token):
        raise IntegrityError(_CREDENTIAL_ERROR)
    body = token[len(CREDENTIAL_PREFIX) :].strip()
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise IntegrityError(_CREDENTIAL_ERROR) from None
    if len(raw) < 1 + NONCE_SIZE + TAG_SIZE or raw[0] != _CREDENTIAL_VERSION:
        raise IntegrityError(_CREDENTIAL_ERROR)
    nonce, sealed = raw[1 : 1 + NONCE_SIZE], raw[1 + NONCE_SIZE :]
    try:
        plain = AESGCM(credential_key).decrypt(nonce, sealed, _CREDENTIAL_AAD)
        return plain.decode("utf-8")
    except (InvalidTag, UnicodeDecodeError):
        raise IntegrityError(_CREDENTIAL_ERROR) from None
