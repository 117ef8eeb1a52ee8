"""Config loading: the seed's format, defaults, and errors that point at file, key and line."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time
from pathlib import Path

import pytest
from helpers import ENIGMA

from enigma.config import locate_line, parse_config
from enigma.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "enigma.toml"


def parse(text: str, tmp_path: Path):
    return parse_config(text, tmp_path, tmp_path / "enigma.toml")


def test_seed_example_parses_completely(tmp_path: Path) -> None:
    config = parse(EXAMPLE.read_text(), tmp_path)
    assert [p.name for p in config.providers] == ["aws-primary", "minio-onprem", "azure-west",
                                                  "gcs-eu", "nas"]
    assert [p.weight for p in config.providers] == [2, 1, 1, 1, 1]
    minio = config.providers[1]
    assert minio.options["path_style"] is True and minio.options["endpoint_url"]
    assert config.chunker == ("Cdc", {"min_size": 512 << 10, "avg_size": 1 << 20,
                                      "max_size": 8 << 20})
    assert config.compression is None  # enabled = false, as in the seed
    assert config.key_provider == "local" and config.key_options == {
        "keyfile_path": "keystore.enc"}
    assert config.db_path == tmp_path / "manifest.db"
    assert config.enigma["pack_size"] == 4 and config.pack_size == 4 << 20  # MiB
    assert config.server_options("raft")["peers"][0] == {"id": 2, "addr": "10.0.0.2:7000"}


def test_defaults_without_providers(tmp_path: Path) -> None:
    config = parse("", tmp_path)
    (local,) = config.providers
    assert (local.type, local.options) == ("Local", {"path": str(tmp_path / "storage")})
    assert config.chunker == ("Cdc", {})
    assert config.distribution == "RoundRobin"


@pytest.mark.parametrize(("value", "expected"), [
    ("compression = true", ("zstd", {})),
    ("compression = false", None),
    ('compression = "zstd"', ("zstd", {})),
    ("[enigma.compression]\nlevel = 9", ("zstd", {"level": 9})),
    ("[enigma.compression]\nenabled = false\nlevel = 9", None),
])
def test_compression_forms(tmp_path: Path, value: str, expected) -> None:
    assert parse(f"[enigma]\n{value}\n", tmp_path).compression == expected


@pytest.mark.parametrize(("text", "fragments"), [
    ('[enigma]\ncolor = 1\n[wat]\nx = 1\n', ["enigma.toml:3", "[wat]", "unknown table"]),
    ('stray = 1\n[enigma]\n', ["enigma.toml:1", "'stray'"]),
    ('[[providers]]\nname = "a"\ntype = "Local"\n[[providers]]\nname = "a"\ntype = "Local"\n',
     ["enigma.toml:5", "[[providers]] #2 'name'", "duplicate provider name 'a'"]),
    ('[[providers]]\nname = "a"\n', ["enigma.toml:1", "[[providers]] #1 'type'", "missing"]),
    ('[enigma]\ndistribution = 3\n', ["enigma.toml:2", "[enigma] 'distribution'", "string"]),
    ('[enigma.chunk_strategy.Cdc]\n[enigma.chunk_strategy.Fixed]\n',
     ["[enigma] 'chunk_strategy'", "exactly one"]),
    ('[enigma]\nkey_provider = "local\n', ["enigma.toml", "invalid TOML", "line 2"]),
])
def test_errors_name_file_key_and_line(tmp_path: Path, text: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        parse(text, tmp_path)
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_locate_line() -> None:
    text = ('[enigma]\ndb_path = "x"\n\n[enigma.compression]\nlevel = 3\n\n'
            '[[providers]]\nname = "a"\n\n[[providers]]\nname = "b"\nbucket = "c"\n')
    assert locate_line(text, "enigma", "db_path") == 2
    assert locate_line(text, "enigma.compression", "level") == 5
    assert locate_line(text, "enigma", "compression") == 4
    assert locate_line(text, "providers", "bucket", 1) == 12
    assert locate_line(text, "providers", "name", 0) == 8
    assert locate_line(text, "providers", "missing", 1) == 10  # falls back to the table
    assert locate_line(text, "nowhere", "x") is None


def test_passphrase_is_prompted_on_a_terminal(tmp_path: Path) -> None:
    """No --passphrase and no ENIGMA_PASSPHRASE: a terminal is asked (twice at init)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENIGMA_")}

    def run(*args: str, answers: list[str]) -> tuple[int, str]:
        master, slave = pty.openpty()
        proc = subprocess.Popen([ENIGMA, "--config-dir", str(tmp_path / "c"), *args],
                                stdin=slave, stdout=slave, stderr=slave, env=env)
        os.close(slave)
        output, pending, answered = b"", list(answers), 0
        deadline = time.time() + 60
        while time.time() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 4096)
                except OSError:
                    break
                if not data:
                    break
                output += data
                prompts = output.count(b"Passphrase:") + output.count(b"confirmation:")
                if pending and prompts > answered and output.rstrip().endswith(b":"):
                    time.sleep(0.2)  # getpass flushes input typed before echo is off
                    os.write(master, pending.pop(0).encode() + b"\n")
                    answered += 1
            elif proc.poll() is not None:
                break
        proc.wait(timeout=30)
        os.close(master)
        return proc.returncode, output.decode(errors="replace")

    code, out = run("init", answers=["tty secret", "tty secret"])
    assert code == 0, out
    assert "Repeat for confirmation" in out and "tty secret" not in out  # not echoed
    code, out = run("key", "list", answers=["tty secret"])
    assert code == 0 and "1  (current)" in out, out
    code, out = run("key", "list", answers=["wrong one"])
    assert code == 1 and "wrong passphrase" in out, out


def test_passphrase_option_beats_the_environment(tmp_path: Path) -> None:
    """--passphrase works on its own, and wins over ENIGMA_PASSPHRASE."""
    from helpers import Enigma

    runner = Enigma(tmp_path / "config", passphrase=None)
    runner.ok("--passphrase", "from the flag", "init")
    assert "1  (current)" in runner.ok("--passphrase", "from the flag", "key", "list").out
    wrong_env = runner("--passphrase", "from the flag", "key", "list",
                       env={"ENIGMA_PASSPHRASE": "something else"})
    assert wrong_env.code == 0, wrong_env.err
    assert runner("key", "list", env={"ENIGMA_PASSPHRASE": "something else"}).code == 1
