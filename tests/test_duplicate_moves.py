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
