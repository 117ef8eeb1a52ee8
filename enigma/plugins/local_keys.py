"""The built-in key provider: a passphrase-protected hybrid keystore file (DESIGN §5).

Keystore file, format 1 (stable; changing it needs a format bump)::

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

KEYSTORE_FORMAT = 1
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


# --------------------------------------------------------------------------- primitives


def _passphrase_bytes(passphrase: str) -> bytes:
    try:
        return unicodedata.normalize("NFC", passphrase).encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError("the passphrase contains characters that are not valid text") from None


def argon2_key(passphrase: str, salt: bytes) -> bytes:
    """Argon2id(passphrase, salt) with the format-1 parameters: the keystore's outer key."""
    return hash_secret_raw(
        secret=_passphrase_bytes(passphrase), salt=salt, type=Type.ID, **ARGON2_PARAMS
    )


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
    outer_key = argon2_key(passphrase, salt)
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
        "kdf": {"algorithm": "argon2id", "version": 19, "salt_len": SALT_SIZE, **ARGON2_PARAMS},
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
    return salt + nonce + AESGCM(outer_key).encrypt(nonce, plaintext, KEYSTORE_AAD)


def _decode(blob: bytes, passphrase: str, where: str) -> _Keystore:
    """Decrypt and validate a keystore file's bytes; ``where`` names it in messages."""
    if len(blob) < SALT_SIZE + NONCE_SIZE + TAG_SIZE:
        raise IntegrityError(f"keystore {where} is truncated or not an Enigma keystore")
    salt = blob[:SALT_SIZE]
    nonce = blob[SALT_SIZE : SALT_SIZE + NONCE_SIZE]
    sealed = blob[SALT_SIZE + NONCE_SIZE :]
    outer_key = argon2_key(passphrase, salt)
    try:
        plaintext = AESGCM(outer_key).decrypt(nonce, sealed, KEYSTORE_AAD)
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
