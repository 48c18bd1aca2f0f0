"""Answering queries: Index.row_of, self-exclusion, query errors (cbir.index, cbir.query, cbir.results)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import run_index

from cbir.core.errors import IncompatibleIndexError, IndexFolderError, QueryError
from cbir.core.results import results_to_dict
from cbir.service.query import SearchRequest, embed_queries, query_index, search_index
from cbir.stores.folder.snapshot import open_index

needs_symlinks = pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")


@pytest.fixture
def indexed(image_folder, tiny_config, tiny_embedder):
    root = image_folder(6)
    run_index(root, tiny_config, tiny_embedder)
    return root, open_index(root)


def test_row_of_indexed_file(indexed):
    root, index = indexed
    for row, rel in enumerate(index.paths):
        assert index.row_of(root / rel) == row
        assert index.row_of(str(root / rel)) == row


def test_row_of_other_spellings(indexed, monkeypatch):
    root, index = indexed
    row = index.paths.index("img02.jpg")
    (root / "sub").mkdir()
    monkeypatch.chdir(root.parent)
    assert index.row_of(Path(root.name) / "img02.jpg") == row  # relative to the working directory
    assert index.row_of(f"{root.name}/sub/../img02.jpg") == row
    assert index.row_of(f"./{root.name}//img02.jpg") == row
    monkeypatch.chdir(root / "sub")
    assert index.row_of("../img02.jpg") == row


def test_row_of_unknown_files(indexed, make_image, tmp_path):
    root, index = indexed
    outside = make_image(tmp_path / "outside" / "img02.jpg", seed=2)  # same name and pixels, other file
    assert index.row_of(outside) is None
    assert index.row_of(root / "missing.jpg") is None
    assert index.row_of(root) is None
    assert index.row_of(root.parent) is None


@needs_symlinks
def test_row_of_through_symlinks(indexed, tmp_path):
    root, index = indexed
    row = index.paths.index("img03.jpg")
    link = tmp_path / "elsewhere" / "alias.jpg"
    link.parent.mkdir()
    link.symlink_to(root / "img03.jpg")
    assert index.row_of(link) == row
    dir_link = tmp_path / "root-link"
    dir_link.symlink_to(root, target_is_directory=True)
    assert index.row_of(dir_link / "img03.jpg") == row
    # the index opened through the symlinked folder recognises the real path too
    assert open_index(dir_link).row_of(root / "img03.jpg") == row


@needs_symlinks
def test_row_of_indexed_symlink(image_folder, make_image, tmp_path, tiny_config, tiny_embedder):
    root = image_folder(2)
    target = make_image(tmp_path / "store" / "photo.jpg", seed=40)
    (root / "linked.jpg").symlink_to(target)
    run_index(root, tiny_config, tiny_embedder, follow_links=True)  # it leaves the dataset
    index = open_index(root)
    assert index.row_of(target) == index.paths.index("linked.jpg")


def test_query_excludes_itself(indexed, tiny_embedder):
    root, index = indexed
    (result,) = query_index(index, tiny_embedder, [root / "img02.jpg"], SearchRequest(k=10))
    assert result.excluded_self
    paths = [m.path for m in result.matches]
    assert len(paths) == 5 and str(root / "img02.jpg") not in paths
    assert sorted(paths) == sorted(str(root / p) for p in index.paths if p != "img02.jpg")
    scores = [m.score for m in result.matches]
    assert scores == sorted(scores, reverse=True) and all(s < 0.9999 for s in scores)


def test_query_included_when_asked(indexed, tiny_embedder):
    root, index = indexed
    (result,) = query_index(
        index, tiny_embedder, [root / "img02.jpg"], SearchRequest(k=3, exclude_self=False)
    )
    assert not result.excluded_self
    assert result.matches[0].path == str(root / "img02.jpg")
    assert result.matches[0].score == pytest.approx(1.0, abs=1e-4)
    assert len(result.matches) == 3


def test_query_by_other_path_still_excluded(indexed, tiny_embedder, monkeypatch):
    root, index = indexed
    monkeypatch.chdir(root.parent)
    query = f"{root.name}/sub/../img04.jpg"
    (root / "sub").mkdir()
    (result,) = query_index(index, tiny_embedder, [query], SearchRequest(k=9))
    assert result.query == query
    assert result.excluded_self and len(result.matches) == 5
    assert str(root / "img04.jpg") not in [m.path for m in result.matches]


@needs_symlinks
def test_query_through_symlink_still_excluded(indexed, tiny_embedder, tmp_path):
    root, index = indexed
    link = tmp_path / "alias.jpg"
    link.symlink_to(root / "img04.jpg")
    (result,) = query_index(index, tiny_embedder, [link], SearchRequest(k=9))
    assert result.excluded_self
    assert str(root / "img04.jpg") not in [m.path for m in result.matches]


def test_copy_outside_the_dataset_is_not_excluded(indexed, tiny_embedder, tmp_path):
    root, index = indexed
    copy = tmp_path / "copy.jpg"
    shutil.copy(root / "img01.jpg", copy)
    (result,) = query_index(index, tiny_embedder, [copy], SearchRequest(k=3))
    assert not result.excluded_self
    assert result.matches[0].path == str(root / "img01.jpg")
    assert result.matches[0].score == pytest.approx(1.0, abs=1e-4)


def test_several_queries(indexed, tiny_embedder):
    root, index = indexed
    queries = [root / "img00.jpg", root / "img05.jpg", root / "img03.jpg"]
    results = query_index(index, tiny_embedder, queries, SearchRequest(k=2))
    assert [r.query for r in results] == [str(q) for q in queries]
    for r in results:
        assert len(r.matches) == 2 and r.query not in [m.path for m in r.matches]


def test_search_index_with_given_vectors(indexed):
    root, index = indexed
    vecs = np.asarray(index.feats[[1, 4]], np.float32)
    results = search_index(index, vecs, ["not/in/index.jpg", root / index.paths[4]], SearchRequest(k=1))
    assert results[0].matches[0].path == str(root / index.paths[1])
    assert results[1].matches[0].path != str(root / index.paths[4])


def test_missing_query(indexed, tiny_embedder, tmp_path):
    _, index = indexed
    with pytest.raises(QueryError, match="not found"):
        query_index(index, tiny_embedder, [tmp_path / "nope.jpg"])
    with pytest.raises(QueryError, match="not a file"):
        embed_queries(tiny_embedder, [tmp_path])


def test_unreadable_query(indexed, tiny_embedder, tmp_path):
    root, index = indexed
    (tmp_path / "q.jpg").write_text("I am text")
    with pytest.raises(QueryError, match=r"cannot read query image .*q\.jpg"):
        query_index(index, tiny_embedder, [root / "img00.jpg", tmp_path / "q.jpg"])


def test_incompatible_embedder(indexed, tiny_embedder):
    root, index = indexed

    class Other:
        config = tiny_embedder.config.replace(pooling="max")

    with pytest.raises(IncompatibleIndexError, match="pooling"):
        query_index(index, Other(), [root / "img00.jpg"])


def test_no_index(tmp_path):
    with pytest.raises(IndexFolderError, match="no index"):
        open_index(tmp_path)


def test_results_json(indexed, tiny_embedder):
    root, index = indexed
    results = query_index(index, tiny_embedder, [root / "img00.jpg"], SearchRequest(k=4))
    doc = json.loads(json.dumps(results_to_dict(results, {"added": 0})))
    assert doc["index"] == {"added": 0}
    (r,) = doc["results"]
    assert r["query"] == str(root / "img00.jpg")
    assert [set(m) for m in r["matches"]] == [{"path", "score"}] * 4
    assert [m["path"] for m in r["matches"]] == [m.path for m in results[0].matches]
