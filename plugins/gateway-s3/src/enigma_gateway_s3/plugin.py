"""Entry point of ``enigma-gateway-s3``: registers the server without importing uvicorn.

The server module imports uvicorn and starlette only when ``serve`` runs, so
``enigma --help`` stays fast with this plugin installed.
"""

from __future__ import annotations

from typing import Any

from enigma import hookimpl


@hookimpl
def register_servers() -> Any:
    from enigma_gateway_s3.server import S3Gateway

    return [S3Gateway]
