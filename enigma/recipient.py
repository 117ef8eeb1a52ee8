"""Recipient keys and sealed keys: what lets a write-only client encrypt for a reader.

A write-only client holds only the reader's *public* recipient key. It makes a fresh data
key per process, seals it to the recipient, stores the sealed copy beside the chunks and
forgets the key when it exits: it can write chunks but never read them back. The reader
holds the recipient's private seed in its passphrase-protected keystore.

Hybrid KEM, ``enigma-recipient-v1`` (stays secure while either ML-KEM-768 or X25519 holds)::

    seed            32 random bytes (what the reader's keystore keeps)
    mlkem seed      HKDF-SHA256(seed, info=b"enigma-recipient-v1 ML-KEM-768", 64 bytes)
    x25519 private  HKDF-SHA256(seed, info=b"enigma-recipient-v1 X25519", 32 bytes)
    public key      ML-KEM-768 encapsulation key (1184) || X25519 public key (32)
    fingerprint     SHA-256(b"enigma-recipient-v1" || public key)[:16]

    encapsulation   ML-KEM-768 ciphertext (1088) || X25519 ephemeral public key (32)
    kek             HKDF-SHA256(ikm = ss_mlkem || ss_x25519, salt = none,
                                info = b"enigma-recipient-v1 kek" ||
                                       SHA-256(encapsulation || public key))

Both shared secrets and both ciphertexts and public keys go into the KDF, so replacing
either half of the encapsulation or the public key changes the key.

Recipient key file (public; one line that matters, ``#`` lines are comments)::

    enigma-recipient-v1:<urlsafe base64 of the 1216-byte public key, no padding>

Sealed key object, format 1 (``keys/sealed/<8 hex key id>`` for a data key, and
``keys/writer/<32 hex fingerprint>`` for the writer's id key), 1206 bytes::

    offset  size  field
    0       4     magic b"ENGK"
    4       1     format version (1)
    5       1     kind: 1 data key, 2 id key
    6       4     key id, u32 big-endian (the data key version; 0 for the id key)
    10      16    recipient fingerprint
    26      1120  encapsulation
    1146    12    random nonce
    1158    48    AES-256-GCM(kek, nonce, key (32 bytes), aad = bytes 0..1146) and tag

Anything changed in the header, the encapsulation or the ciphertext fails authentication.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from enigma.crypto import derive_key
from enigma.errors import AuthError, ConfigError, IntegrityError

__all__ = [
    "ENCAPSULATION_SIZE",
    "KIND_DATA",
    "KIND_ID",
    "PUBLIC_KEY_SIZE",
    "SEALED_KEY_SIZE",
    "RecipientSecret",
    "SealedKeyHeader",
    "WriteOnlyError",
    "decapsulate",
    "encapsulate",
    "fingerprint",
    "format_recipient",
    "new_session_key_id",
    "open_key",
    "parse_recipient",
    "parse_sealed_header",
    "seal_key",
    "sealed_data_key_object",
    "writer_object",
]

LABEL = b"enigma-recipient-v1"
FILE_PREFIX = "enigma-recipient-v1:"
SEED_SIZE = 32
MLKEM_PUBLIC_SIZE = 1184
MLKEM_CIPHERTEXT_SIZE = 1088
X25519_SIZE = 32
PUBLIC_KEY_SIZE = MLKEM_PUBLIC_SIZE + X25519_SIZE
ENCAPSULATION_SIZE = MLKEM_CIPHERTEXT_SIZE + X25519_SIZE
FINGERPRINT_SIZE = 16
KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
MAGIC = b"ENGK"
FORMAT_VERSION = 1
KIND_DATA = 1
KIND_ID = 2
_HEADER = struct.Struct(">4sBBI16s")
HEADER_SIZE = _HEADER.size + ENCAPSULATION_SIZE
SEALED_KEY_SIZE = HEADER_SIZE + NONCE_SIZE + KEY_SIZE + TAG_SIZE
#: Write-only clients pick data key ids with the top bit set, so they never meet the
#: small sequential versions (1, 2, ...) of an ordinary keystore.
SESSION_KEY_ID_MIN = 0x8000_0000
SEALED_PREFIX = "keys/sealed/"
WRITER_PREFIX = "keys/writer/"

WRITE_ONLY_MESSAGE = "write-only client: cannot decrypt; restore with the reader's keystore"


class WriteOnlyError(AuthError):
    """Raised where a write-only client would need a key it deliberately does not have."""

    def __init__(self, message: str = WRITE_ONLY_MESSAGE) -> None:
        super().__init__(message)


def _mlkem() -> type:
    try:
        from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
    except ImportError:  # pragma: no cover - depends on the installed cryptography
        raise ConfigError("ML-KEM-768 is not available in the installed 'cryptography'; "
                          "upgrade it with: pip install -U cryptography") from None
    return MLKEM768PrivateKey


def _mlkem_public(raw: bytes) -> object:
    from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PublicKey

    return MLKEM768PublicKey.from_public_bytes(raw)


def fingerprint(public_key: bytes) -> bytes:
    """16 bytes naming a recipient key: which reader secret opens a sealed key."""
    return hashlib.sha256(LABEL + public_key).digest()[:FINGERPRINT_SIZE]


@dataclass(frozen=True)
class RecipientSecret:
    """The reader's private half, derived from one 32-byte seed (the only thing stored)."""

    seed: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.seed) != SEED_SIZE:
            raise ValueError(f"a recipient seed is {SEED_SIZE} bytes")

    @classmethod
    def generate(cls) -> RecipientSecret:
        return cls(os.urandom(SEED_SIZE))

    def _mlkem_private(self) -> object:
        seed = derive_key(self.seed, LABEL + b" ML-KEM-768", 64)
        try:
            return _mlkem().from_seed_bytes(seed)
        except UnsupportedAlgorithm:
            raise ConfigError("ML-KEM-768 is not supported by the OpenSSL that "
                              "'cryptography' uses here") from None

    def _x25519_private(self) -> X25519PrivateKey:
        return X25519PrivateKey.from_private_bytes(derive_key(self.seed, LABEL + b" X25519"))

    def public_key(self) -> bytes:
        """ML-KEM-768 encapsulation key || X25519 public key (1216 bytes)."""
        mlkem = self._mlkem_private().public_key().public_bytes_raw()  # type: ignore[attr-defined]
        return bytes(mlkem) + self._x25519_private().public_key().public_bytes_raw()

    def fingerprint(self) -> bytes:
        return fingerprint(self.public_key())


