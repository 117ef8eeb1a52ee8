"""What the pages show, read from the manifest (no HTML here, no writes anywhere).

Ratios, defined once so the page's tooltips can quote them, and as ``enigma backup``
computes them for its summary (``BackupStats.add_figures``), so both show the same figure;
they are worked out here from the counts, so older and running backups have them too:

- dedup ratio = ``bytes_read / bytes_new``: plaintext read from new and changed files per
  byte of new chunk data stored. 1.0 for unique data; unchanged files (skipped by the file
  cache, never read) count in neither, and a backup that read nothing shows "-".
- compression ratio = ``bytes_new / bytes_stored``: plaintext of the new chunks per sealed
  byte stored for one copy of them (zstd when it pays; sealing adds a few dozen bytes per
  chunk, so incompressible data shows just under 1.0).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enigma.backup import stored_path
from enigma.errors import NotFoundError
from enigma.manifest import BackupRecord, FileEntry, LogEntry, Manifest
from enigma_gateway_s3.dashboard import formats

DEDUP_FORMULA = "dedup ratio = bytes_read / bytes_new (bytes read from new and changed " \
                "files per byte of new chunk data stored)"
COMPRESSION_FORMULA = "compression ratio = bytes_new / bytes_stored (plaintext of the new " \
                      "chunks per sealed byte stored, one copy)"
#: The BackupStats fields, in the order the detail page lists them (others follow).
STATS_ORDER = ("files", "dirs", "symlinks", "files_new", "files_changed", "files_unchanged",
               "bytes_total", "bytes_read", "chunks", "chunks_new", "bytes_new",
               "bytes_stored", "bytes_uploaded", "chunks_resumed", "skipped", "errors",
               "seconds")
#: Children of one folder shown at most (the manifest reads one index seek per child).
FOLDER_LIMIT = 2000
#: Newest backup-log lines shown on the detail page.
LOG_LIMIT = 500


def _number(stats: dict[str, Any], key: str) -> int | None:
    value = stats.get(key)
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _ratio(top: int | None, bottom: int | None) -> float | None:
    if top is None or bottom is None:
        return None
    return top / bottom if bottom else None


@dataclass
class BackupSummary:
    """One row of the backups list (and the head of the detail page)."""

    record: BackupRecord
    files: int | None
    bytes_total: int | None
    bytes_new: int | None
    bytes_stored: int | None
    dedup: float | None
    compression: float | None
    duration: float | None

    @classmethod
    def of(cls, record: BackupRecord, now: float) -> BackupSummary:
        stats = record.stats if isinstance(record.stats, dict) else {}
        total, new = _number(stats, "bytes_total"), _number(stats, "bytes_new")
        read, stored = _number(stats, "bytes_read"), _number(stats, "bytes_stored")
        if record.finished_at is not None:
            took: float | None = max(record.finished_at - record.created_at, 0.0)
        elif record.status == "running":
            took = max(now - record.created_at, 0.0)
        else:
            took = _number(stats, "seconds")
        return cls(record, _number(stats, "files"), total, new, stored, _ratio(read, new),
                   _ratio(new, stored), took)

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def running(self) -> bool:
        return self.record.status == "running"

    def cells(self) -> dict[str, str]:
        """The live-refreshed cells of a running backup, formatted as the page shows them."""
        return {"status": self.record.status, "files": formats.count(self.files),
                "bytes_total": formats.size(self.bytes_total),
                "bytes_new": formats.size(self.bytes_new), "dedup": formats.ratio(self.dedup),
                "compression": formats.ratio(self.compression),
                "duration": formats.duration(self.duration)}


def backups(manifest: Manifest) -> list[BackupSummary]:
    """Every backup, newest first."""
    now = time.time()
    return [BackupSummary.of(r, now) for r in reversed(manifest.list_backups())]


def running(manifest: Manifest) -> list[dict[str, Any]]:
    """The running backups' live cells (the JSON the backups page polls)."""
    return [{"id": s.id, "cells": s.cells()} for s in backups(manifest) if s.running]


