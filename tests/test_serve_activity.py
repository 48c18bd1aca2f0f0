"""Progress and problems (issue 23): the bad files kept with the index on every store, ``/api/info``'s
indexing fields, the terminal's lines (:mod:`cbir.web.activity`) and a ``cbir serve --watch`` run.

The store cases run on the folder store and Milvus Lite (skipped without the milvus extra); the web
cases embed with the stores' pixel embedder, so no network is built; one subprocess runs the real
command with the tiny random-weights model, synchronised on its output lines, never on sleeps.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import save_image
from helpers import REPO, TINY_MODEL, Source, interruptible
from stores import PixelEmbedder, milvus_store

from cbir.core.errors import BadImageError
from cbir.encoders.features import FeatureConfig
from cbir.indexing.indexer import IndexOptions, update_index
from cbir.indexing.watch import FolderWatcher, changes
from cbir.stores.base import Store
from cbir.stores.folder.store import FolderStore
from cbir.web.activity import PROGRESS_EVERY, Activity

CONFIG = FeatureConfig(model="mobilenet", width_multiplier=0.25, size=64)
NOT_AN_IMAGE = "not a recognised image"


def dataset(root: Path, n: int = 4) -> Path:
    for i in range(n):
        save_image(root / ("sub" if i % 2 else "") / f"img{i}.jpg", seed=i)
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "sub" / "junk.png").write_bytes(b"junk")
    return root


STORES: dict[str, Callable[[Path, Path], Store]] = {
    "folder": lambda root, tmp: FolderStore(root, tmp / "index"),
    "milvus-lite": lambda root, tmp: milvus_store(tmp / "index.db", root),
}


@pytest.fixture(params=list(STORES))
def make_store(request, tmp_path) -> Callable[[Path], Store]:
    return lambda root: STORES[request.param](root, tmp_path)


def remembered(store: Store) -> dict[str, str]:
    return {s.path: s.reason for s in store.open().skipped()}


def test_the_bad_files_stay_with_the_index_until_fixed_or_removed(tmp_path, make_store):
    root = dataset(tmp_path / "photos")
    emb = PixelEmbedder(Source(None, CONFIG).config)

    def sync(store: Store):
        return update_index(root, Source(emb, CONFIG), options=IndexOptions(progress=False), store=store)

    store = make_store(root)
    first = sync(store)
    assert {s["path"] for s in first.skipped} == {"broken.jpg", "sub/junk.png"}
    assert remembered(store) == {"broken.jpg": NOT_AN_IMAGE, "sub/junk.png": NOT_AN_IMAGE}

    later = sync(store)  # a later run leaves them alone, and still has them, with their reasons
    assert later.skipped == [] and later.known_bad == 2
    assert later.known_bad_files == [
        {"path": "broken.jpg", "reason": NOT_AN_IMAGE},
        {"path": "sub/junk.png", "reason": NOT_AN_IMAGE},
    ]
    assert remembered(make_store(root)) == {"broken.jpg": NOT_AN_IMAGE, "sub/junk.png": NOT_AN_IMAGE}

    save_image(root / "broken.jpg", seed=9)  # fixed: indexed and forgotten as bad
    (root / "sub" / "junk.png").unlink()  # removed: forgotten
    fixed = sync(make_store(root))  # a restart: a new store object reading what was committed
    assert (fixed.added, fixed.known_bad, fixed.known_bad_files) == (1, 0, [])
    assert remembered(make_store(root)) == {}
    assert make_store(root).open().row_named("broken.jpg") is not None


# --- /api/info, through the service with the pixel embedder (no network) -----------------------------

pytest.importorskip("fastapi", reason="cbir serve needs the web extra (pip install 'cbir[web]')")

from fastapi.testclient import TestClient  # noqa: E402

from cbir.cli.options import build_parser, index_options_from, settings_from  # noqa: E402
from cbir.web.app import create_app  # noqa: E402
from cbir.web.collection import Collection  # noqa: E402
from cbir.web.model import ModelWorker  # noqa: E402
from cbir.web.server import Watching  # noqa: E402
from cbir.web.service import Service  # noqa: E402
from cbir.web.updater import Updater  # noqa: E402


def served(root: Path, *store: str) -> tuple[Updater, TestClient]:
    """A fresh server's updater and API client over ``root`` (nothing run yet): a restart."""
    args = build_parser().parse_args(["serve", str(root), *TINY_MODEL, *store])
    settings, options = settings_from(args), index_options_from(args)
    embedder = PixelEmbedder(settings.config)
    updater = Updater(settings, dataclasses.replace(options, progress=False), lambda: embedder)
    worker = ModelWorker(lambda: embedder)
    service = Service(Collection(root, settings.home), worker, updater)
    return updater, TestClient(create_app(service))


