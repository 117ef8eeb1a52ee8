"""Retention: `enigma forget --keep-*`, and pruning safely while backups run.

The policy module (enigma.retention) is checked against hand-computed cases following
restic's doc/060_forget.rst and its policy code: calendar buckets on natural boundaries
(ISO weeks), newest per bucket, the oldest backup kept while a count is left,
--keep-within relative to the newest backup (never one in the future), and groups by
source paths; times are UTC (tz=UTC) so expectations do not depend on the machine. The
CLI is run on real backups, and gc against a backup frozen mid-run.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from helpers import (
    ENIGMA,
    PASSPHRASE,
    Enigma,
    assert_clean_error,
    make_tree,
    restored_root,
    snapshot,
)

from enigma.lock import repository_lock
from enigma.manifest import BackupRecord, Manifest
from enigma.retention import (
    UNLIMITED,
    Duration,
    InvalidPolicy,
    Policy,
    apply_policy,
    parse_count,
    plan,
)

SOURCES = ["/home/user/work"]


def ts(text: str) -> float:
    """'2019-09-01 11:00' (UTC) as epoch seconds."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp()


def backups(*times: str, sources: list[str] = SOURCES, status: str = "complete"
            ) -> list[BackupRecord]:
    return [BackupRecord(id=f"{t}|{'+'.join(sources)}", created_at=ts(t), sources=sources,
                         hostname="mopped", status=status) for t in times]


def kept(records: list[BackupRecord], policy: Policy, now: str = "2100-01-01 00:00",
         tz: timezone = UTC) -> dict[str, list[str]]:
    """{time: reasons} of the kept backups."""
    return {d.backup.id.split("|")[0]: d.reasons
            for d in apply_policy(records, policy, now=ts(now), tz=tz) if d.keep}


def daily(start: str, days: int) -> list[str]:
    first = datetime.strptime(start, "%Y-%m-%d %H:%M")
    return [(first + timedelta(days=i)).strftime("%Y-%m-%d %H:%M") for i in range(days)]


# -- restic's documented examples ---------------------------------------------------------

TWELVE_SUNDAYS = [(datetime(2019, 9, 1, 11) + timedelta(weeks=i)).strftime("%Y-%m-%d %H:%M")
                  for i in range(12)]


def test_restic_doc_twelve_sundays_keep_daily_4() -> None:
    """doc/060_forget.rst: one backup every Sunday for 12 weeks, --keep-daily 4 keeps the
    last four Sundays and removes the other eight."""
    assert TWELVE_SUNDAYS[0] == "2019-09-01 11:00" and TWELVE_SUNDAYS[-1] == "2019-11-17 11:00"
    result = kept(backups(*TWELVE_SUNDAYS), Policy(daily=4))
    assert result == {"2019-11-17 11:00": ["daily"], "2019-11-10 11:00": ["daily"],
                      "2019-11-03 11:00": ["daily"], "2019-10-27 11:00": ["daily"]}


def test_restic_doc_daily_weekly_monthly_yearly_over_twenty_years() -> None:
    """doc/060_forget.rst's "one backup every day" example, over 2000-2019:
    --keep-daily 7 --keep-weekly 5 --keep-monthly 12 --keep-yearly 75.

    By hand: dailies Dec 25-31 2019. Weeks (ISO, newest first): Dec 30-31 is 2020-W01
    (Dec 31 already kept), W52 ends Sun Dec 29 (kept), then Sundays Dec 22, 15, 8 - three
    new. Months: Dec 31 (kept), then the last day of Nov..Jan 2019 - eleven new. Years:
    Dec 31 of 2019 (kept) and of 2018..2000 - nineteen new; 55 yearly counts are left, so
    the oldest backup, 2000-01-01, is kept as "oldest yearly". 7 + 3 + 11 + 19 + 1 = 41.
    """
    records = backups(*daily("2000-01-01 03:00", 7305))
    assert records[-1].created_at == ts("2019-12-31 03:00")
    result = kept(records, Policy(daily=7, weekly=5, monthly=12, yearly=75))
    assert len(result) == 41
    assert result["2019-12-31 03:00"] == ["daily", "weekly", "monthly", "yearly"]
    assert result["2019-12-29 03:00"] == ["daily", "weekly"]
    assert result["2019-12-25 03:00"] == ["daily"]
    for day in ("2019-12-22", "2019-12-15", "2019-12-08"):
        assert result[f"{day} 03:00"] == ["weekly"]
    for day in ("2019-11-30", "2019-02-28", "2019-01-31"):
        assert result[f"{day} 03:00"] == ["monthly"]
    for year in range(2000, 2019):
        assert result[f"{year}-12-31 03:00"] == ["yearly"]
    assert result["2000-01-01 03:00"] == ["oldest yearly"]
    assert "2019-12-24 03:00" not in result and "2018-12-30 03:00" not in result


