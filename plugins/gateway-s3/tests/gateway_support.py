"""Shared test helpers (a plain module: test files import it, conftest.py provides fixtures).

``start_gateway`` runs a real ``enigma serve`` process on a free loopback port over a
repository made with the real CLI (``enigma init``, local storage); its secret key is an
``enc:`` token in ``[s3_proxy]``.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers import ENIGMA, PASSPHRASE, Enigma
from servers import ServerProcess, free_port, wait_until

ACCESS_KEY = "ENIGMATESTACCESSKEY"
SECRET_KEY = "enigma/test+secret/key/0123456789abcdefghij"
#: A second key pair ([[s3_proxy.keys]]): its own buckets, no access to the first's.
OTHER_ACCESS_KEY = "ENIGMAOTHERUSER"
OTHER_SECRET_KEY = "other-secret"


@dataclass
class Gateway:
    url: str
    port: int
    config_dir: Path
    runner: Enigma
    process: ServerProcess

    def client(self, *, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY,
               verify: str | None = None, **config: Any) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.url, verify=verify, aws_access_key_id=access_key,
            aws_secret_access_key=secret_key, region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                          **config))

    def status(self) -> dict[str, Any]:
        return json.loads(self.runner.ok("status", "--json").out)

    def put_damaged(self, s3: Any, bucket: str, key: str, data: bytes) -> None:
        """PUT a single-chunk object, then flip one bit of its sealed chunk on disk."""
        before = self.chunk_files()
        s3.put_object(Bucket=bucket, Key=key, Body=data)
        (new,) = set(self.chunk_files()) - set(before)
        damaged = bytearray(Path(new).read_bytes())
        damaged[len(damaged) // 2] ^= 0x01
        Path(new).write_bytes(bytes(damaged))

    def chunk_files(self) -> dict[str, int]:
        """Stored chunk objects (local storage) -> mtime_ns: rewritten files show up."""
        root = self.config_dir / "storage" / "chunks"
        return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def write_gateway_config(runner: Enigma, port: int, extra: str = "") -> None:
    secret = runner.ok("encrypt-cred", SECRET_KEY).out.strip()
    assert secret.startswith("enc:")
    config = runner.config_dir / "enigma.toml"
    config.write_text(config.read_text() + f'\n[s3_proxy]\nlisten_addr = "127.0.0.1:{port}"\n'
                      f'access_key = "{ACCESS_KEY}"\nsecret_key = "{secret}"\n' + extra)


def port_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


def start_gateway(root: Path, extra: str = "", scheme: str = "http") -> Gateway:
    runner = Enigma(root / "config")
    runner.ok("init")
    port = free_port()
    # Virtual-host style under "localhost", and a second key pair.
    write_gateway_config(runner, port, f'domain = "localhost"\n{extra}[[s3_proxy.keys]]\n'
                                       f'access_key = "{OTHER_ACCESS_KEY}"\n'
                                       f'secret_key = "{OTHER_SECRET_KEY}"\n')
    return serve(runner, root, port, scheme)


def serve(runner: Enigma, root: Path, port: int, scheme: str = "http",
          retry_seconds: str = "3") -> Gateway:
    """Start ``enigma serve`` on a configured repository and wait for its port
    (its log goes to ``root/serve.log``)."""
    process = ServerProcess([ENIGMA, "--config-dir", str(runner.config_dir), "serve"],
                            root / "serve.log",
                            env={"ENIGMA_PASSPHRASE": PASSPHRASE,
                                 "ENIGMA_RETRY_SECONDS": retry_seconds})
    proc = process.start()
    try:
        wait_until(lambda: port_open(port), timeout=30, what="enigma serve", process=proc,
                   log=root / "serve.log")
    except BaseException:
        process.stop()
        raise
    return Gateway(f"{scheme}://127.0.0.1:{port}", port, runner.config_dir, runner, process)


def error_of(call: Callable[[], Any]) -> tuple[str, int, dict]:
    """(S3 error code, HTTP status, response) of a boto3 call that must fail."""
    from botocore.exceptions import ClientError

    try:
        call()
    except ClientError as exc:
        response = exc.response
        return (response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"],
                response)
    raise AssertionError("the call succeeded")
