"""What an indexing run must do: the folder's files compared with what the store holds (no model).

A pure function of two listings, so the rules are tested without embedding anything: a file is
new, changed (size or mtime differ), unchanged, known bad (it failed before and has not changed
since; a failure from an access error is retried every run), or gone from the folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cbir.core.records import CONTROL, Entry, Skipped


@dataclass
class Plan:
    """The files of one run, sorted into what to embed, what to drop and what to leave alone."""

    new: list[Entry] = field(default_factory=list)
    changed: list[Entry] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    known_bad: list[Skipped] = field(default_factory=list)
    unchanged: int = 0
    unreadable: list[dict[str, str]] = field(default_factory=list)

    @property
    def todo(self) -> list[Entry]:
        """The files to embed, in folder order."""
        return sorted(self.new + self.changed, key=lambda e: e.path)

    @property
    def dropped(self) -> list[str]:
        """Rows to drop: files gone from the folder and changed files (re-embedded as new rows)."""
        return self.removed + [e.path for e in self.changed]


def stat_files(root: Path, files: Iterable[str]) -> tuple[dict[str, Entry], list[dict[str, str]]]:
    """The size and mtime of each file; files that cannot be stat-ed, or whose names hold control
    characters (a newline in a name would forge lines of every listing), are listed with the reason."""
    stats: dict[str, Entry] = {}
    failed: list[dict[str, str]] = []
    for rel in files:
        if CONTROL.search(rel):
            shown = CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", rel)
            failed.append({"path": shown, "reason": "a control character in its name; rename it to index it"})
            continue
        try:
            st = os.stat(root / rel)
        except OSError as exc:
            failed.append({"path": rel, "reason": f"cannot stat ({exc.strerror})"})
            continue
        stats[rel] = Entry(rel, st.st_size, st.st_mtime_ns)
    return stats, failed


def make_plan(
    found: Mapping[str, Entry],
    held: Mapping[str, Entry],
    bad: Mapping[str, Skipped],
    unreadable: Iterable[dict[str, str]] = (),
) -> Plan:
    """Compare the folder (``found``) with the store (``held`` rows, ``bad`` remembered failures)."""
    plan = Plan(unreadable=list(unreadable))
    for rel, now in found.items():
        prev = held.get(rel)
        if prev is not None and (prev.size, prev.mtime_ns) == (now.size, now.mtime_ns):
            plan.unchanged += 1
            continue
        failed = bad.get(rel)
        if (
            failed is not None
            and not failed.transient
            and (failed.size, failed.mtime_ns) == (now.size, now.mtime_ns)
        ):
            plan.known_bad.append(failed)
            continue
        (plan.changed if prev is not None else plan.new).append(now)
    plan.removed = [rel for rel in held if rel not in found]
    return plan