def _kek(ss_mlkem: bytes, ss_x25519: bytes, encapsulation: bytes, public_key: bytes) -> bytes:
    transcript = hashlib.sha256(encapsulation + public_key).digest()
    return derive_key(ss_mlkem + ss_x25519, LABEL + b" kek" + transcript)


def _split_public(public_key: bytes) -> tuple[object, X25519PublicKey]:
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise ValueError(f"a recipient key is {PUBLIC_KEY_SIZE} bytes, got {len(public_key)}")
    try:
        mlkem = _mlkem_public(public_key[:MLKEM_PUBLIC_SIZE])
        x25519 = X25519PublicKey.from_public_bytes(public_key[MLKEM_PUBLIC_SIZE:])
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError("not a valid ML-KEM-768 + X25519 recipient key") from None
    return mlkem, x25519


def encapsulate(public_key: bytes, *, ephemeral: X25519PrivateKey | None = None
                ) -> tuple[bytes, bytes]:
    """A fresh key-encryption key for ``public_key`` and the encapsulation that carries it.

    ``ephemeral`` exists for test vectors only; ML-KEM's randomness cannot be injected.
    """
    mlkem, x25519 = _split_public(public_key)
    ss_mlkem, ct_mlkem = mlkem.encapsulate()  # type: ignore[attr-defined]
    eph = ephemeral or X25519PrivateKey.generate()
    ss_x25519 = eph.exchange(x25519)
    encapsulation = bytes(ct_mlkem) + eph.public_key().public_bytes_raw()
    return _kek(bytes(ss_mlkem), ss_x25519, encapsulation, public_key), encapsulation


def decapsulate(secret: RecipientSecret, encapsulation: bytes) -> bytes:
    """The key-encryption key an encapsulation carries (ML-KEM rejects implicitly: a wrong
    ciphertext yields a wrong key, which the AEAD then refuses)."""
    if len(encapsulation) != ENCAPSULATION_SIZE:
        raise IntegrityError("sealed key: encapsulation has the wrong length")
    ct_mlkem, eph = encapsulation[:MLKEM_CIPHERTEXT_SIZE], encapsulation[MLKEM_CIPHERTEXT_SIZE:]
    ss_mlkem = secret._mlkem_private().decapsulate(ct_mlkem)  # type: ignore[attr-defined]
    ss_x25519 = secret._x25519_private().exchange(X25519PublicKey.from_public_bytes(eph))
    return _kek(bytes(ss_mlkem), ss_x25519, encapsulation, secret.public_key())


