"""The core's own plugins, registered through the `enigma` entry point like any other.

Each hook imports its module when called, so listing commands stay fast.
"""

from __future__ import annotations

from typing import Any

from enigma.hookspecs import hookimpl


@hookimpl
def register_storage_providers() -> Any:
    from enigma.plugins.local_storage import STORAGE_PROVIDERS

    return STORAGE_PROVIDERS


@hookimpl
def register_chunkers() -> Any:
    from enigma.plugins.cdc import CHUNKERS

    return CHUNKERS


@hookimpl
def register_compressors() -> Any:
    from enigma.plugins.zstd import COMPRESSORS

    return COMPRESSORS


@hookimpl
def register_key_providers() -> Any:
    from enigma.plugins.local_keys import KEY_PROVIDERS

    return KEY_PROVIDERS


@hookimpl
def register_distribution_policies() -> Any:
    from enigma.plugins.distribution import DISTRIBUTION_POLICIES

    return DISTRIBUTION_POLICIES
