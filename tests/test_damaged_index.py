"""Damaged indexes are one line with what to do, for every command that reads them (issue 27,
items 10 and 11): a non-finite stored row, a feature file replaced by a folder, a manifest that is a
folder, an index folder that is a file. ``--like`` and ``duplicates`` search with stored rows, so
they must say what a query by file says, never "internal error".
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import save_image
from pixelcli import MODEL, pixel_family, run


@pytest.fixture
def indexed(tmp_path) -> Path:
    root = tmp_path / "data"
    for i in range(6):
        save_image(root / f"img{i}.png", seed=i)
    with pixel_family():
        assert run("index", root, *MODEL).code == 0
        yield root


def one_line(ran, *words: str) -> str:
    assert ran.code == 2, (ran.code, ran.out, ran.err)
    lines = ran.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cbir: error: "), ran.err
    assert "Traceback" not in ran.err and "internal error" not in ran.err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def every_reader(root: Path) -> list:
    return [
        run("query", root, root / "img0.png", "--no-plot", *MODEL),
        run("query", root, "--like", "img0.png", "--no-plot", *MODEL),
        run("duplicates", root, "--no-plot", "--verify", "none", "--threshold", "0.1"),
    ]


def feats_file(root: Path) -> Path:
    (found,) = (root / ".cbir").glob("feats-*.npy")
    return found


def test_a_non_finite_row_is_the_rebuild_hint_for_like_and_duplicates(indexed):
    path = feats_file(indexed)
    with open(path, "r+b") as f:  # one value of img0.png's row made NaN in place: a damaged disk or a tool
        header = len(path.read_bytes()) - 6 * 48 * 4
        f.seek(header + 5 * 4)
        f.write(np.array([np.nan], np.float32).tobytes())
    for ran in every_reader(indexed):
        one_line(ran, "non-finite", "--rebuild")
    assert run("index", indexed, *MODEL, "--rebuild").code == 0
    assert run("query", indexed, "--like", "img0.png", "--no-plot", *MODEL).code == 0


def test_a_feature_file_replaced_by_a_folder_is_the_rebuild_hint(indexed):
    path = feats_file(indexed)
    path.unlink()
    path.mkdir()
    for ran in every_reader(indexed):
        one_line(ran, "cannot be read", "--rebuild")
    one_line(run("index", indexed, *MODEL), "--rebuild")
    assert run("index", indexed, *MODEL, "--rebuild").code == 0
    assert path.is_dir()  # not ours to delete: left where it was
    assert run("query", indexed, "--like", "img0.png", "--no-plot", *MODEL).code == 0


def test_a_manifest_that_is_a_folder_and_an_index_folder_that_is_a_file(indexed):
    manifest = indexed / ".cbir" / "manifest.json"
    manifest.unlink()
    manifest.mkdir()
    for ran in every_reader(indexed):
        one_line(ran, "is a folder", "move it away")
    shutil.rmtree(indexed / ".cbir")
    (indexed / ".cbir").write_text("a file where the index folder should be")
    for ran in every_reader(indexed):
        one_line(ran, "is a file")
    one_line(run("index", indexed, *MODEL), "--index DIR")
    assert (indexed / ".cbir").read_text() == "a file where the index folder should be"