# --------------------------------------------------------------------------- sealed keys


@dataclass(frozen=True)
class SealedKeyHeader:
    kind: int
    key_id: int
    recipient: bytes  # fingerprint


def seal_key(public_key: bytes, key: bytes, *, kind: int, key_id: int) -> bytes:
    """Seal a 32-byte key to a recipient (the sealed key object, 1206 bytes)."""
    if len(key) != KEY_SIZE:
        raise ValueError("only 32-byte keys are sealed")
    kek, encapsulation = encapsulate(public_key)
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, kind, key_id, fingerprint(public_key))
    header += encapsulation
    nonce = os.urandom(NONCE_SIZE)
    return header + nonce + AESGCM(kek).encrypt(nonce, key, header)


def parse_sealed_header(blob: bytes) -> SealedKeyHeader:
    if len(blob) != SEALED_KEY_SIZE:
        raise IntegrityError(f"sealed key has {len(blob)} bytes, not {SEALED_KEY_SIZE}")
    magic, version, kind, key_id, recipient = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise IntegrityError("not an Enigma sealed key (bad magic)")
    if version != FORMAT_VERSION:
        raise IntegrityError(f"sealed key has format version {version}; this Enigma reads "
                             f"version {FORMAT_VERSION} (upgrade Enigma?)")
    return SealedKeyHeader(kind, key_id, recipient)


def open_key(secrets: dict[bytes, RecipientSecret], blob: bytes, *, kind: int,
             key_id: int) -> bytes:
    """Unseal a sealed key object with whichever recipient secret it names.

    ``IntegrityError`` if it is damaged, tampered with, or not the key asked for;
    ``AuthError`` if it was sealed to a recipient this keystore does not hold.
    """
    header = parse_sealed_header(blob)
    if header.kind != kind or header.key_id != key_id:
        raise IntegrityError(f"sealed key {key_id:08x}: object holds another key "
                             f"(kind {header.kind}, id {header.key_id:08x})")
    secret = secrets.get(header.recipient)
    if secret is None:
        raise AuthError(f"sealed key {key_id:08x} is for recipient "
                        f"{header.recipient.hex()}, which this keystore does not hold")
    kek = decapsulate(secret, blob[_HEADER.size:HEADER_SIZE])
    nonce = blob[HEADER_SIZE:HEADER_SIZE + NONCE_SIZE]
    try:
        return AESGCM(kek).decrypt(nonce, blob[HEADER_SIZE + NONCE_SIZE:], blob[:HEADER_SIZE])
    except InvalidTag:
        raise IntegrityError(f"sealed key {key_id:08x}: authentication failed "
                             "(corrupted or tampered)") from None


def sealed_data_key_object(key_id: int) -> str:
    return f"{SEALED_PREFIX}{key_id:08x}"


def writer_object(recipient_fingerprint: bytes) -> str:
    return f"{WRITER_PREFIX}{recipient_fingerprint.hex()}"


def new_session_key_id() -> int:
    """A random data key id in the write-only range (top bit set)."""
    return SESSION_KEY_ID_MIN | int.from_bytes(os.urandom(4), "big") & 0x7FFF_FFFF


# --------------------------------------------------------------------------- key file


def format_recipient(public_key: bytes) -> str:
    """The recipient key file's text: a comment and the key line."""
    token = base64.urlsafe_b64encode(public_key).decode("ascii").rstrip("=")
    return (f"# Enigma recipient key (public): ML-KEM-768 + X25519, fingerprint "
            f"{fingerprint(public_key).hex()}\n{FILE_PREFIX}{token}\n")


def parse_recipient(text: str, where: str = "recipient key") -> bytes:
    """The public key in a recipient key file; ``ConfigError`` naming ``where`` if bad."""
    lines = [line.strip() for line in text.splitlines()]
    keys = [line for line in lines if line and not line.startswith("#")]
    if len(keys) != 1 or not keys[0].startswith(FILE_PREFIX):
        raise ConfigError(f"{where} is not an Enigma recipient key (expected one line "
                          f"starting with '{FILE_PREFIX}'; make it with: enigma key "
                          "export-recipient FILE)")
    body = keys[0][len(FILE_PREFIX):]
    try:
        public_key = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        _split_public(public_key)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where} is damaged: not a valid ML-KEM-768 + X25519 "
                          "recipient key") from None
    return public_key
