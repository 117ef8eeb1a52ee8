"""curl with presigned URLs (PUT with ``Expect: 100-continue``, then GET and a range)."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from gateway_support import Gateway

CURL = shutil.which("curl")


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_presigned_put_and_get_with_curl(gateway: Gateway, bucket: str,
                                         tmp_path: Path) -> None:
    s3: Any = gateway.client(signature_version="s3v4")
    data = random.Random(5).randbytes(1_500_000)
    source = tmp_path / "upload.bin"
    source.write_bytes(data)
    put_url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "c u"},
                                        ExpiresIn=300)
    subprocess.run([CURL, "-sS", "-f", "-H", "Expect: 100-continue", "-T", str(source),
                    put_url], check=True, capture_output=True, timeout=60)
    get_url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "c u"},
                                        ExpiresIn=300)
    got = subprocess.run([CURL, "-sS", "-f", get_url], check=True, capture_output=True,
                         timeout=60).stdout
    assert got == data
    part = subprocess.run([CURL, "-sS", "-f", "-r", "100-199", get_url], check=True,
                          capture_output=True, timeout=60).stdout
    assert part == data[100:200]
    refused = subprocess.run([CURL, "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                              put_url.replace("c%20u", "other")],
                             capture_output=True, text=True, timeout=60)
    assert refused.stdout == "403"
