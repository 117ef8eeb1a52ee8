"""The built-in key provider: a passphrase-protected hybrid keystore file (DESIGN §5).

Keystore file, format 2 (written since 2026-11; format 1 is still read)::

    header (14 bytes): magic b"ENKS" | version 2 (1 byte) | Argon2id time_cost (u32 BE) |
                       memory_cost in KiB (u32 BE) | parallelism (1 byte)
    salt (32 random bytes) | nonce (12) | AES-256-GCM(outer_key, nonce, JSON)
    with aad = b"enigma-keystore-v1" || header

    The Argon2id parameters are readable before the key is derived and bound to the file
    by the AAD. New keystores use ``DEFAULT_ARGON2`` (time_cost=12, 64 MiB, parallelism 4:
    ~0.47 s on the 2-core reference machine; more memory would exceed the 200 MiB RSS
    bound of a backup). Reading refuses parameters outside ``ARGON2_LIMITS``.

Keystore file, format 1 (read only)::

    salt (32 random bytes) | nonce (12) | AES-256-GCM(outer_key, nonce, JSON)
    with aad = b"enigma-keystore-v1"

    outer_key = Argon2id(passphrase, salt), 32 bytes, with the fixed parameters in
                ``ARGON2_PARAMS`` (time_cost=3, memory_cost=64 MiB, parallelism=4). The file
                has nowhere to record them, so they are part of format 1. The passphrase
                is UTF-8 of its Unicode NFC form, so the same passphrase typed on another
                OS or keyboard layout still opens the keystore.

The decrypted JSON::

    {"format": 1,
     "kdf": {...},                      # the Argon2id parameters, for information only
     "kem": "ML-KEM-768",
     "mlkem768_seed": b64(64 bytes),    # the keystore's ML-KEM-768 private key (seed form)
     "kem_ciphertext": b64(1088 bytes), # an encapsulation to that key
     "id_key": W, "credential_key": W, "data_keys": {"1": W, "2": W, ...},
     "current_key_id": 2, "created_at": "...Z", "updated_at": "...Z",
     # optional (absent in older files; ignored by older Enigma):
     "recipient": b64(1216 bytes),      # write-only client: the reader's public recipient
                                        # key; then "data_keys" is {} and current_key_id 0
     "recipient_seeds": {"<fingerprint hex>": W, ...},  # reader: recipient private seeds
     "current_recipient": "<fingerprint hex>"}           # the one export-recipient hands out

    master = HKDF-SHA256(salt=keystore salt, info=b"enigma-hybrid-v1")
                 .derive(outer_key || ML-KEM-768.decapsulate(seed, kem_ciphertext))

Each ``W`` is ``b64(nonce(12) | AES-256-GCM(master, nonce, key, aad))`` wrapping a random
32-byte key, with an ``aad`` naming the key (``b"enigma-key:id"``,
``b"enigma-key:credential"``, ``b"enigma-key:data:<n>"``, ``b"enigma-key:recipient:<fp>"``)
so wrapped keys cannot be swapped for one another. Every write (create, rotate) uses a
fresh salt, nonces and KEM encapsulation; the ML-KEM key pair and every wrapped key
persist. ``id_key`` never rotates: chunk ids (and so dedup) depend on it.

The file is always written with ``atomic_write`` at mode 0600, its directory created 0700.
No key, passphrase or keystore byte ever appears in an exception message or a log.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import struct
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, ClassVar

from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from enigma.errors import AuthError, ConfigError, IntegrityError
from enigma.fsutil import atomic_write
from enigma.interfaces import KeyMaterial, KeyProvider
from enigma.recipient import PUBLIC_KEY_SIZE

__all__ = [
    "ARGON2_PARAMS",
    "KEYSTORE_AAD",
    "KEYSTORE_FILENAME",
    "KEYSTORE_FORMAT",
    "KEY_PROVIDERS",
    "LocalKeyProvider",
    "argon2_key",
    "hybrid_master_key",
    "unwrap_key",
    "wrap_key",
]

KEYSTORE_FORMAT = 1  # of the JSON inside; the file format is in the header
KEYSTORE_FILENAME = "keystore.enc"
KEYSTORE_AAD = b"enigma-keystore-v1"
HYBRID_INFO = b"enigma-hybrid-v1"
SALT_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
KEY_SIZE = 32
MLKEM_SEED_SIZE = 64
#: Far above any real keystore (a few KiB even with thousands of key versions); refusing
#: bigger files keeps a wrong ``keyfile_path`` from reading a huge file into memory.
MAX_KEYSTORE_SIZE = 16 * 1024 * 1024

#: Argon2id parameters of keystore format 1. Fixed: the file does not record them.
ARGON2_PARAMS: MappingProxyType[str, int] = MappingProxyType(
    {"time_cost": 3, "memory_cost": 65536, "parallelism": 4, "hash_len": 32}
)
#: What a new (format 2) keystore uses, recorded in its header.
DEFAULT_ARGON2: MappingProxyType[str, int] = MappingProxyType(
    {"time_cost": 12, "memory_cost": 65536, "parallelism": 4, "hash_len": 32}
)
#: Cheap parameters for test suites only (thousands of keystore unlocks), chosen by
#: ENIGMA_TEST_FAST_KDF=1 when a keystore is created; the header records them, so such a
#: keystore says what it is.
TEST_ARGON2: MappingProxyType[str, int] = MappingProxyType(
    {"time_cost": 1, "memory_cost": 8192, "parallelism": 1, "hash_len": 32}
)
#: (min, max) of each parameter a keystore header may ask for: a damaged or hostile
#: header must not make an unlock take hours or all memory.
ARGON2_LIMITS = {"time_cost": (1, 64), "memory_cost": (8192, 4 * 1024 * 1024),
                 "parallelism": (1, 64)}
HEADER_MAGIC = b"ENKS"
HEADER_VERSION = 2
_HEADER = struct.Struct(">4sBIIB")


# --------------------------------------------------------------------------- primitives


def _passphrase_bytes(passphrase: str) -> bytes:
    try:
        return unicodedata.normalize("NFC", passphrase).encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError("the passphrase contains characters that are not valid text") from None


def argon2_key(passphrase: str, salt: bytes,
               params: MappingProxyType[str, int] | dict[str, int] = ARGON2_PARAMS) -> bytes:
    """Argon2id(passphrase, salt): the keystore's outer key (format-1 parameters unless
    the keystore's header names others)."""
    return hash_secret_raw(
        secret=_passphrase_bytes(passphrase), salt=salt, type=Type.ID, **params
    )


