"""A repository: config, keys, storage providers, pipeline plugins and manifest, built lazily.

Nothing is opened until a command needs it, so ``enigma list`` never derives a key and
``enigma status`` never unlocks one unless a provider's credentials are ``enc:`` tokens.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from functools import cached_property
from typing import Any

from enigma import crypto, recipient
from enigma.config import Config
from enigma.errors import (
    AuthError,
    ConfigError,
    EnigmaError,
    IntegrityError,
    ObjectNotFound,
    PluginError,
    StorageError,
)
from enigma.interfaces import (
    Chunker,
    Compressor,
    DistributionPolicy,
    KeyMaterial,
    KeyProvider,
    ProviderSlot,
    StorageProvider,
)
from enigma.manifest import Manifest
from enigma.plugin_manager import PluginManager, construct
from enigma.throttle import RateLimiter, ThrottledProvider

PassphraseSource = Callable[[bool], str | None]
"""Called with ``confirm=True`` at init; returns the passphrase or None."""


class Repository:
    """Everything one command needs, resolved from config through the plugin manager."""

    def __init__(self, config: Config, plugins: PluginManager,
                 passphrase: PassphraseSource | None = None) -> None:
        self.config = config
        self.plugins = plugins
        self._passphrase_source = passphrase or (lambda confirm: None)
        self._keys: KeyMaterial | None = None
        self._unlocking: Future[KeyMaterial] | None = None
        self._key_lock = threading.Lock()
        #: Write-only client: this process's data key (id, key), made on first use.
        self._session: tuple[int, bytes] | None = None
        #: Reader: sealed data keys that could not be opened, with why (asked only once).
        self._unsealable: dict[int, EnigmaError] = {}
        #: True in ``enigma serve``: a manifest plugin (Raft) may then run a cluster member.
        self.serving = False
        #: Bandwidth limits in KiB/s given on the command line ("upload", "download"; None:
        #: the config's). Set before the providers are first used.
        self.limit_overrides: dict[str, int | None] = {}

    # -- keys --------------------------------------------------------------------------

    @cached_property
    def key_provider(self) -> KeyProvider:
        cls = self.plugins.get("key_provider", self.config.key_provider)
        options = {"config_dir": str(self.config.config_dir), **self.config.key_options}
        return construct(cls, options, lambda key: self.config.where("enigma", key))

    def _passphrase(self, confirm: bool = False) -> str | None:
        if not self.key_provider.needs_passphrase:
            return None
        value = self._passphrase_source(confirm)
        if not value:
            raise ConfigError("a passphrase is required: use --passphrase, ENIGMA_PASSPHRASE, "
                              "or run in a terminal to be asked")
        return value

    @property
    def keys(self) -> KeyMaterial:
        """Unlock the key material once per process.

        A reader (a keystore holding recipient seeds) whose providers hold a write-only
        client's ``keys/writer/<fingerprint>`` takes that client's id key, so chunk ids,
        manifest snapshots and dedup are the client's; its data keys are unsealed on demand
        (``resolve_data_key``)."""
        if self._keys is None:
            if self._unlocking is not None:
                self._keys = self._unlocking.result()
            else:
                self._keys = self.key_provider.load(self._passphrase())
            if self._keys.recipient_seeds and not self._keys.write_only:
                writer_id = self._writer_id_key(self._keys)
                if writer_id is not None:
                    self._keys = dataclasses.replace(self._keys, id_key=writer_id)
        return self._keys

    def unlock_beside(self) -> None:
        """Start unlocking the key material on a thread of its own, so a command can do
        its key-free work meanwhile: Argon2id (0.3-0.4 s by design) releases the GIL, and
        a no-change re-backup spends about as long walking its sources and loading its
        file cache. ``keys`` waits for it and raises what the unlock raised. The
        passphrase is asked here, on the calling thread, where a prompt reaches the
        terminal."""
        if self._keys is not None or self._unlocking is not None:
            return
        passphrase = self._passphrase()
        pool = ThreadPoolExecutor(1, thread_name_prefix="enigma-unlock")
        self._unlocking = pool.submit(self.key_provider.load, passphrase)
        pool.shutdown(wait=False)  # the thread ends with the unlock

    def unlocking(self) -> bool:
        """True while ``unlock_beside``'s unlock is still running."""
        return self._unlocking is not None and not self._unlocking.done()

    def create_keys(self) -> KeyMaterial:
        self._keys = self.key_provider.create(self._passphrase(confirm=True))
        return self._keys

    def rotate_keys(self) -> KeyMaterial:
        self._keys = self.key_provider.rotate(self._passphrase())
        return self._keys

    # -- write-only clients and readers (enigma.recipient) ------------------------------

    def create_write_only_keys(self, public_key: bytes) -> KeyMaterial:
        self._keys = self.key_provider.create_write_only(self._passphrase(confirm=True),
                                                         public_key)
        return self._keys

    def set_recipient(self, public_key: bytes) -> KeyMaterial:
        self._keys = self.key_provider.set_recipient(self._passphrase(), public_key)
        self._session = None  # the next data key goes to the new recipient
        return self._keys

    def new_recipient(self) -> KeyMaterial:
        self._keys = self.key_provider.new_recipient(self._passphrase())
        return self._keys

    def require_readable(self) -> None:
        """Fail at once, before any work, where a write-only client would need to decrypt."""
        if self.keys.write_only:
            raise recipient.WriteOnlyError()

    def _secrets(self, keys: KeyMaterial) -> dict[bytes, recipient.RecipientSecret]:
        return {bytes.fromhex(fp): recipient.RecipientSecret(seed)
                for fp, seed in keys.recipient_seeds.items()}

    def _get_any(self, name: str) -> list[bytes]:
        """Every configured provider's copy of a small object (missing or unreadable: none)."""
        from enigma.chunkstore import with_retries

        blobs = []
        for label, provider in self.providers.items():
            with suppress(ObjectNotFound, StorageError):
                blobs.append(with_retries(f"provider '{label}'", provider.get, name))
        return blobs

    def _writer_id_key(self, keys: KeyMaterial) -> bytes | None:
        """The write-only client's id key, if these providers hold one sealed to us."""
        secrets = self._secrets(keys)
        for fp in secrets:
            for blob in self._get_any(recipient.writer_object(fp)):
                with suppress(EnigmaError):
                    return recipient.open_key(secrets, blob, kind=recipient.KIND_ID, key_id=0)
        return None

    def resolve_data_key(self, key_id: int) -> bytes | None:
        """Reader: unseal data key ``key_id`` from ``keys/sealed/`` (cached; None when this
        keystore holds no recipient seeds). ``IntegrityError`` if no copy opens."""
        keys = self.keys
        if not keys.recipient_seeds or key_id < recipient.SESSION_KEY_ID_MIN:
            return None
        with self._key_lock:
            if key_id in keys.data_keys:
                return keys.data_keys[key_id]
            if key_id in self._unsealable:
                raise self._unsealable[key_id]
            name = recipient.sealed_data_key_object(key_id)
            error: EnigmaError = IntegrityError(f"sealed data key {name} is missing on every "
                                                "provider")
            for blob in self._get_any(name):
                try:
                    key = recipient.open_key(self._secrets(keys), blob,
                                             kind=recipient.KIND_DATA, key_id=key_id)
                except (IntegrityError, AuthError) as exc:
                    error = IntegrityError(str(exc))
                    continue
                keys.data_keys[key_id] = key
                return key
            self._unsealable[key_id] = error
            raise error

    def session_data_key(self) -> tuple[int, bytes]:
        """Write-only client: this process's data key, sealed to the recipient and stored as
        ``keys/sealed/<id>`` on every provider before any chunk uses it."""
        from enigma.chunkstore import with_retries

        keys = self.keys
        if not keys.write_only:
            raise ConfigError("not a write-only client")
        with self._key_lock:
            if self._session is not None:
                return self._session
            self.publish_writer_key()
            key = os.urandom(crypto.KEY_SIZE)
            while True:
                key_id = recipient.new_session_key_id()
                name = recipient.sealed_data_key_object(key_id)
                if not any(with_retries(f"provider '{label}'", p.exists, name)
                           for label, p in self.providers.items()):
                    break
            blob = recipient.seal_key(keys.recipient, key, kind=recipient.KIND_DATA,
                                      key_id=key_id)
            for label, provider in self.providers.items():
                with_retries(f"storing {name} on provider '{label}'", provider.put, name, blob)
            self._session = (key_id, key)
            return self._session

    def publish_writer_key(self) -> None:
        """Write-only client: store its id key sealed to the current recipient (once per
        recipient), so the reader can open the manifest snapshots and check chunk ids."""
        from enigma.chunkstore import with_retries

        keys = self.keys
        name = recipient.writer_object(recipient.fingerprint(keys.recipient))
        blob = b""
        for label, provider in self.providers.items():
            if with_retries(f"provider '{label}'", provider.exists, name):
                continue
            blob = blob or recipient.seal_key(keys.recipient, keys.id_key,
                                              kind=recipient.KIND_ID, key_id=0)
            with_retries(f"storing {name} on provider '{label}'", provider.put, name, blob)

    # -- manifest ----------------------------------------------------------------------

    @cached_property
    def manifest(self) -> Manifest:
        """The local manifest, or whatever a plugin (e.g. Raft) wraps it with."""
        path = self.config.db_path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        manifest = Manifest(path)
        wrapped = [w for w in self.plugins.pm.hook.wrap_manifest(
                       manifest=manifest, config=self.config, repository=self)
                   if w is not None]
        if len(wrapped) > 1:
            raise PluginError("more than one plugin wants to wrap the manifest; "
                              "uninstall all but one")
        return wrapped[0] if wrapped else manifest

    # -- storage -----------------------------------------------------------------------

    @cached_property
    def providers(self) -> dict[str, StorageProvider]:
        """Storage providers by label, in config order."""
        built: dict[str, StorageProvider] = {}
        for entry in self.config.providers:
            cls = self.plugins.get("storage", entry.type)
            options = {k: self.reveal(v) for k, v in entry.options.items()}
            index = entry.index if entry.index >= 0 else None
            provider = construct(
                cls, options,
                lambda key, i=index: self.config.where("providers", key, i))
            provider.label = entry.name
            built[entry.name] = self.limited(provider)
        return built

    @cached_property
    def limiters(self) -> dict[str, RateLimiter]:
        """A limiter for each direction with a limit ("upload", "download"): the command
        line's, else the config's (KiB/s). One per process, shared by every provider, so
        the limit is the total whatever the number of providers and threads."""
        limiters: dict[str, RateLimiter] = {}
        for direction in ("upload", "download"):
            kib = self.limit_overrides.get(direction) or self.config.limit(direction)
            if kib:
                limiters[direction] = RateLimiter(kib * 1024)
        return limiters

    def limited(self, provider: StorageProvider) -> StorageProvider:
        """``provider`` charging the bandwidth limits; itself (no overhead) without any."""
        if not self.limiters:
            return provider
        return ThrottledProvider(provider, upload=self.limiters.get("upload"),
                                 download=self.limiters.get("download"))

    def reveal(self, value: Any) -> Any:
        """Decrypt ``enc:`` credentials with the keystore's credential key."""
        if isinstance(value, str) and crypto.is_encrypted(value):
            return crypto.decrypt_credential(self.keys.credential_key, value)
        return value

    # -- pipeline plugins --------------------------------------------------------------

    @cached_property
    def chunker(self) -> Chunker:
        kind, options = self.config.chunker
        cls = self.plugins.get("chunker", kind)
        return construct(cls, options,
                         lambda key: self.config.where(f"enigma.chunk_strategy.{kind}", key))

    @cached_property
    def compressor(self) -> Compressor | None:
        choice = self.config.compression
        if choice is None:
            return None
        name, options = choice
        cls = self.plugins.get("compressor", name)
        return construct(cls, options,
                         lambda key: self.config.where("enigma.compression", key))

    def compressor_named(self, name: str) -> Compressor:
        """The compressor a sealed chunk's header names, to read chunks whatever the config."""
        if self.compressor is not None and self.compressor.name == name:
            return self.compressor
        cache = self.__dict__.setdefault("_readers", {})
        if name not in cache:
            cache[name] = self.plugins.get("compressor", name)()
        return cache[name]

    @cached_property
    def distribution(self) -> DistributionPolicy:
        cls = self.plugins.get("distribution", self.config.distribution)
        slots = [ProviderSlot(p.name, p.weight) for p in self.config.providers]
        table = getattr(cls, "options_table", "")
        options = self.config.subtable(table) if table else {}
        return construct(cls, options, lambda key: self.config.where(f"enigma.{table}", key),
                         slots)

    def close(self) -> None:
        if "manifest" in self.__dict__:
            self.manifest.close()
        for provider in self.__dict__.get("providers", {}).values():
            provider.close()


def ensure_private_dir(path: os.PathLike[str] | str) -> None:
    """Create a directory only its owner can read (it holds keys and the manifest)."""
    os.makedirs(path, mode=0o700, exist_ok=True)
