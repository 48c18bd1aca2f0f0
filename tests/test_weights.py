"""Weights values (cbir.encoders.weights) and resolving a FeatureConfig for them (resolve_config)."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from cbir.core.errors import ModelError
from cbir.encoders import backbones
from cbir.encoders.features import FeatureConfig
from cbir.encoders.registry import resolve_config
from cbir.encoders.weights import Weights, file_digest


def test_file_digest(tmp_path):
    (tmp_path / "a").write_bytes(b"abc")
    (tmp_path / "b").write_bytes(b"abd")
    assert file_digest(tmp_path / "a") == "ba7816bf8f01cfea"  # sha256("abc")
    assert file_digest(tmp_path / "a") != file_digest(tmp_path / "b")


def test_imagenet_and_random():
    for weights, kind, keras_arg in [
        (Weights.imagenet(), "imagenet", "imagenet"),
        (Weights.random(), "random", None),
    ]:
        assert (weights.kind, weights.identity, weights.name, weights.path) == (kind, kind, kind, None)
        assert weights.keras_arg == keras_arg and not weights.is_file
    assert Weights.imagenet() == Weights.parse(None) == Weights.parse("imagenet")
    assert Weights.random() == Weights.parse("random")


def test_from_file_records_name_and_digest_once(tmp_path, monkeypatch):
    path = tmp_path / "my weights.h5"
    path.write_bytes(b"not really hdf5, but a file")
    sha16 = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    weights = Weights.from_file(path)
    assert weights.is_file and weights.kind == "file" and weights.name == "my weights.h5"
    assert weights.identity == f"file:my weights.h5:{sha16}"
    assert weights.path == path and weights.path.is_absolute()
    assert weights.keras_arg == str(path)
    assert Weights.parse(str(path)) == weights
    monkeypatch.chdir(tmp_path)
    assert Weights.from_file("my weights.h5") == weights  # relative paths are made absolute
    # the value carries the digest: using it never reads the file again
    path.write_bytes(b"changed")
    assert weights.identity.endswith(sha16)
    with pytest.raises(dataclasses.FrozenInstanceError):
        weights.identity = "x"  # type: ignore[misc]


def test_missing_weights_file(tmp_path):
    missing = tmp_path / "missing.h5"
    with pytest.raises(ModelError, match="weights file not found") as info:
        Weights.from_file(missing)
    assert str(info.value) == f"weights file not found: {missing}"
    with pytest.raises(ModelError, match="weights file not found"):
        Weights.parse(str(tmp_path))  # a folder is not a weights file
    with pytest.raises(ModelError, match="weights file not found"):
        Weights.parse("imagenet.h5")


def test_a_path_exactly_for_files(tmp_path):
    with pytest.raises(ValueError):
        Weights("file", None, "file:x:0")
    with pytest.raises(ValueError):
        Weights("imagenet", tmp_path, "imagenet")


def test_resolve_config_records_the_identity_and_canonical_name(tmp_path):
    config = resolve_config(FeatureConfig(model="ResNet"), Weights.random())
    assert (config.model, config.weights, config.width_multiplier) == ("resnet50", "random", None)
    assert resolve_config(FeatureConfig(), Weights.imagenet()).weights == "imagenet"
    path = tmp_path / "w.h5"
    path.write_bytes(b"x")
    weights = Weights.from_file(path)
    assert resolve_config(FeatureConfig(), weights).weights == weights.identity
    # resolving is idempotent
    once = resolve_config(FeatureConfig(), weights)
    assert resolve_config(once, weights) == once


def test_resolve_config_reads_the_width_of_a_mobilenet_file(
    mobilenet_weights, mobilenetv2_weights, monkeypatch
):
    weights = Weights.from_file(mobilenet_weights)
    assert resolve_config(FeatureConfig(model="mobilenet"), weights).width_multiplier == 0.25
    v2 = Weights.from_file(mobilenetv2_weights)
    assert resolve_config(FeatureConfig(model="mobilenetv2"), v2).width_multiplier == 0.35
    # a width already known (from the manifest) is not read again
    calls = []
    monkeypatch.setattr(backbones, "_kernel_shapes", lambda path: calls.append(path) or {})
    known = FeatureConfig(model="mobilenet", width_multiplier=0.25)
    assert resolve_config(known, weights).width_multiplier == 0.25
    assert calls == []
    # ImageNet and random weights keep the constructor's default width
    assert resolve_config(FeatureConfig(model="mobilenet"), Weights.imagenet()).width_multiplier is None


def test_feature_config_width_multiplier_round_trip_and_old_key():
    config = FeatureConfig(model="mobilenet", width_multiplier=0.25, scales=(1.0, 0.5))
    d = config.to_dict()
    assert d["width_multiplier"] == 0.25 and "alpha" not in d and "extra" not in d
    assert d["scales"] == [1.0, 0.5]
    assert FeatureConfig.from_dict(d) == config
    # manifests of the first release call the width "alpha" and carry an empty "extra"
    old = {"model": "mobilenet", "weights": "imagenet", "scales": [1.0], "alpha": 0.25, "extra": {}}
    assert FeatureConfig.from_dict(old) == FeatureConfig(model="mobilenet", width_multiplier=0.25)
    assert FeatureConfig.from_dict({"alpha": None}).width_multiplier is None
    assert not hasattr(FeatureConfig(), "alpha")
