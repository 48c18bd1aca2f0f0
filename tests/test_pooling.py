"""The poolings (cbir.encoders.pooling): the R-MAC region grid, its invariances, the Keras layer
against the NumPy reference on maps of any shape, and the converted (LiteRT) model against Keras."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import smooth_image

from cbir.encoders.convert import lowest_cosine
from cbir.encoders.embedder import Embedder
from cbir.encoders.features import FeatureConfig
from cbir.encoders.model_cache import ModelCache
from cbir.encoders.pooling import POOLINGS, pool, region_grid
from cbir.encoders.preprocess import preprocess
from cbir.encoders.registry import resolve_config
from cbir.encoders.weights import Weights


def test_the_grid_of_a_square_map_is_tolias_grid():
    regions = region_grid(10, 10)
    assert len(regions) == 1 + 4 + 9
    assert regions[0] == (0, 10, 0, 10)  # level 1: the whole map
    level2 = regions[1:5]
    assert {(y1 - y0, x1 - x0) for y0, y1, x0, x1 in level2} == {(6, 6)}  # 2/3 of the side
    assert sorted({y0 for y0, *_ in level2}) == [0, 4]  # from edge to edge
    level3 = regions[5:]
    assert {(y1 - y0) for y0, y1, *_ in level3} == {5} and sorted({y0 for y0, *_ in level3}) == [0, 2, 5]


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (7, 10), (14, 10)])
def test_regions_stay_inside_and_cover_every_cell(shape):
    h, w = shape
    covered = np.zeros(shape, dtype=bool)
    for y0, y1, x0, x1 in region_grid(h, w):
        assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
        covered[y0:y1, x0:x1] = True
    assert covered.all()


def random_maps(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Post-ReLU-like maps: non-negative, sparse."""
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return np.maximum(x, 0)


def test_rmac_is_invariant_to_the_scale_of_the_activations():
    maps = random_maps((2, 9, 9, 16))
    np.testing.assert_allclose(pool(maps * 7.5, "rmac"), pool(maps, "rmac"), rtol=1e-6)
    assert not np.allclose(pool(maps * 7.5, "max"), pool(maps, "max"))  # the global pooling is not


def test_rmac_counts_what_is_everywhere_more_than_one_strong_spot():
    """A channel weakly present in every region outweighs one that is strong in a single corner,
    the opposite of global max pooling (why R-MAC suits objects in clutter)."""
    maps = np.zeros((1, 9, 9, 2), dtype=np.float32)
    maps[0, :, :, 0] = 1.0  # everywhere, weak
    maps[0, 0, 0, 1] = 10.0  # one corner, strong
    rmac, gmax = pool(maps, "rmac")[0], pool(maps, "max")[0]
    assert gmax[1] > gmax[0] and rmac[0] > rmac[1]
    # the corner is in the whole map and in one region of each finer level: 3 of 14
    assert rmac[0] == pytest.approx(11 + 3 / np.sqrt(101), rel=1e-6)
    assert rmac[1] == pytest.approx(30 / np.sqrt(101), rel=1e-6)


@pytest.mark.parametrize("name", sorted(POOLINGS))
@pytest.mark.parametrize("shape", [(3, 10, 10, 8), (2, 7, 11, 8), (1, 1, 1, 8), (2, 2, 3, 8)])
def test_the_keras_layer_is_the_numpy_reference(name, shape):
    import keras

    maps = random_maps(shape, seed=len(name))
    inputs = keras.Input((None, None, shape[-1]))
    model = keras.Model(inputs, POOLINGS[name].layer(3.0)(inputs))
    np.testing.assert_allclose(np.asarray(model(maps)), pool(maps, name, 3.0), rtol=2e-5, atol=1e-5)


@pytest.fixture(scope="module")
def weights(mobilenet_weights) -> Weights:
    return Weights.from_file(mobilenet_weights)


@pytest.mark.slow
def test_rmac_converts_to_litert_and_matches_keras(tmp_path, weights):
    """The regional grid built from the map's dynamic shape survives conversion: the same features
    as Keras at the model's size and at other shapes (non-square images through the long geometry)."""
    features = FeatureConfig(model="mobilenet", size=96, pooling="rmac", geometry="long")
    config = resolve_config(features, weights)
    cache = ModelCache(tmp_path / "cache")
    keras_emb = Embedder(config, weights, workers=1, runtime="keras", model_cache=cache)
    lite_emb = Embedder(config, weights, workers=1, runtime="litert", model_cache=cache)
    assert lite_emb.network.name == "litert" and lite_emb.dim == keras_emb.dim == 256
    images = [smooth_image(seed, 96 + 40 * seed, 96) for seed in range(3)]
    expected = keras_emb.embed_arrays(images)
    assert lowest_cosine(lite_emb.embed_arrays(images), expected) >= 0.9999
    # and the product's vectors are the NumPy reference pooled over the trunk's own maps
    import keras

    maps_model = keras.Model(keras_emb.network.model.input, keras_emb.network.model.layers[-2].output)
    batch = next(iter(keras_emb.pipeline.from_arrays(images[:1]))).array
    maps = np.asarray(maps_model(preprocess(batch, keras_emb.backbone.preprocess)))
    ref = pool(maps, "rmac")
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(expected[:1], ref, atol=1e-5)
