"""Loading ``enigma.toml``: the seed's format, validated, with errors that name file, key and line.

Only the core's own keys are checked here; a plugin's options are checked against its
constructor when the plugin is built (``plugin_manager.construct``), through
``Config.where`` so those errors point at the right line too.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enigma.errors import ConfigError

CONFIG_FILE = "enigma.toml"
DEFAULT_CONFIG_DIR = "~/.enigma"
DEFAULT_DB = "manifest.db"
DEFAULT_STORAGE_DIR = "storage"

#: Keys of ``[enigma]`` the core reads itself; any other key goes to the key provider.
CORE_KEYS = {"db_path", "key_provider", "distribution", "chunk_strategy", "compression",
             "replication", "erasure", "limit_upload", "limit_download", "pack_size"}
#: Bandwidth limits in ``[enigma]`` (KiB/s), by direction; ``--limit-upload`` and
#: ``--limit-download`` override them (``enigma.throttle``).
LIMIT_KEYS = {"upload": "limit_upload", "download": "limit_download"}
#: ``[enigma] pack_size``: MiB a pack of small chunks grows to (``enigma.packs``).
DEFAULT_PACK_SIZE_MIB = 4
MAX_PACK_SIZE_MIB = 128
#: Options of the redundancy policies' tables (``[enigma.replication]``, ``[enigma.erasure]``),
#: checked at load so a mistake points at its line; the policy checks them against the
#: number of providers when it is built (only a write needs that: a restore with a lost
#: provider removed from the config must still work).
REDUNDANCY_OPTIONS = {"replication": ("copies",), "erasure": ("data_shards", "parity_shards")}
#: Keys of ``[[providers]]`` the core reads itself; the rest go to the storage plugin.
PROVIDER_CORE_KEYS = {"name", "type", "weight"}
#: Top-level tables; server plugins (``[s3_proxy]``) and Raft (``[raft]``) read theirs.
TOP_LEVEL = {"enigma", "providers", "s3_proxy", "raft"}

DEFAULT_CONFIG_TEXT = """\
# Enigma configuration. Full reference: examples/enigma.toml in the Enigma repository.
[enigma]
key_provider = "local"
distribution = "RoundRobin"

[enigma.chunk_strategy.Cdc]
min_size = 524288       # 512 KiB
avg_size = 1048576      # 1 MiB
max_size = 8388608      # 8 MiB

[enigma.compression]
enabled = false
level = 3

# No [[providers]]: chunks go to local storage under this directory ("storage/").
"""


@dataclass
class ProviderConfig:
    """One ``[[providers]]`` entry: the core's keys and the options for its plugin."""

    index: int
    name: str
    type: str
    weight: int
    options: dict[str, Any]


