"""Bandwidth limits: the shared limiter, the provider wrapper, and the real CLI's transfers.

Rates are measured on real transfers (local storage, real threads, real clock) and must
hold within 10 % of the limit. Each measured transfer takes 1.5-4 s, so sleep granularity
(~0.1 ms) and the 50 ms burst stay far below the tolerance.
"""

from __future__ import annotations

import gc
import io
import json
import os
import threading
import time
from pathlib import Path

import pytest
from helpers import PASSPHRASE, Enigma, assert_clean_error

from enigma.config import parse_config
from enigma.errors import ObjectNotFound
from enigma.plugin_manager import PluginManager
from enigma.plugins.local_storage import LocalStorage
from enigma.repository import Repository
from enigma.throttle import BURST_SECONDS, RateLimiter, ThrottledProvider

KiB = 1024
MiB = 1024 * KiB
#: Small chunks: a backup of a few MiB is many puts running in parallel on the limiter.
SMALL_CDC = ("[enigma.chunk_strategy.Cdc]\nmin_size = 65536\navg_size = 262144\n"
             "max_size = 1048576\n")


def within(measured: float, expected: float, tolerance: float = 0.10) -> bool:
    return abs(measured - expected) <= tolerance * expected


# -- the limiter ------------------------------------------------------------------------


def test_rate_holds_across_threads() -> None:
    limiter = RateLimiter(1 * MiB)
    threads, pieces, piece = 4, 24, 16 * KiB  # 1.5 MiB in all
    started = time.monotonic()

    def work() -> None:
        for _ in range(pieces):
            limiter.take(piece)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.monotonic() - started
    rate = threads * pieces * piece / elapsed
    assert within(rate, 1 * MiB), f"{rate / KiB:.0f} KiB/s against a 1024 KiB/s limit"


def test_burst_passes_at_once_but_idle_time_is_not_banked() -> None:
    limiter = RateLimiter(100_000, burst=10_000)  # bytes/s, bytes
    assert RateLimiter(100_000).burst == 100_000 * BURST_SECONDS
    time.sleep(0.2)  # idle: would be 20,000 bytes of credit without the burst cap
    started = time.monotonic()
    assert limiter.take(10_000) == 0.0  # the burst: no wait
    assert time.monotonic() - started < 0.02
    waited = limiter.take(5_000)  # the bucket is empty: 5,000 bytes at 100,000/s
    assert 0.04 <= waited <= 0.05
    assert time.monotonic() - started >= 0.04


def test_a_charge_larger_than_the_burst_waits_its_share() -> None:
    limiter = RateLimiter(1 * MiB)
    assert limiter.take(0) == 0.0
    started = time.monotonic()
    limiter.take(512 * KiB)  # one whole chunk: taken in debt, repaid by sleeping
    expected = (512 * KiB - limiter.burst) / MiB
    assert within(time.monotonic() - started, expected)


@pytest.mark.parametrize("rate", [0, -1, 0.0])
def test_zero_or_negative_rate_is_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(rate)


# -- the provider wrapper ---------------------------------------------------------------


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    provider = LocalStorage(path=str(tmp_path / "store"), shared=True)
    provider.create_bucket()
    provider.label = "disk"
    return provider


def test_wrapper_passes_everything_else_through(storage: LocalStorage) -> None:
    wrapped = ThrottledProvider(storage, upload=RateLimiter(100 * MiB),
                                download=RateLimiter(100 * MiB))
    assert (wrapped.label, wrapped.name, wrapped.shared, wrapped.root) == (
        "disk", "local", True, storage.root)
    assert wrapped.upload_concurrency == storage.upload_concurrency == 2
    assert wrapped.wrapped is storage
    wrapped.label = "renamed"  # the core sets labels: they must reach the provider
    assert storage.label == "renamed"
    wrapped.put("meta/a", b"one")
    wrapped.put("meta/b", memoryview(b"two"))
    wrapped.sync()
    wrapped.check()
    assert not wrapped.create_bucket()
    assert wrapped.exists("meta/a") and sorted(wrapped.list("meta/")) == ["meta/a", "meta/b"]
    assert wrapped.get("meta/b") == b"two" and wrapped.get_range("meta/a", 1, 5) == b"ne"
    wrapped.delete("meta/a")
    assert not storage.exists("meta/a")
    with pytest.raises(ObjectNotFound):
        wrapped.get("meta/a")
    wrapped.close()


