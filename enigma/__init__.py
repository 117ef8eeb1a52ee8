"""Enigma: multi-cloud encrypted, deduplicated backup built from plugins."""

__version__ = "0.1.0"

from enigma.hookspecs import hookimpl

__all__ = ["__version__", "hookimpl"]