def bad_of(client: TestClient) -> dict[str, tuple[str, bool]]:
    info = client.get("/api/info").json()["indexing"]
    assert info["bad_count"] == len(info["bad"])
    return {b["path"]: (b["reason"], b["transient"]) for b in info["bad"]}


@pytest.mark.parametrize("where", ["folder", "milvus-lite"])
def test_api_info_lists_the_bad_files_of_the_index_after_later_runs_and_restarts(tmp_path, where):
    root = dataset(tmp_path / "photos")
    store = ("--store", f"milvus:{tmp_path / 'index.db'}") if where == "milvus-lite" else ()
    if store:
        milvus_store(tmp_path / "probe.db", root)  # skipped without the milvus extra
    both = {"broken.jpg": (NOT_AN_IMAGE, False), "sub/junk.png": (NOT_AN_IMAGE, False)}
    updater, client = served(root, *store)
    updater.run_once()
    assert bad_of(client) == both
    info = client.get("/api/info").json()["indexing"]
    assert info["state"] == "idle" and info["runs"] == 1 and info["last"]["added"] == 4
    assert info["since"] <= info["finished"] and info["change"] is None and info["retry"] is None

    updater.run_once()  # a later run: nothing new failed, the index still knows both
    assert bad_of(client) == both
    assert client.get("/api/info").json()["indexing"]["last"]["known_bad"] == 2

    updater, client = served(root, *store)  # a restart, before its first run
    assert bad_of(client) == both

    (root / "broken.jpg").unlink()
    save_image(root / "sub" / "junk.png", seed=5)
    updater.run_once()
    assert bad_of(client) == {}


class Flaky(PixelEmbedder):
    """The pixel embedder, but ``flaky.jpg`` cannot be read the first ``times`` times (an I/O error)."""

    times = 1

    def embed_files(self, paths, progress=False, desc=""):
        for i, path in enumerate(paths):
            if Path(path).name == "flaky.jpg" and self.times > 0:
                self.times -= 1
                yield i, BadImageError("cannot read (Input/output error)", transient=True)
            else:
                yield from ((i, result) for _, result in super().embed_files([path]))


class Stepped:
    """The watcher's clock, moved by the test; the watcher is stepped, never left to sleep."""

    def __init__(self) -> None:
        self.time = 0.0

    def now(self) -> float:
        return self.time

    def wait(self, event: threading.Event, timeout: float) -> bool:
        raise AssertionError("a stepped watcher does not sleep")


