"""Plugin discovery and lookup: entry points in, named classes out.

The pluggy manager is built by ``PluginManager()``, never at import time, so tests make a
fresh one and register their own plugins into it. Lookups apply the rules of DESIGN.md
section 3: a broken third-party plugin is recorded and shown, never fatal; a broken
built-in is a bug and fails loudly; two plugins claiming one name is an error when that
name is used; a missing name says which package to install.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from enigma import hookspecs
from enigma.errors import ConfigError, EnigmaError, PluginError
from enigma.interfaces import (
    Chunker,
    Compressor,
    DistributionPolicy,
    KeyProvider,
    Plugin,
    Server,
    StorageProvider,
)

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "enigma"
LOAD_PLUGINS_ENV = "ENIGMA_LOAD_PLUGINS"
CORE_DISTRIBUTION = "enigma"


@dataclass(frozen=True)
class Kind:
    """One family of plugin classes: the hook that registers them and their base class."""

    key: str
    label: str
    hook: str
    base: type[Plugin]


KINDS: dict[str, Kind] = {
    k.key: k
    for k in (
        Kind("chunker", "chunker", "register_chunkers", Chunker),
        Kind("compressor", "compressor", "register_compressors", Compressor),
        Kind("storage", "storage type", "register_storage_providers", StorageProvider),
        Kind("key_provider", "key provider", "register_key_providers", KeyProvider),
        Kind("distribution", "distribution policy", "register_distribution_policies",
             DistributionPolicy),
        Kind("server", "server", "register_servers", Server),
    )
}

#: Where the types this repository ships as separate distributions come from, so a
#: missing type can name the exact package to install.
KNOWN_PACKAGES: dict[tuple[str, str], str] = {
    **{("storage", t): "enigma-storage-s3"
       for t in ("s3", "s3compatible", "minio", "rustfs", "garage")},
    ("storage", "azure"): "enigma-storage-azure",
    ("storage", "gcs"): "enigma-storage-gcs",
    ("chunker", "fixed"): "enigma-chunker-fixed",
    ("key_provider", "azurekeyvault"): "'enigma-keys-vault[azure]'",
    ("key_provider", "gcpsecretmanager"): "'enigma-keys-vault[gcp]'",
    ("key_provider", "awssecretsmanager"): "'enigma-keys-vault[aws]'",
    ("server", "s3"): "enigma-gateway-s3",
}


def normalize(name: str) -> str:
    """Type names match case-insensitively and ignore '-', '_' and spaces ('Round-Robin')."""
    return "".join(ch for ch in name.lower() if ch not in "-_ ")


@dataclass(frozen=True)
class Provided:
    """A class some distribution registered under a name."""

    kind: str
    name: str
    cls: type
    distribution: str


@dataclass(frozen=True)
class LoadFailure:
    """A plugin that could not be loaded or whose hook misbehaved."""

    distribution: str
    error: str


@dataclass
class DistributionInfo:
    """What ``enigma plugins`` shows for one distribution."""

    name: str
    version: str
    provides: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


class PluginManager:
    """Wraps pluggy: loads entry points, collects registered classes, resolves names."""

    def __init__(self, *, load_entrypoints: bool = True) -> None:
        self.pm = pluggy.PluginManager("enigma")
        self.pm.add_hookspecs(hookspecs)
        self.failures: list[LoadFailure] = []
        self.versions: dict[str, str] = {}
        self._registry: dict[str, dict[str, list[Provided]]] | None = None
        if load_entrypoints:
            self.load_entrypoints()

    # -- loading -----------------------------------------------------------------------

    def register(self, module: ModuleType | object, name: str, version: str = "") -> None:
        """Register a plugin module or object under its distribution name."""
        self.pm.register(module, name=name)
        self.versions.setdefault(name, version)
        self._registry = None

    def load_entrypoints(self) -> None:
        """Import every ``enigma`` entry point; record third-party failures, raise for ours.

        ``ENIGMA_LOAD_PLUGINS`` (comma-separated distribution names, like llm's
        ``LLM_LOAD_PLUGINS``) limits which third-party plugins load; set to "" it loads
        only the built-ins: a quick way to rule a plugin out, or to see a core-only install.
        """
        chosen = os.environ.get(LOAD_PLUGINS_ENV)
        allowed = None if chosen is None else {n.strip() for n in chosen.split(",") if n.strip()}
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist else ep.name
            version = ep.dist.version if ep.dist else ""
            if self.pm.has_plugin(ep.name):
                continue
            if allowed is not None and dist != CORE_DISTRIBUTION and ep.name not in allowed:
                continue
            try:
                module = ep.load()
                self.register(module, ep.name, version)
            except Exception as exc:  # a third-party plugin must never take the CLI down
                if dist == CORE_DISTRIBUTION:
                    raise
                self._fail(ep.name, f"failed to load: {type(exc).__name__}: {exc}", version)

    def _fail(self, distribution: str, error: str, version: str = "") -> None:
        self.failures.append(LoadFailure(distribution, error))
        self.versions.setdefault(distribution, version)
        print(f"enigma: warning: plugin '{distribution}' {error} (see: enigma plugins)",
              file=sys.stderr)

    # -- registry ----------------------------------------------------------------------

    @property
    def registry(self) -> dict[str, dict[str, list[Provided]]]:
        """kind -> normalized name -> every class offering that name (conflicts kept)."""
        return {key: self.of_kind(key) for key in KINDS}

    def of_kind(self, key: str) -> dict[str, list[Provided]]:
        """One kind's registry, collected on first use: asking which servers exist must not
        import every chunker and key provider."""
        if self._registry is None:
            self._registry = {}
        if key not in self._registry:
            found: dict[str, list[Provided]] = {}
            for provided in self._collect(KINDS[key]):
                names = {provided.name, *getattr(provided.cls, "aliases", ())}
                for alias in {normalize(n) for n in names}:
                    found.setdefault(alias, []).append(provided)
            self._registry[key] = found
        return self._registry[key]

    def _collect(self, kind: Kind) -> Iterable[Provided]:
        """Call each plugin's hook separately so every class is tied to its distribution."""
        caller = getattr(self.pm.hook, kind.hook)
        for impl in caller.get_hookimpls():
            dist = impl.plugin_name
            try:
                result = impl.function()
            except Exception as exc:
                if dist == CORE_DISTRIBUTION:
                    raise
                self._fail(dist, f"{kind.hook}() raised {type(exc).__name__}: {exc}")
                continue
            classes = result if isinstance(result, list | tuple) else [result]
            for cls in classes:
                if cls is None:
                    continue
                if not (isinstance(cls, type) and issubclass(cls, kind.base)
                        and isinstance(getattr(cls, "name", None), str)):
                    problem = f"{kind.hook}() returned {cls!r}, not a {kind.base.__name__} " \
                              "subclass with a 'name'"
                    if dist == CORE_DISTRIBUTION:
                        raise PluginError(problem)
                    self._fail(dist, problem)
                    continue
                yield Provided(kind.key, cls.name, cls, dist)

    def available(self, kind: str) -> list[str]:
        """Primary names of every installed class of a kind, sorted."""
        names = {p.name for offers in self.of_kind(kind).values() for p in offers}
        return sorted(names, key=str.lower)

    def get(self, kind: str, type_name: str) -> type:
        """Resolve a user-written type name to its class, with DESIGN.md's error messages."""
        info = KINDS[kind]
        key = normalize(type_name)
        offers = self.of_kind(kind).get(key, [])
        unique = {p.cls: p for p in offers}
        if len(unique) > 1:
            who = ", ".join(f"{p.distribution} ({p.cls.__module__}.{p.cls.__qualname__})"
                            for p in unique.values())
            raise PluginError(f"{info.label} '{type_name}' is provided by more than one "
                              f"plugin: {who}; uninstall all but one")
        if unique:
            return next(iter(unique))
        installed = ", ".join(self.available(kind)) or "none"
        message = f"unknown {info.label} '{type_name}' (installed: {installed})"
        package = KNOWN_PACKAGES.get((kind, key))
        if package:
            message += f"; install it with: pip install {package}"
        raise PluginError(message)

    # -- reporting ---------------------------------------------------------------------

    def describe(self) -> list[DistributionInfo]:
        """One row per distribution for ``enigma plugins``."""
        rows: dict[str, DistributionInfo] = {}

        def row(dist: str) -> DistributionInfo:
            if dist not in rows:
                rows[dist] = DistributionInfo(dist, self.versions.get(dist, ""))
            return rows[dist]

        for name, _plugin in self.pm.list_name_plugin():
            row(name)
        for kind, names in self.registry.items():
            for offers in names.values():
                for p in offers:
                    provided = row(p.distribution).provides.setdefault(kind, [])
                    if p.name not in provided:
                        provided.append(p.name)
        for failure in self.failures:
            row(failure.distribution).errors.append(failure.error)
        for info in rows.values():
            for names in info.provides.values():
                names.sort(key=str.lower)
        return sorted(rows.values(), key=lambda r: (r.name != CORE_DISTRIBUTION, r.name))


def construct(cls: type, options: dict[str, Any], where: Callable[[str | None], str],
              *args: Any) -> Any:
    """Build a plugin instance from a config table, turning option mistakes into ConfigErrors.

    ``where(key)`` renders a location such as ``enigma.toml:12: [[providers]] #1 'bucket'``.
    """
    sig = inspect.signature(cls.__init__)
    params = list(sig.parameters.values())[1 + len(args):]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
    accepted = [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not takes_any:
        for key in options:
            if key not in accepted:
                hint = ", ".join(accepted) or "none"
                raise ConfigError(f"{where(key)}: unknown option for {cls.name} "
                                  f"(accepted: {hint})")
    for p in params:
        if (p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
                and p.name not in options):
            raise ConfigError(f"{where(p.name)}: missing, required by {cls.name}")
    try:
        return cls(*args, **options)
    except EnigmaError as exc:
        if isinstance(exc, ConfigError):
            raise ConfigError(f"{where(None)}: {exc}") from exc
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where(None)}: {exc}") from exc
