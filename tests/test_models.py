"""The backbone registry, weights files and their errors (cbir.encoders.backbones)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from cbir.core.errors import ModelError
from cbir.encoders.backbones import (
    ALIASES,
    REGISTRY,
    build_backbone,
    get_backbone,
    keras_application,
    keras_cache_dir,
    width_multiplier,
)
from cbir.encoders.features import FeatureConfig
from cbir.encoders.registry import resolve_config
from cbir.encoders.weights import Weights

DOWNLOAD_FAILURE = (
    "URL fetch failure on https://storage.googleapis.com/x/"
    "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5: None -- [Errno -2] Name or service not known"
)


def test_registry_lookup():
    b = get_backbone("resnet50")
    assert (b.name, b.constructor, b.preprocess, b.input_size, b.dim) == (
        "resnet50",
        "ResNet50",
        "caffe",
        224,
        2048,
    )
    assert get_backbone("ResNet50") is b
    assert get_backbone("resnet") is b
    assert get_backbone("convnext_tiny") is REGISTRY["convnexttiny"]
    for alias, target in ALIASES.items():
        assert target in REGISTRY, alias


def test_registry_entries_exist_in_keras():
    keras = pytest.importorskip("keras")
    for b in REGISTRY.values():
        if b.builder is keras_application:
            assert hasattr(keras.applications, b.constructor), b.name
        assert b.input_size >= 32 and b.dim > 0


def test_unknown_model_lists_choices():
    with pytest.raises(ModelError) as info:
        get_backbone("resnet9000")
    message = str(info.value)
    assert "resnet9000" in message
    for name in ("resnet50", "mobilenet", "xception", "efficientnetb0"):
        assert name in message
    assert "\n" not in message


def test_width_multiplier_mobilenet_025(mobilenet_weights):
    assert width_multiplier(REGISTRY["mobilenet"], mobilenet_weights) == 0.25


def test_width_multiplier_mobilenetv2_035(mobilenetv2_weights):
    assert width_multiplier(REGISTRY["mobilenetv2"], mobilenetv2_weights) == 0.35


def test_width_multiplier_other_models_none(mobilenet_weights):
    assert width_multiplier(REGISTRY["resnet50"], mobilenet_weights) is None


def write_h5(path, datasets: dict[str, tuple[int, ...]]) -> None:
    with h5py.File(path, "w") as f:
        for name, shape in datasets.items():
            f.create_dataset(name, data=np.zeros(shape, np.float32))


@pytest.mark.parametrize("channels,alpha", [(8, 0.25), (16, 0.5), (24, 0.75), (32, 1.0)])
def test_width_multiplier_from_kernel_shapes(tmp_path, channels, alpha):
    path = tmp_path / "renamed_weights.h5"
    write_h5(path, {"conv1/conv1/kernel:0": (3, 3, 3, channels), "conv1_bn/conv1_bn/beta:0": (channels,)})
    assert width_multiplier(REGISTRY["mobilenet"], path) == alpha


@pytest.mark.parametrize("width,alpha", [(112, 0.35), (160, 0.5), (320, 1.0), (448, 1.4)])
def test_width_multiplier_v2_from_kernel_shapes(tmp_path, width, alpha):
    path = tmp_path / "weights.h5"
    write_h5(path, {"block_16_project/block_16_project/kernel": (1, 1, 8, width)})
    assert width_multiplier(REGISTRY["mobilenetv2"], path) == alpha


@pytest.mark.parametrize(
    "model,name,alpha",
    [
        ("mobilenet", "mobilenet_1_0_224_tf_no_top.h5", 1.0),
        ("mobilenet", "mobilenet_7_5_224_tf_no_top.h5", 0.75),
        ("mobilenet", "mobilenet_5_0_224_tf_no_top.h5", 0.5),
        ("mobilenet", "mobilenet_2_5_224_tf_no_top.h5", 0.25),
        ("mobilenetv2", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.75_224_no_top.h5", 0.75),
        ("mobilenetv2", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.3_224_no_top.h5", 1.3),
    ],
)
def test_width_multiplier_from_keras_file_name(tmp_path, model, name, alpha):
    path = tmp_path / name
    write_h5(path, {"some/other/layer": (2, 2)})  # no recognisable kernel: the name decides
    assert width_multiplier(REGISTRY[model], path) == alpha


def test_width_multiplier_unknown(tmp_path):
    path = tmp_path / "weights.h5"
    write_h5(path, {"x": (1,)})
    with pytest.raises(ModelError, match="width multiplier"):
        width_multiplier(REGISTRY["mobilenet"], path)
    (tmp_path / "broken.h5").write_bytes(b"not hdf5")
    with pytest.raises(ModelError, match="cannot read weights file"):
        width_multiplier(REGISTRY["mobilenet"], tmp_path / "broken.h5")


def test_keras_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    assert keras_cache_dir() == tmp_path / "kh" / "models"


@pytest.mark.parametrize("text", [DOWNLOAD_FAILURE, "Name or service not known"])
def test_imagenet_download_failure_names_file_and_cache(monkeypatch, tmp_path, text):
    keras = pytest.importorskip("keras")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    calls = []

    def offline(**kwargs):
        calls.append(kwargs)
        raise Exception(text)

    monkeypatch.setattr(keras.applications, "ResNet50", offline)
    with pytest.raises(ModelError) as info:
        build_backbone(REGISTRY["resnet50"], Weights.imagenet())
    message = str(info.value)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(tmp_path / "keras-home" / "models") in message
    assert "--weights" in message
    assert calls and calls[0]["weights"] == "imagenet" and calls[0]["include_top"] is False


def test_download_messages_stay_off_stdout(monkeypatch, capsys):
    keras = pytest.importorskip("keras")

    def downloading(**kwargs):
        print("Downloading data from https://example.invalid/w.h5")  # what Keras does
        return "model"

    monkeypatch.setattr(keras.applications, "ResNet50", downloading)
    assert build_backbone(REGISTRY["resnet50"], Weights.imagenet()) == "model"
    out, err = capsys.readouterr()
    assert out == "" and "Downloading data" in err  # stdout belongs to --json


def test_other_build_failure_is_a_model_error(monkeypatch):
    keras = pytest.importorskip("keras")

    def broken(**kwargs):
        raise RuntimeError("out of cheese")

    monkeypatch.setattr(keras.applications, "VGG16", broken)
    with pytest.raises(ModelError, match="cannot build model vgg16: out of cheese"):
        build_backbone(REGISTRY["vgg16"], Weights.random())


@pytest.mark.parametrize("name", ["mobilenetv3small", "mobilenetv3large", "convnexttiny", "resnet50"])
def test_build_passes_the_keras_arguments(monkeypatch, name):
    keras = pytest.importorskip("keras")
    backbone = REGISTRY[name]
    calls = []
    monkeypatch.setattr(keras.applications, backbone.constructor, lambda **kwargs: calls.append(kwargs))
    backbone.build("some.h5", 0.5)
    (kwargs,) = calls
    assert kwargs["weights"] == "some.h5" and kwargs["alpha"] == 0.5 and kwargs["include_top"] is False
    assert kwargs["input_shape"] == (None, None, 3)
    # MobileNetV3 and ConvNeXt normalise their input themselves only when asked to
    assert kwargs.get("include_preprocessing") is (True if name != "resnet50" else None)
    backbone.build(None)
    assert "alpha" not in calls[1] and calls[1]["weights"] is None


def test_weights_that_do_not_fit(mobilenetv2_weights):
    pytest.importorskip("keras")
    with pytest.raises(ModelError, match="does not fit model mobilenet"):
        build_backbone(REGISTRY["mobilenet"], Weights.from_file(mobilenetv2_weights))


def test_build_with_local_weights(mobilenet_weights):
    pytest.importorskip("keras")
    weights = Weights.from_file(mobilenet_weights)
    config = resolve_config(FeatureConfig(model="mobilenet"), weights)
    assert config.width_multiplier == 0.25  # read from the file, once, when resolving
    model = build_backbone(REGISTRY["mobilenet"], weights, config.width_multiplier)
    assert model.output_shape[-1] == 256
    out = model(np.zeros((1, 64, 96, 3), np.float32))
    assert tuple(out.shape) == (1, 2, 3, 256)  # free input size


def test_every_registry_entry_names_a_keras_constructor_and_a_preprocessing_mode():
    import keras

    from cbir.encoders.backbones import REGISTRY
    from cbir.encoders.preprocess import PREPROCESS_MODES

    for backbone in REGISTRY.values():
        if backbone.builder is keras_application:
            assert callable(getattr(keras.applications, backbone.constructor)), backbone.name
        assert backbone.preprocess in PREPROCESS_MODES, backbone.name
        assert backbone.input_size >= 75 and backbone.dim > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg16", "mobilenetv3small", "efficientnetb0", "convnexttiny"])
def test_registry_dimension_matches_the_built_network(name):
    import numpy as np

    from cbir.encoders.backbones import REGISTRY
    from cbir.encoders.preprocess import preprocess

    backbone = REGISTRY[name]
    model = backbone.build(None)
    x = preprocess(np.random.default_rng(0).integers(0, 255, (1, 96, 128, 3)), backbone.preprocess)
    assert model(x, training=False).shape[-1] == backbone.dim