# -- one rule at a time -------------------------------------------------------------------

def test_keep_last() -> None:
    times = daily("2024-05-01 10:00", 5)
    assert list(kept(backups(*times), Policy(last=3))) == times[:1:-1]
    assert kept(backups(*times), Policy(last=10)) == {t: ["last"] for t in times}


def test_keep_hourly_keeps_newest_per_hour() -> None:
    times = ["2024-05-01 10:05", "2024-05-01 10:40", "2024-05-01 11:10", "2024-05-01 11:50",
             "2024-05-01 12:30"]
    assert kept(backups(*times), Policy(hourly=2)) == {
        "2024-05-01 12:30": ["hourly"], "2024-05-01 11:50": ["hourly"]}


def test_oldest_is_kept_while_counts_are_left() -> None:
    """Three hours hold backups, five were asked for: the oldest (10:05, same hour as the
    kept 10:40) stays too, marked "oldest hourly" (restic >= 0.16)."""
    times = ["2024-05-01 10:05", "2024-05-01 10:40", "2024-05-01 11:10", "2024-05-01 11:50",
             "2024-05-01 12:30"]
    assert kept(backups(*times), Policy(hourly=5)) == {
        "2024-05-01 12:30": ["hourly"], "2024-05-01 11:50": ["hourly"],
        "2024-05-01 10:40": ["hourly"], "2024-05-01 10:05": ["oldest hourly"]}


def test_keep_weekly_uses_iso_weeks_monday_to_sunday() -> None:
    """Sun Jan 7 23:00 and Mon Jan 8 01:00 are different weeks; Thu Dec 31 2020 and
    Sun Jan 3 2021 are the same one (ISO 2020-W53), so only Jan 3 keeps it."""
    assert kept(backups("2024-01-07 23:00", "2024-01-08 01:00"), Policy(weekly=2)) == {
        "2024-01-08 01:00": ["weekly"], "2024-01-07 23:00": ["weekly"]}
    assert kept(backups("2020-12-24 12:00", "2020-12-31 12:00", "2021-01-03 12:00"),
                Policy(weekly=2)) == {"2021-01-03 12:00": ["weekly"],
                                      "2020-12-24 12:00": ["weekly"]}


def test_keep_monthly_and_yearly() -> None:
    times = ["2022-11-20 08:00", "2022-12-05 08:00", "2023-01-10 08:00", "2023-01-30 08:00",
             "2023-02-14 08:00"]
    assert kept(backups(*times), Policy(monthly=3)) == {
        "2023-02-14 08:00": ["monthly"], "2023-01-30 08:00": ["monthly"],
        "2022-12-05 08:00": ["monthly"]}
    assert kept(backups(*times), Policy(yearly=1)) == {"2023-02-14 08:00": ["yearly"]}


def test_unlimited_keeps_the_newest_of_every_day() -> None:
    times = ["2024-03-01 09:00", "2024-03-01 18:00", "2024-03-02 09:00", "2024-03-04 09:00"]
    assert kept(backups(*times), Policy(daily=UNLIMITED)) == {
        "2024-03-04 09:00": ["daily"], "2024-03-02 09:00": ["daily"],
        "2024-03-01 18:00": ["daily"], "2024-03-01 09:00": ["oldest daily"]}


