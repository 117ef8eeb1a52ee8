"""The secret layout shared by every vault provider; subclasses only move strings in and out.

Layout (``P`` is ``secret_prefix``, default ``enigma-``)::

    P + "id-key"          base64(32 bytes)   the chunk-id HMAC key; written once, never rotates
    P + "credential-key"  base64(32 bytes)   the key for ``enc:`` tokens in enigma.toml
    P + "data-key-<n>"    base64(32 bytes)   data key version n (1, 2, ...); written once
    P + "key-index"       JSON               which vault version of each secret is the key

The key index is the only secret that changes: each ``rotate`` adds a version of it (the
vault's native versioning), and its newest version is authoritative::

    {"format": 1, "current_key_id": 2,
     "id_key": "<vault version>", "credential_key": "<vault version>",
     "data_keys": {"1": "<vault version>", "2": "<vault version>"}}

Why this shape: the key id is in the secret's *name*, so the mapping id -> key never
depends on version ids the service assigns (Azure: random hex, AWS: UUIDs whose unlabelled
versions AWS may delete, GCP: counters a retried add would shift). The index then pins
the exact vault version of every key, so a later write to a key secret (by hand, or by an
interrupted and repeated rotation) cannot silently change which bytes a key id means.
``create`` refuses if any of the secrets already exists; the index is written last, so
it is the commit point: ``exists()`` is "the index exists".
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from abc import abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar

from enigma.errors import ConfigError, IntegrityError, PluginError
from enigma.interfaces import KeyMaterial, KeyProvider

KEY_SIZE = 32
INDEX_FORMAT = 1
#: Bounds the SDK calls a ``load`` makes at once (one per key version).
MAX_PARALLEL_READS = 8
#: What the providers tag their secrets with, so people browsing a vault know who owns them.
OWNER_TAG = ("managed-by", "enigma")
DESCRIPTION = "Enigma backup key material: do not edit or delete (backups need it to restore)"


class SecretExists(Exception):
    """Raised by ``_create`` when the secret is already there (internal, never shown)."""


def one_line(exc: BaseException | str, limit: int = 200) -> str:
    """The first meaningful line of an SDK message, shortened: errors stay one line."""
    text = str(exc).strip()
    errno = re.findall(r"\[Errno -?\d+\][^'\"\]\)>]*", text)
    if errno:  # urllib3 buries the useful part ("Connection refused") deep in a repr
        text = errno[-1]
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    if not line and isinstance(exc, BaseException):
        line = type(exc).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


def missing_sdk(provider: str, what: str, extra: str) -> PluginError:
    """The one-line error for an SDK that is not installed."""
    return PluginError(f"{provider} needs {what}: pip install 'enigma-keys-vault[{extra}]'")


@dataclass
class KeyIndex:
    """The decoded ``key-index`` secret: which vault version holds each key."""

    current_key_id: int
    id_key: str
    credential_key: str
    data_keys: dict[int, str] = field(default_factory=dict)

    def dumps(self) -> str:
        return json.dumps({
            "format": INDEX_FORMAT,
            "current_key_id": self.current_key_id,
            "id_key": self.id_key,
            "credential_key": self.credential_key,
            "data_keys": {str(k): v for k, v in sorted(self.data_keys.items())},
        }, indent=1)

    @classmethod
    def loads(cls, text: str) -> KeyIndex:
        """Parse and check an index; ``ValueError`` says what is wrong."""
        try:
            doc = json.loads(text)
        except ValueError:
            raise ValueError("it is not JSON") from None
        if not isinstance(doc, dict):
            raise ValueError("it is not a JSON object")
        if doc.get("format") != INDEX_FORMAT:
            raise ValueError(f"format {doc.get('format')!r} is not {INDEX_FORMAT} "
                             "(written by a newer enigma-keys-vault?)")
        versions: dict[int, str] = {}
        raw = doc.get("data_keys")
        if not isinstance(raw, dict) or not raw:
            raise ValueError("it lists no data keys")
        for name, version in raw.items():
            if not (name.isdigit() and str(int(name)) == name and 0 < int(name) <= 0xFFFFFFFF):
                raise ValueError(f"bad data key id {name!r}")
            versions[int(name)] = _version(version, f"data key {name}")
        current = doc.get("current_key_id")
        if isinstance(current, bool) or not isinstance(current, int) or current not in versions:
            raise ValueError(f"current key id {current!r} is not one of its data keys")
        return cls(current, _version(doc.get("id_key"), "id_key"),
                   _version(doc.get("credential_key"), "credential_key"), versions)


def _version(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 256:
        raise ValueError(f"{what} has no valid vault version")
    return value


def _encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


class VaultKeyProvider(KeyProvider):
    """Key material kept as secrets in a cloud vault, in the layout described above.

    Subclasses implement the three storage primitives (``_read``, ``_create``, ``_write``)
    and ``location``; everything about keys lives here so the three clouds agree.
    """

    needs_passphrase: ClassVar[bool] = False
    #: Characters a secret name may contain in this vault (checked against the prefix).
    name_pattern: ClassVar[str] = r"[0-9A-Za-z-]"
    #: Longest secret name the vault accepts.
    max_name_length: ClassVar[int] = 127

    def __init__(self, *, secret_prefix: str = "enigma-", config_dir: str | None = None) -> None:
        if not isinstance(secret_prefix, str) or not re.fullmatch(
                f"{self.name_pattern}*", secret_prefix):
            raise ConfigError(f"secret_prefix {secret_prefix!r} may only contain characters "
                              f"matching {self.name_pattern} in {self.name}")
        longest = len(secret_prefix) + len("credential-key")
        if longest > self.max_name_length - 12:  # room for data-key-<n>
            raise ConfigError(f"secret_prefix is too long for {self.name} secret names")
        self.secret_prefix = secret_prefix
        #: Unused: the key material lives in the vault. Accepted because the core passes it.
        self.config_dir = config_dir

    # -- what a subclass provides ----------------------------------------------------------

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the secrets are, for messages: e.g. ``Azure Key Vault https://x.vault...``."""

    @abstractmethod
    def _read(self, name: str, version: str | None) -> tuple[str, str] | None:
        """``(value, version)`` of a version (None: the newest), or None if there is none."""

    @abstractmethod
    def _create(self, name: str, value: str) -> str:
        """Create a new secret holding ``value``; return its version; ``SecretExists`` if taken."""

    @abstractmethod
    def _write(self, name: str, value: str) -> str:
        """Add ``value`` as the newest version of a secret (creating it); return the version."""

    # -- names -------------------------------------------------------------------------------

    @property
    def index_name(self) -> str:
        return f"{self.secret_prefix}key-index"

    @property
    def id_key_name(self) -> str:
        return f"{self.secret_prefix}id-key"

    @property
    def credential_key_name(self) -> str:
        return f"{self.secret_prefix}credential-key"

    def data_key_name(self, key_id: int) -> str:
        return f"{self.secret_prefix}data-key-{key_id}"

    def secret_names(self) -> list[str]:
        """Every secret this repository's key material uses (e.g. to clean up a test vault)."""
        index = self._index()
        return [self.id_key_name, self.credential_key_name,
                *(self.data_key_name(n) for n in sorted(index.data_keys)), self.index_name]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r}, prefix={self.secret_prefix!r})"

    # -- KeyProvider ---------------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether the key index is there (it is written last, so it marks a finished init)."""
        return self._read(self.index_name, None) is not None

    def create(self, passphrase: str | None) -> KeyMaterial:
        """Create fresh keys (data key 1) in the vault; refuse if any of the secrets exists."""
        if self.exists():
            raise ConfigError(f"{self.name}: key material already exists in {self.location} "
                              f"(secret '{self.index_name}'); refusing to replace it")
        material = KeyMaterial(id_key=os.urandom(KEY_SIZE), data_keys={1: os.urandom(KEY_SIZE)},
                               current_key_id=1, credential_key=os.urandom(KEY_SIZE))
        index = KeyIndex(
            current_key_id=1,
            id_key=self._create_new(self.id_key_name, _encode_key(material.id_key)),
            credential_key=self._create_new(self.credential_key_name,
                                            _encode_key(material.credential_key)),
            data_keys={1: self._create_new(self.data_key_name(1),
                                           _encode_key(material.data_keys[1]))},
        )
        self._create_new(self.index_name, index.dumps())
        return material

    def load(self, passphrase: str | None) -> KeyMaterial:
        """Fetch every key the index lists, each at its pinned vault version."""
        return self._load()[1]

    def rotate(self, passphrase: str | None) -> KeyMaterial:
        """Add data key max+1, then a new index version naming it current."""
        index, material = self._load()
        new_id = max(index.data_keys) + 1
        key = os.urandom(KEY_SIZE)
        # _write, not _create: a secret left by a rotation that died before updating the
        # index gets a new version, which the index then pins; its stale value is never used.
        index.data_keys[new_id] = self._write(self.data_key_name(new_id), _encode_key(key))
        index.current_key_id = new_id
        self._write(self.index_name, index.dumps())
        material.data_keys[new_id] = key
        material.current_key_id = new_id
        return material

    def versions(self, passphrase: str | None) -> list[int]:
        """The data key ids, from the index alone (one request)."""
        return sorted(self._index().data_keys)

    # -- internals ---------------------------------------------------------------------------

    def _create_new(self, name: str, value: str) -> str:
        try:
            return self._create(name, value)
        except SecretExists:
            raise ConfigError(
                f"{self.name}: secret '{name}' already exists in {self.location} but the key "
                f"index '{self.index_name}' does not (left by an interrupted 'enigma init', or "
                "used by something else): delete it, or choose another secret_prefix") from None

    def _index(self) -> KeyIndex:
        found = self._read(self.index_name, None)
        if found is None:
            raise ConfigError(
                f"{self.name}: no Enigma key material in {self.location} (secret "
                f"'{self.index_name}' not found); run: enigma init (or check secret_prefix)")
        try:
            return KeyIndex.loads(found[0])
        except ValueError as exc:
            raise IntegrityError(f"{self.name}: key index '{self.index_name}' in "
                                 f"{self.location} is damaged: {exc}") from None

    def _load(self) -> tuple[KeyIndex, KeyMaterial]:
        index = self._index()
        jobs = [(self.id_key_name, index.id_key),
                (self.credential_key_name, index.credential_key),
                *((self.data_key_name(n), v) for n, v in sorted(index.data_keys.items()))]
        with ThreadPoolExecutor(min(MAX_PARALLEL_READS, len(jobs))) as pool:
            keys = list(pool.map(lambda job: self._read_key(*job), jobs))
        data = dict(zip(sorted(index.data_keys), keys[2:], strict=True))
        material = KeyMaterial(id_key=keys[0], data_keys=data,
                               current_key_id=index.current_key_id, credential_key=keys[1])
        return index, material

    def _read_key(self, name: str, version: str) -> bytes:
        found = self._read(name, version)
        if found is None:
            raise IntegrityError(
                f"{self.name}: secret '{name}' version {version} is missing from "
                f"{self.location} but the key index lists it; recover it (soft delete or a "
                "vault backup): chunks sealed with it cannot be read without it")
        try:
            key = base64.b64decode(found[0].strip(), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != KEY_SIZE:
            raise IntegrityError(f"{self.name}: secret '{name}' version {version} in "
                                 f"{self.location} is not a base64 {KEY_SIZE}-byte key")
        return key
