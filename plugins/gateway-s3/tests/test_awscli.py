"""aws-cli (the PyPI ``awscli``) against a real ``enigma serve``: mb, cp both ways (a
20 MiB file goes up in multipart, aws-cli's default above 8 MiB), ls, rm --recursive, rb,
sync both ways (only what changed, --delete), a 110 MiB multipart upload, with names
holding spaces, ``+`` and non-ASCII characters."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from pathlib import Path

from gateway_support import ACCESS_KEY, SECRET_KEY, Gateway
from helpers import file_digest

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


def _tree(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def test_aws_cli_sync_only_sends_what_changed(gateway: Gateway, tmp_path: Path) -> None:
    """``aws s3 sync`` both ways with spaces and ``+`` in names: a second sync sends
    nothing, a changed file is sent alone, ``--delete`` removes what the source lost."""
    bucket = f"sync-{uuid.uuid4().hex[:16]}"
    tree = tmp_path / "tree"
    rng = random.Random(11)
    files = {f"dir {i % 3}/file +{i} name.dat": rng.randbytes(1000 + 997 * i)
             for i in range(12)}
    files["top level + plus.txt"] = b"top"
    _tree(tree, files)
    aws(gateway, "s3", "mb", f"s3://{bucket}")
    first = aws(gateway, "s3", "sync", str(tree), f"s3://{bucket}/t")
    assert first.count("upload:") == len(files)
    assert aws(gateway, "s3", "sync", str(tree), f"s3://{bucket}/t").strip() == ""

    changed = "dir 1/file +4 name.dat"
    (tree / changed).write_bytes(b"changed and longer than before" * 100)
    (tree / "top level + plus.txt").unlink()
    out = aws(gateway, "s3", "sync", "--delete", str(tree), f"s3://{bucket}/t")
    assert out.count("upload:") == 1 and changed in out
    assert out.count("delete:") == 1 and "top level + plus.txt" in out

    back = tmp_path / "back"
    aws(gateway, "s3", "sync", f"s3://{bucket}/t", str(back))
    expected = {p.relative_to(tree).as_posix(): p.read_bytes()
                for p in tree.rglob("*") if p.is_file()}
    got = {p.relative_to(back).as_posix(): p.read_bytes()
           for p in back.rglob("*") if p.is_file()}
    assert got == expected
    assert aws(gateway, "s3", "sync", f"s3://{bucket}/t", str(back)).strip() == ""
    aws(gateway, "s3", "rb", "--force", f"s3://{bucket}")


def test_aws_cli_multipart_over_100_mib(gateway: Gateway, tmp_path: Path) -> None:
    """A 110 MiB file goes up as 14 parts of 8 MiB and comes back bit-exact."""
    bucket = f"big-{uuid.uuid4().hex[:16]}"
    big = tmp_path / "big.bin"
    size = 110 * 1024 * 1024
    with open(big, "wb") as out:
        rng = random.Random(12)
        for _ in range(size // (10 * 1024 * 1024)):
            out.write(rng.randbytes(10 * 1024 * 1024))
    aws(gateway, "s3", "mb", f"s3://{bucket}")
    aws(gateway, "s3", "cp", str(big), f"s3://{bucket}/big.bin")
    head = aws(gateway, "s3api", "head-object", "--bucket", bucket, "--key", "big.bin")
    assert '"ContentLength": 115343360' in head
    assert '-14\\""' in head  # multipart ETag: md5 of the 14 part md5s, "-14"
    back = tmp_path / "back.bin"
    aws(gateway, "s3", "cp", f"s3://{bucket}/big.bin", str(back))
    assert file_digest(back) == file_digest(big)
    aws(gateway, "s3", "rb", "--force", f"s3://{bucket}")
