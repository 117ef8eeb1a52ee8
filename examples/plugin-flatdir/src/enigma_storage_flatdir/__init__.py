"""Enigma plugin ``enigma-storage-flatdir``: storage type ``flatdir``.

This module is the entry point the core imports at start-up, so it holds only the hook:
the provider's module is imported when the core first asks for storage types.
"""

from __future__ import annotations

from typing import Any

from enigma import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_storage_providers() -> Any:
    from enigma_storage_flatdir.storage import FlatDirStorage

    return [FlatDirStorage]
