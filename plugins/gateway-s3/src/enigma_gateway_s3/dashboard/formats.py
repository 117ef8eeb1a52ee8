"""How numbers, times and names look on the pages (Jinja filters, also used for JSON)."""

from __future__ import annotations

import stat
import time
from urllib.parse import quote

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def size(value: int | float | None) -> str:
    """1536 -> "1.5 KiB"; None -> "-"."""
    if value is None:
        return "-"
    amount = float(value)
    for unit in _UNITS:
        if abs(amount) < 1024 or unit == _UNITS[-1]:
            return f"{int(amount)} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} {_UNITS[-1]}"  # not reached


def when(stamp: float | None) -> str:
    """A Unix time as UTC, to the second."""
    if stamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp))


def when_ns(stamp_ns: int | None) -> str:
    return when(stamp_ns / 1e9) if stamp_ns else "-"


def duration(seconds: float | None) -> str:
    """83.2 -> "1m 23s"; under a minute with one decimal."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def ratio(value: float | None) -> str:
    """A ratio to two decimals; None (nothing to divide by) -> "-"."""
    return "-" if value is None else f"{value:.2f}\u00d7"


_KINDS = {"dir": stat.S_IFDIR, "symlink": stat.S_IFLNK, "file": stat.S_IFREG}


def mode(value: int, kind: str = "file") -> str:
    """Permission bits as ``ls -l`` shows them (the type letter from ``kind`` when the
    stored mode holds only the permission bits)."""
    if not value:
        return "-"
    return stat.filemode(value if stat.S_IFMT(value) else value | _KINDS.get(kind, 0))


def count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def url_path(path: str) -> str:
    """A backup path as a URL path: every byte that is not unreserved is escaped, '/' kept."""
    return quote(path, safe="/")


FILTERS = {"size": size, "when": when, "when_ns": when_ns, "duration": duration,
           "ratio": ratio, "mode": mode, "count": count, "url_path": url_path}
