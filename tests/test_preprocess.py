"""Per-backbone input normalisation must equal keras.applications' own preprocess_input."""

from __future__ import annotations

import numpy as np
import pytest

from cbir.encoders.backbones import REGISTRY
from cbir.encoders.preprocess import PREPROCESS_MODES, preprocess
from cbir.ingest.decode import Geometry, load_views

keras = pytest.importorskip("keras")


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return np.random.default_rng(42).integers(0, 256, size=(3, 17, 23, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "mode,keras_preprocess",
    [
        ("caffe", "resnet50"),
        ("caffe", "vgg16"),
        ("tf", "xception"),
        ("tf", "mobilenet"),
        ("torch", "densenet"),
    ],
)
def test_mode_matches_keras(batch, mode, keras_preprocess):
    reference = getattr(keras.applications, keras_preprocess).preprocess_input
    expected = np.asarray(reference(batch.astype(np.float32).copy()))
    got = preprocess(batch, mode)
    assert got.dtype == np.float32 and got.shape == batch.shape
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-4)


def test_modes_differ(batch):
    # a guard against a test above comparing a function with itself
    outs = {m: preprocess(batch, m) for m in ("caffe", "tf", "torch")}
    assert not np.allclose(outs["caffe"], outs["tf"])
    assert not np.allclose(outs["tf"], outs["torch"])
    np.testing.assert_array_equal(preprocess(batch, "none"), batch.astype(np.float32))


def test_input_not_modified(batch):
    x = batch.astype(np.float32)
    before = x.copy()
    preprocess(x, "caffe")
    preprocess(x, "torch")
    np.testing.assert_array_equal(x, before)


def test_unknown_mode(batch):
    with pytest.raises(ValueError, match="unknown preprocessing"):
        preprocess(batch, "inception")


def test_every_backbone_has_a_known_mode():
    assert {b.preprocess for b in REGISTRY.values()} <= set(PREPROCESS_MODES)
    assert REGISTRY["resnet50"].preprocess == "caffe"
    assert REGISTRY["xception"].preprocess == "tf"
    assert REGISTRY["densenet121"].preprocess == "torch"


def test_resnet50_input_path_matches_keras_pipeline(tmp_path, make_image):
    # the original script: load_img(target_size=(224, 224)) -> img_to_array -> resnet50.preprocess_input
    path = make_image(tmp_path / "photo.jpg", seed=11, width=333, height=250, quality=90)
    expected = keras.applications.resnet50.preprocess_input(
        keras.utils.img_to_array(keras.utils.load_img(str(path), target_size=(224, 224)))[None]
    )
    (view,) = load_views(path, Geometry(224, "squash", "nearest"), draft=False)
    got = preprocess(view[None], REGISTRY["resnet50"].preprocess)
    assert got.shape == (1, 224, 224, 3)
    np.testing.assert_allclose(got, np.asarray(expected), rtol=0, atol=1e-4)