def test_streamed_get_is_paced_as_it_is_read(storage: LocalStorage) -> None:
    data = os.urandom(384 * KiB)
    storage.put("meta/big", data)
    limiter = RateLimiter(256 * KiB)
    wrapped = ThrottledProvider(storage, download=limiter)
    started = time.monotonic()
    with wrapped.get_stream("meta/big") as stream:
        first = stream.read(16 * KiB)
        first_after = time.monotonic() - started
        rest = stream.read()
    elapsed = time.monotonic() - started
    assert first + rest == data
    # The first block comes after one block's worth of time, not after the whole object's.
    assert first_after < 0.5, first_after
    assert within(elapsed, (len(data) - limiter.burst) / limiter.rate), elapsed


def test_put_stream_is_charged_and_the_callers_stream_stays_open(
        storage: LocalStorage) -> None:
    data = os.urandom(256 * KiB)
    limiter = RateLimiter(512 * KiB)
    wrapped = ThrottledProvider(storage, upload=limiter)
    source = io.BytesIO(data)
    started = time.monotonic()
    wrapped.put_stream("meta/streamed", source)
    elapsed = time.monotonic() - started
    gc.collect()  # a dropped wrapper must not close what it does not own
    assert not source.closed
    assert storage.get("meta/streamed") == data
    assert within(elapsed, (len(data) - limiter.burst) / limiter.rate, 0.15), elapsed


# -- Repository.providers -----------------------------------------------------------------


def make_repo(tmp_path: Path, enigma_keys: str = "") -> Repository:
    config_dir = tmp_path / "config"
    config_dir.mkdir(exist_ok=True)
    text = (f"[enigma]\n{enigma_keys}\n"
            f'[[providers]]\nname = "a"\ntype = "Local"\npath = "{tmp_path / "a"}"\n'
            f'[[providers]]\nname = "b"\ntype = "Local"\npath = "{tmp_path / "b"}"\n')
    config = parse_config(text, config_dir, config_dir / "enigma.toml")
    return Repository(config, PluginManager(), lambda confirm: PASSPHRASE)