def test_rules_are_ored_and_every_reason_is_named() -> None:
    times = ["2024-05-01 10:00", "2024-05-02 10:00", "2024-05-02 11:00", "2024-05-02 12:00"]
    assert kept(backups(*times), Policy(last=2, daily=2)) == {
        "2024-05-02 12:00": ["last", "daily"], "2024-05-02 11:00": ["last"],
        "2024-05-01 10:00": ["daily"]}


def test_calendar_buckets_follow_the_time_zone() -> None:
    """23:30 UTC on Jan 1 is already Jan 2 at UTC+1: one day there, two days in UTC."""
    records = backups("2024-01-01 23:30", "2024-01-02 08:00")
    assert len(kept(records, Policy(daily=2))) == 2
    plus_one = timezone(timedelta(hours=1))
    assert kept(records, Policy(daily=1), tz=plus_one) == {"2024-01-02 08:00": ["daily"]}


# -- keep-within ----------------------------------------------------------------------------

def test_keep_within_counts_back_from_the_newest_backup_not_from_now() -> None:
    times = ["2024-03-29 12:00", "2024-03-30 09:00", "2024-03-30 11:00", "2024-03-31 11:00"]
    # 1d2h before Mar 31 11:00 is Mar 30 09:00: strictly newer backups are kept.
    assert list(kept(backups(*times), Policy(within=Duration(days=1, hours=2)),
                     now="2030-01-01 00:00")) == ["2024-03-31 11:00", "2024-03-30 11:00"]


def test_keep_within_months_normalise_like_go_adddate() -> None:
    """Mar 31 minus one month is "Feb 31", which Go (and restic) normalise to Mar 2."""
    times = ["2024-03-01 12:00", "2024-03-02 12:00", "2024-03-02 12:01", "2024-03-31 12:00"]
    assert list(kept(backups(*times), Policy(within=Duration(months=1)))) == [
        "2024-03-31 12:00", "2024-03-02 12:01"]
    assert Duration(years=1).before(datetime(2024, 2, 29, tzinfo=UTC)) == ts("2023-03-01 00:00")


def test_a_backup_dated_in_the_future_is_kept_and_is_not_the_reference() -> None:
    times = ["2024-01-01 00:00", "2024-03-30 00:00", "2024-03-31 00:00", "2031-01-01 00:00"]
    assert list(kept(backups(*times), Policy(within=Duration(days=7)),
                     now="2024-04-01 00:00")) == [
        "2031-01-01 00:00", "2024-03-31 00:00", "2024-03-30 00:00"]


# -- groups and states --------------------------------------------------------------------

def test_groups_are_judged_separately_by_source_path_set() -> None:
    records = (backups("2024-01-01 10:00", "2024-01-02 10:00", sources=["/a", "/b"])
               + backups("2024-01-03 10:00", sources=["/b", "/a"])
               + backups("2024-01-01 10:00", "2024-01-04 10:00", sources=["/a"]))
    groups = plan(records, Policy(last=1), now=ts("2100-01-01 00:00"), tz=UTC)
    assert [g.sources for g in groups] == [("/a",), ("/a", "/b")]
    assert [d.backup.created_at for d in groups[0].keep] == [ts("2024-01-04 10:00")]
    assert [d.backup.created_at for d in groups[1].keep] == [ts("2024-01-03 10:00")]
    assert len(groups[1].remove) == 2 and len(groups[0].remove) == 1


def test_running_and_failed_backups_are_left_alone() -> None:
    """A failed backup must not displace the good backup of its day, and a running one
    (perhaps still being written) is never removed."""
    records = (backups("2024-01-01 10:00", "2024-01-02 10:00")
               + backups("2024-01-02 11:00", status="failed")
               + backups("2024-01-02 12:00", status="running")
               + backups("2024-01-02 09:00", status="partial"))
    [group] = plan(records, Policy(daily=1), now=ts("2100-01-01 00:00"), tz=UTC)
    assert [d.backup.created_at for d in group.keep] == [ts("2024-01-02 10:00")]
    assert sorted(d.backup.created_at for d in group.remove) == [
        ts("2024-01-01 10:00"), ts("2024-01-02 09:00")]
    assert sorted(b.status for b in group.untouched) == ["failed", "running"]


# -- parsing --------------------------------------------------------------------------------

