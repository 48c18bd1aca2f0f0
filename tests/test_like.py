""" "More like this": queries answered from the stored vectors, without a model (issue 11, first part)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from conftest import save_image
from helpers import cli, run_index

from cbir.core.errors import QueryError
from cbir.service.query import SearchRequest, like_index, query_index, search_index
from cbir.stores.folder.snapshot import open_index


def same_results(a, b) -> None:
    """The same queries and matches, scores within 1e-4 (a stored vector and a fresh embedding of
    the same file differ by float rounding: batched vs single-image network calls)."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        x, y = (r if isinstance(r, dict) else r.to_dict() for r in (x, y))
        assert x["query"] == y["query"]
        assert [m["path"] for m in x["matches"]] == [m["path"] for m in y["matches"]]
        np.testing.assert_allclose(
            [m["score"] for m in x["matches"]], [m["score"] for m in y["matches"]], atol=1e-4
        )


class NoModel:
    """An embedder provider that fails the test if a model is asked for."""

    def __init__(self, config) -> None:
        self.config = config

    def embedder(self):
        raise AssertionError("a model was built although every query was stored")


def test_like_equals_the_query_by_file(image_folder, tiny_config, tiny_embedder):
    root = image_folder(8)
    run_index(root, tiny_config, tiny_embedder)
    index = open_index(root)
    (by_file,) = query_index(index, tiny_embedder, [root / "img03.jpg"], SearchRequest(k=5))
    for name in ("img03.jpg", root / "img03.jpg"):  # as indexed, or by its own path
        (like,) = like_index(index, [name], SearchRequest(k=5))
        assert like.query == str(root / "img03.jpg") and like.excluded_self
        assert [m.path for m in like.matches] == [m.path for m in by_file.matches]
        np.testing.assert_allclose(
            [m.score for m in like.matches], [m.score for m in by_file.matches], atol=1e-4
        )
    with pytest.raises(QueryError, match="not in the index: elsewhere.jpg"):
        like_index(index, ["elsewhere.jpg"])


def test_stored_vectors_are_reused_only_while_the_file_is_unchanged(image_folder, tiny_config, tiny_embedder):
    root = image_folder(6)
    run_index(root, tiny_config, tiny_embedder)
    index = open_index(root)
    stored = query_index(
        index, NoModel(tiny_embedder.config), [root / "img01.jpg"], SearchRequest(k=3), reuse_stored=True
    )
    same_results(stored, query_index(index, tiny_embedder, [root / "img01.jpg"], SearchRequest(k=3)))
    st = (root / "img01.jpg").stat()
    os.utime(root / "img01.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # changed since indexed
    with pytest.raises(AssertionError, match="a model was built"):
        query_index(
            index, NoModel(tiny_embedder.config), [root / "img01.jpg"], SearchRequest(k=3), reuse_stored=True
        )
    outside = save_image(root.parent / "outside.jpg", seed=77)  # not indexed: embedded
    mixed = query_index(
        index, tiny_embedder, [root / "img02.jpg", outside], SearchRequest(k=3), reuse_stored=True
    )
    stored_row = np.asarray(index.feats[index.paths.index("img02.jpg")])[None]
    same_results(
        mixed[:1], search_index(index, stored_row, [root / "img02.jpg"], SearchRequest(k=3))
    )  # the stored vector
    same_results(mixed[1:], query_index(index, tiny_embedder, [outside], SearchRequest(k=3)))


@pytest.mark.slow
def test_like_and_unchanged_queries_without_any_ml_package(tmp_path, no_ml_packages, mobilenet_weights):
    data = tmp_path / "data"
    for i in range(6):
        save_image(data / f"{i}.jpg", seed=i)
    # real weights: random ones differ from one process to the next, so files would not compare
    built = cli(
        "index", data, "--model", "mobilenet", "--weights", mobilenet_weights, cwd=tmp_path, script=None
    )
    assert built.returncode == 0, built.stderr
    by_file = json.loads(cli("query", data, data / "2.jpg", "--json", cwd=tmp_path, script=None).stdout)
    like = cli(
        "query", data, "--like", "2.jpg", "--json", cwd=tmp_path, script=None, first_on_path=no_ml_packages
    )
    assert like.returncode == 0, like.stderr
    same_results(json.loads(like.stdout)["results"], by_file["results"])
    legacy = cli(
        "-dataset", data, "-img_query", data / "2.jpg", "--json", cwd=tmp_path, first_on_path=no_ml_packages
    )  # run_cbir.py
    assert legacy.returncode == 0, legacy.stderr
    same_results(json.loads(legacy.stdout)["results"], by_file["results"])
    outside = tmp_path / "copy.jpg"
    shutil.copy(data / "2.jpg", outside)  # not indexed: needs the model, which cannot be imported
    proc = cli("-dataset", data, "-img_query", outside, "--json", cwd=tmp_path, first_on_path=no_ml_packages)
    assert proc.returncode == 2 and proc.stderr.startswith("cbir: error: this needs TensorFlow and Keras")
    missing = cli(
        "query", data, "--like", "nope.jpg", cwd=tmp_path, script=None, first_on_path=no_ml_packages
    )
    assert missing.returncode == 2 and missing.stderr.strip() == (
        "cbir: error: not in the index: nope.jpg (name an indexed image, or query by file)"
    )
    empty = cli("query", data, cwd=tmp_path, script=None, first_on_path=no_ml_packages)
    assert empty.returncode == 2 and "--like PATH" in empty.stderr
