"""The runtimes from the command line: a query whose model is cached runs without TensorFlow, Keras
or matplotlib, and everything still works (in Keras) without ai-edge-litert."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import save_image
from helpers import cli, ok, one_line_error

STUB = "raise ImportError('{name} must not be imported by this command')\n"


def stubs(folder: Path, *names: str) -> Path:
    """A folder of packages that fail on import (put it first on the path)."""
    for name in names:
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(STUB.format(name=name))
    return folder


def matches(proc) -> list[tuple[str, float]]:
    return [(m["path"], m["score"]) for m in json.loads(ok(proc).stdout)["results"][0]["matches"]]


@pytest.mark.slow
def test_a_cached_model_answers_without_tensorflow_and_keras_without_litert(tmp_path, mobilenet_weights):
    data = tmp_path / "data"
    for i in range(6):
        save_image(data / f"{i}.jpg", seed=i)
    query = save_image(tmp_path / "query.jpg", seed=2, width=90)  # not indexed: must be embedded
    cache = tmp_path / "models"
    real = ("--model", "mobilenet", "--weights", mobilenet_weights, "--model-cache", cache)
    ok(cli("index", data, *real, cwd=tmp_path, script=None))  # TensorFlow is loaded: converts
    assert len(list(cache.glob("*.tflite"))) == 1
    no_ml = stubs(tmp_path / "no-ml", "tensorflow", "keras", "matplotlib")
    common = ("-dataset", data, "-img_query", query, "--model-cache", cache)
    light = matches(cli(*common, "--json", cwd=tmp_path, first_on_path=no_ml))
    keras = matches(cli(*common, "--json", "--runtime", "keras", cwd=tmp_path))
    assert [p for p, _ in light] == [p for p, _ in keras]
    assert max(abs(a - b) for (_, a), (_, b) in zip(light, keras)) <= 1e-4
    text = ok(cli(*common, "--no-plot", cwd=tmp_path, first_on_path=no_ml))  # no plot: no matplotlib
    assert str(data / "2.jpg") in text.stdout and text.stderr.startswith("index: 6 images")
    assert "XNNPACK" not in text.stderr  # LiteRT's start-up chatter is silenced

    no_litert = stubs(tmp_path / "no-litert", "ai_edge_litert")
    fresh = tmp_path / "fresh-cache"
    assert matches(cli(*common[:-1], fresh, "--json", cwd=tmp_path, first_on_path=no_litert)) == keras
    assert not fresh.exists()
    one_line_error(
        cli(*common, "--runtime", "litert", cwd=tmp_path, first_on_path=no_litert),
        "--runtime litert needs the ai-edge-litert package",
    )
    shutil.rmtree(no_ml)
