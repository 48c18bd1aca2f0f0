"""Keeping an index current: the folder watcher (events and polling), files still being copied,
and `cbir index DATASET --watch` end to end."""

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

import pytest
from conftest import save_image
from helpers import REPO, TINY_MODEL, interruptible

from cbir.indexing.indexer import IndexOptions
from cbir.indexing.watch import FolderWatcher, folder_state

HAVE_WATCHDOG = True
try:
    import watchdog  # noqa: F401
except ImportError:
    HAVE_WATCHDOG = False


def calls_within(calls: list[float], count: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while len(calls) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return len(calls) >= count


@pytest.mark.parametrize(
    "events",
    [False, pytest.param(True, marks=pytest.mark.skipif(not HAVE_WATCHDOG, reason="watchdog not installed"))],
)
def test_a_new_image_is_noticed_once_and_the_index_folder_is_ignored(tmp_path, events):
    save_image(tmp_path / "a.jpg", seed=1)
    (tmp_path / ".cbir").mkdir()
    calls: list[float] = []
    watcher = FolderWatcher(
        tmp_path,
        lambda: calls.append(time.monotonic()),
        skip=[tmp_path / ".cbir"],
        settle=0.2,
        poll=0.3,
        events=events,
    )
    assert watcher.uses_events is events
    watcher.start()
    try:
        (tmp_path / ".cbir" / "manifest.json").write_text("{}")  # our own writes are not a change
        (tmp_path / "notes.txt").write_text("not an image")
        assert not calls_within(calls, 1, 1.0)
        save_image(tmp_path / "sub" / "b.jpg", seed=2)
        assert calls_within(calls, 1, 5.0)
        assert not calls_within(calls, 2, 1.0)  # one change, one call
        (tmp_path / "a.jpg").unlink()
        assert calls_within(calls, 2, 5.0)  # removals count too
    finally:
        watcher.stop()


def test_a_file_still_being_copied_is_not_acted_on_until_it_settles(tmp_path):
    source = save_image(tmp_path / "src" / "big.png", seed=3, width=400, height=300).read_bytes()
    ds = tmp_path / "ds"
    save_image(ds / "a.jpg", seed=1)
    seen: list[tuple[float, int]] = []
    target = ds / "big.png"
    watcher = FolderWatcher(
        ds, lambda: seen.append((time.monotonic(), target.stat().st_size)), settle=0.4, poll=0.1, events=False
    ).start()
    try:
        with open(target, "wb") as f:  # a slow copy: a chunk every 0.15 s for about 1.5 s
            for start in range(0, len(source), len(source) // 10 + 1):
                f.write(source[start : start + len(source) // 10 + 1])
                f.flush()
                time.sleep(0.15)
        finished = time.monotonic()
        assert calls_within(seen, 1, 5.0)
    finally:
        watcher.stop()
    assert seen[0][0] >= finished and seen[0][1] == len(source)  # only the whole file was seen


def test_folder_state_follows_the_indexers_rules(tmp_path):
    save_image(tmp_path / "a.jpg", seed=1)
    save_image(tmp_path / ".hidden" / "b.jpg", seed=2)
    (tmp_path / "c.txt").write_text("x")
    assert {rel for rel, _, _ in folder_state(tmp_path, options=IndexOptions(), skip=[])} == {"a.jpg"}


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
