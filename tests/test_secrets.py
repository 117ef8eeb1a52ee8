"""No secret ever leaves the process in output, and the files holding them are private.

One full session through the real CLI (init, encrypt-cred, backup, list, log, verify,
restore, config, status, key rotate, failing commands with --debug, and ``enigma serve``
answering good and badly signed S3 requests); every byte of stdout, stderr and the server
log is then searched for the passphrase, the S3 secret key and each raw key of the
unlocked keystore, in every encoding a careless message might use.
"""

from __future__ import annotations

import base64
import contextlib
import os
import stat
from pathlib import Path

import pytest
from helpers import ENIGMA, PASSPHRASE, Enigma, Result

from enigma.plugins.local_keys import LocalKeyProvider

S3_SECRET = "s3-SECRET-never/printed+0123456789abcdefgh"
S3_ACCESS = "SECRETSTESTACCESS"


def encodings(secret: bytes) -> set[str]:
    """The ways a key could be printed: hex (both cases), base64 (both alphabets, with
    and without padding) and, when it is text, itself."""
    out = {secret.hex(), secret.hex().upper(),
           base64.b64encode(secret).decode().rstrip("="),
           base64.urlsafe_b64encode(secret).decode().rstrip("=")}
    with contextlib.suppress(UnicodeDecodeError):
        out.add(secret.decode("utf-8"))
    out.add(repr(secret)[2:-1])  # bytes repr, e.g. in a traceback
    return {s for s in out if len(s) >= 12}


class Session:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.cli = Enigma(root / "config")
        self.output: list[str] = []

    def __call__(self, *args: str, ok: bool = True, **kwargs: object) -> Result:
        result = self.cli(*args, **kwargs)  # type: ignore[arg-type]
        self.output += [result.out, result.err]
        if ok:
            assert result.code == 0, (args, result.err)
        else:
            assert result.code != 0, (args, result.out)
        return result


def serve_session(session: Session, token: str) -> str:
    """Run ``enigma serve`` with the secret as an enc: token; good and bad requests."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError
    from servers import ServerProcess, free_port, wait_until

    pytest.importorskip("enigma_gateway_s3")
    port = free_port()
    config = session.cli.config_dir / "enigma.toml"
    config.write_text(config.read_text() + f'\n[s3_proxy]\nlisten_addr = "127.0.0.1:{port}"'
                      f'\naccess_key = "{S3_ACCESS}"\nsecret_key = "{token}"\n')
    log = session.root / "serve.log"
    server = ServerProcess([ENIGMA, "--config-dir", str(session.cli.config_dir), "serve"], log,
                           env={"ENIGMA_PASSPHRASE": PASSPHRASE, "ENIGMA_RETRY_SECONDS": "3"})
    proc = server.start()
    try:
        import socket

        def listening() -> bool:
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, timeout=30, what="enigma serve", process=proc, log=log)
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace")
        session.output.append(cmdline)  # the process title, as `ps` shows it

        def client(secret: str) -> object:
            return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}",
                                aws_access_key_id=S3_ACCESS, aws_secret_access_key=secret,
                                region_name="us-east-1",
                                config=Config(s3={"addressing_style": "path"},
                                              retries={"max_attempts": 1}))

        good = client(S3_SECRET)
        good.create_bucket(Bucket="secrets-test")  # type: ignore[attr-defined]
        good.put_object(Bucket="secrets-test", Key="k", Body=b"v")  # type: ignore[attr-defined]
        assert good.get_object(Bucket="secrets-test", Key="k")[  # type: ignore[attr-defined]
            "Body"].read() == b"v"
        bad = client("wrong-" + S3_SECRET)
        with pytest.raises(ClientError) as info:
            bad.list_objects_v2(Bucket="secrets-test")  # type: ignore[attr-defined]
        session.output.append(str(info.value.response))
    finally:
        server.stop()
    return log.read_text(errors="replace")


def test_no_secret_in_any_output(tmp_path: Path) -> None:
    session = Session(tmp_path)
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_text("secret-free data\n" * 100)
    (source / "b.bin").write_bytes(os.urandom(200_000))

    session("init")
    token = session("encrypt-cred", input=S3_SECRET + "\n").out.strip()
    assert token.startswith("enc:")
    backup_id = session("backup", str(source)).out.strip()
    session("list")
    session("list", "--json")
    session("log", backup_id)
    session("verify", backup_id)
    session("restore", backup_id, str(tmp_path / "out"))
    session("status")
    session("key", "rotate")
    session("backup", str(source))
    # Failing commands, with tracebacks on.
    session("--debug", "restore", "nosuchbackup", str(tmp_path / "out2"), ok=False)
    session("--debug", "verify", "nosuchbackup", ok=False)
    (tmp_path / "file").write_text("x")
    session("--debug", "restore", backup_id, str(tmp_path / "file"), ok=False)
    session("--debug", "verify", backup_id, passphrase="not the passphrase", ok=False)
    session("--debug", "backup", str(tmp_path / "missing"), ok=False)
    server_log = serve_session(session, token)
    session.output.append(server_log)
    session("config")
    session("config", "--json")
    # A config that cannot decrypt its enc: token (made with another keystore).
    other = Session(tmp_path / "other")
    other("init")
    foreign = other("encrypt-cred", input=S3_SECRET + "\n").out.strip()
    config = session.cli.config_dir / "enigma.toml"
    config.write_text(config.read_text().replace(token, foreign))
    session("--debug", "serve", ok=False, timeout=60)
    session("--debug", "config", ok=True)
    session.output += other.output

    keys = LocalKeyProvider(config_dir=str(session.cli.config_dir)).load(PASSPHRASE)
    secrets: dict[str, set[str]] = {
        "passphrase": {PASSPHRASE}, "S3 secret key": {S3_SECRET},
        "id key": encodings(keys.id_key), "credential key": encodings(keys.credential_key)}
    for version, key in keys.data_keys.items():
        secrets[f"data key {version}"] = encodings(key)
    assert len(keys.data_keys) == 2
    everything = "\n".join(session.output)
    assert "Traceback" in everything  # --debug really printed tracebacks to search
    for what, forms in secrets.items():
        for form in forms:
            assert form not in everything, f"the {what} appears in the output"


def test_private_file_modes(tmp_path: Path) -> None:
    """Keystore, config and manifest (with its WAL files) are 0600 in a 0700 directory,
    whatever the umask, and a manifest snapshot scratch area is never left behind."""
    cli = Enigma(tmp_path / "config")
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_text("data")
    old = os.umask(0o022)
    try:
        cli.ok("init")
        cli.ok("backup", str(source))
    finally:
        os.umask(old)
    config_dir = cli.config_dir
    assert stat.S_IMODE(config_dir.stat().st_mode) == 0o700
    private = ["enigma.toml", "keystore.enc", "manifest.db"]
    private += [p.name for p in config_dir.iterdir() if p.name.startswith("manifest.db-")]
    for name in private:
        mode = stat.S_IMODE((config_dir / name).stat().st_mode)
        assert mode == 0o600, f"{name} has mode {oct(mode)}"
    assert not [p for p in config_dir.iterdir() if p.name.startswith(".enigma-recovery")]
