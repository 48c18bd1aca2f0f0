"""The fault and bad-input suite (issue 9): torn reads, a full disk, bad input, tampered indexes.

Each case is a real run of the library or the CLI against a folder in tmp. Cases that already held
before (kill -9 and Ctrl-C at checkpoints, concurrent indexers) live in test_indexer.py and
test_store.py.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, TINY_MODEL, StandIn, cli, never, stand_in_vector
from helpers import run_index as run

import cbir.stores.folder.files as files_mod
import cbir.stores.folder.snapshot as snapshot_mod
from cbir.core.errors import BadImageError, IndexWriteError
from cbir.indexing.indexer import IndexOptions, update_index
from cbir.search.approximate import ApproximateSearcher
from cbir.stores.folder.snapshot import open_index
from cbir.stores.folder.writer import read_manifest


def vectors(index) -> dict[str, np.ndarray]:
    return {p: np.array(index.feats[i]) for i, p in enumerate(index.paths)}


def touch(path: Path, ns: int) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + ns))


# ---------------------------------------------------------------------------------------------- F1


def test_reader_paused_between_its_reads_sees_one_whole_version(
    image_folder, tiny_config, tiny_embedder, monkeypatch
):
    root = image_folder(12)
    run(root, tiny_config, tiny_embedder)
    truth = vectors(open_index(root))
    runs = []

    def indexer_commits_meanwhile() -> None:
        if len(runs) < 2:  # twice: the reader's first retry is interrupted too
            for name in ("img01.jpg", "img04.jpg", "img07.jpg"):
                touch(root / name, 10**9 * (len(runs) + 1))  # same rows, moved to the end of the matrix
            runs.append(run(root, tiny_config, tiny_embedder))

    monkeypatch.setattr(snapshot_mod, "between_reads", indexer_commits_meanwhile)
    index = open_index(root)
    assert len(runs) == 2 and all(r.updated == 3 for r in runs)
    assert index.paths != sorted(index.paths)  # the reader got the newest order...
    for rel, vec in vectors(index).items():  # ...and every row belongs to its path
        np.testing.assert_allclose(vec, truth[rel], atol=1e-5)
    assert index.is_current()


def test_long_lived_reader_notices_and_switches(image_folder, make_image, tiny_config, tiny_embedder):
    root = image_folder(5)
    run(root, tiny_config, tiny_embedder)
    index = open_index(root)
    assert index.is_current() and index.refresh() is index
    make_image(root / "new.jpg", seed=50)
    run(root, tiny_config, tiny_embedder)
    assert not index.is_current()
    newer = index.refresh()
    assert newer is not index and len(newer) == 6 and len(index) == 5  # the old one stays usable
    assert np.asarray(index.feats).shape == (5, tiny_embedder.dim)


# ---------------------------------------------------------------------------------------------- F2


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 1 MiB tmpfs (skipped where this process cannot mount one)."""
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip("cannot mount a tmpfs here; test_disk_full_injected covers the same path")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_disk_full_on_a_real_small_disk(image_folder, tiny_config, tiny_embedder, small_disk):
    root = image_folder(60)  # 60 rows of 1280 float32: 300 KiB each copy; parts + merge + manifest > 1 MiB
    idir = small_disk / "idx"
    run(root, tiny_config, tiny_embedder, index_dir=idir, checkpoint_every=20)
    committed = read_manifest(idir)
    before = vectors(open_index(root, idir))
    (idir / "filler").write_bytes(b"\0" * (1024 * 1024 - 3 * 300 * 1024))  # leave room for less than a copy
    for i in range(60):
        touch(root / f"img{i:02d}.jpg", 10**9)
    with pytest.raises(IndexWriteError, match="disk is full"):
        run(root, tiny_config, tiny_embedder, index_dir=idir, checkpoint_every=20)
    assert not [p for p in idir.iterdir() if ".tmp-" in p.name]  # no temporary left behind
    index = open_index(root, idir)  # the committed index is whole (perhaps with some checkpoints more)
    for rel, vec in vectors(index).items():
        np.testing.assert_allclose(vec, before[rel], atol=1e-5)
    assert read_manifest(idir).config == committed.config
    (idir / "filler").unlink()
    report = run(root, tiny_config, tiny_embedder, index_dir=idir)  # with space again, it completes
    assert report.total == 60 and len(open_index(root, idir)) == 60


