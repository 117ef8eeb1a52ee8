"""Entry point of ``enigma-storage-faulty``: registers ``FaultyStorage``."""

from __future__ import annotations

from typing import Any

from enigma import hookimpl


@hookimpl
def register_storage_providers() -> Any:
    from enigma_storage_faulty.storage import FaultyStorage

    return [FaultyStorage]
