"""Keeping an index current: the folder watcher (events and polling), files still being copied,
and `cbir index DATASET --watch` end to end.

The watcher's time is a :class:`FakeClock` that moves only when a test advances it, so the settling
is checked step by step, and the threaded tests synchronise on the watcher being asleep, not on
sleeps of their own.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import save_image
from helpers import REPO, TINY_MODEL, interruptible

from cbir.indexing.indexer import IndexOptions
from cbir.indexing.watch import FolderWatcher, SystemClock, folder_state

HAVE_WATCHDOG = True
try:
    import watchdog  # noqa: F401
except ImportError:
    HAVE_WATCHDOG = False

REAL_TIMEOUT = 60.0
"""Seconds of real time a threaded test waits for the watcher before failing (never reached when it works)."""


class FakeClock:
    """Time that moves only by :meth:`advance`; ``wait`` returns once its event is set or the fake
    time reaches its deadline. :meth:`asleep` lets a test wait until the watcher sleeps."""

    def __init__(self) -> None:
        self.time = 0.0
        self._changed = threading.Condition()
        self._deadline: float | None = None  # of the wait in progress

    def now(self) -> float:
        with self._changed:
            return self.time

    def wait(self, event: threading.Event, timeout: float) -> bool:
        with self._changed:
            self._deadline = self.time + timeout
            self._changed.notify_all()
            try:
                while not event.is_set() and self.time < self._deadline:
                    self._changed.wait(0.005)  # an event set elsewhere does not notify the condition
            finally:
                self._deadline = None
                self._changed.notify_all()
            return event.is_set()

    def advance(self, seconds: float) -> None:
        with self._changed:
            self.time += seconds
            self._changed.notify_all()

    def asleep(self, seconds: float) -> None:
        """Block until a thread waits on this clock with ``seconds`` left (just started a wait)."""
        with self._changed:
            ok = self._changed.wait_for(
                lambda: self._deadline is not None and self._deadline - self.time == seconds, REAL_TIMEOUT
            )
        assert ok, f"nothing started waiting {seconds} s"


def add(path: Path, seed: int) -> Path:
    """Write an image beside ``path`` and rename it into place: one change, never half-written."""
    part = save_image(path.parent.parent / f"{path.name}.part.png", seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, path)
    return path


def stepped(root: Path, calls: list[int], clock: FakeClock, settle: float = 1.0) -> FolderWatcher:
    """A watcher driven by :meth:`FolderWatcher.step` and the fake clock, no thread, no events."""
    return FolderWatcher(
        root, lambda: calls.append(1), skip=[root / ".cbir"], settle=settle, events=False, clock=clock
    )


def test_a_change_is_acted_on_once_after_it_held_for_settle_seconds(tmp_path):
    ds = tmp_path / "ds"
    save_image(ds / "a.jpg", seed=1)
    (ds / ".cbir").mkdir()
    calls: list[int] = []
    clock = FakeClock()
    watcher = stepped(ds, calls, clock)
    (ds / ".cbir" / "manifest.json").write_text("{}")  # our own writes are not a change
    (ds / "notes.txt").write_text("not an image")
    assert not watcher.step() and not watcher.settling

    add(ds / "sub" / "b.jpg", seed=2)
    assert not watcher.step() and watcher.settling  # seen, not yet settled
    clock.advance(0.5)
    assert not watcher.step() and calls == []
    clock.advance(0.5)
    assert watcher.step() and calls == [1] and not watcher.settling
    clock.advance(10)
    assert not watcher.step() and calls == [1]  # one change, one call

    (ds / "a.jpg").unlink()  # removals count too
    assert not watcher.step()
    clock.advance(1.0)
    assert watcher.step() and calls == [1, 1]


def test_a_file_still_being_copied_is_not_acted_on_until_it_settles(tmp_path):
    source = save_image(tmp_path / "src" / "big.png", seed=3, width=400, height=300).read_bytes()
    ds = tmp_path / "ds"
    save_image(ds / "a.jpg", seed=1)
    target = ds / "big.png"
    seen: list[int] = []
    clock = FakeClock()
    watcher = FolderWatcher(
        ds, lambda: seen.append(target.stat().st_size), settle=1.0, events=False, clock=clock
    )
    chunk = len(source) // 10 + 1
    with open(target, "wb") as f:  # a slow copy: a chunk every 0.75 s, about eight seconds in all
        for start in range(0, len(source), chunk):
            f.write(source[start : start + chunk])
            f.flush()
            assert not watcher.step()
            clock.advance(0.75)
    assert not watcher.step()  # unchanged for 0.75 s only
    clock.advance(0.25)
    assert watcher.step()
    assert seen == [len(source)]  # only the whole file was seen

    stat = target.stat()  # the same size, a new mtime: rewritten in place, a change too
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert not watcher.step() and watcher.settling
    clock.advance(1.0)
    assert watcher.step() and len(seen) == 2


@pytest.mark.parametrize(
    "events",
    [False, pytest.param(True, marks=pytest.mark.skipif(not HAVE_WATCHDOG, reason="watchdog not installed"))],
)
def test_the_watcher_thread_sleeps_poll_then_settle_and_events_wake_it(tmp_path, events):
    """Polling: nothing happens until `poll` fake seconds pass. Events: the change wakes the watcher
    with the fake time standing still. Then `settle` fake seconds, one call."""
    ds = tmp_path / "ds"
    save_image(ds / "a.jpg", seed=1)
    (ds / ".cbir").mkdir()
    calls: list[float] = []
    called = threading.Event()
    clock = FakeClock()

    def on_change() -> None:
        calls.append(clock.now())
        called.set()

    watcher = FolderWatcher(
        ds, on_change, skip=[ds / ".cbir"], settle=1.0, poll=100.0, events=events, clock=clock
    )
    assert watcher.uses_events is events
    watcher.start()
    try:
        for change in (lambda: add(ds / "sub" / "b.jpg", seed=2), (ds / "a.jpg").unlink):
            called.clear()
            clock.asleep(100.0)  # idle
            begun = clock.now()
            change()
            if not events:
                clock.advance(100.0)
            clock.asleep(1.0)  # settling
            assert not called.is_set()
            clock.advance(1.0)
            assert called.wait(REAL_TIMEOUT)
            assert calls[-1] - begun == (1.0 if events else 101.0)
        clock.asleep(100.0)
        assert len(calls) == 2  # one call a change
    finally:
        watcher.stop()


def test_the_system_clock_waits_for_the_event_or_the_timeout():
    event = threading.Event()
    clock = SystemClock()
    before = clock.now()
    assert not clock.wait(event, 0.01) and clock.now() - before >= 0.01
    event.set()
    assert clock.wait(event, 60)


def test_folder_state_follows_the_indexers_rules(tmp_path):
    save_image(tmp_path / "a.jpg", seed=1)
    save_image(tmp_path / ".hidden" / "b.jpg", seed=2)
    (tmp_path / "c.txt").write_text("x")
    assert {rel for rel, _, _ in folder_state(tmp_path, options=IndexOptions(), skip=[])} == {"a.jpg"}


@pytest.mark.slow
def test_cbir_index_watch_indexes_a_photo_copied_in(tmp_path):
    ds = tmp_path / "ds"
    for i in range(3):
        save_image(ds / f"img{i}.jpg", seed=i)
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cbir", "index", str(ds), "--watch", "--json", *TINY_MODEL],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    )
    reports: queue.Queue[dict] = queue.Queue()

    def read() -> None:
        buffer = ""
        for line in proc.stdout:
            buffer += line
            if line.startswith("}"):
                reports.put(json.loads(buffer))
                buffer = ""

    threading.Thread(target=read, daemon=True).start()
    try:
        first = reports.get(timeout=180)
        assert first["added"] == 3 and first["total"] == 3
        shutil.copy(ds / "img1.jpg", ds / "copied.jpg")
        start = time.monotonic()
        second = reports.get(timeout=60)
        assert second["added"] == 1 and second["total"] == 4 and second["unchanged"] == 3
        assert time.monotonic() - start < 30
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "watching" in err