def test_duration_and_count_parsing() -> None:
    assert Duration.parse("1y5m7d2h") == Duration(1, 5, 7, 2)
    assert Duration.parse("3d12h") == Duration(days=3, hours=12)
    assert Duration.parse("2h7d") == Duration(days=7, hours=2)
    assert str(Duration(1, 0, 7, 0)) == "1y7d"
    for bad in ("1w", "", "5", "d", "1d1d", "1d 2h", "-1d"):
        with pytest.raises(InvalidPolicy, match="invalid duration"):
            Duration.parse(bad)
    assert parse_count("unlimited", "--keep-daily") == UNLIMITED
    assert parse_count(None, "--keep-daily") == 0 and parse_count("7", "--keep-daily") == 7
    for bad in ("-1", "seven", "1.5"):
        with pytest.raises(InvalidPolicy, match="--keep-daily"):
            parse_count(bad, "--keep-daily")


def test_empty_policy_is_refused() -> None:
    assert Policy.from_options(last="0", within="0d").empty
    policy = Policy.from_options(last="2", daily="7", weekly="unlimited", within="1y")
    assert str(policy) == "keep 2 latest, 7 daily, all weekly, all within 1y of the newest"
    with pytest.raises(InvalidPolicy, match="keeps nothing"):
        apply_policy(backups("2024-01-01 10:00"), Policy(), now=ts("2100-01-01 00:00"))


# -- the CLI, on real backups ---------------------------------------------------------------

def backup_id(enigma: Enigma, *paths: Path) -> str:
    summary = enigma.ok("backup", "--json", *map(str, paths)).out.splitlines()[-1]
    return json.loads(summary)["backup_id"]


def test_forget_policy_from_the_cli(enigma: Enigma, tmp_path: Path) -> None:
    work, other = tmp_path / "work", tmp_path / "other"
    work.mkdir(), other.mkdir()
    (other / "o.txt").write_text("other")
    ids = []
    for i in range(3):
        (work / "changing.bin").write_bytes(random.Random(i).randbytes(100_000))
        ids.append(backup_id(enigma, work))
    lone = backup_id(enigma, other)

    dry = json.loads(enigma.ok("forget", "--keep-last", "2", "--dry-run", "--json").out)
    assert dry["dry_run"] and dry["forgotten"] == [ids[0]]
    groups = {tuple(g["sources"]): g for g in dry["groups"]}
    assert [k["id"] for k in groups[(str(work),)]["keep"]] == [ids[2], ids[1]]
    assert groups[(str(work),)]["keep"][0]["reasons"] == ["last"]
    assert [k["id"] for k in groups[(str(other),)]["keep"]] == [lone]
    text = enigma.ok("forget", "--keep-last", "2", "--dry-run").out
    assert f"  would remove 1:\n    {ids[0]}  " in text and "would forget 1 backups" in text
    assert len(json.loads(enigma.ok("list", "--json").out)) == 4  # nothing removed

    # A calendar rule through the CLI selects what the module selects on the same records.
    with Manifest(enigma.config_dir / "manifest.db") as manifest:
        records = manifest.list_backups()
    expected = plan(records, Policy(daily=5), now=time.time())
    shown = json.loads(enigma.ok("forget", "--keep-daily", "5", "--dry-run", "--json").out)
    assert [[(k["id"], k["reasons"]) for k in g["keep"]] for g in shown["groups"]] == [
        [(d.backup.id, d.reasons) for d in g.keep] for g in expected]
    within = json.loads(enigma.ok("forget", "--keep-within", "1d", "--dry-run", "--json").out)
    assert within["forgotten"] == []

    done = json.loads(enigma.ok("forget", "--keep-last", "1", "--prune", "--json").out)
    assert sorted(done["forgotten"]) == sorted(ids[:2])
    assert done["gc"]["chunks"] == 2  # the two old versions of changing.bin
    assert [b["id"] for b in json.loads(enigma.ok("list", "--json").out)] == [ids[2], lone]
    assert "no errors" in enigma.ok("check", "--read-data").out
    dest = tmp_path / "out"
    enigma.ok("restore", ids[2], str(dest))
    assert snapshot(restored_root(dest, work)) == snapshot(work)


