"""Retention policies with restic's semantics: which backups ``enigma forget`` keeps, and why.

Pure: backup records and a clock in, decisions out; no manifest, no I/O, so each rule is
tested against hand-computed cases (restic's ``doc/060_forget.rst``). The rules:

- backups are grouped by their set of source paths (restic groups by host and paths;
  one manifest is one machine's) and each group is judged on its own;
- ``--keep-last N`` keeps the N newest; ``--keep-hourly/daily/weekly/monthly/yearly N``
  walk newest first and keep the newest backup of each of the last N hours/days/ISO
  weeks/months/years that have one, on calendar boundaries in local time;
- when a ``--keep-*`` count is not used up, the group's oldest backup is kept as well
  ("oldest daily"), so a young repository keeps the longest history the policy allows;
- ``--keep-within 1y5m7d2h`` keeps every backup newer than that span before the newest
  backup (backups dated in the future are never the reference, and are kept);
- a backup kept by any rule stays; ``unlimited`` means keep all for that rule.

Only finished backups (complete or partial) take part: a running one may still be
written, and a failed one must not displace a good backup from its day; both are left
alone (``enigma forget ID`` removes them, ``enigma gc`` removes interrupted ones).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo

from enigma.errors import EnigmaError
from enigma.manifest import BackupRecord

#: A ``--keep-*`` count meaning "no limit" (restic's ``unlimited``).
UNLIMITED = -1
#: Backup states a policy judges; the others are never kept or removed by it.
JUDGED = ("complete", "partial")

_DURATION = re.compile(r"(\d+)([ymdh])")
_NOTHING = object()


class InvalidPolicy(EnigmaError):
    """A ``--keep-*`` value or duration is malformed, or the policy keeps nothing."""


@dataclass(frozen=True)
class Duration:
    """restic's calendar duration: years, months, days and hours, e.g. ``1y5m7d2h``."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    @classmethod
    def parse(cls, text: str) -> Duration:
        """``2y5m7d3h``, each unit at most once, in any order; a bare number is an error."""
        parts = _DURATION.findall(text)
        units = [unit for _n, unit in parts]
        if (not parts or "".join(n + u for n, u in parts) != text
                or len(set(units)) != len(units)):
            raise InvalidPolicy(f"invalid duration {text!r}: use a number of years, months, "
                                "days and hours, e.g. 1y5m7d2h (1w is not a unit: use 7d)")
        values = {unit: int(n) for n, unit in parts}
        return cls(values.get("y", 0), values.get("m", 0), values.get("d", 0),
                   values.get("h", 0))

    def __str__(self) -> str:
        text = "".join(f"{n}{u}" for n, u in ((self.years, "y"), (self.months, "m"),
                                               (self.days, "d"), (self.hours, "h")) if n)
        return text or "0h"

    def before(self, moment: datetime) -> float:
        """The epoch time this long before ``moment``, calendar-aware like Go's AddDate:
        the date part moves by years, months and days on the wall clock (Jan 31 minus 2
        months is Dec 1, as in restic), then the hours as elapsed time."""
        month_index = moment.year * 12 + moment.month - 1 - self.years * 12 - self.months
        year, month0 = divmod(month_index, 12)
        if year < 1:
            return float("-inf")
        shifted = moment.replace(year=year, month=month0 + 1, day=1)
        shifted += timedelta(days=moment.day - 1 - self.days)
        return shifted.timestamp() - self.hours * 3600


def parse_count(text: str | None, option: str) -> int:
    """A ``--keep-*`` count: a non-negative integer or ``unlimited``; None means 0."""
    if text is None:
        return 0
    if text.strip().lower() == "unlimited":
        return UNLIMITED
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise InvalidPolicy(f"{option} {text!r}: give a number >= 0 or 'unlimited'")
    return value


#: Calendar buckets (restic's bucker functions): two backups in the same bucket compete.
_BUCKETS: tuple[tuple[str, Callable[[datetime, int], object]], ...] = (
    ("last", lambda _d, nr: nr),
    ("hourly", lambda d, _nr: (d.year, d.month, d.day, d.hour)),
    ("daily", lambda d, _nr: (d.year, d.month, d.day)),
    ("weekly", lambda d, _nr: tuple(d.isocalendar())[:2]),
    ("monthly", lambda d, _nr: (d.year, d.month)),
    ("yearly", lambda d, _nr: d.year),
)