@dataclass
class Config:
    """A loaded, validated configuration."""

    config_dir: Path
    path: Path | None
    raw: dict[str, Any]
    text: str = ""
    providers: list[ProviderConfig] = field(default_factory=list)

    # -- locations for error messages ----------------------------------------------------

    def where(self, table: str, key: str | None = None, index: int | None = None) -> str:
        """``file:line: [table] 'key'`` for an error message (line when it can be found)."""
        name = str(self.path) if self.path else "(default config)"
        line = locate_line(self.text, table, key, index) if self.text else None
        loc = f"{name}:{line}" if line else name
        if not table:
            return f"{loc}: '{key}'"
        shown = f"[[{table}]] #{index + 1}" if index is not None else f"[{table}]"
        return f"{loc}: {shown}" + (f" '{key}'" if key else "")

    # -- the [enigma] table --------------------------------------------------------------

    @property
    def enigma(self) -> dict[str, Any]:
        return self.raw.get("enigma", {})

    @property
    def db_path(self) -> Path:
        return self.resolve(self.enigma.get("db_path") or DEFAULT_DB)

    @property
    def key_provider(self) -> str:
        return str(self.enigma.get("key_provider", "local"))

    @property
    def key_options(self) -> dict[str, Any]:
        """``[enigma]`` keys that are not the core's: they configure the key provider."""
        return {k: v for k, v in self.enigma.items()
                if k not in CORE_KEYS and not isinstance(v, dict)}

    @property
    def distribution(self) -> str:
        return str(self.enigma.get("distribution", "RoundRobin"))

    def limit(self, direction: str) -> int | None:
        """``[enigma] limit_upload`` / ``limit_download`` in KiB/s, None when not set."""
        value = self.enigma.get(LIMIT_KEYS[direction])
        return value if isinstance(value, int) else None

    @property
    def pack_size(self) -> int:
        """``[enigma] pack_size`` in bytes (MiB in the file, as restic's ``--pack-size``):
        how large a pack of small chunks grows; 0 stores every chunk as its own object."""
        value = self.enigma.get("pack_size", DEFAULT_PACK_SIZE_MIB)
        return int(value) * 1024 * 1024

    def subtable(self, name: str) -> dict[str, Any]:
        """``[enigma.<name>]`` (e.g. a distribution policy's options), empty when absent."""
        value = self.enigma.get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{self.where('enigma', name)}: must be a table")
        return value

    @property
    def chunker(self) -> tuple[str, dict[str, Any]]:
        """The chunker type and its options, from ``[enigma.chunk_strategy.<Type>]``."""
        strategy = self.enigma.get("chunk_strategy", {"Cdc": {}})
        if isinstance(strategy, str):
            return strategy, {}
        if not isinstance(strategy, dict) or len(strategy) != 1:
            raise ConfigError(f"{self.where('enigma', 'chunk_strategy')}: needs exactly one "
                              "sub-table, e.g. [enigma.chunk_strategy.Cdc]")
        (kind, options), = strategy.items()
        if not isinstance(options, dict):
            raise ConfigError(f"{self.where('enigma.chunk_strategy', kind)}: must be a table")
        return kind, dict(options)

    @property
    def compression(self) -> tuple[str, dict[str, Any]] | None:
        """The compressor type and options, or None when compression is off (the default)."""
        value = self.enigma.get("compression", False)
        if isinstance(value, bool):
            return ("zstd", {}) if value else None
        if isinstance(value, str):
            return None if value.lower() in ("", "none", "off") else (value, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{self.where('enigma', 'compression')}: must be a table, "
                              "a boolean or a compressor name")
        options = dict(value)
        enabled = options.pop("enabled", True)
        if not isinstance(enabled, bool):
            raise ConfigError(f"{self.where('enigma.compression', 'enabled')}: must be "
                              "true or false")
        algorithm = options.pop("algorithm", "zstd")
        return (str(algorithm), options) if enabled else None

    def resolve(self, value: str | os.PathLike[str]) -> Path:
        """Paths in config are relative to the config directory; ``~`` expands."""
        try:
            path = Path(value).expanduser()
        except RuntimeError:  # "~someone/..." for an unknown user, or no home directory
            raise ConfigError(f"{self.path or CONFIG_FILE}: cannot expand {str(value)!r}: "
                              "unknown user or no home directory") from None
        return path if path.is_absolute() else self.config_dir / path

    def server_options(self, table: str) -> dict[str, Any] | None:
        value = self.raw.get(table)
        return dict(value) if isinstance(value, dict) else None


def config_dir_from(value: str | None) -> Path:
    """``--config-dir``, else ``ENIGMA_CONFIG_DIR``, else ``~/.enigma``."""
    chosen = value or os.environ.get("ENIGMA_CONFIG_DIR") or DEFAULT_CONFIG_DIR
    return Path(chosen).expanduser().absolute()


def load_config(config_dir: Path, *, required: bool = True,
                extra_tables: frozenset[str] = frozenset()) -> Config:
    """Read ``<config_dir>/enigma.toml``; with ``required=False`` a missing file means defaults."""
    path = config_dir / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise ConfigError(f"no configuration at {path}; run: enigma init") from None
        text = DEFAULT_CONFIG_TEXT
        path_shown: Path | None = None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    else:
        path_shown = path
    return parse_config(text, config_dir, path_shown, extra_tables=extra_tables)


