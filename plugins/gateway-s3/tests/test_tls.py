"""HTTPS with a self-signed certificate (``tls_cert``/``tls_key``). Over TLS, boto3 sends
PutObject as ``STREAMING-UNSIGNED-PAYLOAD-TRAILER`` with a CRC32 trailer: the real client
exercises the aws-chunked decoder and the trailer check."""

from __future__ import annotations

import datetime
import hashlib
import io
import ipaddress
import random
import shutil
import subprocess
from pathlib import Path

from gateway_support import start_gateway
from helpers import Enigma, assert_clean_error


def self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "enigma-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_round_trip(tmp_path: Path) -> None:
    from boto3.s3.transfer import TransferConfig

    cert, key = self_signed(tmp_path)
    gateway = start_gateway(tmp_path, f'tls_cert = "{cert}"\ntls_key = "{key}"\n', "https")
    try:
        s3 = gateway.client(verify=str(cert))
        s3.create_bucket(Bucket="tls-bucket")
        body = random.Random(81).randbytes(700_000)
        s3.put_object(Bucket="tls-bucket", Key="k", Body=body)
        assert s3.get_object(Bucket="tls-bucket", Key="k")["Body"].read() == body
        big = random.Random(82).randbytes(11 * 1024 * 1024)
        mib5 = 5 * 1024 * 1024
        s3.upload_fileobj(io.BytesIO(big), "tls-bucket", "multi",
                          Config=TransferConfig(multipart_threshold=mib5,
                                                multipart_chunksize=mib5))
        got = s3.get_object(Bucket="tls-bucket", Key="multi")["Body"].read()
        assert hashlib.sha256(got).digest() == hashlib.sha256(big).digest()
        curl = shutil.which("curl")
        if curl:
            url = gateway.client(verify=str(cert), signature_version="s3v4") \
                .generate_presigned_url("get_object",
                                        Params={"Bucket": "tls-bucket", "Key": "k"})
            out = subprocess.run([curl, "-sS", "-f", "--cacert", str(cert), url],
                                 capture_output=True, check=True, timeout=60).stdout
            assert out == body
    finally:
        gateway.process.stop()
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


def test_bad_tls_files_are_one_line(tmp_path: Path) -> None:
    from gateway_support import write_gateway_config
    from servers import free_port

    runner = Enigma(tmp_path / "c")
    runner.ok("init")
    (tmp_path / "junk.pem").write_text("not a certificate")
    write_gateway_config(runner, free_port(),
                         f'tls_cert = "{tmp_path / "junk.pem"}"\ntls_key = "missing.pem"\n')
    assert_clean_error(runner("serve", timeout=60), "tls_cert")
