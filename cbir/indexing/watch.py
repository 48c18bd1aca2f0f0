"""Keeping an index current: notice when a folder's images change, wait until they settle, then act.

:class:`FolderWatcher` listens to file-system events (``watchdog``, when installed) and also polls,
which is all it does where events are unavailable (no watchdog, network shares). Either way the
decision is made on the folder's state (each image's path, size and mtime, as the indexer sees
them): after a change it waits for ``settle`` seconds and looks again, and acts only once two looks
agree, so a file still being copied (its size or mtime still moving) is not indexed half-written.
Bursts of events (a folder copied in) are debounced into one call of ``on_change``. A run that
could not read some files for a reason that can pass (:attr:`IndexReport.transient`: a folder
renamed away and back during the run leaves the folder looking unchanged) asks for another run with
:meth:`FolderWatcher.retry`; retries back off from ``settle`` to :data:`RETRY_MAX` seconds.

Time comes from a :class:`Clock` (the system's by default), so the debouncing can be stepped with
a clock that moves only when told to; :meth:`FolderWatcher.step` is one look at the folder.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from cbir.core.errors import CbirError
from cbir.indexing.indexer import IndexOptions
from cbir.ingest.files import find_images

log = logging.getLogger(__name__)

State = frozenset[tuple[str, int, int]]
RETRY_MAX = 600.0
"""The longest wait between two runs retrying files that could not be read (a file that stays
unreadable, permission denied, costs one cheap run this often)."""


class Observer(Protocol):
    """A watchdog observer, as far as the watcher uses one."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Clock(Protocol):
    """Where the watcher's time comes from: seconds now, and waiting for an event with a timeout."""

    def now(self) -> float: ...

    def wait(self, event: threading.Event, timeout: float) -> bool:
        """Block until ``event`` is set (True) or ``timeout`` seconds have passed (False)."""
        ...


class SystemClock:
    """The real clock: monotonic seconds, ``Event.wait``."""

    def now(self) -> float:
        return time.monotonic()

    def wait(self, event: threading.Event, timeout: float) -> bool:
        return event.wait(timeout)


SYSTEM_CLOCK = SystemClock()


def folder_state(root: Path, options: IndexOptions, skip: Iterable[Path]) -> State:
    """Every image the indexer would see, with its size and mtime (files vanishing meanwhile skipped)."""
    try:
        files = find_images(
            root,
            recursive=options.recursive,
            include_hidden=options.include_hidden,
            exclude=options.exclude,
            skip_dirs=list(skip),
            follow_links=options.follow_links,
        )
    except CbirError:
        return frozenset()
    state = set()
    for rel in files:
        try:
            st = os.stat(root / rel)
        except OSError:
            continue
        state.add((rel, st.st_size, st.st_mtime_ns))
    return frozenset(state)


Changes = tuple[list[str], list[str], list[str]]
"""One settled batch: the images added, changed (size or mtime) and removed, each sorted."""


def changes(before: State, after: State) -> Changes:
    """What differs between two looks at a folder."""
    old = {rel: (size, mtime) for rel, size, mtime in before}
    new = {rel: (size, mtime) for rel, size, mtime in after}
    added = sorted(rel for rel in new if rel not in old)
    changed = sorted(rel for rel in new if rel in old and old[rel] != new[rel])
    removed = sorted(rel for rel in old if rel not in new)
    return added, changed, removed


