"""A repository: config, keys, storage providers, pipeline plugins and manifest, built lazily.

Nothing is opened until a command needs it, so ``enigma list`` never derives a key and
``enigma status`` never unlocks one unless a provider's credentials are ``enc:`` tokens.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cached_property
from typing import Any

from enigma import crypto
from enigma.config import Config
from enigma.errors import ConfigError, PluginError
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
        #: True in ``enigma serve``: a manifest plugin (Raft) may then run a cluster member.
        self.serving = False

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
        """Unlock the key material once per process."""
        if self._keys is None:
            self._keys = self.key_provider.load(self._passphrase())
        return self._keys

    def create_keys(self) -> KeyMaterial:
        self._keys = self.key_provider.create(self._passphrase(confirm=True))
        return self._keys

    def rotate_keys(self) -> KeyMaterial:
        self._keys = self.key_provider.rotate(self._passphrase())
        return self._keys

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
            built[entry.name] = provider
        return built

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
