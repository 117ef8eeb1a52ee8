"""Entry point: registers the vault key providers (their SDKs load only when used)."""

from __future__ import annotations

from typing import Any

from enigma.hookspecs import hookimpl


@hookimpl
def register_key_providers() -> Any:
    from enigma_keys_vault.providers import KEY_PROVIDERS

    return KEY_PROVIDERS
