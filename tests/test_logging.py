"""Logging: -q/-v/-vv/--debug levels, ENIGMA_LOG's RUST_LOG-style overrides, the stderr
format, third-party loggers kept quiet, retries logged, secrets never logged."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import PASSPHRASE, Enigma, assert_clean_error, make_tree

from enigma import logs

INFO_LINE = re.compile(r"^enigma: info: ", re.M)
DEBUG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} enigma: (debug|info): enigma\.cli: ", re.M)


def test_levels_from_q_v_vv(enigma: Enigma) -> None:
    quiet = enigma("list")
    assert quiet.code == 0 and not INFO_LINE.search(quiet.err)
    info = enigma.ok("-v", "list").err
    assert re.search(r"^enigma: info: repository .+: providers local \(Local\)", info, re.M), info
    assert not DEBUG_LINE.search(info)  # time and logger name only at debug
    for flags in (["-vv"], ["--debug"], ["-v", "-v"]):
        detailed = enigma.ok(*flags, "list").err
        assert DEBUG_LINE.search(detailed), (flags, detailed)


def test_quiet_leaves_only_errors(tmp_path: Path) -> None:
    runner = Enigma(tmp_path / "config")
    done = runner.ok("-q", "init")
    assert done.err == "" and "initialised" in done.out
    loud = runner.ok("init")
    assert "keys exist" in loud.err  # the same lines without -q
    failed = runner("-q", "verify", "0000")
    assert_clean_error(failed, "no backup", code=1)
    source = make_tree(tmp_path / "src")
    backup = runner.ok("-q", "backup", str(source))
    assert backup.err == "" and len(backup.out.split()) == 1  # the id alone
    assert "backup complete" in runner.ok("backup", str(source)).err
    restored = runner.ok("-q", "restore", backup.out.strip(), str(tmp_path / "out"))
    assert restored.err == "" and restored.out == ""


@pytest.mark.parametrize("value,fragment", [
    ("enigma=verbose", "unknown level 'verbose'"),
    ("info,boto3=", "unknown level ''"),
    ("en gima=info", "not a logger name"),
    ("=debug", "not a logger name"),
])
def test_bad_enigma_log_is_a_usage_error(enigma: Enigma, value: str, fragment: str) -> None:
    result = enigma("list", env={"ENIGMA_LOG": value})
    assert_clean_error(result, "ENIGMA_LOG", fragment, code=2)


def test_quiet_and_verbose_together_is_a_usage_error(enigma: Enigma) -> None:
    assert_clean_error(enigma("-q", "-v", "list"), "-q or -v", code=2)


def test_enigma_log_beats_the_flags(enigma: Enigma) -> None:
    named = enigma.ok("list", env={"ENIGMA_LOG": "enigma.cli=info"}).err
    assert INFO_LINE.search(named), named  # on without -v
    silenced = enigma.ok("-vv", "list", env={"ENIGMA_LOG": "enigma.cli=off"}).err
    assert "enigma.cli" not in silenced and "info:" not in silenced, silenced
    default = enigma.ok("-v", "list", env={"ENIGMA_LOG": "WARN"}).err
    assert not INFO_LINE.search(default), default  # a bare level is the new default
    upper = enigma.ok("list", env={"ENIGMA_LOG": "warn, enigma = DEBUG ,"}).err
    assert DEBUG_LINE.search(upper), upper  # spaces, case and empty entries are fine


@pytest.fixture
def clean_logging() -> Iterator[None]:
    """In-process tests reconfigure the root logger: put everything back afterwards."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers),
             {n: logging.getLogger(n).level for n in (*logs.THIRD_PARTY, "botocore.hooks")})
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


