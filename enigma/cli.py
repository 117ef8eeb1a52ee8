"""The ``enigma`` command line: thin click commands over the repository and pipeline modules.

Every failure a user can cause ends as one line on stderr and a non-zero exit; a
traceback appears only with ``--debug``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

import click

from enigma import __version__
from enigma.config import CONFIG_FILE, DEFAULT_CONFIG_TEXT, config_dir_from, load_config
from enigma.errors import ConfigError, EnigmaError, PluginError, StorageError
from enigma.memory import limit_malloc_arenas
from enigma.plugin_manager import PluginManager
from enigma.repository import Repository, ensure_private_dir

log = logging.getLogger("enigma.cli")

EXIT_PARTIAL = 3  # restic's code for "backup finished, but some sources could not be read"
SECRET_KEYS = {"secret_key", "access_key", "password", "passphrase", "token", "cluster_secret",
               "secret"}


class State:
    """Per-invocation state shared by commands: global options and lazily built objects."""

    def __init__(self, plugins: PluginManager | None = None) -> None:
        self._plugins = plugins
        self.config_dir: Path = config_dir_from(None)
        self.passphrase: str | None = None
        self.debug = False
        #: -1 with -q (no progress or summaries on stderr), 0 by default, 1 -v, 2 -vv.
        self.verbosity = 0
        #: --limit-upload / --limit-download in KiB/s (None: the config's, or no limit).
        self.limit_upload: int | None = None
        self.limit_download: int | None = None
        self._repo: Repository | None = None

    @property
    def plugins(self) -> PluginManager:
        if self._plugins is None:
            self._plugins = PluginManager()
        return self._plugins

    @property
    def quiet(self) -> bool:
        """-q: no progress display, status lines or informational stderr lines."""
        return self.verbosity < 0

    def ask_passphrase(self, confirm: bool) -> str | None:
        if self.passphrase:
            return self.passphrase
        if sys.stdin.isatty():
            return click.prompt("Passphrase", hide_input=True, confirmation_prompt=confirm,
                                err=True)
        return None

    def repo(self, *, required: bool = True) -> Repository:
        if self._repo is None:
            config = load_config(self.config_dir, required=required,
                                 extra_tables=self.server_tables())
            self._repo = Repository(config, self.plugins, self.ask_passphrase)
            self._repo.limit_overrides = {"upload": self.limit_upload,
                                          "download": self.limit_download}
            log.info("repository %s (config %s): providers %s; distribution %s; key "
                     "provider %s", config.config_dir, config.path or "built-in defaults",
                     ", ".join(f"{p.name} ({p.type})" for p in config.providers)
                     or "default local storage", config.distribution, config.key_provider)
        return self._repo

    def server_tables(self) -> frozenset[str]:
        tables = set()
        for offers in self.plugins.of_kind("server").values():
            tables.update(p.cls.config_table for p in offers if p.cls.config_table)
        return frozenset(tables)

    def close(self) -> None:
        if self._repo is not None:
            self._repo.close()


pass_state = click.make_pass_decorator(State)


def human(n: float) -> str:
    """Bytes for people: 1.5 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def echo_json(value: Any) -> None:
    """``--json`` output: one document on stdout, shaped as docs/json.md promises."""
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def note(message: str) -> None:
    """An informational line on stderr (stdout stays the result); -q silences it."""
    ctx = click.get_current_context(silent=True)
    state = ctx.find_object(State) if ctx is not None else None
    if state is None or state.verbosity >= 0:
        click.echo(message, err=True)


def warn(message: str) -> None:
    """``warning: ...`` on stderr: something the user should know that did not fail the
    command (-q silences it too: the exit code still tells success from failure)."""
    note(f"warning: {message}")


def masked(value: Any, key: str = "") -> Any:
    """Config for display: secrets never printed, ``enc:`` tokens only hinted at."""
    if isinstance(value, dict):
        return {k: masked(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v, key) for v in value]
    if key in SECRET_KEYS and isinstance(value, str) and value:
        return "enc:…" if value.startswith("enc:") else "****"
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config-dir", metavar="DIR", envvar="ENIGMA_CONFIG_DIR",
              help="Directory holding enigma.toml, keystore and manifest [~/.enigma].")
@click.option("--passphrase", metavar="P", envvar="ENIGMA_PASSPHRASE", show_envvar=True,
              help="Keystore passphrase; asked for on a terminal when not given.")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors (and log at debug).")
@click.option("-v", "--verbose", count=True,
              help="Log more: -v info, -vv debug (ENIGMA_LOG=info,botocore=debug for "
                   "per-logger levels; docs in README.md).")
@click.option("-q", "--quiet", is_flag=True,
              help="Errors only: no warnings, progress or summaries on stderr.")
@click.option("--limit-upload", metavar="KiB/s", type=click.IntRange(min=1),
              envvar="ENIGMA_LIMIT_UPLOAD", show_envvar=True,
              help="Limit traffic to the storage providers to this rate "
                   "(overrides [enigma] limit_upload).")
@click.option("--limit-download", metavar="KiB/s", type=click.IntRange(min=1),
              envvar="ENIGMA_LIMIT_DOWNLOAD", show_envvar=True,
              help="Limit traffic from the storage providers to this rate "
                   "(overrides [enigma] limit_download).")
