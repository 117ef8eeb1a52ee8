"""The abstract base classes a plugin implements.

Each class carries ``name``: what a user writes as ``type = "..."`` (matched
case-insensitively, ignoring ``-`` and ``_``) and optional ``aliases``. The core builds an
instance from a TOML table: the table minus ``type`` (and, for storage, minus the core's
own ``name``/``weight`` keys) becomes the constructor's keyword arguments, so a plugin
declares its options simply as keyword parameters of ``__init__``.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, ClassVar

from enigma.errors import ConfigError


class Plugin(ABC):
    """Common shape: a type name users write in config, and aliases for seed compatibility."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""


class Chunker(Plugin):
    """Cuts a byte stream into chunks; content-defined chunkers make dedup survive inserts."""

    @abstractmethod
    def chunks(self, stream: BinaryIO) -> Iterator[bytes | memoryview]:
        """Yield the stream's chunks in order, covering every byte exactly once.

        A yielded memoryview may be reused after the next item is requested: callers that
        keep a chunk copy it.
        """

    def chunks_of(self, buffer: bytes | memoryview) -> Iterator[bytes | memoryview]:
        """Chunk data already in memory; each yielded piece stays valid while ``buffer`` does.

        Override to cut without copying (``CdcChunker`` does); this default streams.
        """
        for piece in self.chunks(io.BytesIO(buffer)):
            yield bytes(piece)

    @property
    def params(self) -> dict[str, Any]:
        """The parameters that determine cut points (recorded with each backup)."""
        return {}

    @property
    def single_chunk_limit(self) -> int:
        """Inputs up to this many bytes are always exactly one chunk.

        The pipeline reads such files whole and skips the chunker (a big saving with many
        small files). 0 means "no such guarantee".
        """
        return 0


class Compressor(Plugin):
    """Per-chunk compression; the sealed chunk header records the compressor's ``name``."""

    @abstractmethod
    def compress(self, data: bytes | memoryview) -> bytes:
        """Return the compressed form of ``data``."""

    @abstractmethod
    def decompress(self, data: bytes | memoryview, max_size: int) -> bytes:
        """Return the original bytes; refuse output larger than ``max_size`` (zip bombs)."""


class StorageProvider(Plugin):
    """A flat key -> bytes store. Keys look like ``chunks/ab/<64 hex>``, ``keys/...``, ``meta/...``.

    Contract (checked by ``enigma.testing.StorageProviderContract``): ``put`` is atomic (a
    reader sees the whole object or nothing) and overwriting is allowed and idempotent;
    ``get`` of a missing key raises ``ObjectNotFound``; ``delete`` of a missing key is a
    no-op; ``list`` yields every key under a prefix, however many; methods are safe to call
    from many threads at once. Permanent failures raise ``StorageError``, retryable ones
    ``TransientStorageError``.
    """

    #: The provider's name from ``[[providers]] name``; set by the core after construction.
    label: str = ""
    #: Uploads the core runs at once against this provider: enough to hide a cloud's
    #: latency; a local disk needs few (each extra thread only adds GIL hand-offs).
    upload_concurrency: int = 8

    @abstractmethod
    def put(self, key: str, data: bytes | memoryview) -> None:
        """Store ``data`` under ``key`` atomically, replacing any existing object."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Return the whole object, or raise ``ObjectNotFound``."""

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (fewer at the end); override to avoid a full read."""
        return self.get(key)[offset : offset + length]

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` exists."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield every key starting with ``prefix``, in no particular order."""

    def put_stream(self, key: str, stream: BinaryIO) -> None:
        """Store a stream's bytes; override to upload large objects without buffering them."""
        self.put(key, stream.read())

    def get_stream(self, key: str) -> BinaryIO:
        """Open an object for streaming reads; override to avoid buffering large objects."""
        return io.BytesIO(self.get(key))

    def sync(self) -> None:
        """Make every earlier ``put`` durable.

        The core calls this before it records chunks in the manifest. A provider whose puts
        are durable when they return (every cloud store) keeps this no-op; one that defers
        flushing (local disks, see ``LocalStorage``) flushes here.
        """

    def check(self) -> None:
        """Raise ``StorageError`` with a one-line cause if the provider is unreachable."""
        self.exists("meta/.connection-check")

    def create_bucket(self) -> bool:
        """Create the bucket/container/directory if missing; return True if it was created."""
        return False

    def close(self) -> None:
        """Release connections and file handles."""


