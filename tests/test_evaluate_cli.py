"""``cbir evaluate`` and a whitened index, end to end in subprocesses, as a user runs them.

The runs with the real MobileNet 0.25 weights are marked ``slow``. They share one copy of the
60-image Corel subset (six classes of ten, class = number // 100) with a ``labels.csv`` written
into it; the whitening tests come after the evaluation tests and build on each other's index, in
file order. Only four of the runs load the model; the others reuse the index and stop before that.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import cbir_cli as cbir
from helpers import check_result, ok, one_line_error, same_class

from cbir.encoders.whiten import Whitening

CHANCE_MAP = 9 / 59  # a random ranking: 9 relevant images among the 59 others


def index_dir(data: Path) -> Path:
    return data / ".cbir"


def feats_file(data):
    """The matrix file the committed manifest names."""
    (segment,) = manifest(data)["segments"]
    return index_dir(data) / segment[0]


def manifest(data: Path) -> dict:
    return json.loads((index_dir(data) / "manifest.json").read_text())


def whitening_files(data: Path) -> list[Path]:
    return sorted(index_dir(data).glob("whitening-*.npz"))


@pytest.fixture(scope="module")
def labelled(corel_subset_module) -> Path:
    data = corel_subset_module
    rows = ["file,label"] + [f"{p.name},{int(p.stem) // 100}" for p in sorted(data.glob("*.jpg"))]
    assert len(rows) == 61
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    return data


@pytest.fixture(scope="module")
def evaluated(labelled, mobilenet_weights, tmp_path_factory):
    """``cbir evaluate DIR --model mobilenet --weights W --json`` (indexes DIR first)."""
    cwd = tmp_path_factory.mktemp("cwd")
    proc = ok(
        cbir("evaluate", labelled, "--model", "mobilenet", "--weights", mobilenet_weights, "--json", cwd=cwd)
    )
    return labelled, cwd, json.loads(proc.stdout)


@pytest.mark.slow
def test_evaluate_json(evaluated):
    data, _, doc = evaluated
    assert doc["ground_truth"] == "labels"
    assert (doc["n_images"], doc["n_queries"], doc["skipped_queries"]) == (60, 60, [])
    assert doc["map"] > CHANCE_MAP + 0.3, doc["map"]
    assert doc["map"] <= 1.0
    assert set(doc["precision"]) == {"1", "5", "10", "20"}  # k = 100 exceeds the 59 ranked images
    assert 0.45 < doc["precision"]["10"] <= 1.0
    assert 0.0 < doc["recall"]["20"] <= 1.0 and doc["recall"]["20"] >= doc["recall"]["5"]
    assert [row["label"] for row in doc["per_class"]] == ["0", "1", "2", "3", "4", "5"]
    assert all(row["n_queries"] == 10 for row in doc["per_class"])
    assert np.mean([row["map"] for row in doc["per_class"]]) == pytest.approx(doc["map"], abs=1e-5)
    assert "per_query_ap" not in doc  # only with --per-query
    report = doc["index"]
    assert (report["added"], report["total"], report["skipped"]) == (60, 60, [])
    assert manifest(data)["config"]["model"] == "mobilenet"


@pytest.mark.slow
def test_evaluate_with_query_expansion_and_dba(evaluated, tmp_path):
    data, _, _ = evaluated
    # no feature options: the existing index (and its weights file) is used as it is
    proc = ok(cbir("evaluate", data, "--qe", "3", "--dba", "3", "--json", "--per-query", cwd=tmp_path))
    doc = json.loads(proc.stdout)
    report = doc["index"]
    assert (report["added"], report["updated"], report["removed"], report["unchanged"]) == (0, 0, 0, 60)
    assert report["embedded"] == 0
    assert doc["n_queries"] == 60
    assert CHANCE_MAP < doc["map"] <= 1.0
    aps = doc["per_query_ap"]
    assert len(aps) == 60 and all(0.0 < ap <= 1.0 for ap in aps.values())
    assert np.mean(list(aps.values())) == pytest.approx(doc["map"], abs=1e-5)


# ----------------------------------------------------------------------------------------------
# a whitened index: learned, stored, reused by queries, dropped when the settings change


@pytest.fixture(scope="module")
def whitened(evaluated, mobilenet_weights, tmp_path_factory):
    """``cbir index DIR --whiten-on DIR --whiten-dim 16 --model mobilenet --weights W --json``, on a
    copy of the evaluated folder (index included), so that the tests of either never see the other's."""
    source, cwd, _ = evaluated
    data = tmp_path_factory.mktemp("whitened") / "corel"
    shutil.copytree(source, data, symlinks=True)
    proc = ok(
        cbir(
            "index",
            data,
            "--whiten-on",
            data,
            "--whiten-dim",
            "16",
            "--model",
            "mobilenet",
            "--weights",
            mobilenet_weights,
            "--json",
            cwd=cwd,
        )
    )
    return data, cwd, json.loads(proc.stdout)