@dataclass(frozen=True)
class Policy:
    """How many backups each rule keeps (0: rule off, UNLIMITED: no limit)."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Duration | None = None

    @classmethod
    def from_options(cls, *, within: str | None = None, **counts: str | None) -> Policy:
        """The policy the ``--keep-*`` options describe (their text, None when absent)."""
        values = {name: parse_count(text, f"--keep-{name}") for name, text in counts.items()}
        span = Duration.parse(within) if within is not None else None
        return cls(**values, within=span if span != Duration() else None)  # 0h: rule off

    def counts(self) -> dict[str, int]:
        return {"last": self.last, "hourly": self.hourly, "daily": self.daily,
                "weekly": self.weekly, "monthly": self.monthly, "yearly": self.yearly}

    @property
    def empty(self) -> bool:
        """True when no rule is on: restic refuses such a policy, and so do we."""
        return not any(self.counts().values()) and self.within is None

    def __str__(self) -> str:
        rules = [f"{'all' if n == UNLIMITED else n} {'latest' if name == 'last' else name}"
                 for name, n in self.counts().items() if n]
        if self.within is not None:
            rules.append(f"all within {self.within} of the newest")
        return "keep " + ", ".join(rules)


@dataclass
class Decision:
    """One backup and the rules that keep it; no reasons means it is removed."""

    backup: BackupRecord
    reasons: list[str] = field(default_factory=list)

    @property
    def keep(self) -> bool:
        return bool(self.reasons)


@dataclass
class GroupPlan:
    """The policy applied to one group of backups (same source paths), newest first."""

    sources: tuple[str, ...]
    keep: list[Decision] = field(default_factory=list)
    remove: list[Decision] = field(default_factory=list)
    untouched: list[BackupRecord] = field(default_factory=list)  # running or failed


def group_key(backup: BackupRecord) -> tuple[str, ...]:
    """Backups of the same set of source paths form one group (order does not matter)."""
    return tuple(sorted(set(backup.sources)))


def apply_policy(backups: Sequence[BackupRecord], policy: Policy, *, now: float,
                 tz: tzinfo | None = None) -> list[Decision]:
    """Judge one group: a decision per backup, newest first (ties: higher id first).

    ``now`` only decides which backups are "in the future" for ``within``; ``tz`` is the
    calendar's time zone (None: the machine's local time, as restic uses).
    """
    if policy.empty:
        raise InvalidPolicy("the policy keeps nothing: give at least one --keep-* option "
                            "with a count above 0 (or forget backups by id)")
    ordered = sorted(backups, key=lambda b: (b.created_at, b.id), reverse=True)
    if not ordered:
        return []
    past = [b.created_at for b in ordered if b.created_at < now]
    threshold = float("-inf")
    if policy.within is not None and past:
        threshold = policy.within.before(datetime.fromtimestamp(max(past), tz))
    counts = policy.counts()
    remaining = {name: counts[name] for name, _ in _BUCKETS}
    previous: dict[str, object] = {}
    decisions = []
    for nr, backup in enumerate(ordered):
        moment = datetime.fromtimestamp(backup.created_at, tz)
        reasons = []
        if policy.within is not None and backup.created_at > threshold:
            reasons.append(f"within {policy.within}")
        for name, bucket_of in _BUCKETS:
            if remaining[name] == 0:
                continue
            value = bucket_of(moment, nr)
            new_bucket = value != previous.get(name, _NOTHING)
            # The oldest backup stays while the rule has counts left: the longest history.
            if new_bucket or nr == len(ordered) - 1:
                reasons.append(name if new_bucket else f"oldest {name}")
                previous[name] = value
                if remaining[name] > 0:
                    remaining[name] -= 1
        decisions.append(Decision(backup, reasons))
    return decisions


def plan(backups: Sequence[BackupRecord], policy: Policy, *, now: float,
         tz: tzinfo | None = None) -> list[GroupPlan]:
    """Group the backups and judge each group; groups ordered by their source paths."""
    groups: dict[tuple[str, ...], GroupPlan] = {}
    judged: dict[tuple[str, ...], list[BackupRecord]] = {}
    for backup in backups:
        key = group_key(backup)
        group = groups.setdefault(key, GroupPlan(key))
        if backup.status in JUDGED:
            judged.setdefault(key, []).append(backup)
        else:
            group.untouched.append(backup)
    for key, members in judged.items():
        for decision in apply_policy(members, policy, now=now, tz=tz):
            (groups[key].keep if decision.keep else groups[key].remove).append(decision)
    return [groups[key] for key in sorted(groups)]