class FolderWatcher:
    """Calls ``on_change()`` (on the watcher's thread) when the images of ``root`` changed and settled."""

    def __init__(
        self,
        root: Path,
        on_change: Callable[[], None],
        *,
        skip: Iterable[Path] = (),
        options: IndexOptions = IndexOptions(),
        settle: float = 1.0,
        poll: float = 2.0,
        events: bool = True,
        clock: Clock = SYSTEM_CLOCK,
        on_seen: Callable[[Changes], None] | None = None,
    ) -> None:
        self.root = Path(root)
        self.on_change = on_change
        self.on_seen = on_seen  # told each settled batch of changes, before ``on_change``
        self.skip = [Path(s) for s in skip]
        self.options = options
        self.settle = settle
        self.poll = poll
        self.clock = clock
        self._pending: State | None = None  # a changed state not yet settled
        self._since = 0.0  # when the folder was last seen with the pending state
        self._retry_at: float | None = None  # when to run again although the folder looks the same
        self._backoff = settle
        self._woken = threading.Event()
        self._stopping = threading.Event()
        self._observer = self._watch_events() if events else None
        self._state = folder_state(self.root, options, self.skip)
        self._thread = threading.Thread(target=self._loop, name="cbir-watch", daemon=True)

    @property
    def uses_events(self) -> bool:
        return self._observer is not None

    def start(self) -> FolderWatcher:
        if self._observer is not None:
            self._observer.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._woken.set()
        if self._observer is not None:
            self._observer.stop()
        if self._thread.ident is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def run(self) -> None:
        """Watch on the calling thread until interrupted (KeyboardInterrupt stops the watcher)."""
        if self._observer is not None:
            self._observer.start()
        try:
            self._loop()
        finally:
            self.stop()

    def _watch_events(self) -> Observer | None:
        """A started-later watchdog observer that wakes the loop on any event outside the index."""
        try:
            from watchdog.events import FileSystemEvent, FileSystemEventHandler
            from watchdog.observers import Observer as WatchdogObserver
        except ImportError:
            log.info("watchdog is not installed: polling %s every %.0f s", self.root, self.poll)
            return None
        skip = [os.path.realpath(s) for s in self.skip]
        woken = self._woken

        class Wake(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                path = os.path.realpath(os.fsdecode(event.src_path))
                if not any(path == s or path.startswith(s + os.sep) for s in skip):
                    woken.set()

        observer = WatchdogObserver()
        try:
            observer.schedule(Wake(), str(self.root), recursive=self.options.recursive)
        except OSError as exc:  # no inotify watches left, unsupported file system
            log.info("no file-system events for %s (%s): polling every %.0f s", self.root, exc, self.poll)
            return None
        return observer

    def retry(self, wanted: bool = True) -> float | None:
        """After a run: ``wanted`` when it could not read some files for a reason that can pass, so
        ``on_change`` is called again later (each retry waits twice as long as the last, up to
        :data:`RETRY_MAX`); False after a complete run (the backoff starts again). Returns the
        seconds until that retry (None: none)."""
        if not wanted:
            self._retry_at, self._backoff = None, self.settle
            return None
        wait = self._backoff
        self._retry_at = self.clock.now() + wait
        self._backoff = min(max(self._backoff, 0.5) * 2, RETRY_MAX)
        self._woken.set()
        return wait

    @property
    def settling(self) -> bool:
        """Whether a change was seen and the watcher waits for the folder to stay as it is."""
        return self._pending is not None

    def step(self) -> bool:
        """Look at the folder once; call ``on_change`` (and return True) when a change has held for
        ``settle`` seconds. A look that finds the folder still moving starts the wait again."""
        now = folder_state(self.root, self.options, self.skip)
        if self._pending is None and now == self._state:
            if self._retry_at is None or self.clock.now() < self._retry_at:
                return False
            self._retry_at = None
            self._call()
            return True
        if now != self._pending:
            self._pending, self._since = now, self.clock.now()
            return False
        if self.clock.now() - self._since < self.settle:
            return False
        before, self._state, self._pending = self._state, now, None
        if self.on_seen is not None:
            self.on_seen(changes(before, now))
        self._call()
        return True

    def _call(self) -> None:
        try:
            self.on_change()
        except CbirError as exc:
            log.warning("updating after a change failed: %s", exc)

    def _loop(self) -> None:
        """Sleep ``poll`` seconds (or until an event) while idle, ``settle`` seconds while settling."""
        while not self._stopping.is_set():
            if self._pending is None:
                due = self.poll if self._retry_at is None else self._retry_at - self.clock.now()
                self.clock.wait(self._woken, max(min(self.poll, due), 0.0))
            else:  # events do not cut the settling short: only the next look decides
                left = self._since + self.settle - self.clock.now()
                self.clock.wait(self._stopping, max(left, 0.0))
            self._woken.clear()
            if self._stopping.is_set():
                return
            self.step()
