"""Moving duplicates out of the dataset and back: the log, failures half-way, undo."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cbir.core.errors import CbirError
from cbir.core.results import Match
from cbir.duplicates import moves
from cbir.duplicates.grouping import DuplicateGroup
from cbir.duplicates.moves import move_members, undo_moves


def dataset(tmp_path: Path) -> tuple[Path, list[DuplicateGroup]]:
    root = tmp_path / "photos"
    for rel in ("keep1.jpg", "a/copy1.jpg", "a/b/copy2.jpg", "keep2.jpg", "c/copy3.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())
    groups = [
        DuplicateGroup(
            str(root / "keep1.jpg"),
            [Match(str(root / "a/copy1.jpg"), 0.99), Match(str(root / "a/b/copy2.jpg"), 0.95)],
        ),
        DuplicateGroup(str(root / "keep2.jpg"), [Match(str(root / "c/copy3.jpg"), 0.97)]),
    ]
    return root, groups


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_moves_keep_relative_paths_log_every_move_and_undo_puts_them_back(tmp_path):
    root, groups = dataset(tmp_path)
    before = files(root)
    report = move_members(groups, root, tmp_path / "dups")
    assert report.moved == 3
    assert set(files(root)) == {"keep1.jpg", "keep2.jpg"}
    moved = {k: v for k, v in files(tmp_path / "dups").items() if not k.endswith(".jsonl")}
    assert moved == {k: v for k, v in before.items() if "copy" in k}
    records = [json.loads(line) for line in report.log.read_text().splitlines()]
    assert records[0]["log"] == moves.LOG_KIND and records[-1] == {"finished": 3}
    assert [r["moved"] for r in records if "moved" in r] == [
        str(root / p) for p in ("a/copy1.jpg", "a/b/copy2.jpg", "c/copy3.jpg")
    ]
    undone = undo_moves(report.log)
    assert (undone.restored, undone.not_moved, undone.problems) == (3, 0, [])
    assert files(root) == before
    again = undo_moves(report.log)  # a second undo changes nothing
    assert (again.restored, again.not_moved) == (0, 3) and files(root) == before


def test_nothing_moves_into_the_dataset_or_over_an_existing_file(tmp_path):
    root, groups = dataset(tmp_path)
    before = files(root)
    with pytest.raises(CbirError, match="outside the dataset"):
        move_members(groups, root, root / "dups")
    (tmp_path / "dups" / "c").mkdir(parents=True)
    (tmp_path / "dups" / "c" / "copy3.jpg").write_bytes(b"theirs")
    with pytest.raises(CbirError, match="exists already.*nothing was moved"):
        move_members(groups, root, tmp_path / "dups")
    assert files(root) == before and (tmp_path / "dups" / "c" / "copy3.jpg").read_bytes() == b"theirs"
    (root / "a/copy1.jpg").unlink()  # gone since indexing
    with pytest.raises(CbirError, match="copy1.jpg is gone since it was indexed.*nothing was moved"):
        move_members(groups, root, tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere").exists()


def test_a_failure_half_way_leaves_a_log_of_exactly_what_moved(tmp_path, monkeypatch):
    root, groups = dataset(tmp_path)
    real = moves.move_file
    calls = []

    def flaky(origin, target):
        calls.append(origin)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(origin, target)

    monkeypatch.setattr(moves, "move_file", flaky)
    with pytest.raises(CbirError, match="1 file\\(s\\) moved") as err:
        move_members(groups, root, tmp_path / "dups")
    monkeypatch.setattr(moves, "move_file", real)
    log = next((tmp_path / "dups").glob("*.jsonl"))
    assert str(log) in str(err.value)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["moved"] for r in records if "moved" in r] == [str(root / "a/copy1.jpg")]
    assert records[-1]["failed"] == str(root / "a/b/copy2.jpg") and "finished" not in records[-1]
    assert not (root / "a/copy1.jpg").exists() and (root / "a/b/copy2.jpg").exists()
    undone = undo_moves(log)
    assert (undone.restored, undone.not_moved, undone.problems) == (1, 1, [])
    assert (root / "a/copy1.jpg").read_bytes() == b"a/copy1.jpg"


def test_undo_settles_a_move_whose_record_was_cut_and_never_overwrites(tmp_path):
    root, groups = dataset(tmp_path)
    report = move_members(groups, root, tmp_path / "dups")
    lines = report.log.read_text().splitlines()
    # as if killed right after the second file moved: its "moved" line and the rest never written,
    # and the last line cut in the middle
    cut = [line for line in lines if '"moved"' not in line or "copy1" in line][:4]
    report.log.write_text("\n".join(cut) + '\n{"move": "/trunc')
    (root / "c").mkdir(exist_ok=True)
    os.rename(tmp_path / "dups/c/copy3.jpg", root / "c/copy3.jpg")  # the third had not moved
    (root / "a/copy1.jpg").write_bytes(b"new file by the user")  # the user made a new file there
    undone = undo_moves(report.log)
    assert undone.restored == 1 and (root / "a/b/copy2.jpg").exists()
    assert (root / "a/copy1.jpg").read_bytes() == b"new file by the user"
    assert (tmp_path / "dups/a/copy1.jpg").read_bytes() == b"a/copy1.jpg"
    assert len(undone.problems) == 1 and "exists again" in undone.problems[0]


def test_undo_refuses_what_is_not_a_move_log(tmp_path):
    other = tmp_path / "notes.jsonl"
    other.write_text('{"hello": 1}\n')
    with pytest.raises(CbirError, match="not a cbir duplicates move log"):
        undo_moves(other)
    with pytest.raises(CbirError, match="cannot read the move log"):
        undo_moves(tmp_path / "missing.jsonl")


# ------------------------------------------------------------------------------- issue 27: moves and undo


def test_undo_from_another_folder_puts_files_back_where_they_were(tmp_path, monkeypatch):
    """Issue 27 item 2: the log records real absolute paths, so a relative dataset path does not
    make undo restore into the current folder."""
    root, groups = dataset(tmp_path)
    before = files(root)
    monkeypatch.chdir(tmp_path)
    rel_groups = [
        DuplicateGroup(
            os.path.relpath(g.representative),
            [Match(os.path.relpath(m.path), m.score) for m in g.members],
        )
        for g in groups
    ]
    report = move_members(rel_groups, "photos", tmp_path / "dups")
    header = json.loads(report.log.read_text().splitlines()[0])
    assert header["dataset"] == os.path.realpath(root) and header["version"] == 2
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    undone = undo_moves(report.log)
    assert (undone.restored, undone.problems) == (3, [])
    assert files(root) == before and list(elsewhere.iterdir()) == []


def test_undo_refuses_when_the_dataset_is_not_where_the_log_says(tmp_path):
    root, groups = dataset(tmp_path)
    report = move_members(groups, root, tmp_path / "dups")
    moved_away = tmp_path / "renamed"
    root.rename(moved_away)
    with pytest.raises(CbirError, match="is not at .*photos.*nothing was restored"):
        undo_moves(report.log)
    assert not root.exists()  # no folder made
    assert len(list((tmp_path / "dups").rglob("*.jpg"))) == 3


def test_undo_of_a_version_1_log_with_relative_paths(tmp_path, monkeypatch):
    """Old logs still undo from the folder they were made in, and are refused elsewhere."""
    root, groups = dataset(tmp_path)
    (tmp_path / "dups/a").mkdir(parents=True)
    os.rename(root / "a/copy1.jpg", tmp_path / "dups/a/copy1.jpg")
    old = [
        {"log": moves.LOG_KIND, "version": 1, "dataset": "photos", "dest": "dups"},
        {"move": "photos/a/copy1.jpg", "to": "dups/a/copy1.jpg"},
        {"moved": "photos/a/copy1.jpg"},
        {"finished": 1},
    ]
    log = tmp_path / "dups/cbir-moves-old.jsonl"
    log.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in old))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(CbirError, match="is not at"):
        undo_moves(log)
    assert list((tmp_path / "elsewhere").iterdir()) == []
    monkeypatch.chdir(tmp_path)
    assert undo_moves(log).restored == 1 and (root / "a/copy1.jpg").read_bytes() == b"a/copy1.jpg"


def test_undo_remakes_folders_inside_the_dataset_only(tmp_path):
    root, groups = dataset(tmp_path)
    report = move_members(groups, root, tmp_path / "dups")
    (root / "c").rmdir()  # emptied by the move, then removed by the user
    assert undo_moves(report.log).restored == 3 and (root / "c/copy3.jpg").exists()


def test_a_target_that_lands_back_inside_the_dataset_is_refused(tmp_path):
    """Issue 27 item 9: --move-to a parent of the dataset (DATA/DATA/x.jpg would go to DATA/x.jpg)."""
    root = tmp_path / "DATA"
    (root / "DATA").mkdir(parents=True)
    (root / "keep.jpg").write_bytes(b"k")
    (root / "DATA/x.jpg").write_bytes(b"x")
    groups = [DuplicateGroup(str(root / "keep.jpg"), [Match(str(root / "DATA/x.jpg"), 0.99)])]
    with pytest.raises(CbirError, match="back inside the dataset.*nothing was moved"):
        move_members(groups, root, tmp_path)
    assert (root / "DATA/x.jpg").read_bytes() == b"x" and not list(tmp_path.glob("*.jsonl"))
    # a target folder that is a link into the dataset is the same
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest/DATA").symlink_to(root)
    with pytest.raises(CbirError, match="back inside the dataset"):
        move_members(groups, root, tmp_path / "dest")


def test_members_changed_since_indexing_are_skipped_and_reported(tmp_path, caplog):
    """Issue 27 item 12: size and mtime compared with the index before moving (whatever --verify)."""
    root, groups = dataset(tmp_path)
    everything = [g.representative for g in groups] + [m.path for g in groups for m in g.members]
    indexed = {p: (os.lstat(p).st_size, os.lstat(p).st_mtime_ns) for p in everything}
    (root / "a/copy1.jpg").write_bytes(b"edited by the user since")  # a member changed
    os.utime(root / "keep2.jpg", ns=(1, 1))  # the image kept for copy3 changed
    report = move_members(groups, root, tmp_path / "dups", indexed)
    assert report.moved == 1 and (tmp_path / "dups/a/b/copy2.jpg").exists()
    assert (root / "a/copy1.jpg").exists() and (root / "c/copy3.jpg").exists()
    assert sorted(s.split(":")[0] for s in report.skipped) == [
        str(root / "a/copy1.jpg"),
        str(root / "c/copy3.jpg"),
    ]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 2 and all("changed since it was indexed" in w for w in warned)


def test_a_name_that_is_not_utf8_round_trips_through_the_log(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    keep, odd = os.fsdecode(b"keep\xe9.jpg"), os.fsdecode(b"bad\xff\\name.jpg")
    (root / keep).write_bytes(b"k")
    (root / odd).write_bytes(b"odd")
    report = move_members(
        [DuplicateGroup(str(root / keep), [Match(str(root / odd), 0.99)])], root, tmp_path / "d"
    )
    assert report.log.read_bytes().isascii()
    assert os.listdir(os.fsencode(tmp_path / "d")) == [
        b"bad\xff\\name.jpg",
        os.fsencode(report.log.name),
    ] or (
        sorted(os.listdir(os.fsencode(tmp_path / "d")))
        == sorted([b"bad\xff\\name.jpg", os.fsencode(report.log.name)])
    )
    assert undo_moves(report.log).restored == 1
    assert (root / odd).read_bytes() == b"odd"


@pytest.mark.parametrize(
    "content, words",
    [
        (b"\x00\xff\xfe garbage \x89PNG\r\n", "not JSON"),
        (b"[1,2,3]\n", "not a cbir duplicates move log"),
        (b'{"log": "cbir duplicates moves", "version": 2, "dataset": "/x"}\n', "'dest' is not a path"),
        (b'{"log": "cbir duplicates moves", "version": "2", "dataset": "/x", "dest": "/y"}\n', "version"),
        (b'{"log": "cbir duplicates moves", "version": 99, "dataset": "/x", "dest": "/y"}\n', "version"),
        (b'{"log": "cbir duplicates moves", "version": 2, "dataset": "rel", "dest": "/y"}\n', "not a path"),
        (
            b'{"log": "cbir duplicates moves", "version": 2, "dataset": "/x", "dest": "/y"}\n'
            b'{"move": "/x/a"}\n'
            b'{"finished": 0}\n',
            "'to' is not a path",
        ),
        (
            b'{"log": "cbir duplicates moves", "version": 2, "dataset": "/x", "dest": "/y"}\n'
            b'{"move": "/x/a", "to": 7}\n{"finished": 0}\n',
            "'to' is not a path",
        ),
        (
            b'{"log": "cbir duplicates moves", "version": 2, "dataset": "/x", "dest": "/y"}\n'
            b'{"move": "/x/a\\u0000b", "to": "/y/a"}\n{"finished": 0}\n',
            "'move' is not a path",
        ),
        (
            b'{"log": "cbir duplicates moves", "version": 2, "dataset": "/x", "dest": "/y"}\n'
            b'{"move": "/x/\\ud800", "to": "/y/a"}\n{"finished": 0}\n',
            "'move' is not a path",
        ),
        (
            b'{"log": "cbir duplicates moves", "version": 2, "dataset": "/x", "dest": "/y"}\n'
            b'{"move": "/etc/passwd", "to": "/y/a"}\n{"finished": 0}\n',
            "outside the dataset",
        ),
        (
            b'{"log": "cbir duplicates moves", "version": 2, "dataset": "/x", "dest": "/y"}\n'
            b'{"finished": true}\n[]\n',
            "wrong type",
        ),
        (
            b'{"log": "cbir duplicates moves", "version": 2, "dataset": "/x", "dest": "/y"}\n'
            b'{"hello": 1}\n{"finished": 0}\n',
            "not a move record",
        ),
        (b"[" * 100000 + b"\n{}\n", "not JSON"),
    ],
)
def test_a_malformed_log_is_one_line_and_moves_nothing(tmp_path, content, words):
    log = tmp_path / "bad.jsonl"
    log.write_bytes(content)
    with pytest.raises(CbirError, match=words) as err:
        undo_moves(log)
    assert "\n" not in str(err.value)


def test_a_move_that_fails_half_way_through_one_file_leaves_it_where_it_was(tmp_path, monkeypatch):
    """The hard link is made but the origin cannot be removed (its folder is read-only): the link
    goes, and the log says the move failed."""
    root, groups = dataset(tmp_path)
    before = files(root)
    real_unlink = os.unlink

    def refuse(path, *args, **kwargs):
        if str(path).startswith(str(root)):
            raise PermissionError(13, "Permission denied", str(path))
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(moves.os, "unlink", refuse)
    with pytest.raises(CbirError, match="cannot move .*copy1.jpg: Permission denied; 0 file"):
        move_members(groups, root, tmp_path / "dups")
    monkeypatch.undo()
    assert files(root) == before
    assert [p.name for p in (tmp_path / "dups").rglob("*") if p.is_file()][0].endswith(".jsonl")
    assert len([p for p in (tmp_path / "dups").rglob("*") if p.is_file()]) == 1


def test_a_log_that_cannot_be_written_moves_nothing(tmp_path, monkeypatch):
    root, groups = dataset(tmp_path)
    before = files(root)

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(moves.os, "fsync", full)
    with pytest.raises(CbirError, match="cannot write the move log.*No space left.*nothing was moved"):
        move_members(groups, root, tmp_path / "dups")
    monkeypatch.undo()
    assert files(root) == before and not list((tmp_path / "dups").glob("*.jsonl"))


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (another file system, so moves copy): needs the right to mount; else skipped."""
    import subprocess

    where = tmp_path / "disk"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small file system here (needs root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def test_moves_onto_a_full_or_read_only_disk_are_one_line_and_nothing_is_half_moved(tmp_path, small_disk):
    """Issue 27 item 8 on real file systems: a full one (the copy fails part-way) and a read-only one."""
    import subprocess

    root, groups = dataset(tmp_path)
    (root / "a/b/copy2.jpg").write_bytes(os.urandom(400 * 1024))  # larger than the disk
    before = files(root)
    with pytest.raises(CbirError, match="No space left on device; 1 file\\(s\\) moved"):
        move_members(groups, root, small_disk / "dups")
    assert not list(small_disk.rglob("*.cbir-part"))
    log = next(small_disk.glob("dups/*.jsonl"))
    assert undo_moves(log).restored == 1 and files(root) == before
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(CbirError, match="Read-only file system.*nothing was moved"):
        move_members(groups, root, small_disk / "dups2")
    with pytest.raises(CbirError, match="Read-only file system.*nothing was moved"):
        move_members(groups, root, small_disk / "dups")
    assert files(root) == before


KILLED_MOVE = """
import os, sys
from cbir.core.results import Match
from cbir.duplicates import moves
from cbir.duplicates.grouping import DuplicateGroup

root, dest, name, when = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
real, calls = getattr(os, name), [0]

def dying(*args, **kwargs):
    calls[0] += 1
    if calls[0] == when:
        os._exit(137)  # as kill -9: no handler, no cleanup
    return real(*args, **kwargs)

setattr(moves.os, name, dying)
groups = [
    DuplicateGroup(
        root + "/keep1.jpg", [Match(root + "/a/copy1.jpg", 0.99), Match(root + "/a/b/copy2.jpg", 0.9)]
    ),
    DuplicateGroup(root + "/keep2.jpg", [Match(root + "/c/copy3.jpg", 0.97)]),
]
moves.move_members(groups, root, dest)
os._exit(0)
"""


@pytest.mark.parametrize("name, count", [("link", 3), ("unlink", 3), ("fsync", 5)])
def test_a_move_killed_at_any_point_undoes_to_the_same_bytes(tmp_path, name, count):
    import subprocess
    import sys

    from helpers import REPO

    for when in range(1, count + 1):
        base = tmp_path / f"{name}{when}"
        base.mkdir()
        root, _ = dataset(base)
        before = files(root)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        child = subprocess.run(
            [sys.executable, "-c", KILLED_MOVE, str(root), str(base / "dups"), name, str(when)], env=env
        )
        assert child.returncode == 137
        logs = list((base / "dups").glob("*.jsonl"))
        if logs:
            undone = undo_moves(logs[0])
            assert undone.problems == []
        assert files(root) == before
        assert [p for p in (base / "dups").rglob("*") if p.is_file() and p.suffix != ".jsonl"] == []