def test_third_party_loggers_stay_at_warning_unless_named(
        clean_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure(verbosity=2)
    assert logging.getLogger("enigma.pipeline").getEffectiveLevel() == logging.DEBUG
    for name in ("botocore.endpoint", "urllib3.connectionpool", "azure.core", "pysyncobj"):
        assert logging.getLogger(name).getEffectiveLevel() == logging.WARNING, name
    logging.getLogger("botocore.endpoint").info("noise")
    logging.getLogger("enigma.pipeline").debug("ours")
    err = capsys.readouterr().err
    assert "noise" not in err and "enigma.pipeline: ours" in err

    logs.configure(verbosity=0, spec_text="botocore.hooks=trace,urllib3=info")
    assert logging.getLogger("botocore.hooks").getEffectiveLevel() == logs.TRACE
    assert logging.getLogger("botocore").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("urllib3.util").getEffectiveLevel() == logging.INFO
    logs.configure(verbosity=-1)  # -q: third parties at ERROR too, not WARNING
    assert logging.getLogger("boto3").getEffectiveLevel() == logging.ERROR
    logging.getLogger("boto3").warning("hidden")
    logging.getLogger("enigma").error("shown")
    err = capsys.readouterr().err
    assert err == "enigma: error: shown\n"
    assert len([h for h in logging.getLogger().handlers
                if getattr(h, "_enigma_cli_handler", False)]) == 1  # replaced, not stacked


def test_spec_parsing() -> None:
    spec = logs.parse_spec("info,boto3=warn,botocore=error,enigma.pipeline=debug,x=off")
    assert spec.default == logging.INFO
    assert spec.targets == {"boto3": logging.WARNING, "botocore": logging.ERROR,
                            "enigma.pipeline": logging.DEBUG, "x": logs.OFF}
    assert logs.parse_spec("enigma").targets == {"enigma": logs.TRACE}  # RUST_LOG: all on
    assert logs.parse_spec("").targets == {} and logs.parse_spec(None).default is None


def test_retries_are_logged_with_provider_and_attempt(tmp_path: Path) -> None:
    pytest.importorskip("enigma_storage_faulty")
    config_dir, journal = tmp_path / "config", tmp_path / "faults"
    config_dir.mkdir()
    # 30 % of chunk puts fail transiently (40 distinct small files, so some do); each retry
    # is a fresh roll, so every chunk gets through well within the retry budget. Faults
    # are drawn per chunk object: packs (tests/test_packs.py) are off.
    (config_dir / "enigma.toml").write_text(
        '[enigma]\npack_size = 0\n[[providers]]\nname = "flaky"\ntype = "Faulty"\n'
        f'path = "{tmp_path / "store"}"\nseed = 3\nput_error = 0.3\njournal = "{journal}"\n')
    source = make_tree(tmp_path / "src")
    for n in range(40):
        (source / f"small-{n}.txt").write_text(f"file {n}\n" * (n + 1))
    runner = Enigma(config_dir)
    runner.ok("init")
    env = {"ENIGMA_RETRY_SECONDS": "60"}
    result = runner.ok("-v", "backup", str(source), env=env)
    retries = re.findall(r"^enigma: info: storing on provider 'flaky' failed \(attempt (\d+), "
                         r"provider 'flaky'\): .+; retrying in [\d.]+ s$", result.err, re.M)
    injected = journal.read_text().splitlines()
    assert injected and len(retries) == len(injected), (injected, result.err)
    assert "1" in retries
    assert PASSPHRASE not in result.err and PASSPHRASE not in result.out
    for n in range(40):  # new chunks, new faults: retried as before, silently by default
        (source / f"small-{n}.txt").write_text(f"changed {n}\n" * (n + 1))
    quiet = runner.ok("backup", str(source), env=env)
    assert len(journal.read_text().splitlines()) > len(injected)
    assert "retrying" not in quiet.err, quiet.err


def test_nothing_secret_at_the_most_verbose_level(enigma: Enigma, tmp_path: Path) -> None:
    secret = "s3cr3t-V4lue-for-the-log-test"
    env = {"ENIGMA_LOG": "trace"}
    token = enigma.ok("--debug", "encrypt-cred", input=secret + "\n", env=env)
    backup = enigma.ok("-vv", "backup", str(make_tree(tmp_path / "src")), env=env)
    for result in (token, backup):
        assert DEBUG_LINE.search(result.err), result.err  # it did log, at length
        for value in (secret, PASSPHRASE):
            assert value not in result.err and value not in result.out
