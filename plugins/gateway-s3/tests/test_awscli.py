"""aws-cli (the PyPI ``awscli``) against a real ``enigma serve``: mb, cp both ways (a
20 MiB file goes up in multipart, aws-cli's default above 8 MiB), ls, rm --recursive, rb,
with names holding spaces, ``+`` and non-ASCII characters."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from pathlib import Path

from gateway_support import ACCESS_KEY, SECRET_KEY, Gateway

AWS = str(Path(sys.executable).with_name("aws"))


def aws(gateway: Gateway, *args: str) -> str:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": "/dev/null",
           "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}
    proc = subprocess.run([AWS, "--endpoint-url", gateway.url, *args], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, f"aws {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def test_aws_cli_round_trip(gateway: Gateway, tmp_path: Path) -> None:
    bucket = f"cli-{uuid.uuid4().hex[:16]}"
    tree = tmp_path / "tree"
    (tree / "sub dir").mkdir(parents=True)
    files = {
        "a.txt": b"hello\n",
        "spaces and +plus.txt": b"plus",
        "sub dir/ünï 文件.bin": random.Random(3).randbytes(3_000_000),
        "sub dir/empty": b"",
        "multipart.bin": random.Random(4).randbytes(20 * 1024 * 1024),  # 8 MiB parts
    }
    for name, data in files.items():
        (tree / name).write_bytes(data)
    aws(gateway, "s3", "mb", f"s3://{bucket}")
    assert bucket in aws(gateway, "s3", "ls")
    aws(gateway, "s3", "cp", "--recursive", str(tree), f"s3://{bucket}/up/")
    listing = aws(gateway, "s3", "ls", "--recursive", f"s3://{bucket}/")
    for name in files:
        assert f"up/{name}" in listing
    top = aws(gateway, "s3", "ls", f"s3://{bucket}/up/")
    assert "PRE sub dir/" in top and "a.txt" in top
    back = tmp_path / "back"
    aws(gateway, "s3", "cp", "--recursive", f"s3://{bucket}/up/", str(back))
    for name, data in files.items():
        assert (back / name).read_bytes() == data, name
    aws(gateway, "s3", "rm", "--recursive", f"s3://{bucket}/up/")
    assert aws(gateway, "s3", "ls", "--recursive", f"s3://{bucket}/").strip() == ""
    aws(gateway, "s3", "rb", f"s3://{bucket}")
    assert bucket not in aws(gateway, "s3", "ls")