def new_keystore_params() -> MappingProxyType[str, int]:
    """The Argon2id parameters a keystore created now gets."""
    return TEST_ARGON2 if os.environ.get("ENIGMA_TEST_FAST_KDF") == "1" else DEFAULT_ARGON2


def keystore_header(params: MappingProxyType[str, int] | dict[str, int]) -> bytes:
    return _HEADER.pack(HEADER_MAGIC, HEADER_VERSION, params["time_cost"],
                        params["memory_cost"], params["parallelism"])


def split_keystore(blob: bytes, where: str) -> tuple[dict[str, int], bytes, bytes, bytes, bytes]:
    """(Argon2id parameters, salt, nonce, sealed JSON, AAD) of a keystore file of either
    format; a malformed header or out-of-range parameters are a clean IntegrityError."""
    if blob[:4] != HEADER_MAGIC:  # format 1: no header
        header, params = b"", dict(ARGON2_PARAMS)
    else:
        if len(blob) < _HEADER.size:
            raise IntegrityError(f"keystore {where} is truncated or not an Enigma keystore")
        _magic, version, time_cost, memory_cost, parallelism = _HEADER.unpack_from(blob)
        if version != HEADER_VERSION:
            raise IntegrityError(f"keystore {where} has format {version}; this Enigma reads "
                                 "formats 1 and 2 (upgrade Enigma?)")
        params = {"time_cost": time_cost, "memory_cost": memory_cost,
                  "parallelism": parallelism, "hash_len": KEY_SIZE}
        for name, (low, high) in ARGON2_LIMITS.items():
            if not low <= params[name] <= high:
                raise IntegrityError(f"keystore {where} is damaged: Argon2id {name} "
                                     f"{params[name]} is outside {low}..{high}")
        header = blob[:_HEADER.size]
    body = blob[len(header):]
    if len(body) < SALT_SIZE + NONCE_SIZE + TAG_SIZE:
        raise IntegrityError(f"keystore {where} is truncated or not an Enigma keystore")
    return (params, body[:SALT_SIZE], body[SALT_SIZE:SALT_SIZE + NONCE_SIZE],
            body[SALT_SIZE + NONCE_SIZE:], KEYSTORE_AAD + header)


