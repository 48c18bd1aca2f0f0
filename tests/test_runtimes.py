"""The runtimes (cbir.encoders.runtimes): LiteRT against Keras, the model cache, the fallbacks.

Conversions run on MobileNet 0.25 at 64x64 (real weights: a converted model is cached by the
weights' identity) or on a random-weights MobileNetV2 (never cached): a few seconds each, so the
tests that convert are marked ``slow``.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import smooth_image

from cbir.core.errors import ModelError
from cbir.encoders import convert as convert_mod
from cbir.encoders import runtimes
from cbir.encoders.convert import Conversion, lowest_cosine
from cbir.encoders.embedder import Embedder
from cbir.encoders.features import FeatureConfig
from cbir.encoders.model_cache import CacheSlot, ModelCache
from cbir.encoders.network import NetworkRequest
from cbir.encoders.registry import resolve_config
from cbir.encoders.weights import Weights


def no_tensorflow() -> None:
    raise AssertionError("TensorFlow was needed although the model is cached")


def embedder(weights: Weights, cache: ModelCache, runtime: str, **kwargs: object) -> Embedder:
    config = resolve_config(FeatureConfig(model="mobilenet", size=64), weights)
    return Embedder(config, weights, workers=1, runtime=runtime, model_cache=cache, **kwargs)


@pytest.fixture
def weights(mobilenet_weights) -> Weights:
    return Weights.from_file(mobilenet_weights)


@dataclass
class FirstConversion:
    """MobileNet 0.25 at 64x64 in a fresh cache: first in Keras (``keras_made_cache``: whether that
    created the cache folder), then in LiteRT, converted there (seconds: done once per module)."""

    cache: ModelCache
    reference: Embedder
    keras_made_cache: bool
    converted: Embedder


@pytest.fixture(scope="module")
def first_conversion(mobilenet_weights, tmp_path_factory) -> FirstConversion:
    weights = Weights.from_file(mobilenet_weights)
    cache = ModelCache(tmp_path_factory.mktemp("converted") / "cache")
    reference = embedder(weights, cache, "keras")
    made = cache.root.exists()
    return FirstConversion(cache, reference, made, embedder(weights, cache, "litert"))


@pytest.fixture
def converted(first_conversion) -> ModelCache:
    """The cache holding that conversion, for the tests that only read it (or copy it first)."""
    return first_conversion.cache


def copy_of(cache: ModelCache, dest) -> ModelCache:
    shutil.copytree(cache.root, dest)
    return ModelCache(dest)


@pytest.fixture
def images() -> list[np.ndarray]:
    return [smooth_image(seed, 80 + 8 * seed, 64) for seed in range(5)]


@pytest.mark.slow
def test_litert_gives_keras_features_and_is_cached(first_conversion, weights, images, caplog):
    first = first_conversion
    cache, reference, converted = first.cache, first.reference, first.converted
    assert reference.network.name == "keras" and not first.keras_made_cache
    assert converted.network.name == "litert" and converted.dim == reference.dim == 256
    expected = reference.embed_arrays(images)
    assert lowest_cosine(converted.embed_arrays(images), expected) >= 0.9999
    models = list(cache.root.glob("*.tflite"))
    assert len(models) == 1
    record = json.loads(models[0].with_suffix(".json").read_text())
    assert record["network"]["weights"] == weights.identity and record["cosine_to_keras"] >= 0.9999
    for runtime in ("litert", "auto"):  # from the cache: no TensorFlow, no conversion
        again = embedder(weights, cache, runtime, load_tensorflow=no_tensorflow)
        assert again.network.name == "litert"
        assert lowest_cosine(again.embed_arrays(images), expected) >= 0.9999
    other = resolve_config(FeatureConfig(model="mobilenet", size=64, pooling="max"), weights)
    request = NetworkRequest(other, weights, cache)
    assert request.slot("litert", "tflite").key != models[0].stem  # another network
    assert request.slot("onnx", "onnx").key != request.slot("litert", "tflite").key  # keyed by runtime


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "flip", "no record"])
def test_a_damaged_cache_file_is_made_again(tmp_path, weights, converted, damage, caplog):
    cache = copy_of(converted, tmp_path / "cache")
    model = next(cache.root.glob("*.tflite"))
    data = model.read_bytes()
    if damage == "truncate":
        model.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        model.write_bytes(data[:1000] + bytes([data[1000] ^ 1]) + data[1001:])
    else:
        model.with_suffix(".json").unlink()
    with caplog.at_level(logging.WARNING, logger="cbir"):
        rebuilt = embedder(weights, cache, "auto")
    assert rebuilt.network.name == "litert"
    assert [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert model.read_bytes() == data or cache.lookup(CacheSlot(model.stem, "tflite")) is not None
    embedder(weights, cache, "auto", load_tensorflow=no_tensorflow)  # and found next time


def test_a_network_that_does_not_convert_runs_in_keras_and_is_not_tried_again(
    tmp_path, weights, images, monkeypatch, caplog
):
    cache = ModelCache(tmp_path)
    monkeypatch.setattr(convert_mod, "convert", lambda *a: Conversion(None, 0.5, "converted features differ"))
    with caplog.at_level(logging.WARNING, logger="cbir"):
        first = embedder(weights, cache, "litert")
    assert first.network.name == "keras"
    assert [r.getMessage() for r in caplog.records] == ["mobilenet runs in Keras: converted features differ"]
    assert list(tmp_path.glob("*.tflite")) == [] and len(list(tmp_path.glob("*.failed.json"))) == 1

    def never(*_args: object) -> Conversion:
        raise AssertionError("a known failure was converted again")

    monkeypatch.setattr(convert_mod, "convert", never)
    for runtime in ("auto", "litert"):
        assert embedder(weights, cache, runtime).network.name == "keras"


@pytest.mark.slow
def test_random_weights_run_in_keras_unless_litert_is_asked(tmp_path):
    cache = ModelCache(tmp_path)
    weights = Weights.random()
    config = resolve_config(FeatureConfig(model="mobilenetv2", size=64), weights)
    assert Embedder(config, weights, runtime="auto", model_cache=cache).network.name == "keras"
    converted = Embedder(config, weights, runtime="litert", model_cache=cache)
    assert converted.network.name == "litert" and converted.dim == 1280
    assert list(tmp_path.iterdir()) == []  # random weights differ in every process: never cached


def test_without_litert_auto_is_keras_and_litert_is_a_clear_error(tmp_path, weights, monkeypatch):
    monkeypatch.setattr(runtimes, "litert_available", lambda: False)
    monkeypatch.setattr(convert_mod, "litert_available", lambda: False)
    cache = ModelCache(tmp_path)
    assert embedder(weights, cache, "auto").network.name == "keras"
    with pytest.raises(ModelError, match="needs the ai-edge-litert package"):
        embedder(weights, cache, "litert")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_an_unwritable_cache_still_runs_litert(tmp_path, weights, images, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="cbir"):
        net = embedder(weights, ModelCache(blocker / "cache"), "litert")
    assert net.network.name == "litert" and net.embed_arrays(images[:1]).shape == (1, 256)
    assert any("cannot write the model cache" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_indexing_keeps_keras_where_tensorflow_sees_a_gpu(tmp_path, weights, converted, monkeypatch):
    monkeypatch.setattr(runtimes, "gpu_visible", lambda load: True)
    cache = copy_of(converted, tmp_path / "cache")
    assert embedder(weights, cache, "auto", bulk=True).network.name == "keras"
    assert embedder(weights, cache, "auto", load_tensorflow=no_tensorflow).network.name == "litert"


def test_a_networks_cache_key_does_not_change():
    """The cache keys stay as they are: a changed key would convert every cached network again."""
    from cbir.encoders.model_cache import cache_slot, network_fields

    default = network_fields(FeatureConfig(scales=(1.0, 2.0), whitening="abc", geometry="crop"), 224)
    assert default == {
        "format": 2,
        "model": "resnet50",
        "weights": "imagenet",
        "pooling": "avg",
        "gem_p": None,
        "width_multiplier": None,
        "size": 224,
    }
    assert cache_slot(default, "litert", "tflite").key == "litert-resnet50-801b4aa858aa6947f2f3"
    gem = network_fields(FeatureConfig(pooling="gem", gem_p=2.5, size=96), 224)
    assert gem["gem_p"] == 2.5 and gem["size"] == 96
    assert cache_slot(gem, "litert", "tflite").key == "litert-resnet50-8a1604100f16701806d3"
    mobile = FeatureConfig(model="mobilenet", weights="random", width_multiplier=0.5, gem_p=2.5)
    assert cache_slot(network_fields(mobile, 224), "litert", "tflite").key == (
        "litert-mobilenet-21fd0a9a37b0d9f82571"
    )