def test_disk_full_injected(image_folder, tiny_config, tiny_embedder, monkeypatch):
    root = image_folder(10)
    run(root, tiny_config, tiny_embedder, checkpoint_every=4)
    before = (root / ".cbir" / "manifest.json").read_bytes()
    real = files_mod.write_matrix

    def full(path: Path, *args: object, **kwargs: object) -> None:
        if path.name.startswith("feats-"):
            raise files_mod.write_error(path.parent, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("cbir.stores.folder.writer.write_matrix", full)
    touch(root / "img03.jpg", 10**9)
    with pytest.raises(
        IndexWriteError, match=r"cannot write the index in .*No space left on device \(the disk is full"
    ):
        run(root, tiny_config, tiny_embedder)
    assert len(open_index(root)) == 10  # the checkpoint of the changed image is committed, still whole
    assert (root / ".cbir" / "manifest.json").read_bytes() != before
    monkeypatch.undo()
    assert run(root, tiny_config, never).total == 10  # next run: only the merge was missing


@pytest.mark.slow
def test_disk_full_from_the_command_line(tmp_path, small_disk, make_image):
    data = tmp_path / "data"
    for i in range(40):  # 40 rows of 1280 float32: 200 KiB, more than the room left
        make_image(data / f"{i}.jpg", seed=i)
    (small_disk / "filler").write_bytes(b"\0" * (1024 * 1024 - 150 * 1024))
    proc = cli(
        "index",
        data,
        "--index",
        small_disk / "idx",
        *TINY_MODEL,
        cwd=tmp_path,
        script=None,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cbir: error: cannot write the index in "), proc.stderr
    assert "disk is full" in lines[0] and "Traceback" not in proc.stderr
    assert not [p for p in (small_disk / "idx").iterdir() if ".tmp-" in p.name]


# ---------------------------------------------------------------------------------------------- F3


class DeniedOnce:
    """An embedder stand-in: ``denied`` fails with a permission error until ``allow`` is called."""

    def __init__(self, inner, denied: str) -> None:
        self.inner, self.denied, self.allowed = inner, denied, False
        self.config, self.dim = inner.config, inner.dim
        self.asked: list[str] = []

    def embed_files(self, paths, **kwargs):
        self.asked += [Path(p).name for p in paths]
        for pos, item in self.inner.embed_files(paths, **kwargs):
            if Path(paths[pos]).name == self.denied and not self.allowed:
                yield pos, BadImageError("cannot read file (Permission denied)", transient=True)
            else:
                yield pos, item


def test_access_errors_are_retried_without_a_touch(image_folder, tiny_config, tiny_embedder):
    root = image_folder(4)
    embedder = DeniedOnce(tiny_embedder, "img02.jpg")
    first = run(root, tiny_config, embedder)
    assert first.total == 3 and [s["path"] for s in first.skipped] == ["img02.jpg"]
    assert read_manifest(root / ".cbir").skipped[0].transient
    embedder.allowed, embedder.asked = True, []  # chmod fixed it; the file did not change
    second = run(root, tiny_config, embedder)
    assert embedder.asked == ["img02.jpg"] and (second.added, second.total, second.known_bad) == (1, 4, 0)


# ---------------------------------------------------------------------------------------------- F4-F9


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> Path:
    """A small folder indexed once by the CLI with random weights (the tests copy it before damage)."""
    from conftest import save_image

    base = tmp_path_factory.mktemp("faults")
    for i in range(6):
        save_image(base / "data" / f"{i}.jpg", seed=i)
    proc = cli(
        "index",
        base / "data",
        *TINY_MODEL,
        cwd=base,
        script=None,
    )
    assert proc.returncode == 0, proc.stderr
    return base / "data"


def damaged_copy(indexed: Path, tmp_path: Path) -> tuple[Path, Path]:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(indexed, data, symlinks=True)
    (segment,) = read_manifest(data / ".cbir").segments
    return data, data / ".cbir" / segment.file


def one_line(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cbir: error: "), proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("damage", ["empty", "missing"])
@pytest.mark.parametrize("command", ["query", "index"])
def test_empty_or_missing_matrix(indexed, tmp_path, damage, command):
    data, feats = damaged_copy(indexed, tmp_path)
    if damage == "empty":
        feats.write_bytes(b"")
    else:
        feats.unlink()
    args = ["query", data, data / "1.jpg", "--no-plot"] if command == "query" else ["index", data]
    one_line(cli(*args, cwd=tmp_path, script=None), damage, "rebuild with --rebuild")


@pytest.mark.slow
def test_non_finite_rows_are_an_error_not_json_infinity(indexed, tmp_path):
    data, feats = damaged_copy(indexed, tmp_path)
    matrix = np.load(feats)
    matrix[2] = np.nan
    matrix[3] = -np.inf
    np.save(feats, matrix)
    proc = cli("query", data, data / "1.jpg", "--json", cwd=tmp_path, script=None)
    one_line(proc, "non-finite", "--rebuild")
    assert "Infinity" not in proc.stdout and "NaN" not in proc.stdout


@pytest.mark.parametrize("bad", ["a\u0000b.jpg", "line\nbreak.jpg", "tab\there.jpg"])
def test_control_characters_in_manifest_paths(indexed, tmp_path, bad):
    data, _ = damaged_copy(indexed, tmp_path)
    path = data / ".cbir" / "manifest.json"
    doc = json.loads(path.read_text())
    doc["entries"][0][0] = bad
    path.write_text(json.dumps(doc))
    outside = tmp_path / "q.jpg"
    outside.write_bytes((data / "1.jpg").read_bytes())
    one_line(
        cli("query", data, outside, "--no-plot", "--index", data / ".cbir", cwd=tmp_path, script=None),
        "corrupt",
        "--rebuild",
    )


@pytest.mark.parametrize(
    "args",
    [
        ["-k", "-1"],
        ["-k", "0"],
        ["--top", "x"],
        ["--workers", "-1"],
        ["--workers", "0"],
        ["--size", "10"],
        ["--batch-size", "0"],
        ["--checkpoint-every", "0"],
        ["--max-pixels", "0"],
        ["--max-file-mb", "-2"],
        ["--gem-p", "0"],
        ["--qe", "-1"],
        ["--alpha", "nan"],
        ["--whiten-dim", "0"],
        ["--scales", "1,0"],
    ],
)
def test_numeric_options_are_checked_when_parsed(tmp_path, args):
    proc = cli(
        "-dataset", tmp_path / "nowhere", "-img_query", tmp_path / "q.jpg", *args, cwd=tmp_path, timeout=60
    )
    line = one_line(proc, args[0])
    assert "see run_cbir.py --help" in line


def test_write_errors_in_the_index_folder_are_one_line(indexed, tmp_path):
    data, _ = damaged_copy(indexed, tmp_path)
    manifest = data / ".cbir" / "manifest.json"
    manifest.unlink()
    manifest.mkdir()  # manifest.json is a folder: unreadable, and it cannot be replaced
    one_line(
        cli(
            "index",
            data,
            *TINY_MODEL,
            cwd=tmp_path,
            script=None,
        ),
        "manifest.json is a folder; move it away",
    )


# ---------------------------------------------------------------------------------------------- kill -9

KILL_SCRIPT = """
import os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from helpers import StandIn
import cbir.stores.folder.files as files
import cbir.stores.folder.writer as store
from cbir.indexing.indexer import IndexOptions, update_index

target, where = int(sys.argv[2]), sys.argv[3]
seen = [0]

def dying(write):
    def wrapped(path, *args, **kwargs):
        commit = path.name == "manifest.json"
        seen[0] += commit
        if commit and seen[0] == target and where == "before":
            os._exit(137)  # as kill -9: no handler, no cleanup
        write(path, *args, **kwargs)
        if commit and seen[0] == target and where == "after":
            os._exit(137)
    return wrapped

store.write_bytes = dying(files.write_bytes)
options = IndexOptions(checkpoint_every=5, ann="hnsw", progress=False)
update_index(Path(sys.argv[1]), StandIn(), options=options)
print("finished", flush=True)
"""


def rows_belong_to_their_files(root: Path, index) -> None:
    for row, rel in enumerate(index.paths):
        expected = stand_in_vector(rel, (root / rel).stat().st_mtime_ns)
        np.testing.assert_array_equal(np.asarray(index.feats[row]), expected)


COMMITS = 5  # 12 images, a checkpoint every 5: rows 5, 10, 12; the compacted matrix; the ANN


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize("commit", range(1, COMMITS + 2))
def test_kill_at_each_commit_point(tmp_path, make_image, commit, where):

    root = tmp_path / "data"
    for i in range(12):
        make_image(root / f"{i:02d}.jpg", seed=i)
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(root), str(commit), where, str(REPO / "tests")],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=120,
    )
    finished = commit > COMMITS
    assert (proc.returncode == 0) == finished, proc.stderr[-2000:]
    assert ("finished" in proc.stdout) == finished
    idir = root / ".cbir"
    manifest = read_manifest(idir)
    if manifest is None:
        assert (commit, where) == (1, "before")  # killed before anything was committed
    else:
        index = open_index(root)  # whatever was committed is whole and consistent
        for row, rel in enumerate(index.paths):
            np.testing.assert_array_equal(
                np.asarray(index.feats[row]), stand_in_vector(rel, (root / rel).stat().st_mtime_ns)
            )
    report = update_index(root, StandIn(), options=IndexOptions(ann="hnsw", progress=False))
    assert report.total == 12 and report.added == 12 - report.unchanged
    index = open_index(root)
    assert sorted(index.paths) == [f"{i:02d}.jpg" for i in range(12)]
    for row, rel in enumerate(index.paths):
        np.testing.assert_array_equal(
            np.asarray(index.feats[row]), stand_in_vector(rel, (root / rel).stat().st_mtime_ns)
        )
    committed = read_manifest(idir)
    assert sorted(p.name for p in idir.iterdir()) == sorted(["lock", "manifest.json", *committed.files()])
    assert isinstance(index.searcher(), ApproximateSearcher)


# ---------------------------------------------------------------------------------------------- read-only


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_read_only_index_folder_serves_an_up_to_date_index(
    image_folder, make_image, tiny_config, tiny_embedder, monkeypatch
):
    from filelock import FileLock

    root = image_folder(4)
    run(root, tiny_config, tiny_embedder)
    before = folder_bytes(root / ".cbir")

    def read_only(self: object, *args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(FileLock, "acquire", read_only)
    report = run(root, tiny_config, never)  # nothing to do: no lock needed, nothing written
    assert (report.unchanged, report.total) == (4, 4)
    make_image(root / "new.jpg", seed=40)
    with pytest.raises(IndexWriteError, match="read-only; pass --index DIR"):
        run(root, tiny_config, tiny_embedder)
    assert folder_bytes(root / ".cbir") == before


@pytest.fixture
def read_only_disk(tmp_path) -> Iterator[tuple[Path, Callable[[], None]]]:
    """A small tmpfs and a function that remounts it read-only (skipped where mounting is refused)."""
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here; test_read_only_index_folder_serves... covers the logic")

    def freeze() -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True, capture_output=True)

    try:
        yield mount, freeze
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.slow
def test_query_on_a_read_only_dataset_from_the_command_line(indexed, tmp_path, read_only_disk):
    import shutil

    mount, freeze = read_only_disk
    data = mount / "data"
    shutil.copytree(indexed, data, symlinks=True)
    freeze()
    proc = cli("-dataset", data, "-img_query", data / "1.jpg", "--json", cwd=tmp_path)  # run_cbir.py updates
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert len(doc["results"][0]["matches"]) == 5 and doc["index"]["unchanged"] == 6
    assert "Traceback" not in proc.stderr
    one_line(cli("index", data, "--rebuild", *TINY_MODEL, cwd=tmp_path, script=None), "Read-only file system")
