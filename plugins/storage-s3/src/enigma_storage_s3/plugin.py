"""Entry point of ``enigma-storage-s3``: registers ``S3Storage`` without importing boto3.

The class lives in ``enigma_storage_s3.storage``, which imports boto3 only lazily too, so
``enigma --help`` stays fast with this plugin installed.
"""

from __future__ import annotations

from typing import Any

from enigma import hookimpl


@hookimpl
def register_storage_providers() -> Any:
    from enigma_storage_s3.storage import S3Storage

    return [S3Storage]
