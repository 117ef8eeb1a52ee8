"""Logging for one CLI run: levels from -q/-v/-vv/--debug, per-logger overrides from
``ENIGMA_LOG`` (RUST_LOG's syntax), one compact line per record on stderr.

Everything in Enigma and its plugins logs through the stdlib ``logging`` module and never
configures it; the CLI calls ``configure`` once, so library users keep control of theirs.
"""

from __future__ import annotations

import logging
import re
import sys
from dataclasses import dataclass, field
from typing import TextIO

from enigma.errors import EnigmaError

#: Below DEBUG, for the chattiest lines; RUST_LOG users expect the name.
TRACE = 5
#: Past CRITICAL: ``off`` silences a logger entirely.
OFF = logging.CRITICAL + 10
LEVELS = {"trace": TRACE, "debug": logging.DEBUG, "info": logging.INFO,
          "warn": logging.WARNING, "warning": logging.WARNING, "error": logging.ERROR,
          "off": OFF}
#: Libraries whose INFO/DEBUG output would drown ours: WARNING unless ENIGMA_LOG names them.
THIRD_PARTY = ("boto3", "botocore", "s3transfer", "urllib3", "azure", "google", "httpx",
               "httpcore", "pysyncobj", "uvicorn", "asyncio", "hpack", "grpc")
_TARGET = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_HANDLER_MARK = "_enigma_cli_handler"


class LogSettingError(EnigmaError):
    """ENIGMA_LOG or the -q/-v options cannot be understood (a usage error: exit 2)."""

    exit_code = 2


@dataclass
class LogSpec:
    """A parsed ``ENIGMA_LOG``: an optional default level and per-logger levels."""

    default: int | None = None
    targets: dict[str, int] = field(default_factory=dict)


def parse_spec(text: str | None) -> LogSpec:
    """``info,boto3=warn,enigma.pipeline=debug`` -> LogSpec; a mistake names the entry."""
    spec = LogSpec()
    for raw in (text or "").split(","):
        entry = raw.strip()
        if not entry:
            continue
        target, sep, level_name = entry.partition("=")
        target = target.strip()
        if not sep:  # a bare level is the default, unless it is a logger name (RUST_LOG)
            if target.lower() in LEVELS:
                spec.default = LEVELS[target.lower()]
                continue
            level_name = "trace"
        level = LEVELS.get(level_name.strip().lower())
        if level is None:
            raise LogSettingError(f"ENIGMA_LOG: unknown level {level_name.strip()!r} in "
                                  f"{entry!r} (levels: trace, debug, info, warn, error, off)")
        if not _TARGET.fullmatch(target):
            raise LogSettingError(f"ENIGMA_LOG: {target!r} in {entry!r} is not a logger name "
                                  "(e.g. enigma, enigma.pipeline, botocore)")
        spec.targets[target] = level
    return spec


def level_for(verbosity: int, debug: bool) -> int:
    """The base level: -q ERROR, default WARNING, -v INFO, -vv (or --debug) DEBUG."""
    if debug or verbosity >= 2:
        return logging.DEBUG
    return {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}[max(verbosity, -1)]


class _LowerLevel(logging.Formatter):
    """``enigma: warning: ...``: the CLI's one-line style, level names in lower case."""

    def format(self, record: logging.LogRecord) -> str:
        record.levelname_lower = record.levelname.lower()
        return super().format(record)


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (tests and click swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def configure(verbosity: int = 0, debug: bool = False, spec_text: str | None = None) -> None:
    """Set up the root logger for one CLI run (calling it again replaces the setup).

    ENIGMA_LOG's bare level beats -q/-v; its ``target=level`` pairs beat both for the
    named loggers and everything below them in the hierarchy.
    """
    spec = parse_spec(spec_text)
    logging.addLevelName(TRACE, "TRACE")
    base = spec.default if spec.default is not None else level_for(verbosity, debug)
    detailed = min([base, *spec.targets.values()]) <= logging.DEBUG
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(handler)
    handler = _Stderr()
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(_LowerLevel(
        "%(asctime)s enigma: %(levelname_lower)s: %(name)s: %(message)s" if detailed
        else "enigma: %(levelname_lower)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(base)
    for name in THIRD_PARTY:
        if not any(_covers(target, name) for target in spec.targets):
            logging.getLogger(name).setLevel(max(base, logging.WARNING))
    for target, level in spec.targets.items():
        logging.getLogger(target).setLevel(level)


def _covers(target: str, name: str) -> bool:
    """Whether ENIGMA_LOG's ``target`` is the library's logger or an ancestor of it (a
    target below it, e.g. ``botocore.credentials``, leaves the rest of it at WARNING)."""
    return target == name or name.startswith(target + ".")