def test_no_limit_means_no_wrapper(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    assert all(type(p) is LocalStorage for p in repo.providers.values())
    assert repo.limiters == {}


def test_one_limiter_per_direction_shared_by_every_provider(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "limit_upload = 300\nlimit_download = 200")
    assert {d: lim.rate for d, lim in repo.limiters.items()} == {
        "upload": 300 * KiB, "download": 200 * KiB}
    for provider in repo.providers.values():
        assert isinstance(provider, ThrottledProvider)
        assert provider._upload is repo.limiters["upload"]
        assert provider._download is repo.limiters["download"]
    assert [p.label for p in repo.providers.values()] == ["a", "b"]


def test_command_line_overrides_the_config(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "limit_upload = 1")
    repo.limit_overrides = {"upload": 4096, "download": 50}
    assert {d: lim.rate for d, lim in repo.limiters.items()} == {
        "upload": 4096 * KiB, "download": 50 * KiB}


# -- config keys --------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["limit_upload", "limit_download"])
@pytest.mark.parametrize("value", ["0", "-5", '"fast"', "1.5", "true", "[1]"])
def test_bad_limit_in_config_is_one_line(enigma: Enigma, key: str, value: str) -> None:
    path = enigma.config_dir / "enigma.toml"
    lines = path.read_text().splitlines()
    at = lines.index("[enigma]") + 1
    lines.insert(at, f"{key} = {value}")
    path.write_text("\n".join(lines) + "\n")
    result = enigma("list")
    assert_clean_error(result, f"enigma.toml:{at + 1}", key, "positive integer")


# -- the real CLI -------------------------------------------------------------------------


@pytest.fixture
def small_chunks(enigma: Enigma) -> Enigma:
    path = enigma.config_dir / "enigma.toml"
    text = path.read_text()
    start = text.index("[enigma.chunk_strategy.Cdc]")
    end = text.index("[", start + 1)
    path.write_text(text[:start] + SMALL_CDC + "\n" + text[end:])
    return enigma


def summary(out: str) -> dict:
    """``backup --json``: one document, or JSON lines ending with the summary."""
    try:
        return json.loads(out)
    except json.JSONDecodeError:
        return json.loads(out.strip().splitlines()[-1])


def random_tree(root: Path, size: int) -> Path:
    root.mkdir()
    (root / "a.bin").write_bytes(os.urandom(size - size // 4))
    (root / "b.bin").write_bytes(os.urandom(size // 4))
    return root


def test_backup_upload_limit_holds(small_chunks: Enigma, tmp_path: Path) -> None:
    """The backup's own clock (``stats.seconds``) leaves out process start-up and the
    keystore unlock, which would otherwise add a variable half second to a 4 s run."""
    source = random_tree(tmp_path / "src", 4 * MiB)
    result = small_chunks.ok("--limit-upload", "1024", "backup", "--json", str(source))
    stats = summary(result.out)["stats"]
    assert stats["chunks_new"] >= 8  # many puts in parallel, one limiter
    rate = stats["bytes_uploaded"] / stats["seconds"]
    assert within(rate, 1024 * KiB), f"{rate / KiB:.0f} KiB/s against a 1024 KiB/s limit"


def timed(runner: Enigma, *args: str) -> float:
    started = time.monotonic()
    runner.ok(*args)
    return time.monotonic() - started


def test_restore_download_limit_holds(small_chunks: Enigma, tmp_path: Path) -> None:
    """Restore reports no duration, so its start-up cost is measured instead: the same
    restore without a limit (the faster of a run before and one after, to follow the
    machine's load) is subtracted from the limited one. What remains is the time the limit
    added: the downloaded bytes at the limit (off by the unlimited run's own transfer,
    some 30 ms here, under 1 %)."""
    source = random_tree(tmp_path / "src", 4 * MiB)
    backup = summary(small_chunks.ok("backup", "--json", str(source)).out)
    downloaded = backup["stats"]["bytes_uploaded"]  # one copy of each sealed chunk
    backup_id = backup["backup_id"]
    before = timed(small_chunks, "restore", backup_id, str(tmp_path / "free1"))
    limited = timed(small_chunks, "--limit-download", "1024", "restore", backup_id,
                    str(tmp_path / "limited"))
    baseline = min(before, timed(small_chunks, "restore", backup_id, str(tmp_path / "free2")))
    rate = downloaded / (limited - baseline)
    assert within(rate, 1024 * KiB), f"{rate / KiB:.0f} KiB/s against a 1024 KiB/s limit"
    restored = tmp_path / "limited" / str(source).lstrip("/")
    assert (restored / "a.bin").read_bytes() == (source / "a.bin").read_bytes()


def set_enigma_key(runner: Enigma, line: str) -> None:
    path = runner.config_dir / "enigma.toml"
    path.write_text(path.read_text().replace("[enigma]\n", f"[enigma]\n{line}\n", 1))


def test_config_limit_applies(small_chunks: Enigma, tmp_path: Path) -> None:
    set_enigma_key(small_chunks, "limit_upload = 1024")
    source = random_tree(tmp_path / "src", 2 * MiB)
    stats = summary(small_chunks.ok("backup", "--json", str(source)).out)["stats"]
    rate = stats["bytes_uploaded"] / stats["seconds"]
    assert within(rate, 1024 * KiB), f"{rate / KiB:.0f} KiB/s against a 1024 KiB/s limit"


def test_command_line_overrides_config_limit(enigma: Enigma, tmp_path: Path) -> None:
    """1 KiB/s in the config: 256 KiB would take four minutes; the option lifts it."""
    set_enigma_key(enigma, "limit_upload = 1")
    source = random_tree(tmp_path / "src", 256 * KiB)
    result = enigma.ok("--limit-upload", "100000", "backup", "--json", str(source),
                       timeout=60)
    assert summary(result.out)["stats"]["seconds"] < 10