def test_the_watchers_batches_and_retries_reach_the_page_and_the_terminal(tmp_path):
    root = dataset(tmp_path / "photos")
    save_image(root / "flaky.jpg", seed=8)
    args = build_parser().parse_args(["serve", str(root), "--watch", *TINY_MODEL])
    settings = settings_from(args)
    embedder = Flaky(settings.config)
    lines: list[str] = []
    watching = Watching(Activity(lines.append))
    watching.activity.release()
    options = dataclasses.replace(index_options_from(args), progress=False)
    updater = Updater(settings, options, lambda: embedder, watching.done, watching.activity)
    watching.progress = updater.progress
    clock, calls = Stepped(), []
    watching.watcher = FolderWatcher(
        root, lambda: calls.append(1), skip=[root / ".cbir"], events=False, clock=clock, on_seen=watching.seen
    )
    service = Service(Collection(root, settings.home), ModelWorker(lambda: embedder), updater)
    client = TestClient(create_app(service))

    assert updater.run_once().transient == 1
    assert lines[-1] == "1 file(s) could not be read for a reason that can pass; trying again in 1.0 s"
    info = client.get("/api/info").json()["indexing"]
    assert info["retry"] == {"files": 1, "in_s": 1.0}
    assert bad_of(client)["flaky.jpg"] == ("cannot read (Input/output error)", True)

    save_image(root / "new.jpg", seed=11)
    (root / "img0.jpg").unlink()
    assert not watching.watcher.step()  # seen, not settled yet
    clock.time += 1.0
    assert watching.watcher.step() and calls == [1]
    assert lines[-1] == "changes: 1 new: new.jpg; 1 gone: img0.jpg"
    change = client.get("/api/info").json()["indexing"]["change"]
    assert {k: change[k] for k in ("added", "changed", "removed")} == {"added": 1, "changed": 0, "removed": 1}

    report = updater.run_once()  # the retry reads flaky.jpg this time
    assert (report.added, report.removed, report.transient) == (2, 1, 0)
    assert client.get("/api/info").json()["indexing"]["retry"] is None
    assert set(bad_of(client)) == {"broken.jpg", "sub/junk.png"}


# --- the terminal's lines ----------------------------------------------------------------------------


class Ticks:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def report(**fields: object) -> dict:
    base = dict(
        added=0, updated=0, removed=0, unchanged=0, skipped=[], known_bad=0, known_bad_files=[], total=0
    )
    base.update(embedded=0, seconds=0.5, images_per_second=0.0)
    return {**base, **fields}


