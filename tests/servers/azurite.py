"""Azurite (the Azure Storage emulator, from npm) on a free loopback port.

    from servers.azurite import azurite_server

    with azurite_server(tmp_path / "azurite") as azure:
        options = azure.provider_options("container")   # a [[providers]] table for type Azure
        azure.connection_string                          # for AZURE_STORAGE_CONNECTION_STRING

Azurite comes from ``.ci/package.json`` (``npm ci --prefix .ci``, which ``.ci/run`` does),
so the binary is ``.ci/node_modules/.bin/azurite-blob``. Only the blob service runs. It
keeps its data in a directory (``--location``), so ``stop()`` then ``start()`` brings it
back on the same port with the same containers and blobs, which is how tests simulate a
provider dying in the middle of a backup. Mind that Azurite saves its metadata database
about every 5 s and on SIGTERM: after ``kill()`` (SIGKILL) it forgets blobs written in the
last few seconds, acknowledged or not, which no real Azure account does; use ``stop()``
unless that is what the test wants.
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servers import ServerProcess, free_port, wait_until

__all__ = ["ACCOUNT_KEY", "ACCOUNT_NAME", "AzuriteServer", "azurite_binary", "azurite_server"]

#: Azurite's well-known development account (public, documented by Microsoft).
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZ"
               "FPTOtr/KBHBeksoGMGw==")
STARTUP_TIMEOUT = 60.0
REPO_ROOT = Path(__file__).resolve().parents[2]


def azurite_binary() -> Path:
    """``.ci/node_modules/.bin/azurite-blob``, or a RuntimeError saying how to install it."""
    binary = REPO_ROOT / ".ci" / "node_modules" / ".bin" / "azurite-blob"
    if not binary.exists():
        raise RuntimeError(f"Azurite is not installed ({binary} is missing); "
                           "run: npm ci --prefix .ci")
    return binary


@dataclass
class AzuriteServer:
    """A running Azurite blob service: its endpoint, the dev account, and its process."""

    host: str
    port: int
    data_dir: Path
    server: ServerProcess
    account_name: str = ACCOUNT_NAME
    account_key: str = ACCOUNT_KEY

    @property
    def endpoint_url(self) -> str:
        """The blob endpoint with the account in the path (Azurite's IP-style URLs)."""
        return f"http://{self.host}:{self.port}/{self.account_name}"

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={self.account_name};"
                f"AccountKey={self.account_key};BlobEndpoint={self.endpoint_url};")

    def provider_options(self, container: str, **extra: Any) -> dict[str, Any]:
        """Keyword options for ``AzureStorage`` (and the keys of a ``[[providers]]`` table)."""
        return {"bucket": container, "endpoint_url": self.endpoint_url,
                "access_key": self.account_name, "secret_key": self.account_key, **extra}

    def service_client(self) -> Any:
        """A plain ``BlobServiceClient`` for test setup and inspection (no retries)."""
        from azure.storage.blob import BlobServiceClient, LinearRetry

        return BlobServiceClient(
            self.endpoint_url,
            credential={"account_name": self.account_name, "account_key": self.account_key},
            retry_policy=LinearRetry(retry_total=0), connection_timeout=5, read_timeout=30)

    def create_container(self, name: str) -> str:
        with self.service_client() as client:
            client.create_container(name)
        return name

    def start(self) -> None:
        """Start (or restart, after ``kill``) on the same port and data directory."""
        process = self.server.start()
        wait_until(self._ready, timeout=STARTUP_TIMEOUT, what="Azurite", process=process,
                   log=self.server.log)

    def kill(self) -> None:
        """SIGKILL: clients see a crash; blobs from the last ~5 s are lost (see above)."""
        self.server.kill()

    def stop(self) -> None:
        """SIGTERM: Azurite saves its metadata and exits; clients see connections refused."""
        self.server.stop()

    def _ready(self) -> bool:
        """Any HTTP answer (an unsigned request gets 403) means the service is up."""
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}?comp=list", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True


@contextmanager
def azurite_server(data_dir: Path | None = None, *, host: str = "127.0.0.1",
                   port: int | None = None) -> Iterator[AzuriteServer]:
    """Run Azurite's blob service until the block exits; data in ``data_dir`` (or a temp dir)."""
    owned = data_dir is None
    root = Path(tempfile.mkdtemp(prefix="azurite-")) if data_dir is None else data_dir
    root.mkdir(parents=True, exist_ok=True)
    store = root / "data"
    store.mkdir(exist_ok=True)
    port = port or free_port()
    argv = [str(azurite_binary()), "--blobHost", host, "--blobPort", str(port),
            "--location", str(store), "--skipApiVersionCheck", "--disableTelemetry",
            "--silent"]
    server = AzuriteServer(host, port, root, ServerProcess(argv, root / "azurite.log",
                                                           cwd=root))
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if owned:
            shutil.rmtree(root, ignore_errors=True)
