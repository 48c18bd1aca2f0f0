"""What an indexing run must do: the folder's files compared with what the store holds (no model).

A pure function of two listings, so the rules are tested without embedding anything: a file is
new, changed (size or mtime differ), unchanged, known bad (it failed before and has not changed
since; a failure that can pass, :attr:`~cbir.core.records.Skipped.transient`, is retried every run),
or gone from the folder.
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
    unsure: list[str] = field(default_factory=list)
    """Files and folders (``/``-ended) that could not be read this run for a reason that can pass:
    their rows are kept (they may be there still), and they are looked at again next run."""

    @property
    def todo(self) -> list[Entry]:
        """The files to embed, in folder order."""
        return sorted(self.new + self.changed, key=lambda e: e.path)

    @property
    def dropped(self) -> list[str]:
        """Rows to drop: files gone from the folder and changed files (re-embedded as new rows)."""
        return self.removed + [e.path for e in self.changed]


@dataclass
class Listing:
    """The folder as one run sees it: each file's stat, and what could not be read, with why."""

    stats: dict[str, Entry] = field(default_factory=dict)
    failed: list[dict[str, str]] = field(default_factory=list)
    unsure: list[str] = field(default_factory=list)  # failed for a reason that can pass (Plan.unsure)

    def unlisted(self, rel: str, error: OSError) -> None:
        """A folder (``rel`` ending in ``/``) or entry that :func:`~cbir.ingest.files.find_images`
        could not read: reported like an unreadable file."""
        what = "cannot list the folder" if rel.endswith("/") else "cannot read"
        self.failed.append({"path": rel, "reason": f"{what} ({error.strerror or error})"})
        self.unsure.append(rel)


def stat_files(root: Path, files: Iterable[str], listing: Listing | None = None) -> Listing:
    """The size and mtime of each file (into ``listing``); files that cannot be stat-ed, or whose
    names hold control characters (a newline in a name would forge lines of every listing), are
    listed with the reason."""
    listing = listing if listing is not None else Listing()
    stats, failed = listing.stats, listing.failed
    for rel in files:
        if CONTROL.search(rel):
            shown = CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", rel)
            failed.append({"path": shown, "reason": "a control character in its name; rename it to index it"})
            continue
        try:
            st = os.stat(root / rel)
        except OSError as exc:
            failed.append({"path": rel, "reason": f"cannot stat ({exc.strerror})"})
            listing.unsure.append(rel)
            continue
        stats[rel] = Entry(rel, st.st_size, st.st_mtime_ns)
    return listing


def make_plan(
    found: Mapping[str, Entry],
    held: Mapping[str, Entry],
    bad: Mapping[str, Skipped],
    unreadable: Iterable[dict[str, str]] = (),
    unsure: Iterable[str] = (),
) -> Plan:
    """Compare the folder (``found``) with the store (``held`` rows, ``bad`` remembered failures);
    rows of files under ``unsure`` (:attr:`Plan.unsure`) are kept, not removed."""
    plan = Plan(unreadable=list(unreadable), unsure=list(unsure))
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
    files = set(plan.unsure)
    folders = tuple(u for u in plan.unsure if u.endswith("/"))
    plan.removed = [
        rel for rel in held if rel not in found and rel not in files and not rel.startswith(folders)
    ]
    return plan