@dataclass
class KeyMaterial:
    """Unlocked keys: a never-rotating id key for chunk ids, and versioned data keys."""

    id_key: bytes
    data_keys: dict[int, bytes]
    current_key_id: int
    #: 32-byte key for ``enc:`` credentials in config files.
    credential_key: bytes = field(default=b"", repr=False)
    #: Write-only client: the reader's public recipient key that per-process data keys are
    #: sealed to (``enigma.recipient``). Such a client holds no data keys at all.
    recipient: bytes = field(default=b"", repr=False)
    #: Reader: recipient seeds by fingerprint (hex), to unseal what write-only clients sealed.
    recipient_seeds: dict[str, bytes] = field(default_factory=dict, repr=False)
    #: Reader: the fingerprint ``enigma key export-recipient`` hands out ("" = none yet).
    current_recipient: str = ""

    @property
    def write_only(self) -> bool:
        """True for a write-only client: it can seal chunks but holds no key to open them."""
        return bool(self.recipient)

    def __repr__(self) -> str:  # never print key bytes
        return f"KeyMaterial(versions={sorted(self.data_keys)}, current={self.current_key_id})"


class KeyProvider(Plugin):
    """Creates, unlocks and rotates the repository's key material.

    The constructor takes its options from the ``[enigma]`` table (e.g. ``keyfile_path``,
    ``vault_url``, ``secret_prefix``) plus ``config_dir``.
    """

    #: Whether ``create``/``load``/``rotate`` need a passphrase (the CLI asks only then).
    needs_passphrase: ClassVar[bool] = False

    @abstractmethod
    def exists(self) -> bool:
        """Whether key material has been created already."""

    @abstractmethod
    def create(self, passphrase: str | None) -> KeyMaterial:
        """Create fresh key material; refuse if some already exists."""

    @abstractmethod
    def load(self, passphrase: str | None) -> KeyMaterial:
        """Unlock existing key material; ``AuthError`` on a wrong passphrase."""

    @abstractmethod
    def rotate(self, passphrase: str | None) -> KeyMaterial:
        """Add a new data key version and make it current; old versions stay readable."""

    def versions(self, passphrase: str | None) -> list[int]:
        """The data key versions that exist."""
        return sorted(self.load(passphrase).data_keys)

    def create_write_only(self, passphrase: str | None, recipient: bytes) -> KeyMaterial:
        """Create a write-only client's keys (an id key, no data keys) for ``recipient``."""
        raise ConfigError(f"key provider '{self.name}' cannot make a write-only client")

    def set_recipient(self, passphrase: str | None, recipient: bytes) -> KeyMaterial:
        """Write-only client: seal future data keys to another recipient key."""
        raise ConfigError(f"key provider '{self.name}' cannot make a write-only client")

    def new_recipient(self, passphrase: str | None) -> KeyMaterial:
        """Reader: add a recipient key pair and make it the one handed out."""
        raise ConfigError(f"key provider '{self.name}' cannot hold recipient keys")


@dataclass(frozen=True)
class ProviderSlot:
    """What a distribution policy knows about a provider: its label and weight."""

    label: str
    weight: int = 1


class DistributionPolicy(Plugin):
    """Decides which provider(s) store each new chunk.

    Options come from ``[enigma.<options_table>]`` when the class names one (e.g.
    ``replication`` for ``[enigma.replication] copies = 2``).
    """

    options_table: ClassVar[str] = ""

    def __init__(self, providers: Sequence[ProviderSlot], **options: Any) -> None:
        if not providers:
            raise ValueError("a distribution policy needs at least one provider")
        self.providers = list(providers)

    @abstractmethod
    def choose(self, chunk_id: bytes, size: int) -> list[str]:
        """Return the labels of the providers that must store this chunk (first = primary)."""


class Server(Plugin):
    """A long-running front door started by ``enigma serve`` (e.g. the S3 gateway).

    ``config_table`` names the TOML table that enables it (e.g. ``s3_proxy``); ``serve``
    runs if that table is present, or if it is the only server installed.
    """

    config_table: ClassVar[str] = ""

    @abstractmethod
    def serve(self, repository: Any, options: dict[str, Any]) -> None:
        """Serve until interrupted."""


__all__ = [
    "Chunker",
    "Compressor",
    "DistributionPolicy",
    "KeyMaterial",
    "KeyProvider",
    "Plugin",
    "ProviderSlot",
    "Server",
    "StorageProvider",
]