@click.version_option(__version__, prog_name="enigma")
@click.pass_context
def cli(ctx: click.Context, config_dir: str | None, passphrase: str | None,
        debug: bool, verbose: int, quiet: bool, limit_upload: int | None,
        limit_download: int | None) -> None:
    """Enigma: encrypted, deduplicated backups spread over several clouds.

    \b
    Examples (a quick start; local storage under ~/.enigma):
      enigma init
      enigma backup ~/Documents
      enigma list
      enigma restore <ID> /tmp/restored
      enigma -v backup ~/Documents          # log what it does (-vv: debug)
      ENIGMA_LOG=info,botocore=debug enigma list   # per-logger levels
    """
    from enigma import logs

    if quiet and verbose:
        raise logs.LogSettingError("give -q or -v, not both")
    state = ctx.ensure_object(State)
    state.config_dir = config_dir_from(config_dir)
    state.passphrase = passphrase
    state.debug = debug
    state.verbosity = -1 if quiet else min(verbose, 2)
    logs.configure(state.verbosity, debug, os.environ.get("ENIGMA_LOG"))
    command, started = ctx.invoked_subcommand, time.monotonic()
    log.info("enigma %s %s: started", __version__, command)
    ctx.call_on_close(lambda: log.info("%s: ended after %.2f s", command,
                                       time.monotonic() - started))
    state.limit_upload = limit_upload
    state.limit_download = limit_download


@cli.command()
@click.option("--recipient", "recipient_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="Make a write-only client: seal data keys to this recipient key (from "
                   "'enigma key export-recipient'); it can back up but not decrypt.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_state
def init(state: State, recipient_file: str | None, as_json: bool) -> None:
    """Create the config, keystore, manifest and storage (safe to run again).

    \b
    Examples:
      enigma --config-dir ~/.enigma init
      enigma init --recipient reader.pub   # write-only client (docs/write-only.md)
    """
    public_key = read_recipient_file(recipient_file) if recipient_file else None
    ensure_private_dir(state.config_dir)
    config_path = state.config_dir / CONFIG_FILE
    report: dict[str, Any] = {"config_dir": str(state.config_dir),
                              "config_file": str(config_path), "config_created": False}
    if not config_path.exists():
        fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(DEFAULT_CONFIG_TEXT)
        report["config_created"] = True
        note(f"created config {config_path}")
    repo = state.repo()
    provider = repo.key_provider
    if provider.exists():
        if public_key is not None:
            raise ConfigError("keys exist already; --recipient only applies when creating a "
                              "client's keys (to change the recipient: enigma key "
                              "set-recipient FILE)")
        keys = repo.keys
        report["keys"] = "existing"
        note(f"keys exist and unlock (key versions: {sorted(keys.data_keys)})")
    elif public_key is not None:
        refuse_existing_repository(repo)
        repo.create_write_only_keys(public_key)
        report["keys"] = "created"
        note(f"created write-only client keys with key provider '{provider.name}' "
             f"(recipient {recipient_fingerprint(public_key)})")
    else:
        refuse_existing_repository(repo)
        repo.create_keys()
        report["keys"] = "created"
        note(f"created keys with key provider '{provider.name}'")
    repo.chunker, repo.compressor, repo.distribution  # noqa: B018 - config errors now
    repo.manifest  # noqa: B018 - creates and migrates the manifest
    note(f"manifest {repo.config.db_path}")
    report["providers"] = []
    for label, storage in repo.providers.items():
        try:
            created = storage.create_bucket()
            storage.check()
        except StorageError as exc:
            raise StorageError(f"provider '{label}': {exc}") from exc
        report["providers"].append({"name": label, "type": storage.name,
                                    "state": "created" if created else "ready"})
        note(f"provider '{label}' ({storage.name}): {'created' if created else 'ready'}")
    mirror_keystore(repo, strict=True)
    if repo.keys.write_only:
        repo.publish_writer_key()
    keys = repo.keys
    report.update(manifest=str(repo.config.db_path), key_provider=provider.name,
                  write_only=keys.write_only, key_versions=sorted(keys.data_keys),
                  recipient=(recipient_fingerprint(keys.recipient) if keys.write_only
                             else None))
    if as_json:
        echo_json(report)
    else:
        click.echo(f"initialised repository in {state.config_dir}")


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--force", is_flag=True,
              help="Read every file, even those unchanged since the last backup.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def backup(ctx: click.Context, paths: tuple[str, ...], force: bool, as_json: bool) -> None:
    """Back up files and directories; prints the new backup's id.

    Exit code 3 means the backup was saved but some files could not be read (they are
    listed, and recorded in the backup log). A path given twice, or inside another
    given path, is backed up once.

    \b
    Example: enigma backup ~/Documents ~/Pictures
    """
    from enigma.backup import run_backup
    from enigma.lock import repository_lock
    from enigma.progress_display import open_progress, print_summary

    state: State = ctx.obj
    repo = state.repo()
    quiet = state.quiet
    with repository_lock(repo.config.config_dir, exclusive=False), \
            open_progress("backup", json_lines=as_json, quiet=quiet) as progress:
        result = run_backup(repo, list(paths), force=force, progress=progress)
    s = result.stats
    if as_json:
        print_summary({"backup_id": result.backup_id, "status": result.status,
                       "stats": asdict(s), "problems": result.problems})
    else:
        for problem in result.problems[:20]:
            warn(problem)  # -q leaves the exit code (3) to tell
        if len(result.problems) > 20:
            note(f"... and {len(result.problems) - 20} more (see the backup log)")
        rate = s.bytes_read / s.seconds / 1e6 if s.seconds else 0.0
        note(f"backup {result.status}: {s.files} files ({s.files_new} new, "
             f"{s.files_changed} changed, {s.files_unchanged} unchanged), {s.dirs} dirs, "
             f"{s.symlinks} symlinks; {human(s.bytes_read)} read, {s.chunks_new} new "
             f"chunks, {human(s.bytes_uploaded)} uploaded; {s.seconds:.2f} s "
             f"({rate:.1f} MB/s)")
        click.echo(result.backup_id)
    mirror_snapshot(repo)
    if result.status == "partial":
        ctx.exit(EXIT_PARTIAL)


@cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the backups as JSON.")
@pass_state
def list_backups(state: State, as_json: bool) -> None:
    """List backups, oldest first.

    \b
    Example: enigma list --json
    """
    backups = state.repo().manifest.list_backups()
    if as_json:
        echo_json([asdict(b) for b in backups])
        return
    if not backups:
        note("no backups yet (run: enigma backup PATH)")
        return
    click.echo(f"{'ID':<16}  {'DATE':<19}  {'STATUS':<8}  {'FILES':>7}  {'SIZE':>10}  SOURCES")
    for b in backups:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b.created_at))
        files = b.stats.get("files", 0)
        size = human(b.stats.get("bytes_total", b.stats.get("bytes_read", 0)))
        click.echo(f"{b.id:<16}  {when:<19}  {b.status:<8}  {files:>7}  {size:>10}  "
                   f"{', '.join(b.sources)}")


