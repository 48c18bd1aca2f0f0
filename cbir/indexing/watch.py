"""Keeping an index current: notice when a folder's images change, wait until they settle, then act.

:class:`FolderWatcher` listens to file-system events (``watchdog``, when installed) and also polls,
which is all it does where events are unavailable (no watchdog, network shares). Either way the
decision is made on the folder's state (each image's path, size and mtime, as the indexer sees
them): after a change it waits for ``settle`` seconds and looks again, and acts only once two looks
agree, so a file still being copied (its size or mtime still moving) is not indexed half-written.
Bursts of events (a folder copied in) are debounced into one call of ``on_change``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from cbir.core.errors import CbirError
from cbir.indexing.indexer import IndexOptions
from cbir.ingest.files import find_images

log = logging.getLogger(__name__)

State = frozenset[tuple[str, int, int]]


class Observer(Protocol):
    """A watchdog observer, as far as the watcher uses one."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


def folder_state(root: Path, options: IndexOptions, skip: Iterable[Path]) -> State:
    """Every image the indexer would see, with its size and mtime (files vanishing meanwhile skipped)."""
    try:
        files = find_images(
            root,
            recursive=options.recursive,
            include_hidden=options.include_hidden,
            exclude=options.exclude,
            skip_dirs=list(skip),
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
    ) -> None:
        self.root = Path(root)
        self.on_change = on_change
        self.skip = [Path(s) for s in skip]
        self.options = options
        self.settle = settle
        self.poll = poll
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

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._woken.wait(self.poll)
            self._woken.clear()
            if self._stopping.is_set():
                return
            now = folder_state(self.root, self.options, self.skip)
            if now == self._state:
                continue
            while not self._stopping.wait(self.settle):  # until two looks `settle` apart agree
                self._woken.clear()
                again = folder_state(self.root, self.options, self.skip)
                if again == now:
                    break
                now = again
            if self._stopping.is_set():
                return
            self._state = now
            try:
                self.on_change()
            except CbirError as exc:
                log.warning("updating after a change failed: %s", exc)