def hybrid_master_key(outer_key: bytes, kem_shared_secret: bytes, salt: bytes) -> bytes:
    """Combine the passphrase-derived key and the ML-KEM shared secret into the master key."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=HYBRID_INFO)
    return hkdf.derive(outer_key + kem_shared_secret)


def _key_aad(label: str) -> bytes:
    return b"enigma-key:" + label.encode("ascii")


def wrap_key(master: bytes, key: bytes, label: str) -> str:
    """Encrypt one key under the master key, bound to its ``label`` (e.g. ``data:3``)."""
    nonce = os.urandom(NONCE_SIZE)
    sealed = AESGCM(master).encrypt(nonce, key, _key_aad(label))
    return base64.b64encode(nonce + sealed).decode("ascii")


def unwrap_key(master: bytes, wrapped: str, label: str) -> bytes:
    """Inverse of ``wrap_key``; ``ValueError`` (without key bytes) if it does not open."""
    try:
        raw = base64.b64decode(wrapped, validate=True)
        key = AESGCM(master).decrypt(raw[:NONCE_SIZE], raw[NONCE_SIZE:], _key_aad(label))
    except (binascii.Error, ValueError, TypeError, InvalidTag):
        raise ValueError(f"cannot unwrap key '{label}'") from None
    if len(key) != KEY_SIZE:
        raise ValueError(f"key '{label}' has the wrong length")
    return key


def _mlkem() -> Any:
    """The ML-KEM-768 private key class, imported lazily with a clear error if unavailable."""
    try:
        from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
    except ImportError:  # pragma: no cover - depends on the installed cryptography
        raise ConfigError(
            "ML-KEM-768 is not available in the installed 'cryptography'; upgrade it with: "
            "pip install -U cryptography"
        ) from None
    return MLKEM768PrivateKey


def _new_mlkem_seed() -> bytes:
    """A fresh ML-KEM-768 private key in its 64-byte seed form."""
    try:
        return bytes(_mlkem().generate().private_bytes_raw())
    except UnsupportedAlgorithm:
        raise ConfigError(
            "ML-KEM-768 is not supported by the OpenSSL that 'cryptography' uses here"
        ) from None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- keystore


@dataclass
class _Keystore:
    """The decrypted keystore contents (plaintext keys); lives only in memory."""

    id_key: bytes = field(repr=False)
    credential_key: bytes = field(repr=False)
    data_keys: dict[int, bytes] = field(repr=False)
    current_key_id: int
    mlkem_seed: bytes = field(repr=False)
    created_at: str
    recipient: bytes = field(default=b"", repr=False)
    recipient_seeds: dict[str, bytes] = field(default_factory=dict, repr=False)
    current_recipient: str = ""

    def material(self) -> KeyMaterial:
        return KeyMaterial(
            id_key=self.id_key,
            data_keys=dict(self.data_keys),
            current_key_id=self.current_key_id,
            credential_key=self.credential_key,
            recipient=self.recipient,
            recipient_seeds=dict(self.recipient_seeds),
            current_recipient=self.current_recipient,
        )


def _encode(state: _Keystore, passphrase: str) -> bytes:
    """Serialise and encrypt a keystore with a fresh salt, nonces and KEM encapsulation."""
    salt = os.urandom(SALT_SIZE)
    params = new_keystore_params()
    header = keystore_header(params)
    outer_key = argon2_key(passphrase, salt, params)
    try:
        private = _mlkem().from_seed_bytes(state.mlkem_seed)
        shared, kem_ciphertext = private.public_key().encapsulate()
    except UnsupportedAlgorithm:
        raise ConfigError(
            "ML-KEM-768 is not supported by the OpenSSL that 'cryptography' uses here"
        ) from None
    master = hybrid_master_key(outer_key, shared, salt)
    doc = {
        "format": KEYSTORE_FORMAT,
        "kdf": {"algorithm": "argon2id", "version": 19, "salt_len": SALT_SIZE, **params},
        "kem": "ML-KEM-768",
        "mlkem768_seed": base64.b64encode(state.mlkem_seed).decode("ascii"),
        "kem_ciphertext": base64.b64encode(kem_ciphertext).decode("ascii"),
        "id_key": wrap_key(master, state.id_key, "id"),
        "credential_key": wrap_key(master, state.credential_key, "credential"),
        "data_keys": {
            str(kid): wrap_key(master, key, f"data:{kid}")
            for kid, key in sorted(state.data_keys.items())
        },
        "current_key_id": state.current_key_id,
        "created_at": state.created_at,
        "updated_at": _now(),
    }
    if state.recipient:
        doc["recipient"] = base64.b64encode(state.recipient).decode("ascii")
    if state.recipient_seeds:
        doc["recipient_seeds"] = {fp: wrap_key(master, seed, f"recipient:{fp}")
                                  for fp, seed in sorted(state.recipient_seeds.items())}
        doc["current_recipient"] = state.current_recipient
    plaintext = json.dumps(doc, indent=1).encode("utf-8")
    nonce = os.urandom(NONCE_SIZE)
    return header + salt + nonce + AESGCM(outer_key).encrypt(nonce, plaintext,
                                                             KEYSTORE_AAD + header)


def _decode(blob: bytes, passphrase: str, where: str) -> _Keystore:
    """Decrypt and validate a keystore file's bytes; ``where`` names it in messages."""
    params, salt, nonce, sealed, aad = split_keystore(blob, where)
    outer_key = argon2_key(passphrase, salt, params)
    try:
        plaintext = AESGCM(outer_key).decrypt(nonce, sealed, aad)
    except InvalidTag:
        # Also what a damaged file looks like: GCM cannot tell the two apart.
        raise AuthError(f"wrong passphrase for keystore {where}") from None

    def damaged(what: str) -> IntegrityError:
        return IntegrityError(f"keystore {where} is damaged: {what}")

    try:
        doc = json.loads(plaintext)
    except (ValueError, RecursionError):  # RecursionError: deeply nested JSON
        raise damaged("contents are not JSON") from None
    if not isinstance(doc, dict):
        raise damaged("contents are not a JSON object")
    if doc.get("format") != KEYSTORE_FORMAT:
        raise IntegrityError(
            f"keystore {where} has format {doc.get('format')!r}; this Enigma reads format "
            f"{KEYSTORE_FORMAT} (upgrade Enigma?)"
        )
    try:
        seed = base64.b64decode(doc["mlkem768_seed"], validate=True)
        kem_ciphertext = base64.b64decode(doc["kem_ciphertext"], validate=True)
        if len(seed) != MLKEM_SEED_SIZE:
            raise ValueError("ML-KEM seed has the wrong length")
        private = _mlkem().from_seed_bytes(seed)
        shared = private.decapsulate(kem_ciphertext)
        master = hybrid_master_key(outer_key, shared, salt)
        id_key = unwrap_key(master, doc["id_key"], "id")
        credential_key = unwrap_key(master, doc["credential_key"], "credential")
        recipient = base64.b64decode(doc.get("recipient", ""), validate=True)
        if recipient and len(recipient) != PUBLIC_KEY_SIZE:
            raise ValueError("recipient key has the wrong length")
        wrapped = doc["data_keys"]
        if not isinstance(wrapped, dict) or not (wrapped or recipient):
            raise ValueError("no data keys")
        data_keys: dict[int, bytes] = {}
        for name, value in wrapped.items():
            kid = int(name)
            if not 0 < kid <= 0xFFFFFFFF or str(kid) != name:
                raise ValueError(f"bad data key version {name!r}")
            data_keys[kid] = unwrap_key(master, value, f"data:{kid}")
        current = doc["current_key_id"]
        if isinstance(current, bool) or not isinstance(current, int) or (
                current not in data_keys and not (recipient and current == 0)):
            raise ValueError(f"current key version {current!r} has no key")
        seeds_doc = doc.get("recipient_seeds", {})
        if not isinstance(seeds_doc, dict):
            raise ValueError("recipient_seeds is not an object")
        seeds = {str(fp): unwrap_key(master, value, f"recipient:{fp}")
                 for fp, value in seeds_doc.items()}
        current_recipient = str(doc.get("current_recipient", ""))
        if seeds and current_recipient not in seeds:
            raise ValueError("current_recipient has no seed")
        created_at = str(doc.get("created_at", ""))
    except KeyError as exc:
        raise damaged(f"missing field {exc.args[0]!r}") from None
    except (ValueError, TypeError, binascii.Error) as exc:
        raise damaged(str(exc) or type(exc).__name__) from None
    except UnsupportedAlgorithm:
        raise ConfigError(
            "ML-KEM-768 is not supported by the OpenSSL that 'cryptography' uses here"
        ) from None
    return _Keystore(id_key, credential_key, data_keys, current, seed, created_at,
                     recipient, seeds, current_recipient)


