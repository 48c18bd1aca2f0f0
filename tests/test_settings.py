"""The settings rules (cbir.service.settings): inheritance from an existing index, mismatches, whitening.

No model is built: resolving settings only reads manifests and, for MobileNet weights files, their
headers; the embedder is built lazily and checked here with a fake.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cbir.core.errors import IndexFolderError, ModelError
from cbir.encoders.features import ORIGINAL, FeatureConfig
from cbir.encoders.registry import resolve_config
from cbir.encoders.weights import Weights
from cbir.encoders.whiten import learn_whitening, whitening_filename
from cbir.service.settings import FeatureChoice, Settings, choose_features, resolve_settings
from cbir.stores.folder.files import write_atomic, write_bytes
from cbir.stores.manifest import Manifest


def committed(root: Path, config: FeatureConfig, weights_path: str | None = None) -> Path:
    """An index folder whose manifest records ``config`` (no rows: settings only read the manifest)."""
    idir = root / ".cbir"
    idir.mkdir(parents=True)
    manifest = Manifest(config=config, dim=8, weights_path=weights_path)
    write_bytes(idir / "manifest.json", manifest.to_json().encode())
    return idir


RANDOM = resolve_config(FeatureConfig(model="mobilenetv2", pooling="gem", size=96), Weights.random())


def test_without_an_index_the_defaults_and_the_options_apply(tmp_path):
    s = resolve_settings(tmp_path)
    assert not s.existing and s.config == resolve_config(FeatureConfig(), Weights.imagenet())
    assert s.weights == Weights.imagenet() and s.index_dir == tmp_path / ".cbir" and s.whitening is None
    s = resolve_settings(
        tmp_path, features=FeatureChoice(model="vgg16", original=True, size=128), weights="random"
    )
    assert (s.config.model, s.config.pooling, s.config.geometry, s.config.resample) == (
        "vgg16",
        "max",
        "squash",
        "nearest",
    )
    assert s.config.size == 128 and s.config.weights == "random"
    s = resolve_settings(tmp_path, features=FeatureChoice(original=True, pooling="avg"))
    assert s.config.pooling == "avg"  # a named option wins over --original


def test_an_existing_index_decides_and_options_change_only_what_they_name(tmp_path):
    committed(tmp_path, RANDOM)
    s = resolve_settings(tmp_path)
    assert s.existing and s.config == RANDOM and s.weights == Weights.random()
    s = resolve_settings(tmp_path, features=FeatureChoice(pooling="max"))
    assert s.config == RANDOM.replace(pooling="max")  # everything else inherited
    s = resolve_settings(tmp_path, rebuild=True)  # --rebuild starts from the defaults
    assert not s.existing and s.config.model == "resnet50"
    s = resolve_settings(tmp_path, index_dir=tmp_path / "elsewhere")  # another index folder: none there
    assert not s.existing


def test_new_weights_or_another_model_start_from_their_own_width(tmp_path, mobilenet_weights):
    narrow = resolve_config(FeatureConfig(model="mobilenet"), Weights.from_file(mobilenet_weights))
    assert narrow.width_multiplier == 0.25 and narrow.weights.startswith("file:mobilenet_2_5_224")
    committed(tmp_path, narrow, str(mobilenet_weights))
    s = resolve_settings(tmp_path)
    assert s.config == narrow and s.weights == Weights.from_file(mobilenet_weights)
    s = resolve_settings(tmp_path, weights="random")
    assert s.config.width_multiplier is None and s.config.weights == "random"
    s = resolve_settings(tmp_path, features=FeatureChoice(model="xception"))
    assert s.weights == Weights.imagenet() and s.config.width_multiplier is None


def test_a_moved_weights_file_is_asked_for(tmp_path, mobilenet_weights):
    config = resolve_config(FeatureConfig(model="mobilenet"), Weights.from_file(mobilenet_weights))
    committed(tmp_path, config, str(tmp_path / "gone" / "mobilenet_2_5_224_tf_no_top.h5"))
    with pytest.raises(
        IndexFolderError, match="weights file mobilenet_2_5_224_tf_no_top.h5; pass --weights FILE"
    ):
        resolve_settings(tmp_path)
    assert resolve_settings(tmp_path, weights=str(mobilenet_weights)).config == config
    with pytest.raises(ModelError, match="weights file not found"):
        resolve_settings(tmp_path, weights=str(tmp_path / "missing.h5"))


def test_the_index_whitening_is_kept_while_nothing_else_changes(tmp_path):
    w = learn_whitening(np.random.default_rng(0).standard_normal((50, 1280)).astype(np.float32), dim=16)
    idir = committed(tmp_path, RANDOM.replace(whitening=w.digest))
    write_atomic(idir / whitening_filename(w.digest), w.write_to)
    s = resolve_settings(tmp_path)
    assert s.whitening is not None and s.whitening.digest == w.digest and s.config.whitening == w.digest
    s = resolve_settings(tmp_path, features=FeatureChoice(pooling="avg"))
    assert s.whitening is None and s.config.whitening is None  # other features: the whitening is dropped
    s = resolve_settings(tmp_path, weights="random")
    assert s.whitening is None
    (idir / whitening_filename(w.digest)).unlink()
    with pytest.raises(Exception, match="whitening file .* missing; rebuild with --rebuild"):
        resolve_settings(tmp_path)


def test_a_damaged_index_is_rebuilt_by_indexing_and_refused_by_queries(tmp_path):
    idir = committed(tmp_path, RANDOM)
    (idir / "manifest.json").write_text("{not json")
    assert not resolve_settings(tmp_path).existing  # the indexer rebuilds it (with a warning)
    with pytest.raises(IndexFolderError, match="corrupt"):
        resolve_settings(tmp_path, strict=True)


def test_choose_features_is_a_pure_rule():
    manifest = Manifest(config=RANDOM, dim=8)
    config, weights, keep = choose_features(manifest, FeatureChoice(), None)
    assert (config, weights, keep) == (RANDOM, Weights.random(), True)
    assert choose_features(manifest, FeatureChoice(size=128), None)[2] is False
    assert choose_features(None, FeatureChoice(), "random")[1] == Weights.random()


def test_the_embedder_is_built_once_and_only_when_asked(tmp_path, monkeypatch):
    from dataclasses import replace

    from cbir.encoders.registry import ENCODERS

    built: list[object] = []

    def fake(request: object) -> object:
        built.append({"load_tensorflow": request.load_tensorflow, "config": request.config})
        return object()

    monkeypatch.setitem(ENCODERS, "cnn", replace(ENCODERS["cnn"], build=fake))

    def load() -> None:
        raise AssertionError("only the embedder may load TensorFlow")

    s: Settings = resolve_settings(tmp_path, weights="random", load_tensorflow=load)
    assert built == []
    assert s.embedder() is s.embedder()
    assert len(built) == 1 and built[0]["load_tensorflow"] is load  # called by the runtime, if needed


def test_a_feature_choice_takes_exactly_the_declared_settings():
    from cbir.encoders.features import FEATURE_SETTINGS

    assert FeatureChoice(model=None, size=None) == FeatureChoice() and FeatureChoice().model is None
    choice = FeatureChoice(
        original=True, **{s.name: None for s in FEATURE_SETTINGS if s.name != "size"}, size=96
    )
    assert choice.size == 96 and choice.apply(FeatureConfig()).replace(size=None) == ORIGINAL
    with pytest.raises(TypeError, match="unknown feature settings \\['poolng'\\]"):
        FeatureChoice(poolng="max")


def test_a_feature_choice_is_immutable_and_equal_choices_hash_equal():
    import dataclasses

    choice = FeatureChoice(size=96, model="vgg16")
    assert choice == FeatureChoice(model="vgg16", size=96, pooling=None)
    assert hash(choice) == hash(FeatureChoice(model="vgg16", size=96))
    assert choice != FeatureChoice(model="vgg16", size=96, original=True)
    assert repr(choice) == "FeatureChoice(model='vgg16', size=96)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        choice.original = True
    with pytest.raises(AttributeError):
        choice.poolng  # noqa: B018


def test_the_command_line_gives_every_declared_setting_to_the_feature_choice():
    import typing

    from cbir.cli.arguments import KINDS
    from cbir.cli.options import build_parser, feature_choice_from
    from cbir.encoders.features import FEATURE_SETTINGS, Kind

    assert set(KINDS) == set(typing.get_args(Kind))  # every kind a setting may declare has a parser
    argv = ["--model", "vgg16", "--pooling", "gem", "--gem-p", "2.5", "--size", "96"]
    argv += ["--geometry", "crop", "--resample", "nearest", "--scales", "1,sqrt2", "--original"]
    args = build_parser().parse_args(["index", "photos", *argv])
    expected = {
        "model": "vgg16",
        "pooling": "gem",
        "gem_p": 2.5,
        "size": 96,
        "geometry": "crop",
        "resample": "nearest",
        "scales": (1.0, 2**0.5),
    }
    assert {s.name for s in FEATURE_SETTINGS} == set(expected)
    assert feature_choice_from(args) == FeatureChoice(original=True, **expected)
    assert feature_choice_from(build_parser().parse_args(["index", "photos"])) == FeatureChoice()
