"""The command line end to end: ``run_cbir.py`` and ``cbir`` in subprocesses, as a user runs them.

The runs that load the real MobileNet 0.25 weights (a few seconds each) are marked ``slow``; they
share one copy of the 60-image Corel subset and build on each other's index. The error cases fail
before any model is loaded and are fast.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from helpers import cbir_cli as cbir
from helpers import check_result, cli, ok, one_line_error, same_class
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
RUN_CBIR = REPO / "run_cbir.py"


# ----------------------------------------------------------------------------------------------
# with the real trained model


@pytest.fixture(scope="module")
def first_run(corel_subset_module, mobilenet_weights, tmp_path_factory):
    """``run_cbir.py -dataset DIR -img_query DIR/0.jpg --model mobilenet --weights W --json``."""
    cwd = tmp_path_factory.mktemp("cwd")
    data = corel_subset_module
    proc = ok(
        cli(
            "-dataset",
            data,
            "-img_query",
            data / "0.jpg",
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
def test_first_run_json(first_run):
    data, cwd, doc = first_run
    (result,) = doc["results"]
    assert result["query"] == str(data / "0.jpg")
    check_result(result, data)
    assert same_class(result) >= 3  # chance is 1.4 of 9
    report = doc["index"]
    assert (report["added"], report["unchanged"], report["total"], report["skipped"]) == (60, 0, 60, [])
    assert report["index_dir"] == str(data / ".cbir")
    assert not (cwd / "cbir_results.png").exists()  # --json: no plot unless --out is given
    files = sorted(p.name for p in (data / ".cbir").iterdir())
    assert files[1:] == ["lock", "manifest.json"] and re.fullmatch(r"feats-[0-9a-f]{32}\.npy", files[0])


@pytest.mark.slow
def test_second_run_reuses_index_and_retrieves_the_right_class(first_run, mobilenet_weights):
    data, cwd, _ = first_run
    queries = [data / "305.jpg", data / "401.jpg", data / "506.jpg"]  # buses, dinosaurs, elephants
    proc = ok(
        cli(
            "-dataset",
            data,
            "-img_query",
            *queries,
            "--model",
            "mobilenet",
            "--weights",
            mobilenet_weights,
            "--json",
            cwd=cwd,
        )
    )
    doc = json.loads(proc.stdout)
    report = doc["index"]
    assert (report["added"], report["updated"], report["removed"], report["unchanged"]) == (0, 0, 0, 60)
    assert report["embedded"] == 0
    assert [r["query"] for r in doc["results"]] == [str(q) for q in queries]
    for result in doc["results"]:
        check_result(result, data)
        assert same_class(result) >= 6, result


@pytest.mark.slow
def test_cbir_query_several_images_with_plot(first_run, tmp_path):
    data, _, _ = first_run
    outside = tmp_path / "copy of 7.jpg"
    shutil.copy(data / "7.jpg", outside)
    queries = [data / "302.jpg", data / "409.jpg", outside]
    # no --model/--weights: an existing index decides the features and names its weights file
    proc = ok(
        cbir("query", data, *queries, "-k", "5", "--json", "--out", tmp_path / "plot.png", cwd=tmp_path)
    )
    doc = json.loads(proc.stdout)
    assert "index" not in doc
    assert [r["query"] for r in doc["results"]] == [str(q) for q in queries]
    for result in doc["results"][:2]:
        check_result(result, data, k=5)
        assert same_class(result) >= 4
    copy_result = doc["results"][2]
    assert copy_result["matches"][0]["path"] == str(data / "7.jpg")  # a copy outside is not excluded
    # scores are similarities to the expanded query (the default --qe 10 --mutual 2 moves it toward
    # the copy's mutual neighbours); without re-ranking the copy scores 1
    assert copy_result["matches"][0]["score"] > 0.9
    plain = ok(cbir("query", data, outside, "-k", "2", "--json", "--no-plot", "--qe", "0", cwd=tmp_path))
    assert json.loads(plain.stdout)["results"][0]["matches"][0]["score"] > 0.999
    with Image.open(tmp_path / "plot.png") as img:
        assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100
    assert "plot saved to" in proc.stderr


@pytest.mark.slow
def test_rebuild_text_output_and_default_plot(first_run, mobilenet_weights, tmp_path):
    data = tmp_path / "corel"  # a copy: the shared index stays as the first run left it
    shutil.copytree(first_run[0], data, symlinks=True)
    proc = ok(
        cli(
            "-dataset",
            data,
            "-img_query",
            data / "200.jpg",
            "--model",
            "mobilenet",
            "--weights",
            mobilenet_weights,
            "--rebuild",
            cwd=tmp_path,
        )
    )
    assert "60 added" in proc.stderr and "rebuilt (asked)" in proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"query: {data / '200.jpg'}"
    ranked = [line for line in lines if line.strip()[:2].rstrip(".").isdigit()]
    assert len(ranked) == 9
    assert "plot saved to cbir_results.png" in proc.stdout
    with Image.open(tmp_path / "cbir_results.png") as img:
        assert img.format == "PNG"
    manifest = json.loads((data / ".cbir" / "manifest.json").read_text())
    assert len(manifest["entries"]) == 60 and manifest["config"]["model"] == "mobilenet"


@pytest.mark.slow
def test_unreadable_query(first_run, tmp_path):
    data, _, _ = first_run
    (tmp_path / "q.jpg").write_text("this is a text file")
    one_line_error(cbir("query", data, tmp_path / "q.jpg", "--no-plot", cwd=tmp_path), "q.jpg")


# ----------------------------------------------------------------------------------------------
# errors caught before any model is loaded


@pytest.fixture
def small_dataset(image_folder):
    return image_folder(3)


def test_missing_dataset(tmp_path, small_dataset):
    proc = cli("-dataset", tmp_path / "nope", "-img_query", small_dataset / "img00.jpg", cwd=tmp_path)
    one_line_error(proc, "not found", "nope")


def test_empty_dataset(tmp_path, small_dataset):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("nothing to see")
    proc = cli("-dataset", tmp_path / "empty", "-img_query", small_dataset / "img00.jpg", cwd=tmp_path)
    one_line_error(proc, "no images")
    proc = cbir("index", tmp_path / "empty", cwd=tmp_path)
    one_line_error(proc, "no images")


def test_missing_query(tmp_path, small_dataset):
    proc = cli("-dataset", small_dataset, "-img_query", tmp_path / "missing.jpg", cwd=tmp_path)
    one_line_error(proc, "missing.jpg", "not found")
    proc = cbir("query", small_dataset, small_dataset / "img00.jpg", tmp_path / "missing.jpg", cwd=tmp_path)
    one_line_error(proc, "missing.jpg")
    assert not (small_dataset / ".cbir").exists()  # failed before indexing anything


def test_unknown_model(tmp_path, small_dataset):
    proc = cli(
        "-dataset",
        small_dataset,
        "-img_query",
        small_dataset / "img00.jpg",
        "--model",
        "alexnet",
        cwd=tmp_path,
    )
    message = one_line_error(proc, "alexnet")
    assert "resnet50" in message and "mobilenet" in message


def test_weights_file_not_found(tmp_path, small_dataset):
    proc = cli(
        "-dataset",
        small_dataset,
        "-img_query",
        small_dataset / "img00.jpg",
        "--model",
        "mobilenet",
        "--weights",
        tmp_path / "nope.h5",
        cwd=tmp_path,
    )
    one_line_error(proc, "weights file not found", "nope.h5")


def test_usage_errors_exit_2(tmp_path):
    proc = cli("-dataset", tmp_path, cwd=tmp_path)  # -img_query is required
    assert proc.returncode == 2 and "img_query" in proc.stderr and "Traceback" not in proc.stderr
    proc = cbir("frobnicate", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_models_lists_backbones_and_text_image_models(tmp_path):
    # siglip-base's files are in this model cache (as the first use would leave them), no other's
    placed = tmp_path / "cache" / "keras-hub" / "siglip_base_patch16_224"
    for name in ("config.json", "model.weights.h5", "assets/tokenizer/vocabulary.spm"):
        (placed / name).parent.mkdir(parents=True, exist_ok=True)
        (placed / name).write_bytes(b"{}")
    proc = ok(cbir("models", "--model-cache", tmp_path / "cache", cwd=tmp_path))
    rows = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines()[1:] if line.strip()}
    assert "resnet50" in rows and "mobilenet" in rows and "xception" in rows
    assert rows["resnet50"] == ["2048", "224", "caffe"]
    assert rows["siglip-base"] == ["768", "224", "ViT-B/16", "~0.8", "GB", "yes"]
    assert rows["siglip-large"] == ["1024", "256", "ViT-L/16", "~2.6", "GB", "no"]
    assert rows["siglip-so400m"][:2] == ["1152", "224"] and rows["siglip-base-384"][:2] == ["768", "384"]
    assert f"into {tmp_path / 'cache' / 'keras-hub'}" in proc.stdout
    doc = json.loads(ok(cbir("models", "--json", "--model-cache", tmp_path / "cache", cwd=tmp_path)).stdout)
    resnet = {"name": "resnet50", "family": "cnn", "modalities": ["image"], "dim": 2048, "input_size": 224}
    assert {**resnet, "preprocess": "caffe"} in doc
    base = next(m for m in doc if m["name"] == "siglip-base")
    assert base == {
        "name": "siglip-base",
        "family": "siglip",
        "modalities": ["image", "text"],
        "dim": 768,
        "input_size": 224,
        "preprocess": "siglip",
        "architecture": "ViT-B/16",
        "download_bytes": 812624920,
        "cached": True,
    }
    assert [m["cached"] for m in doc if m["family"] == "siglip"] == [True, False, False, False]


def test_help(tmp_path):
    assert "-img_query" in ok(cli("--help", cwd=tmp_path)).stdout
    assert "query" in ok(cbir("--help", cwd=tmp_path)).stdout


@pytest.mark.slow
def test_rerun_without_options_keeps_the_index_settings(tmp_path, small_dataset):
    # an index built with explicit settings (here random weights) is reused as it is by a plain
    # re-run and a plain query: no silent rebuild with the defaults, no need to repeat the options
    tiny = ("--model", "mobilenetv2", "--weights", "random", "--size", "64")
    ok(cbir("index", small_dataset, *tiny, cwd=tmp_path))
    again = json.loads(ok(cbir("index", small_dataset, "--json", cwd=tmp_path)).stdout)
    assert again["added"] == 0 and again["unchanged"] == again["total"] > 0 and again["rebuilt"] is None
    query = small_dataset / sorted(os.listdir(small_dataset))[1]
    doc = json.loads(ok(cbir("query", small_dataset, query, "-k", "5", "--json", cwd=tmp_path)).stdout)
    # three images, the query itself excluded
    assert [m["path"] for m in doc["results"][0]["matches"]].count(str(query)) == 0
    assert len(doc["results"][0]["matches"]) == 2
    refused = cbir("query", small_dataset, query, "--pooling", "max", "--no-plot", cwd=tmp_path)
    assert "pooling" in one_line_error(refused, "--rebuild")
