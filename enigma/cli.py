"""The ``enigma`` command line: thin click commands over the repository and pipeline modules.

Every failure a user can cause ends as one line on stderr and a non-zero exit; a
traceback appears only with ``--debug``.
"""

from __future__ import annotations

import json
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
        self._repo: Repository | None = None

    @property
    def plugins(self) -> PluginManager:
        if self._plugins is None:
            self._plugins = PluginManager()
        return self._plugins

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
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


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
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(__version__, prog_name="enigma")
@click.pass_context
def cli(ctx: click.Context, config_dir: str | None, passphrase: str | None,
        debug: bool) -> None:
    """Enigma: encrypted, deduplicated backups spread over several clouds.

    \b
    Quick start (local storage under ~/.enigma):
      enigma init
      enigma backup ~/Documents
      enigma list
      enigma restore <ID> /tmp/restored
    """
    state = ctx.ensure_object(State)
    state.config_dir = config_dir_from(config_dir)
    state.passphrase = passphrase
    state.debug = debug


@cli.command()
@pass_state
def init(state: State) -> None:
    """Create the config, keystore, manifest and storage (safe to run again).

    \b
    Example: enigma --config-dir ~/.enigma init
    """
    ensure_private_dir(state.config_dir)
    config_path = state.config_dir / CONFIG_FILE
    if not config_path.exists():
        fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(DEFAULT_CONFIG_TEXT)
        click.echo(f"created config {config_path}", err=True)
    repo = state.repo()
    provider = repo.key_provider
    if provider.exists():
        keys = repo.keys
        click.echo(f"keys exist and unlock (key versions: {sorted(keys.data_keys)})",
                   err=True)
    else:
        repo.create_keys()
        click.echo(f"created keys with key provider '{provider.name}'", err=True)
    repo.chunker, repo.compressor, repo.distribution  # noqa: B018 - config errors now
    repo.manifest  # noqa: B018 - creates and migrates the manifest
    click.echo(f"manifest {repo.config.db_path}", err=True)
    for label, storage in repo.providers.items():
        try:
            created = storage.create_bucket()
            storage.check()
        except StorageError as exc:
            raise StorageError(f"provider '{label}': {exc}") from exc
        click.echo(f"provider '{label}' ({storage.name}): "
                   f"{'created' if created else 'ready'}", err=True)
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
    listed, and recorded in the backup log).

    \b
    Example: enigma backup ~/Documents ~/Pictures
    """
    from enigma.backup import run_backup
    from enigma.lock import repository_lock

    state: State = ctx.obj
    repo = state.repo()
    with repository_lock(repo.config.config_dir, exclusive=False):
        result = run_backup(repo, list(paths), force=force)
    s = result.stats
    if as_json:
        echo_json({"backup_id": result.backup_id, "status": result.status,
                   "stats": asdict(s), "problems": result.problems})
    else:
        for problem in result.problems[:20]:
            click.echo(f"warning: {problem}", err=True)
        if len(result.problems) > 20:
            click.echo(f"... and {len(result.problems) - 20} more (see the backup log)",
                       err=True)
        rate = s.bytes_read / s.seconds / 1e6 if s.seconds else 0.0
        click.echo(f"backup {result.status}: {s.files} files ({s.files_new} new, "
                   f"{s.files_changed} changed, {s.files_unchanged} unchanged), {s.dirs} dirs, "
                   f"{s.symlinks} symlinks; {human(s.bytes_read)} read, {s.chunks_new} new "
                   f"chunks, {human(s.bytes_uploaded)} uploaded; {s.seconds:.2f} s "
                   f"({rate:.1f} MB/s)", err=True)
        click.echo(result.backup_id)
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
        click.echo("no backups yet (run: enigma backup PATH)", err=True)
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
    repo = state.repo()
    manifest = repo.manifest
    chunks, plain, stored = manifest.chunk_totals()
    per_provider = manifest.chunk_stats()
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
        row["chunks"], row["bytes"] = count, size
        providers.append(row)
    info = {
        "config_dir": str(repo.config.config_dir), "manifest": str(repo.config.db_path),
        "schema_version": manifest.schema_version(), "backups": len(manifest.list_backups()),
        "chunks": chunks, "bytes_plain": plain, "bytes_stored": stored,
        "key_provider": repo.config.key_provider, "distribution": repo.config.distribution,
        "providers": providers,
    }
    if as_json:
        echo_json(info)
        return
    click.echo(f"repository   {info['config_dir']}")
    click.echo(f"manifest     {info['manifest']} (schema {info['schema_version']})")
    click.echo(f"key provider {info['key_provider']}, distribution {info['distribution']}")
    click.echo(f"backups      {info['backups']}")
    click.echo(f"chunks       {chunks} ({human(plain)} unique data, {human(stored)} stored)")
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
    from enigma.verify import run_verify

    state: State = ctx.obj
    result = run_verify(state.repo(), backup_id)
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
    result = run_restore(repo, backup_id, dest, prefix=prefix, glob=glob, overwrite=overwrite)
    if as_json:
        echo_json({**asdict(result), "ok": result.ok})
    else:
        for line in result.refused:
            click.echo(f"refused: {line}", err=True)
        for line in result.damaged:
            click.echo(f"damaged: {line}", err=True)
        click.echo(f"restored {result.files} files, {result.dirs} dirs, {result.symlinks} "
                   f"symlinks ({human(result.bytes)}) into {os.path.abspath(dest)}", err=True)
    if not result.ok:
        raise EnigmaError(f"restore incomplete: {len(result.damaged)} damaged, "
                          f"{len(result.refused)} refused")


@cli.command()
@click.argument("backup_ids", nargs=-1, required=True)
@pass_state
def forget(state: State, backup_ids: tuple[str, ...]) -> None:
    """Delete backups from the manifest; run gc afterwards to free their chunks.

    \b
    Example: enigma forget 3f2a 9c01 && enigma gc
    """
    from enigma.gc import forget_backups

    for backup_id in forget_backups(state.repo(), list(backup_ids)):
        click.echo(f"forgot backup {backup_id}")


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

    result = run_gc(state.repo(), dry_run=dry_run)
    if as_json:
        echo_json(asdict(result))
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"gc: {verb} {result.chunks} unreferenced chunks ({human(result.bytes)}), "
               f"{result.orphans} orphan objects, {len(result.stale_backups)} interrupted "
               "backups")


@cli.command("encrypt-cred")
@click.argument("value", required=False)
@pass_state
def encrypt_cred(state: State, value: str | None) -> None:
    """Encrypt a credential for enigma.toml; prints an enc: token.

    Without VALUE it is read from stdin (or asked for, hidden), keeping it out of shell
    history.

    \b
    Example: enigma encrypt-cred  # then paste the secret
    """
    from enigma import crypto

    if value is None:
        value = (click.prompt("Value", hide_input=True, err=True) if sys.stdin.isatty()
                 else sys.stdin.readline().rstrip("\n"))
    if not value:
        raise ConfigError("nothing to encrypt: give VALUE or pipe it on stdin")
    repo = state.repo()
    click.echo(crypto.encrypt_credential(repo.keys.credential_key, value))


@cli.group()
def key() -> None:
    """Manage the repository's data keys."""


@key.command("rotate")
@pass_state
def key_rotate(state: State) -> None:
    """Add a new data key version; new chunks use it, old chunks stay readable.

    \b
    Example: enigma key rotate
    """
    keys = state.repo().rotate_keys()
    click.echo(f"rotated: current key version {keys.current_key_id} "
               f"(versions: {sorted(keys.data_keys)})")


@key.command("list")
@pass_state
def key_list(state: State) -> None:
    """List data key versions.

    \b
    Example: enigma key list
    """
    keys = state.repo().keys
    for version in sorted(keys.data_keys):
        click.echo(f"{version}{'  (current)' if version == keys.current_key_id else ''}")


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