def stats_rows(stats: dict[str, Any]) -> list[tuple[str, str]]:
    """A backup's stats as (name, shown value), BackupStats' fields first."""
    keys = [k for k in STATS_ORDER if k in stats] + sorted(k for k in stats
                                                          if k not in STATS_ORDER)
    rows = []
    for key in keys:
        value = stats[key]
        if key.startswith("bytes_") and isinstance(value, int):
            shown = f"{formats.size(value)} ({value:,} bytes)"
        elif key == "seconds" and isinstance(value, int | float):
            shown = formats.duration(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            shown = f"{value:,}"
        elif value is None:
            shown = "-"
        elif isinstance(value, dict):  # per-provider counts
            shown = ", ".join(f"{k}: {v}" for k, v in sorted(value.items())) or "none"
        else:
            shown = str(value)
        rows.append((key, shown))
    return rows


class BadPath(NotFoundError):
    """A browser path that no backup can hold ('..', '.', empty parts): a plain 404."""


def clean_path(path: str) -> str:
    """A folder or file path from a URL, checked: no '.', '..' or empty parts."""
    if path in ("", "/"):
        return ""
    parts = path.strip("/").split("/")
    if any(part in ("", ".", "..") or "\x00" in part for part in parts):
        raise BadPath("no such path in this backup")
    return "/".join(parts)


@dataclass
class Child:
    """A row of the folder listing."""

    name: str
    path: str
    entry: FileEntry | None  # None: a folder implied by deeper paths (a source's parents)

    @property
    def is_dir(self) -> bool:
        return self.entry is None or self.entry.type == "dir"

    @property
    def kind(self) -> str:
        return "dir" if self.entry is None else self.entry.type


@dataclass
class Folder:
    """A folder of a backup: its breadcrumbs and children (folders first)."""

    path: str
    crumbs: list[tuple[str, str]]  # (name, path) from the top down to this folder
    children: list[Child] = field(default_factory=list)
    truncated: bool = False


def folder(manifest: Manifest, backup_id: str, path: str) -> Folder:
    """The children of ``path`` (already cleaned); NotFoundError if it is no folder."""
    listed = manifest.list_dir(backup_id, path, limit=FOLDER_LIMIT + 1)
    if not listed and path:
        entry = file_entry(manifest, backup_id, path, kind=None)
        if entry is None or entry.type != "dir":
            raise NotFoundError(f"no folder {path!r} in this backup")
    children = [Child(name, f"{path}/{name}" if path else name, entry)
                for name, entry in listed[:FOLDER_LIMIT]]
    children.sort(key=lambda c: (not c.is_dir, c.name))
    crumbs = [("", "")]
    parts = path.split("/") if path else []
    crumbs += [(part, "/".join(parts[:i + 1])) for i, part in enumerate(parts)]
    return Folder(path, crumbs, children, len(listed) > FOLDER_LIMIT)


def file_entry(manifest: Manifest, backup_id: str, path: str,
               kind: str | None = "file") -> FileEntry | None:
    """The entry at exactly ``path`` (of type ``kind`` unless None), with its chunks."""
    entries = manifest.iter_files(backup_id, path)
    try:
        entry = next(entries, None)
    finally:
        entries.close()  # type: ignore[attr-defined]
    if entry is None or entry.path != path or (kind is not None and entry.type != kind):
        return None
    return entry


def source_paths(record: BackupRecord) -> list[str]:
    """Where each source of a backup sits in its tree."""
    return [stored_path(Path(s)) for s in record.sources]


def log_tail(manifest: Manifest, backup_id: str) -> tuple[list[LogEntry], int]:
    """The newest ``LOG_LIMIT`` log lines of a backup and how many there are in all."""
    entries = manifest.backup_log(backup_id)
    return entries[-LOG_LIMIT:], len(entries)


def cluster(manifest: Manifest) -> dict[str, Any] | None:
    """Raft state for the cluster page (None: a single node), with lags worked out."""
    status = manifest.cluster_status()
    if status is None:
        return None
    commit = status.get("commit_index") or 0
    applied = status.get("last_applied") or 0
    peers = sorted((peer, match, max(commit - (match or 0), 0))
                   for peer, match in (status.get("peers_match_index") or {}).items())
    return {**status, "apply_lag": commit - applied, "peers": peers}
