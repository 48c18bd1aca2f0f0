"""What ``cbir serve`` tells its terminal about indexing and watching, one line per thing that happened.

A line per indexing run (what it found and did, how long it took), a line per batch of changes the
watcher saw, a progress line every :data:`PROGRESS_EVERY` seconds of a long run (none for a short
one), a line when files that could not be read are tried again later, and at start the files the
index remembers as bad; nothing while the folder is idle. Bad files themselves are the indexer's
warnings (stderr, one line each with the reason), as with ``cbir index``. With ``json`` every event is
one JSON object per line instead (``{"event": ...}``), for programs.

Lines are held until :meth:`Activity.release` (called once the server printed its URL, which stays the
first line of its output), then written as they come.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from cbir.core.names import json_text, shown
from cbir.core.types import JSONDict
from cbir.indexing.watch import Changes

PROGRESS_EVERY = 15.0
"""Seconds between two progress lines of one run: a run shorter than this prints none, a long one a
few lines a minute (docs/decisions.md)."""

NAMES_SHOWN = 5
"""How many file names a line of changes or of remembered failures names before ``+N more``."""


def _names(paths: Sequence[str]) -> str:
    names = ", ".join(shown(p) for p in paths[:NAMES_SHOWN])
    return names + (f" +{len(paths) - NAMES_SHOWN} more" if len(paths) > NAMES_SHOWN else "")


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 60 else f"{int(s // 60)} min {int(s % 60):02d} s"


def run_line(report: JSONDict) -> str:
    """One indexing run (an :class:`~cbir.indexing.indexer.IndexReport` as a dict) in one line."""
    bad = len(report["skipped"])
    looked = report["added"] + report["updated"] + report["unchanged"] + report["known_bad"] + bad
    parts = [f"{report['added']} added", f"{report['updated']} changed", f"{report['removed']} removed"]
    if bad:
        parts.append(f"{bad} could not be read")
    if report["known_bad"]:
        parts.append(f"{report['known_bad']} known bad")
    line = f"index: {report['total']} images; looked at {looked} files: {', '.join(parts)}"
    line += f"; took {_seconds(report['seconds'])}"
    if report["embedded"] and report["seconds"] > 0:
        line += f" ({report['images_per_second']:.1f} img/s)"
    return line


def text_of(event: JSONDict) -> list[str]:
    """The terminal lines of one event (none for an event the logger already reports)."""
    kind = event["event"]
    if kind == "embedding":
        return [f"indexing: {event['files']} file(s) to embed"]
    if kind == "progress":
        done, total = event["done"], event["total"]
        line = f"indexing: {done} of {total} ({100 * done // max(total, 1)}%)"
        if event["per_second"]:
            line += f", {event['per_second']:.1f} img/s, about {_seconds(event['left_s'])} left"
        return [line]
    if kind == "indexed":
        lines = [run_line(event["report"])]
        known = event["report"]["known_bad_files"] if event["first"] else []
        if known:
            lines.append(f"known bad (unchanged since they failed; fix or remove them): {len(known)} file(s)")
            lines += [f"  {shown(b['path'])}: {shown(b['reason'])}" for b in known[:NAMES_SHOWN]]
            if len(known) > NAMES_SHOWN:
                lines.append(f"  ... and {len(known) - NAMES_SHOWN} more (listed on the page)")
        return lines
    if kind == "changed":
        parts = [
            f"{len(event[k])} {word}: {_names(event[k])}"
            for k, word in (("added", "new"), ("changed", "changed"), ("removed", "gone"))
            if event[k]
        ]
        return ["changes: " + "; ".join(parts)]
    if kind == "retry":
        return [
            f"{event['files']} file(s) could not be read for a reason that can pass; "
            f"trying again in {_seconds(event['in_s'])}"
        ]
    return []  # "failed": the updater's warning line says it


class Activity:
    """Writes the events of the indexer and the watcher as lines (text, or JSON with ``json``)."""

    def __init__(
        self,
        write: Callable[[str], None],
        *,
        json: bool = False,
        every: float = PROGRESS_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.write, self.json, self.every, self.clock = write, json, every, clock
        self._lock = threading.Lock()
        self._held: list[str] | None = []
        self._started = 0.0
        self._last = 0.0
        self._runs = 0

    def release(self) -> None:
        """Write the lines held so far, then every line as it comes."""
        with self._lock:
            held, self._held = self._held or [], None
            for line in held:
                self.write(line)

    def emit(self, event: JSONDict) -> None:
        lines = [json_text(event)] if self.json else text_of(event)
        with self._lock:
            for line in lines:
                if self._held is not None:
                    self._held.append(line)
                else:
                    self.write(line)

    def embedding(self, files: int) -> None:
        """A run starts embedding ``files`` files."""
        self._started = self._last = self.clock()
        self.emit({"event": "embedding", "files": files})

    def advanced(self, done: int, total: int) -> None:
        """``done`` of ``total`` files embedded: a progress line when :attr:`every` seconds passed."""
        now = self.clock()
        if now - self._last < self.every or done >= total:
            return
        self._last = now
        rate = done / (now - self._started) if now > self._started else 0.0
        left = (total - done) / rate if rate > 0 else 0.0
        self.emit(
            {
                "event": "progress",
                "done": done,
                "total": total,
                "per_second": round(rate, 2),
                "left_s": round(left, 1),
            }
        )

    def indexed(self, report: JSONDict) -> None:
        """A run ended; the first one (at start) also names the files the index remembers as bad."""
        self.emit({"event": "indexed", "first": self._runs == 0, "report": report})
        self._runs += 1

    def failed(self, error: str) -> None:
        self.emit({"event": "failed", "error": error})

    def changed(self, batch: Changes) -> None:
        """The watcher saw a settled batch of changes."""
        added, changed, removed = batch
        self.emit({"event": "changed", "added": added, "changed": changed, "removed": removed})

    def retrying(self, files: int, seconds: float) -> None:
        """``files`` could not be read for a reason that can pass; the watcher runs again in ``seconds``."""
        self.emit({"event": "retry", "files": files, "in_s": round(seconds, 1)})
