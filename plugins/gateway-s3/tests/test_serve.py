"""`enigma serve` as a process: config errors are one line, signals stop it cleanly."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from gateway_support import Gateway, start_gateway, write_gateway_config
from helpers import Enigma, assert_clean_error
from servers import free_port


def test_plugin_is_listed() -> None:
    from helpers import ENIGMA  # noqa: F401  (the venv's enigma)

    runner = Enigma(Path("/nonexistent-enigma-config"))
    result = runner.ok("plugins")
    assert "enigma-gateway-s3" in result.out and "server: s3" in result.out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_the_server_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    gateway: Gateway = start_gateway(tmp_path)
    try:
        client = gateway.client()
        client.create_bucket(Bucket="stop-test")
        client.put_object(Bucket="stop-test", Key="k", Body=b"kept")
        process = gateway.process.process
        assert process is not None
        process.send_signal(sig)
        assert process.wait(timeout=15) == 0
        log = (tmp_path / "serve.log").read_text()
        assert "Traceback" not in log
    finally:
        gateway.process.stop()
    # The object survived the shutdown: a second server serves it.
    again = start_gateway_existing(tmp_path, gateway)
    try:
        assert again.client().get_object(Bucket="stop-test", Key="k")["Body"].read() == b"kept"
    finally:
        again.process.stop()


def start_gateway_existing(tmp_path: Path, old: Gateway) -> Gateway:
    from gateway_support import port_open
    from helpers import ENIGMA, PASSPHRASE
    from servers import ServerProcess, wait_until

    process = ServerProcess([ENIGMA, "--config-dir", str(old.config_dir), "serve"],
                            tmp_path / "serve2.log", env={"ENIGMA_PASSPHRASE": PASSPHRASE})
    proc = process.start()
    wait_until(lambda: port_open(old.port), timeout=30, what="enigma serve", process=proc,
               log=tmp_path / "serve2.log")
    return Gateway(old.url, old.port, old.config_dir, old.runner, process)


def test_config_errors_are_one_line(tmp_path: Path) -> None:
    runner = Enigma(tmp_path / "c")
    runner.ok("init")
    write_gateway_config(runner, free_port(), 'bogus_option = "1"\n')
    assert_clean_error(runner("serve", timeout=60), "bogus_option", "[s3_proxy]")
    config = runner.config_dir / "enigma.toml"
    text = config.read_text().replace('bogus_option = "1"\n', "")
    config.write_text(text.replace('listen_addr = "127.0.0.1:', 'listen_addr = "nope'))
    assert_clean_error(runner("serve", timeout=60), "listen_addr")
    config.write_text(text + '[[s3_proxy.keys]]\naccess_key = "A2"\nsekret = "x"\n')
    assert_clean_error(runner("serve", timeout=60), "sekret", "keys")
    config.write_text(text + 'multipart_expiry = "soon"\n')
    assert_clean_error(runner("serve", timeout=60), "multipart_expiry")


def test_port_in_use_is_one_line(tmp_path: Path, gateway: Gateway) -> None:
    runner = Enigma(tmp_path / "c")
    runner.ok("init")
    config = runner.config_dir / "enigma.toml"
    write_gateway_config(runner, gateway.port)
    assert_clean_error(runner("serve", timeout=60), "listen_addr")
    assert config.exists()


def test_abandoned_multipart_uploads_expire(tmp_path: Path) -> None:
    import time

    from gateway_support import error_of

    gateway = start_gateway(tmp_path, 'multipart_expiry = "2s"\n')
    try:
        s3 = gateway.client()
        s3.create_bucket(Bucket="expiry")
        upload = s3.create_multipart_upload(Bucket="expiry", Key="k")["UploadId"]
        s3.upload_part(Bucket="expiry", Key="k", UploadId=upload, PartNumber=1, Body=b"x")
        deadline = time.monotonic() + 15
        while s3.list_multipart_uploads(Bucket="expiry").get("Uploads"):
            assert time.monotonic() < deadline, "the upload did not expire"
            time.sleep(0.3)
        assert error_of(lambda: s3.upload_part(Bucket="expiry", Key="k", UploadId=upload,
                                               PartNumber=2, Body=b"y"))[0] == "NoSuchUpload"
        chunks = gateway.status()["chunks"]
        gateway.runner.ok("gc")  # the expired part's chunk is garbage now
        assert gateway.status()["chunks"] == chunks - 1
    finally:
        gateway.process.stop()
