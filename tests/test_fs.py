"""Discovery of the images of a dataset folder (cbir.fs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cbir.core.errors import DatasetError
from cbir.ingest.files import find_images, safe_join


def touch(root: Path, *rels: str) -> None:
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")  # discovery never decodes: any content will do


def test_recursive_and_no_recursive(tmp_path):
    touch(tmp_path, "a.jpg", "sub/b.jpg", "sub/deeper/c.png", "notes.txt")
    assert find_images(tmp_path) == ["a.jpg", "sub/b.jpg", "sub/deeper/c.png"]
    assert find_images(tmp_path, recursive=False) == ["a.jpg"]


def test_extensions_are_case_insensitive(tmp_path):
    names = ["a.JPG", "b.jpeg", "c.Png", "d.BMP", "e.gif", "f.WebP", "g.tif", "h.TIFF"]
    touch(tmp_path, *names, "i.txt", "j.JPG.bak", "jpg", "k.h5")
    assert find_images(tmp_path) == sorted(names)


def test_explicit_extensions(tmp_path):
    touch(tmp_path, "a.jpg", "b.PNG", "c.gif")
    assert find_images(tmp_path, extensions=[".PNG", ".gif"]) == ["b.PNG", "c.gif"]


def test_hidden_files_and_folders(tmp_path):
    touch(tmp_path, "a.jpg", ".hidden.jpg", ".secret/b.jpg", "sub/.c.jpg")
    assert find_images(tmp_path) == ["a.jpg"]
    assert find_images(tmp_path, include_hidden=True) == [
        ".hidden.jpg",
        ".secret/b.jpg",
        "a.jpg",
        "sub/.c.jpg",
    ]


def test_appledouble_files_always_skipped(tmp_path):
    touch(tmp_path, "IMG.JPG", "._IMG.JPG", "sub/._x.png")
    assert find_images(tmp_path) == ["IMG.JPG"]
    assert find_images(tmp_path, include_hidden=True) == ["IMG.JPG"]


def test_index_folder_skipped(tmp_path):
    touch(tmp_path, "a.jpg", ".cbir/thumb.jpg", "sub/.cbir/x.png")
    assert find_images(tmp_path, include_hidden=True) == ["a.jpg"]


def test_skip_dirs(tmp_path):
    touch(tmp_path, "a.jpg", "myindex/b.jpg")
    assert find_images(tmp_path, skip_dirs=[tmp_path / "myindex"]) == ["a.jpg"]


def test_exclude_patterns(tmp_path):
    touch(tmp_path, "a.jpg", "b_thumb.jpg", "raw/c.jpg", "keep/d.jpg", "keep/e_thumb.png")
    assert find_images(tmp_path, exclude=["*_thumb.*"]) == ["a.jpg", "keep/d.jpg", "raw/c.jpg"]
    assert find_images(tmp_path, exclude=["raw/"]) == [
        "a.jpg",
        "b_thumb.jpg",
        "keep/d.jpg",
        "keep/e_thumb.png",
    ]
    assert find_images(tmp_path, exclude=["keep/*", "raw"]) == ["a.jpg", "b_thumb.jpg"]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlink_loop_terminates_and_lists_each_file_once(tmp_path):
    touch(tmp_path, "a.jpg", "sub/b.jpg")
    (tmp_path / "sub" / "loop").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "sub" / "self").symlink_to(tmp_path / "sub", target_is_directory=True)
    found = find_images(tmp_path)
    assert found == ["a.jpg", "sub/b.jpg"]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_links_leaving_the_dataset_are_skipped_with_their_reason_unless_followed(tmp_path):
    outside = tmp_path / "outside"
    touch(outside, "x.jpg")
    root = tmp_path / "root"
    touch(root, "a.jpg", "in/y.jpg")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "link.jpg").symlink_to(outside / "x.jpg")
    (root / "dangling.jpg").symlink_to(tmp_path / "missing.jpg")
    (root / "inside.jpg").symlink_to(root / "in" / "y.jpg")
    (root / "in-too").symlink_to(root / "in", target_is_directory=True)
    skipped: list[dict[str, str]] = []
    assert find_images(root, skipped=skipped) == ["a.jpg", "in/y.jpg", "inside.jpg"]
    assert [s["path"] for s in skipped] == ["link.jpg", "linked"]
    assert all("leaving the dataset" in s["reason"] for s in skipped)
    followed = find_images(root, follow_links=True)
    assert followed == ["a.jpg", "in/y.jpg", "inside.jpg", "link.jpg", "linked/x.jpg"]


def test_sorted_deterministic_order(tmp_path):
    names = ["b.jpg", "a.jpg", "c/z.jpg", "c/a.jpg", "B.jpg", "a0.jpg", "a/b.jpg"]
    touch(tmp_path, *names)
    found = find_images(tmp_path)
    assert found == sorted(names)
    assert find_images(tmp_path) == found


def test_unicode_and_spaces(tmp_path):
    names = ["photo 1.jpg", "été/çà va.png", "日本/写真.jpeg", "with  two spaces/x y.JPG"]
    touch(tmp_path, *names)
    assert find_images(tmp_path) == sorted(names)
    for rel in find_images(tmp_path):
        assert (tmp_path / rel).is_file()


def test_results_are_posix_relative_paths(tmp_path):
    touch(tmp_path, "x/y/z.jpg")
    (found,) = find_images(str(tmp_path))
    assert found == "x/y/z.jpg"
    assert not os.path.isabs(found)


def test_missing_dataset(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        find_images(tmp_path / "nope")


def test_dataset_is_a_file(tmp_path):
    touch(tmp_path, "a.jpg")
    with pytest.raises(DatasetError, match="not a folder"):
        find_images(tmp_path / "a.jpg")


def test_empty_dataset_gives_empty_list(tmp_path):
    touch(tmp_path, "readme.txt")
    assert find_images(tmp_path) == []


def test_safe_join_accepts_relative_paths(tmp_path):
    assert safe_join(tmp_path, "a/b.jpg") == tmp_path / "a" / "b.jpg"
    assert safe_join(tmp_path, "été 1.jpg") == tmp_path / "été 1.jpg"
    # a backslash is part of a POSIX name, not a separator: one file in the root
    assert safe_join(tmp_path, "a\\..\\b.jpg").parent == tmp_path


def test_safe_join_refuses_backslashes_where_they_separate(tmp_path, monkeypatch):
    import cbir.ingest.files

    monkeypatch.setattr(cbir.ingest.files, "SEPARATORS", "/\\")  # as on Windows
    with pytest.raises(ValueError, match="unsafe path"):
        safe_join(tmp_path, "a\\..\\..\\b.jpg")


@pytest.mark.parametrize(
    "rel", ["../x", "a/../../x", "a/..", "..", "/etc/passwd", "/x.jpg", "", "a//b.jpg", "a/"]
)
def test_safe_join_refuses_escapes(tmp_path, rel):
    with pytest.raises(ValueError, match="unsafe path"):
        safe_join(tmp_path, rel)
