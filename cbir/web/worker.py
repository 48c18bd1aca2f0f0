"""A background thread that does one job on request (:class:`OnRequest`): requests made while the
job runs make one more run, never a queue. The server's indexer (:mod:`cbir.web.updater`) and its
near-duplicate groups (:mod:`cbir.web.duplicates`) each run on one."""

from __future__ import annotations

import threading
from collections.abc import Callable


class OnRequest:
    """Runs ``job`` on its own daemon thread each time :meth:`request` is called (coalesced)."""

    def __init__(self, name: str, job: Callable[[], object]) -> None:
        self._job = job
        self._wanted = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request(self) -> None:
        """Ask for a run (several requests while one runs make one more run)."""
        self._wanted.set()

    def stop(self) -> None:
        """End the thread after the run under way, if any (waits up to 5 s)."""
        self._stopping = True
        self._wanted.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            self._wanted.wait()
            if self._stopping:
                return
            self._wanted.clear()
            self._job()
