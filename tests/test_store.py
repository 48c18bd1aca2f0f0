"""The on-disk index format: manifest, segments, atomic commits, staged renames, lock (cbir.store)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from cbir.errors import IndexFolderError, IndexLockedError
from cbir.index.store import (
    FEATS,
    MANIFEST,
    Entry,
    Lock,
    Manifest,
    Skipped,
    cleanup_stale,
    commit_manifest,
    finish_renames,
    load_matrix,
    read_manifest,
    segment_path,
    write_bytes_atomic,
    write_npy,
)


def sample_manifest() -> Manifest:
    return Manifest(
        config={"model": "mobilenet", "scales": [1.0], "alpha": 0.25},
        dim=4,
        dtype="float16",
        entries=[Entry("a.jpg", 10, 111), None, Entry("sub/été b.png", 20, 222)],
        segments=[
            {"file": "part-1.npy", "rows": 2},
            {"file": FEATS, "rows": 1, "staged": "feats.npy.tmp-1-ab"},
        ],
        skipped=[Skipped("bad.jpg", 3, 333, "not a recognised image")],
        weights_path="/w/m.h5",
        root="/data",
        extra={"files": ["whiten.npz"]},
    )


def test_manifest_round_trip():
    m = sample_manifest()
    back = Manifest.from_json(m.to_json())
    assert back == m
    assert back.entries[1] is None
    assert back.entries[2] == Entry("sub/été b.png", 20, 222)
    assert back.skipped[0].reason == "not a recognised image"
    assert json.loads(m.to_json())["format"] == "cbir-index"


def test_commit_and_read_manifest(tmp_path):
    assert read_manifest(tmp_path) is None
    m = sample_manifest()
    commit_manifest(tmp_path, m)
    back = read_manifest(tmp_path)
    assert back == m
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST]  # no temporary file left


def edit(m: Manifest, **changes) -> str:
    d = json.loads(m.to_json())
    d.update(changes)
    return json.dumps(d)


@pytest.mark.parametrize("bad", ["../x.jpg", "/etc/passwd", "a/../../x.jpg", "", "a//b.jpg"])
def test_manifest_refuses_escaping_entry_paths(bad):
    m = sample_manifest()
    with pytest.raises(ValueError, match="unsafe path"):
        Manifest.from_json(edit(m, entries=[["a.jpg", 1, 1], None, [bad, 1, 1]]))
    with pytest.raises(ValueError, match="unsafe path"):
        Manifest.from_json(edit(m, skipped=[[bad, 1, 1, "x"]]))


@pytest.mark.parametrize("name", ["../feats.npy", "/tmp/feats.npy", "sub/part.npy", ".hidden.npy", "..", 7])
@pytest.mark.parametrize("key", ["file", "staged"])
def test_manifest_refuses_bad_segment_names(name, key):
    m = sample_manifest()
    segments = [{"file": "part-1.npy", "rows": 2}, {"file": FEATS, "rows": 1, key: name}]
    with pytest.raises(ValueError, match="bad segment file name"):
        Manifest.from_json(edit(m, segments=segments))


@pytest.mark.parametrize("segment", [{"rows": 1}, {"file": None, "rows": 1}, {"file": "", "rows": 1}])
def test_manifest_refuses_segment_without_file(segment):
    segments = [{"file": "part-1.npy", "rows": 2}, segment]
    with pytest.raises(ValueError, match="bad segment file name"):
        Manifest.from_json(edit(sample_manifest(), segments=segments))


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"format": "something-else"}, "not a cbir index"),
        ({"version": 99}, "version 99"),
        ({"segments": [{"file": FEATS, "rows": 2}]}, "rows do not match"),
    ],
)
def test_manifest_refuses_inconsistent(changes, message):
    with pytest.raises(ValueError, match=message):
        Manifest.from_json(edit(sample_manifest(), **changes))


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[]",
        "",
        '{"format": "cbir-index", "version": 1}',
        '{"format": "cbir-index", "version": 1, "config": {}, "dim": 1, "entries": [], "segments": ["x"]}',
        '{"format": "cbir-index", "version": 1, "config": {}, "dim": 1, "entries": [7], "segments": []}',
    ],
)
def test_read_manifest_corrupt_is_index_error(tmp_path, text):
    (tmp_path / MANIFEST).write_text(text)
    with pytest.raises(IndexFolderError, match="corrupt"):
        read_manifest(tmp_path)


def test_read_manifest_with_escaping_path_is_index_error(tmp_path):
    (tmp_path / MANIFEST).write_text(
        edit(sample_manifest(), entries=[["../../etc/passwd", 1, 1], None, None])
    )
    with pytest.raises(IndexFolderError):
        read_manifest(tmp_path)


def test_write_bytes_atomic_replaces(tmp_path):
    target = tmp_path / "f.json"
    target.write_text("old")
    write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def make_index_dir(tmp_path, arrays: list[np.ndarray]) -> tuple:
    segments = []
    for i, a in enumerate(arrays):
        name = f"part-{i}.npy"
        write_npy(tmp_path / name, a)
        segments.append({"file": name, "rows": len(a)})
    n = sum(len(a) for a in arrays)
    m = Manifest(config={}, dim=arrays[0].shape[1], entries=[Entry(f"{i}.jpg", 1, 1) for i in range(n)])
    m.segments = segments
    commit_manifest(tmp_path, m)
    return tmp_path, m


def test_load_matrix_single_segment_is_memory_mapped(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    idir, m = make_index_dir(tmp_path, [a])
    got = load_matrix(idir, m)
    assert isinstance(got, np.memmap)
    np.testing.assert_array_equal(got, a)
    assert not isinstance(load_matrix(idir, m, mmap=False), np.memmap)


def test_load_matrix_concatenates_segments(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = -np.arange(8, dtype=np.float32).reshape(2, 4)
    idir, m = make_index_dir(tmp_path, [a, b])
    np.testing.assert_array_equal(load_matrix(idir, m), np.concatenate([a, b]))


def test_load_matrix_empty(tmp_path):
    m = Manifest(config={}, dim=5)
    assert load_matrix(tmp_path, m).shape == (0, 5)


def test_load_matrix_shape_mismatch(tmp_path):
    idir, m = make_index_dir(tmp_path, [np.zeros((3, 4), np.float32)])
    write_npy(idir / "part-0.npy", np.zeros((2, 4), np.float32))
    with pytest.raises(IndexFolderError, match="does not match its manifest"):
        load_matrix(idir, m)
    write_npy(idir / "part-0.npy", np.zeros((3, 5), np.float32))
    with pytest.raises(IndexFolderError, match="does not match its manifest"):
        load_matrix(idir, m)


def test_load_matrix_garbage_file(tmp_path):
    idir, m = make_index_dir(tmp_path, [np.zeros((3, 4), np.float32)])
    (idir / "part-0.npy").write_bytes(b"garbage, not npy")
    with pytest.raises(IndexFolderError, match="unreadable"):
        load_matrix(idir, m)


def test_load_matrix_refuses_pickles(tmp_path):
    idir, m = make_index_dir(tmp_path, [np.zeros((1, 4), np.float32)])
    np.save(idir / "part-0.npy", np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(IndexFolderError):
        load_matrix(idir, m)


def test_staged_segment_is_read_until_renamed(tmp_path):
    old = np.zeros((2, 3), np.float32)
    new = np.ones((2, 3), np.float32)
    write_npy(tmp_path / FEATS, old)  # the previous generation, still under the final name
    write_npy(tmp_path / "feats.npy.tmp-9-x", new)
    m = Manifest(config={}, dim=3, entries=[Entry("a.jpg", 1, 1), Entry("b.jpg", 1, 1)])
    m.segments = [{"file": FEATS, "rows": 2, "staged": "feats.npy.tmp-9-x"}]
    commit_manifest(tmp_path, m)

    m = read_manifest(tmp_path)
    assert segment_path(tmp_path, m.segments[0]) == tmp_path / "feats.npy.tmp-9-x"
    np.testing.assert_array_equal(load_matrix(tmp_path, m), new)

    finish_renames(tmp_path, m)
    assert not (tmp_path / "feats.npy.tmp-9-x").exists()
    m2 = read_manifest(tmp_path)
    assert "staged" not in m2.segments[0]
    assert segment_path(tmp_path, m2.segments[0]) == tmp_path / FEATS
    np.testing.assert_array_equal(load_matrix(tmp_path, m2), new)


def test_staged_already_renamed(tmp_path):
    # crash after the rename but before the manifest forgot the staged name
    write_npy(tmp_path / FEATS, np.ones((1, 3), np.float32))
    m = Manifest(config={}, dim=3, entries=[Entry("a.jpg", 1, 1)])
    m.segments = [{"file": FEATS, "rows": 1, "staged": "feats.npy.tmp-1-y"}]
    commit_manifest(tmp_path, m)
    m = read_manifest(tmp_path)
    assert segment_path(tmp_path, m.segments[0]) == tmp_path / FEATS
    finish_renames(tmp_path, m)
    assert read_manifest(tmp_path).segments == [{"file": FEATS, "rows": 1}]
    np.testing.assert_array_equal(load_matrix(tmp_path, m), np.ones((1, 3), np.float32))


def test_cleanup_stale(tmp_path):
    keep = ["part-a.npy", "whiten.npz", "notes.txt"]
    drop = ["part-old.npy", "feats.npy", "manifest.json.tmp-1-aa", "feats.npy.tmp-2-bb"]
    for name in keep + drop:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "part-dir").mkdir()
    m = Manifest(config={}, dim=1, entries=[], segments=[], extra={"files": ["whiten.npz"]})
    m.segments = [{"file": "part-a.npy", "rows": 0}]
    commit_manifest(tmp_path, m)
    cleanup_stale(tmp_path, m)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(keep + ["manifest.json", "part-dir"])


def test_cleanup_keeps_staged_file(tmp_path):
    (tmp_path / "feats.npy.tmp-3-cc").write_bytes(b"x")
    m = Manifest(config={}, dim=1, segments=[{"file": FEATS, "rows": 0, "staged": "feats.npy.tmp-3-cc"}])
    cleanup_stale(tmp_path, m)
    assert (tmp_path / "feats.npy.tmp-3-cc").exists()


def test_lock_is_exclusive(tmp_path):
    with Lock(tmp_path):
        with pytest.raises(IndexLockedError, match="another cbir process"):
            with Lock(tmp_path):
                pass
    with Lock(tmp_path):  # released: can be taken again
        pass


def test_lock_held_by_another_process_and_released_when_it_dies(tmp_path):
    script = (
        "import sys, time; from pathlib import Path; from cbir.index.store import Lock\n"
        "with Lock(Path(sys.argv[1])):\n"
        "    print('locked', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
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