def test_lines_wait_for_release_then_a_long_run_shows_progress_every_few_seconds():
    lines: list[str] = []
    clock = Ticks()
    activity = Activity(lines.append, clock=clock)
    activity.embedding(1000)
    assert lines == []  # held until the server printed its URL
    activity.release()
    assert lines == ["indexing: 1000 file(s) to embed"]
    for done in range(1, 1001):  # 10 files a second for 100 s
        clock.now = done / 10
        activity.advanced(done, 1000)
    progress = lines[1:]
    assert len(progress) == int(100 // PROGRESS_EVERY) == 6
    assert progress[0] == "indexing: 150 of 1000 (15%), 10.0 img/s, about 1 min 25 s left"

    short: list[str] = []
    quick = Activity(short.append, clock=clock)
    quick.release()
    quick.embedding(50)
    for done in range(1, 51):
        clock.now += 0.1
        quick.advanced(done, 50)
    assert short == ["indexing: 50 file(s) to embed"]  # a run shorter than the cadence: no progress


def test_runs_changes_and_retries_are_one_line_each_and_json_on_request():
    lines: list[str] = []
    activity = Activity(lines.append)
    activity.release()
    known = [{"path": f"bad{i}.jpg", "reason": NOT_AN_IMAGE} for i in range(7)]
    first = report(unchanged=10, known_bad=7, known_bad_files=known, total=10)
    activity.indexed(first)
    assert (
        lines[0]
        == "index: 10 images; looked at 17 files: 0 added, 0 changed, 0 removed, 7 known bad; took 0.5 s"
    )
    assert lines[1] == "known bad (unchanged since they failed; fix or remove them): 7 file(s)"
    assert lines[2:] == [f"  bad{i}.jpg: {NOT_AN_IMAGE}" for i in range(5)] + [
        "  ... and 2 more (listed on the page)"
    ]
    lines.clear()
    activity.indexed(first)  # later runs name only what is new (the indexer's warnings)
    assert len(lines) == 1
    activity.changed((["a.jpg"], [], [f"old{i}.jpg" for i in range(7)]))
    activity.retrying(2, 4.0)
    assert lines[1:] == [
        "changes: 1 new: a.jpg; 7 gone: old0.jpg, old1.jpg, old2.jpg, old3.jpg, old4.jpg +2 more",
        "2 file(s) could not be read for a reason that can pass; trying again in 4.0 s",
    ]

    out: list[str] = []
    machine = Activity(out.append, json=True)
    machine.release()
    machine.changed((["a\udce9.jpg"], [], []))
    machine.indexed(first)
    events = [json.loads(line) for line in out]
    assert events[0] == {"event": "changed", "added": ["a\udce9.jpg"], "changed": [], "removed": []}
    assert events[1]["event"] == "indexed" and events[1]["report"]["known_bad_files"] == known


def test_a_batch_is_what_was_added_changed_and_removed():
    before = frozenset({("a.jpg", 1, 1), ("b.jpg", 1, 1), ("c.jpg", 1, 1)})
    after = frozenset({("a.jpg", 1, 1), ("b.jpg", 2, 5), ("d.jpg", 1, 1)})
    assert changes(before, after) == (["d.jpg"], ["b.jpg"], ["c.jpg"])


# --- cbir serve --watch, as a person sees it in the terminal -----------------------------------------


def _pump(stream, into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line.rstrip("\n"))


@pytest.fixture
def serving(tmp_path) -> Iterator[tuple[Path, queue.Queue[str], queue.Queue[str]]]:
    """``cbir serve --watch`` on a small dataset with a broken file: stdout and stderr line queues."""
    root = dataset(tmp_path / "photos")
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, "-m", "cbir", "serve", str(root), "--port", "0", "--watch", *TINY_MODEL]
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible
    )
    out: queue.Queue[str] = queue.Queue()
    err: queue.Queue[str] = queue.Queue()
    for stream, into in ((proc.stdout, out), (proc.stderr, err)):
        threading.Thread(
            target=lambda s=stream, q=into: [q.put(line.rstrip("\n")) for line in s], daemon=True
        ).start()
    try:
        yield root, out, err
    finally:
        proc.send_signal(2)
        proc.wait(timeout=30)
    rest = []
    while not err.empty():
        rest.append(err.get())
    assert not any("Traceback" in line for line in rest), rest


def next_line(lines: queue.Queue[str], start: str) -> str:
    """The next line starting with ``start`` (others skipped); fails after 120 s without one."""
    while True:
        line = lines.get(timeout=120)
        if line.startswith(start):
            return line


@pytest.mark.slow
def test_serve_watch_prints_each_run_each_batch_of_changes_and_each_bad_file(serving):
    root, out, err = serving
    assert out.get(timeout=120).startswith(f"serving {root} at http://127.0.0.1:")
    assert out.get(timeout=120) == "indexing: 6 file(s) to embed"
    first = out.get(timeout=120)
    assert first.startswith(
        "index: 4 images; looked at 6 files: 4 added, 0 changed, 0 removed, 2 could not be read; took "
    )
    bad = {next_line(err, "cbir: WARNING: skipped"), next_line(err, "cbir: WARNING: skipped")}
    assert bad == {f"cbir: WARNING: skipped {p}: {NOT_AN_IMAGE}" for p in ("broken.jpg", "sub/junk.png")}

    save_image(root / "new.part.png", seed=7).rename(root / "new.png")
    (root / "img0.jpg").unlink()
    (root / "worse.gif").write_bytes(b"GIF89a broken")
    assert out.get(timeout=120) == "changes: 2 new: new.png, worse.gif; 1 gone: img0.jpg"
    assert out.get(timeout=120) == "indexing: 2 file(s) to embed"
    second = out.get(timeout=120)
    assert second.startswith(
        "index: 4 images; looked at 7 files: 1 added, 0 changed, 1 removed, 1 could not be read, 2 known bad"
    )
    assert next_line(err, "cbir: WARNING: skipped") == f"cbir: WARNING: skipped worse.gif: {NOT_AN_IMAGE}"