@pytest.mark.slow
def test_index_stores_the_whitening(whitened):
    data, _, report = whitened
    assert (report["added"], report["total"], report["skipped"]) == (60, 60, [])
    assert report["rebuilt"] == "settings changed"  # the evaluation's index had no whitening
    (wfile,) = whitening_files(data)
    m = manifest(data)
    digest = m["config"]["whitening"]
    assert digest and wfile.name == f"whitening-{digest}.npz"
    assert m["whitening"] == wfile.name
    w = Whitening.load(wfile)
    assert w.digest == digest and w.dim == 16 and m["dim"] == 16
    feats = np.load(feats_file(data))
    assert feats.shape == (60, 16)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-4)


@pytest.mark.slow
def test_query_uses_the_stored_whitening(whitened, tmp_path):
    data, _, _ = whitened
    # --qe 0: the plain ranking, whose scores are dot products with the stored rows
    proc = ok(cbir("query", data, data / "0.jpg", "--no-plot", "--json", "--qe", "0", cwd=tmp_path))
    (result,) = json.loads(proc.stdout)["results"]
    check_result(result, data)
    assert same_class(result) >= 2, result  # chance is 1.4 of 9; 3 measured (16 dims learned on 60 images)
    # the query was embedded and whitened exactly like the indexed 0.jpg: its scores are that row's
    m = manifest(data)
    feats = np.load(feats_file(data))
    rows = {e[0]: i for i, e in enumerate(m["entries"])}  # entries: [path, size, mtime_ns]
    expected = feats @ feats[rows["0.jpg"]]
    for match in result["matches"]:
        assert match["score"] == pytest.approx(float(expected[rows[Path(match["path"]).name]]), abs=1e-3)


@pytest.mark.slow
def test_index_without_options_keeps_the_whitened_index(whitened, tmp_path):
    data, _, _ = whitened
    before = manifest(data)
    feats_before = (feats_file(data)).read_bytes()
    (wfile,) = whitening_files(data)
    report = json.loads(ok(cbir("index", data, "--json", cwd=tmp_path)).stdout)
    assert (report["added"], report["updated"], report["removed"], report["unchanged"]) == (0, 0, 0, 60)
    assert report["rebuilt"] is None and report["embedded"] == 0
    assert manifest(data)["config"] == before["config"]
    assert (feats_file(data)).read_bytes() == feats_before
    assert whitening_files(data) == [wfile]


@pytest.mark.slow
def test_query_with_other_features_is_refused(whitened, tmp_path):
    data, _, _ = whitened
    before = manifest(data)
    proc = cbir("query", data, data / "0.jpg", "--pooling", "max", "--no-plot", cwd=tmp_path)
    one_line_error(proc, "pooling", "--rebuild")
    assert manifest(data) == before and len(whitening_files(data)) == 1


@pytest.mark.slow
def test_reindex_with_other_features_drops_the_whitening(whitened, tmp_path):
    data = tmp_path / "corel"  # a copy: the other tests keep the whitened index, in any order
    shutil.copytree(whitened[0], data, symlinks=True)
    report = json.loads(ok(cbir("index", data, "--pooling", "max", "--json", cwd=tmp_path)).stdout)
    assert report["rebuilt"] == "settings changed"
    assert (report["added"], report["total"]) == (60, 60)
    m = manifest(data)
    assert m["config"]["pooling"] == "max" and m["config"]["whitening"] is None
    assert m["config"]["model"] == "mobilenet" and m["dim"] == 256
    assert whitening_files(data) == []
    files = sorted(p.name for p in index_dir(data).iterdir())
    assert files == sorted([feats_file(data).name, "lock", "manifest.json"]) and files[0].startswith("feats-")


# ----------------------------------------------------------------------------------------------
# errors


@pytest.mark.slow
def test_evaluate_without_ground_truth(image_folder, tmp_path):
    data = image_folder(3)
    proc = cbir(
        "evaluate", data, "--model", "mobilenetv2", "--weights", "random", "--size", "64", cwd=tmp_path
    )
    one_line_error(proc, "no ground truth", str(data), "labels.csv")
