"""The index folder: atomic writes, matrices read once, the lock, the writer's commits and cleanup."""

from __future__ import annotations

import errno
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cbir.stores.folder.files as files_mod
from cbir.core.errors import IndexFolderError, IndexLockedError, IndexWriteError
from cbir.core.records import Entry
from cbir.encoders.features import FeatureConfig
from cbir.stores.folder.files import Lock, read_matrix, write_bytes, write_matrix
from cbir.stores.folder.writer import MANIFEST, FolderWriter, load_matrix, read_manifest
from cbir.stores.manifest import Manifest, Segment

CONFIG = FeatureConfig(model="mobilenet", weights="random", width_multiplier=0.25)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_bytes_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "f.json"
    target.write_text("old")
    write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert names(tmp_path) == ["f.json"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EIO])
def test_write_errors_are_one_line_and_leave_nothing(tmp_path, monkeypatch, code):
    target = tmp_path / "f.json"
    target.write_text("old")

    def fail(fd: int) -> None:
        raise OSError(code, "injected")

    monkeypatch.setattr(files_mod.os, "fsync", fail)
    with pytest.raises(IndexWriteError) as caught:
        write_bytes(target, b"new")
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path) in message and "injected" in message
    if code == errno.ENOSPC:
        assert "disk is full" in message
    assert target.read_text() == "old" and names(tmp_path) == ["f.json"]


def test_matrix_round_trip_in_blocks(tmp_path):
    a = np.random.default_rng(0).random((7, 3)).astype(np.float32)
    write_matrix(tmp_path / "m.npy", [a[:2], a[2:5], a[5:]], 7, 3, "float32")
    got = read_matrix(tmp_path / "m.npy", 7, 3)
    assert isinstance(got, np.memmap)
    np.testing.assert_array_equal(got, a)
    np.testing.assert_array_equal(np.load(tmp_path / "m.npy"), a)  # a plain .npy file
    write_matrix(tmp_path / "h.npy", [a], 7, 3, "float16")
    half = read_matrix(tmp_path / "h.npy", 7, 3, mmap=False)
    assert half.dtype == np.float16 and not isinstance(half, np.memmap)
    np.testing.assert_allclose(half, a, atol=1e-3)
    with pytest.raises(ValueError, match="7 rows of a 8-row"):
        write_matrix(tmp_path / "bad.npy", [a], 8, 3, "float32")  # a caller's bug: nothing written
    assert names(tmp_path) == ["h.npy", "m.npy"]


