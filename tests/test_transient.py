"""Failures that can pass are retried, content failures remembered (issue 27, items 1 and 13).

A file gone when it is decoded (a folder renamed away and back during a run, a sync tool), one
changed while it was read (still being written), one the system could not read (permission, I/O
error) and a folder that cannot be listed are reported and looked at again on the next run (and
under ``--watch``); only a file whose bytes are not a usable image is remembered as bad, until its
size or mtime changes. The renames happen at fixed points of the run (a hook of the embedder), never
after a sleep. Each case runs on both stores.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from conftest import save_image
from stores import PixelEmbedder, milvus_store

from cbir.core.errors import BadImageError
from cbir.encoders.features import FeatureConfig
from cbir.encoders.registry import resolve_config
from cbir.encoders.weights import Weights
from cbir.indexing import watch as watch_module
from cbir.indexing.indexer import IndexOptions, IndexReport, update_index
from cbir.indexing.watch import FolderWatcher
from cbir.ingest import files as files_module
from cbir.stores.base import Store
from cbir.stores.folder.store import FolderStore

WEIGHTS = Weights.random()
CONFIG = resolve_config(FeatureConfig(model="mobilenetv2", width_multiplier=0.35), WEIGHTS)


class Hooked(PixelEmbedder):
    """The pixel embedder (the real decoder) calling ``before(name)`` ahead of each file it decodes."""

    def __init__(self, before: Callable[[str], None]) -> None:
        super().__init__(CONFIG)
        self.before = before
        self.root = Path()  # the dataset, set by sync

    def embed_files(
        self, paths: Sequence[str | os.PathLike[str]], progress: bool | None = False, desc: str = ""
    ) -> Iterator[tuple[int, np.ndarray | BadImageError]]:
        for i, p in enumerate(paths):
            self.before(Path(p).relative_to(self.root).as_posix())
            yield from ((i, r) for _, r in super().embed_files([p]))


class Source:
    """An EncoderSource giving one embedder."""

    def __init__(self, embedder: PixelEmbedder) -> None:
        self.given, self.config, self.weights, self.whitening = embedder, CONFIG, WEIGHTS, None

    def embedder(self) -> PixelEmbedder:
        return self.given


def sync(root: Path, store: Store, embedder: Hooked) -> IndexReport:
    embedder.root = root
    return update_index(root, Source(embedder), options=IndexOptions(progress=False), store=store)


def plain() -> Hooked:
    return Hooked(lambda name: None)


def dataset(root: Path) -> list[str]:
    names = ["a.png", "b.png", *(f"sub/{i}.png" for i in range(5)), "z.png"]
    for seed, name in enumerate(names):
        save_image(root / name, seed=seed)
    return names


@pytest.fixture(params=["folder", "milvus-lite"])
def store_of(request, tmp_path) -> Callable[[Path], Store]:
    if request.param == "folder":
        return lambda root: FolderStore(root, tmp_path / "index")
    return lambda root: milvus_store(tmp_path / "index.db", root)


def held(store: Store) -> list[str]:
    return sorted(store.open().paths)


def test_a_folder_renamed_away_and_back_during_a_run_is_indexed_on_the_next(tmp_path, store_of):
    root = tmp_path / "data"
    names = dataset(root)
    store = store_of(root)

    def rename(name: str) -> None:
        if name == "sub/0.png":  # the plan listed sub/; it leaves before its files are read
            os.rename(root / "sub", root / "sub_x")
        if name == "z.png":  # and is back before the run ends, with the same sizes and mtimes
            os.rename(root / "sub_x", root / "sub")

    first = sync(root, store, Hooked(rename))
    assert first.transient == 5 and first.added == 3 and first.known_bad == 0
    assert [s["path"] for s in first.skipped] == [f"sub/{i}.png" for i in range(5)]
    assert all("No such file or directory" in s["reason"] for s in first.skipped)
    again = sync(root, store, plain())
    assert (again.added, again.known_bad, again.transient, again.skipped) == (5, 0, 0, [])
    assert held(store) == sorted(names)


def test_a_file_changed_while_it_was_read_is_retried_not_remembered(tmp_path, store_of):
    root = tmp_path / "data"
    names = dataset(root)
    store = store_of(root)
    whole = (root / "b.png").read_bytes()

    def half_written(name: str) -> None:
        if name == "b.png":  # a copy in progress: the first bytes only, then the rest
            (root / "b.png").write_bytes(whole[:100])
        if name == "sub/0.png":
            (root / "b.png").write_bytes(whole)

    first = sync(root, store, Hooked(half_written))
    assert [s["path"] for s in first.skipped] == ["b.png"] and first.transient == 1
    assert "changed while it was read" in first.skipped[0]["reason"]
    again = sync(root, store, plain())
    assert (again.added, again.known_bad) == (1, 0) and held(store) == sorted(names)


def test_a_file_that_cannot_be_read_is_retried_every_run(tmp_path, store_of, monkeypatch):
    root = tmp_path / "data"
    names = dataset(root)
    store = store_of(root)
    real_size = os.path.getsize

    def eio(path):  # a flaky disk or share: the same for root and any user
        if os.fspath(path).endswith("b.png"):
            raise OSError(errno.EIO, "Input/output error", os.fspath(path))
        return real_size(path)

    monkeypatch.setattr(os.path, "getsize", eio)
    first = sync(root, store, plain())
    assert [s["path"] for s in first.skipped] == ["b.png"] and first.transient == 1
    assert "Input/output error" in first.skipped[0]["reason"]
    second = sync(root, store, plain())
    assert (second.known_bad, second.transient) == (0, 1)  # tried again, not remembered as bad
    monkeypatch.setattr(os.path, "getsize", real_size)
    third = sync(root, store, plain())
    assert (third.added, third.skipped) == (1, []) and held(store) == sorted(names)


class Unclassified(Hooked):
    """An encoder that reports every failure as a content failure (as a third-party one may)."""

    def embed_files(self, paths, progress=False, desc=""):
        for i, result in super().embed_files(paths, progress, desc):
            yield i, BadImageError(str(result)) if isinstance(result, BadImageError) else result


def test_a_file_gone_when_its_failure_comes_back_is_retried_whatever_the_encoder_said(tmp_path, store_of):
    root = tmp_path / "data"
    names = dataset(root)
    store = store_of(root)
    parked = tmp_path / "parked.png"

    def away_and_back(name: str) -> None:
        if name == "b.png":
            os.rename(root / "b.png", parked)

    first = sync(root, store, Unclassified(away_and_back))
    assert [s["path"] for s in first.skipped] == ["b.png"] and first.transient == 1
    assert "gone while it was read" in first.skipped[0]["reason"]
    os.rename(parked, root / "b.png")  # back, with its size and mtime
    again = sync(root, store, plain())
    assert (again.added, again.known_bad) == (1, 0) and held(store) == sorted(names)


def test_content_failures_are_remembered_until_the_file_changes(tmp_path, store_of):
    root = tmp_path / "data"
    dataset(root)
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    store = store_of(root)
    first = sync(root, store, plain())
    assert [s["path"] for s in first.skipped] == ["broken.png"] and first.transient == 0
    embedder = plain()
    assert sync(root, store, embedder).known_bad == 1 and embedder.embedded == []
    save_image(root / "broken.png", seed=40)  # fixed: a new size and mtime
    fixed = sync(root, store, plain())
    assert (fixed.added, fixed.known_bad) == (1, 0) and "broken.png" in held(store)


def test_an_unlistable_folder_is_reported_and_its_rows_kept(tmp_path, store_of, monkeypatch):
    root = tmp_path / "data"
    names = dataset(root)
    store = store_of(root)
    sync(root, store, plain())
    real_scandir = os.scandir

    def locked(path):  # chmod 0 on the folder, for root as for any user
        if os.fspath(path).endswith("/sub"):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(files_module.os, "scandir", locked)
    report = sync(root, store, plain())
    assert report.skipped == [{"path": "sub/", "reason": "cannot list the folder (Permission denied)"}]
    assert (report.removed, report.transient, report.total) == (0, 1, len(names))
    assert held(store) == sorted(names)  # it may hold them still: nothing dropped
    monkeypatch.setattr(files_module.os, "scandir", real_scandir)
    assert sync(root, store, plain()).skipped == []


class Clock:
    """A clock that moves only when told (the watcher's time)."""

    def __init__(self) -> None:
        self.time = 0.0

    def now(self) -> float:
        return self.time

    def wait(self, event: object, timeout: float) -> bool:
        raise AssertionError("the test steps the watcher itself")


def test_under_watch_a_run_that_could_not_read_files_is_retried(tmp_path, store_of):
    """The folder looks the same after the rename back, so only the retry brings the files in."""
    root = tmp_path / "data"
    names = dataset(root)
    store = store_of(root)
    clock = Clock()
    reports: list[IndexReport] = []
    renames = iter([True])

    def rename(name: str) -> None:
        if name == "sub/0.png" and next(renames, False):
            os.rename(root / "sub", root / "sub_x")
        if name == "z.png" and (root / "sub_x").exists():
            os.rename(root / "sub_x", root / "sub")

    def run() -> None:
        reports.append(sync(root, store, Hooked(rename)))
        watcher.retry(reports[-1].transient > 0)

    watcher = FolderWatcher(root, run, settle=1.0, events=False, clock=clock)
    run()  # the first run, as `cbir index --watch` makes it before watching
    assert reports[-1].transient == 5
    assert not watcher.step()  # the folder looks as it did: nothing to do yet
    clock.time += 1.0
    assert watcher.step() and len(reports) == 2  # the retry
    assert reports[-1].added == 5 and held(store) == sorted(names)
    clock.time += 100.0
    assert not watcher.step()  # a complete run asks for no more


def test_retries_back_off_up_to_a_limit(tmp_path):
    save_image(tmp_path / "a.png")
    clock = Clock()
    calls: list[float] = []
    watcher = FolderWatcher(tmp_path, lambda: calls.append(clock.time), settle=1.0, events=False, clock=clock)
    waits = []
    for _ in range(12):
        watcher.retry()
        start = clock.time
        while not watcher.step():
            clock.time += 0.5
        waits.append(clock.time - start)
    assert waits[:4] == [1.0, 2.0, 4.0, 8.0] and max(waits) == watch_module.RETRY_MAX
    watcher.retry(False)
    clock.time += 10 * watch_module.RETRY_MAX
    assert not watcher.step() and len(calls) == 12


def test_the_servers_indexer_thread_survives_an_unexpected_error(tmp_path):
    """A bug in a run (here the encoder raises RuntimeError) is reported in /api/info's progress
    as failed with the reason, logged, and the next requested run works: never "indexing" for ever."""
    pytest.importorskip("fastapi", reason="cbir serve needs the web extra")
    import dataclasses
    import threading

    from pixelcli import MODEL, pixel_family

    from cbir.cli.options import build_parser, index_options_from, settings_from
    from cbir.web.updater import Updater

    root = tmp_path / "data"
    dataset(root)
    with pixel_family():
        args = build_parser().parse_args(["serve", str(root), *MODEL])
        settings = settings_from(args)
        calls = iter([RuntimeError("a bug")])
        failing, done = threading.Event(), threading.Event()

        def model() -> PixelEmbedder:
            failure = next(calls, None)
            if failure is not None:
                failing.set()
                raise failure
            return PixelEmbedder(settings.config)

        updater = Updater(
            settings,
            dataclasses.replace(index_options_from(args), progress=False),
            model,
            on_done=lambda report: done.set(),
        ).start()
        try:
            updater.request()
            assert failing.wait(60)
            updater.request()  # after the failure: a run of its own, on the same thread
            assert done.wait(60), updater.progress.to_dict()
        finally:
            updater.stop()
    progress = updater.progress.to_dict()
    assert progress["state"] == "idle" and progress["runs"] == 1
    assert progress["last"]["added"] == 8