def test_forget_by_id_still_works(enigma: Enigma, tmp_path: Path) -> None:
    source = make_tree(tmp_path / "src")
    first, second = backup_id(enigma, source), backup_id(enigma, source)
    assert enigma.ok("forget", first[:6], "--dry-run").out == f"would forget backup {first}\n"
    assert enigma.ok("forget", first[:6]).out == f"forgot backup {first}\n"
    assert [b["id"] for b in json.loads(enigma.ok("list", "--json").out)] == [second]


@pytest.mark.parametrize(("args", "fragment"), [
    ((), "nothing to forget"),
    (("--keep-last", "0"), "nothing to forget"),
    (("--keep-daily", "seven"), "--keep-daily 'seven'"),
    (("--keep-weekly", "-2"), "give a number >= 0 or 'unlimited'"),
    (("--keep-within", "1w"), "invalid duration '1w'"),
    (("abcd1234", "--keep-last", "1"), "not both"),
])
def test_bad_forget_input_is_one_line(enigma: Enigma, args: tuple[str, ...],
                                      fragment: str) -> None:
    assert_clean_error(enigma("forget", *args), fragment)


# -- prune safety ---------------------------------------------------------------------------

def running_backups(config_dir: Path) -> int:
    """Backups the manifest shows as running, read without taking any lock."""
    with contextlib.closing(sqlite3.connect(f"file:{config_dir / 'manifest.db'}?mode=ro",
                                            uri=True)) as conn:
        return conn.execute("SELECT count(*) FROM backups WHERE status = 'running'").fetchone()[0]


def test_gc_cannot_run_while_a_backup_is_in_flight(enigma: Enigma, tmp_path: Path) -> None:
    """A backup is frozen (SIGSTOP) mid-run, holding the repository lock shared, with
    chunks stored but not yet recorded and a chunk it reuses that only a forgotten backup
    referenced: gc must refuse (one line), and after the backup ends nothing is lost."""
    source = tmp_path / "src"
    source.mkdir()
    kept_file = source / "again.bin"
    kept_file.write_bytes(random.Random(1).randbytes(300_000))
    backup_id(enigma, source)
    reused = kept_file.read_bytes()
    kept_file.unlink()
    backup_id(enigma, source)
    enigma.ok("forget", "--keep-last", "1")  # again.bin's chunk is now unreferenced
    kept_file.write_bytes(reused)
    with open(source / "big.bin", "wb") as out:
        for _ in range(48):
            out.write(os.urandom(1 << 20))

    env = {k: v for k, v in os.environ.items() if not k.startswith("ENIGMA_")}
    proc = subprocess.Popen(
        [ENIGMA, "--config-dir", str(enigma.config_dir), "backup", "--json", str(source)],
        env={**env, "ENIGMA_PASSPHRASE": PASSPHRASE}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not running_backups(enigma.config_dir):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the backup never started"
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGSTOP)
        assert running_backups(enigma.config_dir) == 1, "the backup ended before it froze"
        assert_clean_error(enigma("gc"), "busy", "a backup is running")
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    latest = json.loads(out)["backup_id"]

    gc = json.loads(enigma.ok("gc", "--json").out)
    assert gc["orphans"] == 0 and gc["stale_backups"] == []
    report = json.loads(enigma.ok("check", "--read-data", "--json").out)
    assert report["ok"] and report["orphans"] == {}
    dest = tmp_path / "out"
    enigma.ok("restore", latest, str(dest))
    assert snapshot(restored_root(dest, source)) == snapshot(source)


def test_backup_and_forget_refuse_while_gc_holds_the_lock(enigma: Enigma,
                                                          tmp_path: Path) -> None:
    source = make_tree(tmp_path / "src")
    first = backup_id(enigma, source)
    with repository_lock(enigma.config_dir, exclusive=True):  # as gc holds it
        assert_clean_error(enigma("backup", str(source)), "busy", "gc is running")
        assert_clean_error(enigma("forget", "--keep-last", "1"), "busy")
    assert [b["id"] for b in json.loads(enigma.ok("list", "--json").out)] == [first]
