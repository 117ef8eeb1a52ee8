"""Entry point: registers the provider class without importing any SDK."""

from __future__ import annotations

from typing import Any

from enigma import hookimpl


@hookimpl
def register_storage_providers() -> Any:
    from enigma_storage_azure.provider import STORAGE_PROVIDERS

    return STORAGE_PROVIDERS