@cli.command("log")
@click.argument("backup_id")
@click.option("--json", "as_json", is_flag=True, help="Print the log as JSON.")
@pass_state
def show_log(state: State, backup_id: str, as_json: bool) -> None:
    """Show a backup's log: skipped and unreadable files, errors, the final summary.

    \b
    Example: enigma log 3f2a
    """
    manifest = state.repo().manifest
    backup = manifest.get_backup(backup_id)
    entries = manifest.backup_log(backup.id)
    if as_json:
        echo_json([asdict(e) for e in entries])
        return
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.at))
        click.echo(f"{when}  {e.level:<7}  {e.event:<10}  {e.path or '-'}  {e.message}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@pass_state
def status(state: State, as_json: bool) -> None:
    """Show the repository, its providers (reachability, chunks, bytes) and totals.

    \b
    Example: enigma status
    """
    from enigma.repair import redundancy_summary

    repo = state.repo()
    manifest = repo.manifest
    chunks, plain, stored = manifest.chunk_totals()
    per_provider = manifest.chunk_stats()
    redundancy = redundancy_summary(repo)
    providers = []
    built = repo.providers  # config and plugin errors stop here; reachability is per row
    for entry in repo.config.providers:
        row: dict[str, Any] = {"name": entry.name, "type": entry.type, "weight": entry.weight}
        try:
            built[entry.name].check()
            row["reachable"], row["error"] = True, ""
        except EnigmaError as exc:
            row["reachable"], row["error"] = False, str(exc)
        count, size = per_provider.get(entry.name, (0, 0))
        row["chunks"], row["bytes"] = count, redundancy.per_provider.get(entry.name, size)
        providers.append(row)
    info = {
        "config_dir": str(repo.config.config_dir), "manifest": str(repo.config.db_path),
        "schema_version": manifest.schema_version(), "backups": len(manifest.list_backups()),
        "chunks": chunks, "bytes_plain": plain, "bytes_stored": stored,
        "key_provider": repo.config.key_provider, "distribution": repo.config.distribution,
        "providers": providers, "redundancy": redundancy.as_dict(),
    }
    if as_json:
        echo_json(info)
        return
    click.echo(f"repository   {info['config_dir']}")
    click.echo(f"manifest     {info['manifest']} (schema {info['schema_version']})")
    click.echo(f"key provider {info['key_provider']}, distribution {info['distribution']}")
    click.echo(f"backups      {info['backups']}")
    everything = redundancy.bytes_stored or stored  # every copy and shard
    click.echo(f"chunks       {chunks} ({human(plain)} unique data, {human(everything)} stored)")
    click.echo(f"redundancy   {redundancy.text()}")
    click.echo(f"{'PROVIDER':<16}  {'TYPE':<12}  {'STATE':<11}  {'CHUNKS':>8}  {'BYTES':>10}")
    for row in providers:
        state_text = "reachable" if row["reachable"] else "UNREACHABLE"
        click.echo(f"{row['name']:<16}  {row['type']:<12}  {state_text:<11}  "
                   f"{row['chunks']:>8}  {human(row['bytes']):>10}")
        if row["error"]:
            click.echo(f"  {row['error']}")


@cli.command("config")
@click.option("--json", "as_json", is_flag=True, help="Print the configuration as JSON.")
@pass_state
def show_config(state: State, as_json: bool) -> None:
    """Show the effective configuration (secrets masked).

    \b
    Example: enigma config --json
    """
    config = state.repo(required=False).config
    effective = {
        "config_file": str(config.path) if config.path else None,
        "enigma": {
            "db_path": str(config.db_path), "key_provider": config.key_provider,
            **masked(config.key_options), "distribution": config.distribution,
            "chunk_strategy": dict([config.chunker]),
            "compression": ({"enabled": True, "algorithm": config.compression[0],
                             **config.compression[1]} if config.compression
                            else {"enabled": False}),
        },
        "providers": [masked({"name": p.name, "type": p.type, "weight": p.weight, **p.options})
                      for p in config.providers],
    }
    for table in ("s3_proxy", "raft"):
        if table in config.raw:
            effective[table] = masked(config.raw[table])
    if as_json:
        echo_json(effective)
        return
    click.echo(f"# {effective['config_file'] or 'no config file: built-in defaults'}")
    for key, value in effective.items():
        if key != "config_file":
            click.echo(f"{key} = {json.dumps(value, sort_keys=True)}")


@cli.command()
@click.argument("backup_id")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def verify(ctx: click.Context, backup_id: str, as_json: bool) -> None:
    """Download, decrypt and check every chunk of a backup.

    Names each damaged chunk and the files that use it; exit code 1 if any is damaged.

    \b
    Example: enigma verify 3f2a
    """
    from enigma.progress_display import open_progress
    from enigma.verify import run_verify

    state: State = ctx.obj
    state.repo().require_readable()
    with open_progress("verify", quiet=state.quiet) as progress:
        result = run_verify(state.repo(), backup_id, progress=progress)
    if as_json:
        echo_json({"backup_id": result.backup_id, "chunks": result.chunks,
                   "bytes": result.bytes, "ok": result.ok,
                   "bad": [{"chunk": k.hex(), "error": v, "files": result.files.get(k, [])}
                           for k, v in result.bad.items()]})
    else:
        for chunk_id, error in result.bad.items():
            click.echo(f"damaged chunk {chunk_id.hex()}: {error}", err=True)
            for path in result.files.get(chunk_id, []):
                click.echo(f"  used by {path}", err=True)
    if not result.ok:
        raise EnigmaError(f"backup {result.backup_id}: {len(result.bad)} of {result.chunks} "
                          "chunks damaged")
    if not as_json:
        click.echo(f"backup {result.backup_id}: {result.chunks} chunks "
                   f"({human(result.bytes)}) verified, all good")


@cli.command()
@click.argument("backup_id")
@click.argument("dest", required=False, type=click.Path())
@click.option("--path", "prefix", metavar="PREFIX", help="Restore only this path (and below).")
@click.option("--glob", metavar="PATTERN", help="Restore only paths or names matching this.")
@click.option("--list", "list_only", is_flag=True, help="List what would be restored.")
@click.option("--overwrite", is_flag=True, help="Restore into a non-empty DEST, replacing files.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_state
def restore(state: State, backup_id: str, dest: str | None, prefix: str | None,
            glob: str | None, list_only: bool, overwrite: bool, as_json: bool) -> None:
    """Restore a backup (or part of it) into DEST.

    Paths are restored as stored: DEST/<absolute source path>. Files whose chunks are
    damaged are named and skipped; the rest is restored and the exit code is 1.

    \b
    Examples:
      enigma restore 3f2a /tmp/out
      enigma restore 3f2a /tmp/out --path home/me/docs --glob '*.pdf'
      enigma restore 3f2a --list
    """
    from enigma.restore import list_entries, run_restore

    repo = state.repo()
    if list_only:
        entries = list(list_entries(repo, backup_id, prefix, glob))
        if as_json:
            echo_json([{"path": e.path, "type": e.type, "size": e.size} for e in entries])
        else:
            for e in entries:
                click.echo(f"{e.type:<7}  {e.size:>12}  {e.path}")
        return
    if dest is None:
        raise click.UsageError("DEST is required (or use --list)")
    from enigma.progress_display import open_progress, print_summary

    repo.require_readable()
    with open_progress("restore", json_lines=as_json,
                       quiet=state.quiet) as progress:
        result = run_restore(repo, backup_id, dest, prefix=prefix, glob=glob,
                             overwrite=overwrite, progress=progress)
    if as_json:
        print_summary({**asdict(result), "ok": result.ok})
    else:
        for line in result.refused:
            click.echo(f"refused: {line}", err=True)
        for line in result.damaged:
            click.echo(f"damaged: {line}", err=True)
        note(f"restored {result.files} files, {result.dirs} dirs, {result.symlinks} "
             f"symlinks ({human(result.bytes)}) into {os.path.abspath(dest)}")
    if not result.ok:
        raise EnigmaError(f"restore incomplete: {len(result.damaged)} damaged, "
                          f"{len(result.refused)} refused")


@cli.command()
@click.option("--read-data", is_flag=True, help="Also download and authenticate every chunk.")
@click.option("--read-data-subset", "subset", metavar="N%|n/t",
              help="Download and authenticate a random N% of the chunks, or the n-th of t "
                   "parts (t runs with n = 1..t read everything once).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_state
def check(state: State, read_data: bool, subset: str | None, as_json: bool) -> None:
    """Check the manifest against what the storage providers hold.

    Each recorded chunk must exist on every provider the manifest names, with its
    recorded size; objects nothing records are listed as orphans (gc deletes them; not
    an error). With --read-data(-subset) chunks are also downloaded and authenticated.
    Each bad chunk is named with the backup files and gateway objects using it; exit
    code 1 if anything is wrong.

    \b
    Examples:
      enigma check
      enigma check --read-data-subset 10%
      enigma check --read-data-subset 3/7
    """
    from enigma.check import (
        EVERYTHING,
        InvalidSubset,
        Subset,
        failure_summary,
        report_lines,
        run_check,
        to_json,
    )

    if read_data and subset:
        raise InvalidSubset("give --read-data or --read-data-subset, not both")
    chosen = EVERYTHING if read_data else Subset.parse(subset) if subset else None
    if chosen:
        state.repo().require_readable()
    from enigma.progress_display import open_progress

    with open_progress("check", quiet=state.quiet) as progress:
        result = run_check(state.repo(), chosen, progress=progress)
    if as_json:
        echo_json(to_json(result))
    else:
        for line in report_lines(result):
            click.echo(line, err=True)
    if not result.ok:
        raise EnigmaError(failure_summary(result))
    if not as_json:
        orphans = sum(len(keys) for keys in result.orphans.values())
        read = (f"; {result.read} read and authenticated ({human(result.bytes_read)})"
                if chosen else "")
        sizes = f", {result.sizes_checked} sizes right" if result.sizes_checked else ""
        click.echo(f"check: {result.chunks} chunks, every copy or shard present on "
                   f"{len(result.listed)} provider(s){sizes}{read}; no errors"
                   + (f" ({orphans} orphan objects: enigma gc deletes them)" if orphans else ""))


@cli.command()
@click.argument("backup_ids", nargs=-1)
@click.option("--keep-last", metavar="N", help="Keep the N newest backups.")
@click.option("--keep-hourly", metavar="N",
              help="Keep the newest backup of each of the last N hours that have one.")
@click.option("--keep-daily", metavar="N", help="The same for days.")
@click.option("--keep-weekly", metavar="N", help="The same for ISO weeks (Monday to Sunday).")
@click.option("--keep-monthly", metavar="N", help="The same for months.")
@click.option("--keep-yearly", metavar="N", help="The same for years.")
@click.option("--keep-within", metavar="DURATION",
              help="Keep every backup within DURATION (e.g. 1y5m7d2h) of the newest.")
@click.option("--dry-run", is_flag=True, help="Only show what would be kept and removed.")
@click.option("--prune", is_flag=True, help="Run gc afterwards to delete the freed chunks.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_state
def forget(state: State, backup_ids: tuple[str, ...], keep_last: str | None,
           keep_hourly: str | None, keep_daily: str | None, keep_weekly: str | None,
           keep_monthly: str | None, keep_yearly: str | None, keep_within: str | None,
           dry_run: bool, prune: bool, as_json: bool) -> None:
    """Delete backups from the manifest, by id or by a retention policy (restic's rules).

    A policy judges each set of backups of the same source paths on its own; a backup
    kept by any --keep-* rule stays (N may be 'unlimited'). Running and failed backups
    are left alone. --prune (or gc afterwards) deletes the chunks no backup uses any more.

    \b
    Examples:
      enigma forget 3f2a 9c01 && enigma gc
      enigma forget --keep-daily 7 --keep-weekly 5 --keep-monthly 12 --dry-run
      enigma forget --keep-last 3 --keep-within 30d --prune
    """
    from enigma.gc import (
        forget_backups,
        forget_by_policy,
        plan_json,
        plan_lines,
        require_gc_allowed,
        run_gc,
    )
    from enigma.retention import InvalidPolicy, Policy

    policy = Policy.from_options(last=keep_last, hourly=keep_hourly, daily=keep_daily,
                                 weekly=keep_weekly, monthly=keep_monthly, yearly=keep_yearly,
                                 within=keep_within)
    if backup_ids and not policy.empty:
        raise InvalidPolicy("give backup ids or --keep-* options, not both")
    if not backup_ids and policy.empty:
        raise InvalidPolicy("nothing to forget: give backup ids or a --keep-* policy with a "
                            "count above 0 (e.g. --keep-daily 7)")
    repo = state.repo()
    if prune and not dry_run:
        require_gc_allowed(repo)  # before anything is forgotten
    report: dict[str, Any] = {"dry_run": dry_run}
    if backup_ids:
        if dry_run:
            forgotten = [repo.manifest.get_backup(b).id for b in backup_ids]
        else:
            forgotten = forget_backups(repo, list(backup_ids))
        if not as_json:
            for backup_id in forgotten:
                click.echo(f"{'would forget' if dry_run else 'forgot'} backup {backup_id}")
    else:
        groups = forget_by_policy(repo, policy, dry_run=dry_run)
        forgotten = [d.backup.id for g in groups for d in g.remove]
        report.update(policy=str(policy), groups=plan_json(groups))
        if not as_json:
            click.echo(f"policy: {policy}")
            for line in plan_lines(groups, dry_run=dry_run):
                click.echo(line)
            click.echo(f"{'would forget' if dry_run else 'forgot'} {len(forgotten)} backups")
    report["forgotten"] = forgotten
    if prune and not dry_run and forgotten:
        from enigma.progress_display import open_progress

        with open_progress("gc", quiet=state.quiet) as progress:
            result = run_gc(repo, progress=progress)
        report["gc"] = asdict(result)
        if not as_json:
            click.echo(gc_summary(result))
    if forgotten and not dry_run:
        mirror_snapshot(repo)
    if as_json:
        echo_json(report)


@cli.command()
@click.option("--dry-run", is_flag=True, help="Only report what would be deleted.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_state
def gc(state: State, dry_run: bool, as_json: bool) -> None:
    """Delete chunks no backup uses, and objects the manifest does not know.

    \b
    Example: enigma gc --dry-run
    """
    from enigma.gc import run_gc
    from enigma.progress_display import open_progress

    with open_progress("gc", quiet=state.quiet) as progress:
        result = run_gc(state.repo(), dry_run=dry_run, progress=progress)
    if not dry_run:
        mirror_snapshot(state.repo())
    if as_json:
        echo_json(asdict(result))
        return
    click.echo(gc_summary(result))


def gc_summary(result: Any) -> str:
    """gc's one-line outcome (``enigma gc`` and ``enigma forget --prune``)."""
    verb = "would delete" if result.dry_run else "deleted"
    return (f"gc: {verb} {result.chunks} unreferenced chunks ({human(result.bytes)}), "
            f"{result.packs} emptied and {result.repacked} repacked packs, "
            f"{result.orphans} orphan objects, "
            f"{len(result.stale_backups)} interrupted backups")


@cli.command()
@click.option("--dry-run", is_flag=True, help="Only report what would be rebuilt.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_state
def repair(state: State, dry_run: bool, as_json: bool) -> None:
    """Rebuild missing or damaged copies and shards of every chunk.

    Reads each chunk from every provider it lists; what is missing or fails its check is
    rebuilt from the sound copies or shards, in place, or on another healthy provider when
    its provider was taken out of the config. Exit code 1 if a chunk cannot be made whole.

    \b
    Example: enigma repair --dry-run
    """
    from enigma.lock import repository_lock
    from enigma.progress_display import open_progress
    from enigma.repair import run_repair

    repo = state.repo()
    repo.require_readable()
    with repository_lock(repo.config.config_dir, exclusive=False), \
            open_progress("repair", quiet=state.quiet) as progress:
        result = run_repair(repo, dry_run=dry_run, progress=progress)
    if result.moved and not dry_run:  # chunk locations changed in the manifest
        mirror_snapshot(repo)
    if as_json:
        echo_json({**asdict(result), "ok": result.ok})
    else:
        for chunk, error in result.failed.items():
            click.echo(f"unrepaired chunk {chunk}: {error}", err=True)
        verb = "would rebuild" if dry_run else "rebuilt"
        click.echo(f"repair: {result.chunks} chunks checked, {result.healthy} healthy, "
                   f"{result.repaired} {verb} ({result.objects} objects, {result.moved} "
                   f"moved to another provider), {len(result.failed)} failed")
    if not result.ok:
        raise EnigmaError(f"repair: {len(result.failed)} of {result.chunks} chunks could not "
                          "be made whole")


@cli.command("encrypt-cred")
@click.argument("value", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the token as JSON.")
@pass_state
def encrypt_cred(state: State, value: str | None, as_json: bool) -> None:
    """Encrypt a credential for enigma.toml; prints an enc: token.

    Without VALUE it is read from stdin (or asked for, hidden), keeping it out of shell
    history.

    \b
    Examples:
      enigma encrypt-cred            # then paste the secret
      printf %s "$SECRET" | enigma encrypt-cred --json
    """
    from enigma import crypto

    if value is None:
        value = (click.prompt("Value", hide_input=True, err=True) if sys.stdin.isatty()
                 else sys.stdin.readline().rstrip("\n"))
    if not value:
        raise ConfigError("nothing to encrypt: give VALUE or pipe it on stdin")
    repo = state.repo()
    token = crypto.encrypt_credential(repo.keys.credential_key, value)
    if as_json:
        echo_json({"token": token})
    else:
        click.echo(token)


@cli.group()
def key() -> None:
    """Manage the repository's data keys and recipient keys.

    \b
    Examples:
      enigma key list
      enigma key rotate
      enigma key export-recipient reader.pub
    """


@key.command("rotate")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_state
def key_rotate(state: State, as_json: bool) -> None:
    """Add a new data key version; new chunks use it, old chunks stay readable.

    \b
    Example: enigma key rotate
    """
    keys = state.repo().rotate_keys()
    mirror_keystore(state.repo(), strict=False)
    if as_json:
        echo_json({"current_key_version": keys.current_key_id,
                   "key_versions": sorted(keys.data_keys)})
    else:
        click.echo(f"rotated: current key version {keys.current_key_id} "
                   f"(versions: {sorted(keys.data_keys)})")


@key.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the keys as JSON.")
@pass_state
def key_list(state: State, as_json: bool) -> None:
    """List data key versions (and recipient keys, by fingerprint).

    \b
    Example: enigma key list --json
    """
    keys = state.repo().keys
    if as_json:
        echo_json({
            "write_only": keys.write_only,
            "recipient": recipient_fingerprint(keys.recipient) if keys.write_only else None,
            "current_key_version": keys.current_key_id if keys.data_keys else None,
            "key_versions": sorted(keys.data_keys),
            "current_recipient": keys.current_recipient or None,
            "recipients": sorted(keys.recipient_seeds)})
        return
    if keys.write_only:
        click.echo(f"write-only client: no data keys; recipient "
                   f"{recipient_fingerprint(keys.recipient)}")
    for fp in sorted(keys.recipient_seeds):
        click.echo(f"recipient {fp}{'  (current)' if fp == keys.current_recipient else ''}")
    for version in sorted(keys.data_keys):
        click.echo(f"{version}{'  (current)' if version == keys.current_key_id else ''}")


@key.command("export-recipient")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--new", "new", is_flag=True,
              help="Make a new recipient key pair first (the old ones stay, for old backups).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the result (with the public key) as JSON.")
@pass_state
def key_export_recipient(state: State, file: str, new: bool, as_json: bool) -> None:
    """Write this keystore's public recipient key to FILE ('-': stdout) for write-only clients.

    The first export makes the key pair; its private half stays in this keystore.

    \b
    Examples:
      enigma key export-recipient reader.pub
      enigma key export-recipient --new reader-2025.pub   # rotate the recipient
    """
    from enigma.recipient import RecipientSecret, format_recipient

    repo = state.repo()
    keys = repo.keys
    if keys.write_only:
        raise ConfigError("a write-only client holds no recipient key; export it from the "
                          "reader's keystore")
    if file != "-" and os.path.lexists(file):
        raise ConfigError(f"{file} exists; refusing to replace it")
    new_pair = new or not keys.current_recipient
    if new_pair:
        keys = repo.new_recipient()
        mirror_keystore(repo, strict=False)
    public = RecipientSecret(keys.recipient_seeds[keys.current_recipient]).public_key()
    text = format_recipient(public)
    if file == "-":
        if not as_json:
            click.echo(text, nl=False)
    else:
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
    if as_json:
        echo_json({"recipient": keys.current_recipient, "new": new_pair,
                   "file": None if file == "-" else os.path.abspath(file),
                   "public_key": text})
        return
    note(f"recipient {keys.current_recipient}"
         + ("" if file == "-" else f" written to {file}"))


@key.command("set-recipient")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_state
def key_set_recipient(state: State, file: str, as_json: bool) -> None:
    """Write-only client: seal the data keys of future backups to another recipient key.

    \b
    Example: enigma key set-recipient reader-2025.pub
    """
    public_key = read_recipient_file(file)
    repo = state.repo()
    repo.set_recipient(public_key)
    mirror_keystore(repo, strict=False)
    repo.publish_writer_key()
    if as_json:
        echo_json({"recipient": recipient_fingerprint(public_key)})
    else:
        click.echo(f"recipient {recipient_fingerprint(public_key)}: new backups are sealed "
                   "to it")


def read_recipient_file(path: str) -> bytes:
    """The public key in a recipient key file (one-line error when it is not one)."""
    from enigma.recipient import parse_recipient

    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read(64 * 1024)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read recipient key {path}: "
                          f"{getattr(exc, 'strerror', None) or 'not text'}") from None
    return parse_recipient(text, f"recipient key {path}")


def recipient_fingerprint(public_key: bytes) -> str:
    from enigma.recipient import fingerprint

    return fingerprint(public_key).hex()


@cli.command()
@click.option("--force", is_flag=True, help="Replace a manifest that already holds backups.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_state
def recover(state: State, force: bool, as_json: bool) -> None:
    """Rebuild a lost machine's keystore and manifest from the storage providers.

    Run it where the config directory holds only enigma.toml (listing the providers),
    with the passphrase. The newest manifest snapshot that checks out is installed, older
    ones are tried when it does not; with none usable the chunk index is rebuilt from the
    stored chunks (backup and file lists are lost; new backups still deduplicate).

    \b
    Example: enigma --config-dir ~/.enigma recover
    """
    from enigma.progress_display import open_progress
    from enigma.recover import run_recover

    repo = state.repo()
    if repo.key_provider.needs_passphrase:
        state.passphrase = state.ask_passphrase(confirm=False)  # asked once, used twice
    with open_progress("recover", quiet=state.quiet) as progress:
        result = run_recover(repo, state.passphrase, force=force, progress=progress)
    if as_json:
        echo_json(asdict(result))
        return
    note(f"keys: {result.keystore} (key versions {result.key_versions})")
    for label, error in result.unreachable.items():
        warn(f"provider '{label}' could not be read: {error}")
    for skip in result.skipped:
        click.echo(f"skipped snapshot {skip.what} on provider '{skip.provider}': "
                   f"{skip.reason}", err=True)
    if result.snapshot:
        for label in result.unknown_providers:
            warn(f"the manifest has chunks on provider '{label}', which enigma.toml does "
                 "not configure")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(result.snapshot_created))
        click.echo(f"recovered the manifest from snapshot {result.snapshot} (provider "
                   f"'{result.snapshot_provider}', made {when}): {result.backups} backups, "
                   f"{result.chunks} chunks")
        return
    for damaged in result.damaged[:20]:
        click.echo(f"skipped chunk {damaged.what[:12]} (on provider '{damaged.provider}'): "
                   f"{damaged.reason}", err=True)
    if len(result.damaged) > 20:
        click.echo(f"... and {len(result.damaged) - 20} more damaged chunks", err=True)
    click.echo("warning: no usable manifest snapshot: the backup and file lists could not "
               "be recovered; run a backup before any gc (gc deletes chunks no backup uses)",
               err=True)
    click.echo(f"rebuilt the chunk index: {result.chunks} chunks authenticated, "
               f"{len(result.damaged)} damaged chunks skipped; new backups deduplicate "
               "against them")


def refuse_existing_repository(repo: Repository) -> None:
    """init must not make new keys where the backends already hold a repository's."""
    from enigma.recovery import remote_keystore_holders

    holders = remote_keystore_holders(repo)
    if holders:
        raise ConfigError(f"provider '{holders[0]}' already holds a repository's keystore "
                          "(keys/keystore); to use that repository here run: enigma recover")


def mirror_keystore(repo: Repository, *, strict: bool) -> None:
    """Copy the keystore file into every backend (init: a failure stops; rotate: warns)."""
    from enigma.recovery import store_keystore

    result = store_keystore(repo)
    for error in (result.failed.values() if result else ()):
        if strict:
            raise StorageError(f"cannot store keys/keystore: {error}")
        warn(f"keystore copy not stored: {error} (enigma init retries)")


def mirror_snapshot(repo: Repository) -> None:
    """After a command changed the manifest: a sealed copy into every backend. A failure is
    a warning: the command's own work is done and the next snapshot will cover it."""
    from enigma.recovery import store_snapshot

    try:
        result = store_snapshot(repo)
    except (EnigmaError, OSError) as exc:
        warn(f"manifest snapshot not stored: {exc}")
        return
    for error in result.failed.values():
        warn(f"manifest snapshot not stored: {error}")
    if result.stored:
        note(f"manifest snapshot {result.name} stored on {len(result.stored)} of "
             f"{len(result.stored) + len(result.failed)} providers")


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print the plugins as JSON.")
@pass_state
def list_plugins(state: State, as_json: bool) -> None:
    """List installed plugins, what they provide and any load errors.

    \b
    Example: enigma plugins --json
    """
    rows = state.plugins.describe()
    if as_json:
        echo_json([asdict(r) for r in rows])
        return
    click.echo(f"{'DISTRIBUTION':<24}  {'VERSION':<8}  PROVIDES")
    for row in rows:
        provides = "; ".join(f"{kind}: {', '.join(names)}"
                             for kind, names in sorted(row.provides.items())) or "-"
        click.echo(f"{row.name:<24}  {row.version:<8}  {provides}")
        for error in row.errors:
            click.echo(f"{'':<24}  {'':<8}  ERROR: {error}")


@cli.command()
@pass_state
def serve(state: State) -> None:
    """Run the installed server plugins (e.g. the S3 gateway from enigma-gateway-s3).

    \b
    Example: enigma serve
    """
    plugins = state.plugins
    names = plugins.available("server")
    if not names:
        raise PluginError("no server plugin installed; install the S3 gateway with: "
                          "pip install enigma-gateway-s3")
    repo = state.repo()
    chosen = []
    for name in names:
        cls = plugins.get("server", name)
        options = repo.config.server_options(cls.config_table) if cls.config_table else None
        if options is not None or len(names) == 1:
            chosen.append((cls, options or {}))
    if len(chosen) != 1:
        raise ConfigError(f"several servers are installed ({', '.join(names)}); enable one "
                          "by adding its table to enigma.toml")
    cls, options = chosen[0]
    repo.serving = True
    cls().serve(repo, options)


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL (bash 4.4+, zsh, fish).

    \b
    Examples:
      eval "$(enigma completion bash)"        # in ~/.bashrc
      enigma completion zsh > "${fpath[1]}/_enigma"
      enigma completion fish > ~/.config/fish/completions/enigma.fish
    """
    from click.shell_completion import get_completion_class

    complete = get_completion_class(shell)
    if complete is None:  # click.Choice lets only shells click knows through
        raise ConfigError(f"no completion for {shell}")
    click.echo(complete(cli, {}, "enigma", "_ENIGMA_COMPLETE").source())


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"enigma: error: {message}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: plugins add commands, every error becomes one line."""
    # Worker threads hand the GIL back and forth on every small file's syscalls; a shorter
    # switch interval than the default 5 ms cut a 10,000-small-file backup by ~17 % here.
    sys.setswitchinterval(0.0005)
    limit_malloc_arenas()  # before any worker thread starts (see enigma.memory)
    state = State()
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        try:
            state.plugins.pm.hook.register_commands(cli=cli)
        except Exception as exc:
            if debug:
                traceback.print_exc()
            click.echo(f"enigma: warning: a plugin's register_commands failed: {exc}",
                       err=True)
        code = cli.main(args=argv, prog_name="enigma", obj=state, standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except click.exceptions.Abort:
        fail("aborted", 130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except EnigmaError as exc:
        if debug:
            traceback.print_exc()
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except OSError as exc:
        if debug:
            traceback.print_exc()
        where = f": {exc.filename}" if exc.filename else ""
        fail(f"{exc.strerror or exc}{where}")
    except Exception as exc:  # a bug: still one line, unless --debug
        if debug:
            traceback.print_exc()
        fail(f"internal error: {type(exc).__name__}: {exc} (run with --debug for details)")
    finally:
        state.close()


if __name__ == "__main__":
    main()