def parse_config(text: str, config_dir: Path, path: Path | None, *,
                 extra_tables: frozenset[str] = frozenset()) -> Config:
    """Parse and validate TOML text; ``path`` is only for messages."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path or CONFIG_FILE}: invalid TOML: {exc}") from None
    config = Config(config_dir=config_dir, path=path, raw=raw, text=text)
    for key in raw:
        if key not in TOP_LEVEL | extra_tables:
            where = config.where(key) if isinstance(raw[key], dict) else config.where("", key)
            raise ConfigError(f"{where}: unknown table or key (known: "
                              f"{', '.join(sorted(TOP_LEVEL | extra_tables))})")
    enigma = raw.get("enigma", {})
    if not isinstance(enigma, dict):
        raise ConfigError(f"{config.where('enigma')}: must be a table")
    for key in ("db_path", "key_provider", "distribution", "keyfile_path"):
        if key in enigma and not isinstance(enigma[key], str):
            raise ConfigError(f"{config.where('enigma', key)}: must be a string")
    for key in LIMIT_KEYS.values():
        value = enigma.get(key)
        if key in enigma and (not isinstance(value, int) or isinstance(value, bool)
                              or value < 1):
            raise ConfigError(f"{config.where('enigma', key)}: must be a positive integer "
                              f"(KiB/s), got {value!r}")
    value = enigma.get("pack_size", DEFAULT_PACK_SIZE_MIB)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_PACK_SIZE_MIB:
        raise ConfigError(f"{config.where('enigma', 'pack_size')}: must be an integer from 0 "
                          f"to {MAX_PACK_SIZE_MIB} (MiB; 0: no packs), got {value!r}")
    config.providers = _providers(config)
    _redundancy_tables(config)
    config.chunker  # noqa: B018 - validate now, not at first backup
    config.compression  # noqa: B018
    return config


def _redundancy_tables(config: Config) -> None:
    """``[enigma.replication]`` and ``[enigma.erasure]``: known keys, integers >= 1."""
    for table, accepted in REDUNDANCY_OPTIONS.items():
        if table not in config.enigma:
            continue
        for key, value in config.subtable(table).items():
            where = config.where(f"enigma.{table}", key)
            if key not in accepted:
                raise ConfigError(f"{where}: unknown option (accepted: {', '.join(accepted)})")
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{where}: must be an integer >= 1, got {value!r}")


def _providers(config: Config) -> list[ProviderConfig]:
    entries = config.raw.get("providers", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{config.where('providers')}: must be an array of tables "
                          "([[providers]])")
    providers: list[ProviderConfig] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"{config.where('providers', index=index)}: must be a table")
        for key in ("name", "type"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise ConfigError(f"{config.where('providers', key, index)}: missing or not a "
                                  "string")
        name = entry["name"]
        if name in seen:
            raise ConfigError(f"{config.where('providers', 'name', index)}: duplicate provider "
                              f"name '{name}'")
        seen.add(name)
        weight = entry.get("weight", 1)
        if not isinstance(weight, int) or isinstance(weight, bool) or weight < 1:
            raise ConfigError(f"{config.where('providers', 'weight', index)}: must be an "
                              "integer >= 1")
        options = {k: v for k, v in entry.items() if k not in PROVIDER_CORE_KEYS}
        providers.append(ProviderConfig(index, name, entry["type"], weight, options))
    if not providers:
        providers.append(ProviderConfig(-1, "local", "Local", 1, {
            "path": str(config.resolve(DEFAULT_STORAGE_DIR))}))
    return providers


# The name is stripped in code, not with \s* around a lazy [^\]]+? (which also matches
# spaces): that regex backtracked cubically, ~3 s for "[" + 2000 spaces inside a multi-line
# string, hours for 20000.
_HEADER = re.compile(r"^[ \t]*(\[\[?)([^\]]*)\]\]?[ \t]*(#.*)?$")
_KEY = re.compile(r"""^\s*("?)([A-Za-z0-9_.\-]+)\1\s*=""")


def locate_line(text: str, table: str, key: str | None, index: int | None = None) -> int | None:
    """Best-effort line number of ``key`` in ``[table]`` (or the ``index``-th ``[[table]]``).

    tomllib keeps no positions; this scan covers what people write (headers, dotted
    sub-tables, ``key = value``) and returns None when unsure rather than guess.
    """
    current: str | None = None
    occurrence = -1
    table_line: int | None = None
    in_target = not table
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            name = header.group(2).strip().replace('"', "")
            if not name:  # "[]" is no table header (and no valid TOML either)
                continue
            current = name
            if current == table:
                occurrence += 1 if header.group(1) == "[[" else 0
                in_target = index is None or occurrence == index
                if in_target and table_line is None:
                    table_line = number
            else:
                in_target = False
            if key and current == f"{table}.{key}" and (index is None):
                return number
            continue
        if key is None:
            continue
        match = _KEY.match(line)
        if not match:
            continue
        if (in_target and match.group(2) == key) or (
                current is None and match.group(2) == f"{table}.{key}"):
            return number
    return table_line