def test_read_matrix_checks_shape_and_content(tmp_path):
    path = tmp_path / "m.npy"
    np.save(path, np.zeros((2, 4), np.float32))
    with pytest.raises(IndexFolderError, match="does not match its manifest"):
        read_matrix(path, 3, 4)
    with pytest.raises(IndexFolderError, match="does not match its manifest"):
        read_matrix(path, 2, 5)
    path.write_bytes(b"garbage, not npy")
    with pytest.raises(IndexFolderError, match="unreadable"):
        read_matrix(path, 2, 4)
    path.write_bytes(b"")
    with pytest.raises(IndexFolderError, match="is empty; rebuild with --rebuild"):
        read_matrix(path, 2, 4)
    np.save(path, np.zeros((2, 4), np.float32))
    path.write_bytes(path.read_bytes()[:-8])  # truncated
    with pytest.raises(IndexFolderError, match="shorter"):
        read_matrix(path, 2, 4)
    np.save(path, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(IndexFolderError):
        read_matrix(path, 1, 1)
    with pytest.raises(FileNotFoundError):
        read_matrix(tmp_path / "gone.npy", 1, 1)


def test_load_matrix_concatenates_segments(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = -np.arange(8, dtype=np.float32).reshape(2, 4)
    np.save(tmp_path / "part-a.npy", a)
    np.save(tmp_path / "part-b.npy", b)
    m = Manifest(config=CONFIG, dim=4, entries=[Entry(f"{i}.jpg", 1, 1) for i in range(5)])
    m.segments = [Segment("part-a.npy", 3), Segment("part-b.npy", 2)]
    np.testing.assert_array_equal(load_matrix(tmp_path, m), np.concatenate([a, b]))
    assert load_matrix(tmp_path, Manifest(config=CONFIG, dim=5)).shape == (0, 5)


def writer(idir: Path, **kwargs: object) -> FolderWriter:
    return FolderWriter(idir, CONFIG, **kwargs)  # type: ignore[arg-type]


def test_writer_commits_checkpoints_and_compacts(tmp_path):
    idir = tmp_path / "idx"
    vecs = np.eye(4, dtype=np.float32)
    with writer(idir) as w:
        assert w.is_new and w.held() == {}
        w.set_dim(4)
        w.put([Entry("a.jpg", 1, 1), Entry("b.jpg", 2, 2)], vecs[:2])
        w.commit()
        first = read_manifest(idir)
        assert [s.rows for s in first.segments] == [2] and first.segments[0].file.startswith("part-")
        w.put([Entry("c.jpg", 3, 3)], vecs[2:3])
        w.drop(["a.jpg"])
        w.commit()
        assert w.finish("auto") == "none"
    m = read_manifest(idir)
    assert [e.path for e in m.entries] == ["b.jpg", "c.jpg"]
    assert len(m.segments) == 1 and m.segments[0].file.startswith("feats-")
    assert names(idir) == sorted([m.segments[0].file, "lock", MANIFEST])  # parts removed
    np.testing.assert_array_equal(load_matrix(idir, m), vecs[1:3])
    with writer(idir) as w:  # an unchanged re-run writes nothing
        assert not w.is_new and set(w.held()) == {"b.jpg", "c.jpg"}
        assert w.unchanged_since_commit()
        w.drop(["b.jpg"])
        assert not w.unchanged_since_commit()


def one_row_index(idir: Path) -> Path:
    """A committed index of one 2-d row for ``a.jpg``."""
    with writer(idir) as w:
        w.set_dim(2)
        w.put([Entry("a.jpg", 1, 1)], np.ones((1, 2), np.float32))
        w.commit()
        w.finish("none")
    return idir


def test_writer_keeps_the_committed_index_until_a_rebuild_commits(tmp_path):
    idir = one_row_index(tmp_path / "idx")
    old = read_manifest(idir)
    (idir / "part-stale.npy").write_bytes(b"x")
    (idir / "manifest.json.tmp-1-aa").write_bytes(b"x")
    (idir / "notes.txt").write_bytes(b"the user's")
    with writer(idir, rebuild=True) as w:
        assert w.is_new and w.rebuilt == "asked"
        assert names(idir) == sorted([old.segments[0].file, "lock", MANIFEST, "notes.txt"])
        assert read_manifest(idir) == old  # still whole and readable during the rebuild
        w.set_dim(2)
        w.put([Entry("b.jpg", 1, 1)], np.zeros((1, 2), np.float32))
        w.commit()
        assert old.segments[0].file not in names(idir)
    assert "notes.txt" in names(idir)  # nothing a user owns is deleted


def test_writer_refuses_to_build_on_a_missing_or_empty_matrix(tmp_path):
    idir = one_row_index(tmp_path / "idx")
    feats = idir / read_manifest(idir).segments[0].file
    feats.write_bytes(b"")
    with pytest.raises(IndexFolderError, match="empty; rebuild with --rebuild"):
        writer(idir).__enter__()
    feats.unlink()
    with pytest.raises(IndexFolderError, match="missing; rebuild with --rebuild"):
        writer(idir).__enter__()
    with writer(idir, rebuild=True) as w:  # --rebuild gets out of it
        assert w.is_new


def test_lock_is_exclusive(tmp_path):
    with Lock(tmp_path):
        with pytest.raises(IndexLockedError, match="another cbir process"):
            with Lock(tmp_path):
                pass
    with Lock(tmp_path):  # released: can be taken again
        pass


def test_lock_in_a_folder_that_cannot_be_written(tmp_path, monkeypatch):
    from filelock import FileLock

    def refuse(self: object, *args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(FileLock, "acquire", refuse)
    with pytest.raises(IndexWriteError, match="read-only; pass --index DIR"):
        with Lock(tmp_path):
            pass


def test_lock_held_by_another_process_and_released_when_it_dies(tmp_path):
    script = (
        "import sys, time; from pathlib import Path; from cbir.stores.folder.files import Lock\n"
        "with Lock(Path(sys.argv[1])):\n"
        "    print('locked', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(IndexLockedError):
            with Lock(tmp_path):
                pass
    finally:
        proc.kill()
        proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while True:  # the kernel drops the lock with the process
        try:
            with Lock(tmp_path):
                break
        except IndexLockedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