class LocalKeyProvider(KeyProvider):
    """Keys in a passphrase-protected file next to the config (``keystore.enc`` by default).

    ``create``/``load``/``rotate`` each run Argon2id (~0.1-0.3 s, 64 MiB) on purpose: it is
    what makes guessing the passphrase of a stolen keystore expensive.
    """

    name: ClassVar[str] = "local"
    aliases: ClassVar[tuple[str, ...]] = ("keyfile", "hybrid")
    description: ClassVar[str] = "passphrase keystore file (Argon2id + ML-KEM-768 hybrid)"
    needs_passphrase: ClassVar[bool] = True

    def __init__(self, *, config_dir: str, keyfile_path: str | None = None) -> None:
        base = os.path.expanduser(os.fspath(config_dir))
        if keyfile_path:
            path = os.path.expanduser(os.fspath(keyfile_path))
            if not os.path.isabs(path):
                path = os.path.join(base, path)
        else:
            path = os.path.join(base, KEYSTORE_FILENAME)
        #: Where the keystore file lives (absolute unless ``config_dir`` was relative).
        self.path = os.path.normpath(path)

    def __repr__(self) -> str:
        return f"LocalKeyProvider(path={self.path!r})"

    # -- KeyProvider ---------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether a keystore file is already there."""
        return os.path.exists(self.path)

    def create(self, passphrase: str | None) -> KeyMaterial:
        """Create a keystore with fresh keys (data key version 1); never overwrite one."""
        if not passphrase:
            raise ConfigError("a non-empty passphrase is required to create a keystore")
        if self.exists():
            raise ConfigError(f"a keystore already exists at {self.path}; refusing to replace it")
        state = _Keystore(
            id_key=os.urandom(KEY_SIZE),
            credential_key=os.urandom(KEY_SIZE),
            data_keys={1: os.urandom(KEY_SIZE)},
            current_key_id=1,
            mlkem_seed=_new_mlkem_seed(),
            created_at=_now(),
        )
        self._write(_encode(state, passphrase))
        return state.material()

    def load(self, passphrase: str | None) -> KeyMaterial:
        """Unlock the keystore; ``AuthError`` on a wrong passphrase."""
        return self._load(passphrase).material()

    def rotate(self, passphrase: str | None) -> KeyMaterial:
        """Add data key version max+1 and make it current; older versions stay readable."""
        passphrase = self._require(passphrase)
        state = _decode(self._read(), passphrase, self.path)
        if state.recipient:
            raise ConfigError("write-only client: each backup makes its own data key, there is "
                              "none to rotate; to change the recipient run: enigma key "
                              "set-recipient FILE")
        new_id = max(state.data_keys) + 1
        state.data_keys[new_id] = os.urandom(KEY_SIZE)
        state.current_key_id = new_id
        self._write(_encode(state, passphrase))
        return state.material()

    def versions(self, passphrase: str | None) -> list[int]:
        """The data key versions in the keystore, oldest first."""
        return sorted(self._load(passphrase).data_keys)

    # -- write-only clients and their reader (enigma.recipient) ---------------------------

    def create_write_only(self, passphrase: str | None, recipient: bytes) -> KeyMaterial:
        """A write-only client's keystore: id and credential keys and the reader's public
        recipient key, no data keys (each process makes its own and forgets it)."""
        if not passphrase:
            raise ConfigError("a non-empty passphrase is required to create a keystore")
        if self.exists():
            raise ConfigError(f"a keystore already exists at {self.path}; refusing to replace it")
        state = _Keystore(
            id_key=os.urandom(KEY_SIZE), credential_key=os.urandom(KEY_SIZE), data_keys={},
            current_key_id=0, mlkem_seed=_new_mlkem_seed(), created_at=_now(),
            recipient=bytes(recipient))
        self._write(_encode(state, passphrase))
        return state.material()

    def set_recipient(self, passphrase: str | None, recipient: bytes) -> KeyMaterial:
        """Seal future data keys to ``recipient``; only a write-only client has one."""
        passphrase = self._require(passphrase)
        state = _decode(self._read(), passphrase, self.path)
        if not state.recipient:
            raise ConfigError("this keystore is not a write-only client's (it holds data keys); "
                              "create one with: enigma init --recipient FILE")
        state.recipient = bytes(recipient)
        self._write(_encode(state, passphrase))
        return state.material()

    def new_recipient(self, passphrase: str | None) -> KeyMaterial:
        """Add a recipient key pair (its seed) and hand it out from now on; older seeds stay
        so the backups sealed to them remain readable."""
        from enigma.recipient import RecipientSecret

        passphrase = self._require(passphrase)
        state = _decode(self._read(), passphrase, self.path)
        if state.recipient:
            raise ConfigError("a write-only client cannot hold recipient keys; run "
                              "export-recipient with the reader's keystore")
        secret = RecipientSecret.generate()
        fp = secret.fingerprint().hex()
        state.recipient_seeds[fp] = secret.seed
        state.current_recipient = fp
        self._write(_encode(state, passphrase))
        return state.material()

    # -- keystore bytes (for mirroring the keystore into the backends) --------------------

    def read_bytes(self) -> bytes:
        """The keystore file's raw (encrypted) bytes, e.g. to store a copy under ``keys/``."""
        return self._read()

    def unlock_copy(self, blob: bytes, passphrase: str | None) -> KeyMaterial:
        """Unlock a keystore copy without installing it (to compare copies that differ)."""
        return _decode(bytes(blob), self._require(passphrase), "copy").material()

    def restore(self, blob: bytes, passphrase: str | None) -> KeyMaterial:
        """Install a keystore copy (e.g. fetched from a backend) after checking it unlocks."""
        if self.exists():
            raise ConfigError(f"a keystore already exists at {self.path}; refusing to replace it")
        state = _decode(bytes(blob), self._require(passphrase), self.path)
        self._write(bytes(blob))
        return state.material()

    # -- internals -----------------------------------------------------------------------

    def _read(self) -> bytes:
        try:
            with open(self.path, "rb") as fh:
                blob = fh.read(MAX_KEYSTORE_SIZE + 1)
        except FileNotFoundError:
            raise ConfigError(f"no keystore at {self.path}; run: enigma init") from None
        except OSError as exc:
            raise ConfigError(f"cannot read keystore {self.path}: {exc.strerror}") from None
        if len(blob) > MAX_KEYSTORE_SIZE:
            raise IntegrityError(f"keystore {self.path} is not an Enigma keystore (too large)")
        return blob

    def _require(self, passphrase: str | None) -> str:
        if not passphrase:
            raise AuthError(f"a passphrase is required to unlock keystore {self.path}")
        return passphrase

    def _load(self, passphrase: str | None) -> _Keystore:
        blob = self._read()  # a missing keystore is reported before a missing passphrase
        return _decode(blob, self._require(passphrase), self.path)

    def _write(self, blob: bytes) -> None:
        parent = os.path.dirname(self.path) or "."
        try:
            os.makedirs(parent, mode=0o700, exist_ok=True)
            atomic_write(self.path, blob, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot write keystore {self.path}: {exc.strerror}") from None


#: Imported by ``enigma.plugins.builtin`` for ``register_key_providers``.
KEY_PROVIDERS: list[type[KeyProvider]] = [LocalKeyProvider]
