"""The encoder seam: a joint text-image family plugged in by one registry entry, end to end.

A tiny "colour" family stands in for a CLIP-like model: its image tower is the 4x4 thumbnail of
the image (centred, L2-normalised, as tests/stores.py's PixelEmbedder), its text tower maps a
colour word to the thumbnail of a plain image of that colour, so that words and images share one
space. Registered in ``ENCODERS``, it indexes through the ordinary settings and indexer into both
stores, the index records that it can embed text, and a text query ranks the photos by colour.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from stores import DIM, PixelEmbedder

from cbir.core.errors import ModelError, QueryError
from cbir.encoders.base import IMAGE, TEXT
from cbir.encoders.features import FeatureConfig
from cbir.encoders.registry import (
    ENCODERS,
    EncoderKind,
    EncoderRequest,
    ModelInfo,
    declared_dim,
    kind_of,
    open_encoder,
    resolve_config,
)
from cbir.encoders.weights import Weights
from cbir.indexing.indexer import IndexOptions, update_index
from cbir.service.query import SearchRequest, text_index
from cbir.service.settings import FeatureChoice, resolve_settings
from cbir.stores.base import Store
from cbir.stores.folder.store import FolderStore

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


class ColourEncoder(PixelEmbedder):
    """Images and colour words into one 48-d space."""

    def __init__(self, config: FeatureConfig) -> None:
        super().__init__(config)
        self.modalities = (IMAGE, TEXT)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        rows = []
        for text in texts:
            rgb = COLOURS.get(text.strip().lower())
            if rgb is None:
                raise QueryError(f"no colour named {text!r}")
            small = np.tile(np.array(rgb, np.float32), (16, 1)).reshape(-1)
            v = small - small.mean()
            rows.append(v / np.linalg.norm(v))
        return np.stack(rows).astype(np.float32)


@pytest.fixture
def colour_family(monkeypatch):
    """The family registered as any new one would be: one entry in ENCODERS."""
    kind = EncoderKind(
        name="colours",
        modalities=(IMAGE, TEXT),
        models=lambda: ["colour-clip"],
        knows=lambda model: model == "colour-clip",
        resolve=lambda config, weights: config.replace(weights=weights.identity),
        build=lambda request: ColourEncoder(request.config),
        describe=lambda cache: [ModelInfo("colour-clip", "colours", (IMAGE, TEXT), DIM, 4, "none")],
    )
    monkeypatch.setitem(ENCODERS, "colours", kind)
    return kind


def photos(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        for i in range(3):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 25, (48, 64, 3)), 0, 255).astype(np.uint8)
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def stores(root: Path, tmp: Path) -> list[tuple[str, Store]]:
    found: list[tuple[str, Store]] = [("folder", FolderStore(root, tmp / "index"))]
    try:
        from cbir.stores.milvus.store import MilvusStore

        found.append(("milvus-lite", MilvusStore.from_uri(f"milvus:{tmp / 'index.db'}", root)))
    except ImportError:  # pymilvus is an extra: the folder store's part runs without it
        pass
    return found


def test_a_text_image_family_indexes_records_its_modalities_and_answers_words(tmp_path, colour_family):
    root = photos(tmp_path / "data")
    for name, store in stores(root, tmp_path):
        settings = resolve_settings(
            root, features=FeatureChoice(model="colour-clip"), weights="random", store=store
        )
        assert settings.config.encoder == "colours" and settings.config.modalities == (IMAGE, TEXT)
        report = update_index(root, settings, options=IndexOptions(progress=False), store=store)
        assert report.added == 12, name
        index = store.open()
        assert index.config.modalities == (IMAGE, TEXT), name  # recorded by the store
        for colour in COLOURS:
            (found,) = text_index(index, settings, [colour], SearchRequest(k=3))
            assert {Path(m.path).parent.name for m in found.matches} == {colour}, (name, colour)
        (two,) = text_index(index, settings, ["Blue "], SearchRequest(k=12))
        assert len(two.matches) == 12 and Path(two.matches[0].path).parent.name == "blue"


def test_an_image_index_refuses_words_before_any_model_is_built(tmp_path):
    root = photos(tmp_path / "data")
    store = FolderStore(root, tmp_path / "index")
    config = FeatureConfig(model="mobilenet", width_multiplier=0.25, size=64)
    weights = Weights.random()
    resolved = resolve_config(config, weights)
    assert resolved.encoder == "cnn" and resolved.modalities == (IMAGE,)
    source = _Fixed(PixelEmbedder(resolved), weights)
    update_index(root, source, options=IndexOptions(progress=False), store=store)
    source.asked = 0
    with pytest.raises(QueryError, match="embeds images only, and has no labels: .* --labels$"):
        text_index(store.open(), source, ["red"])
    assert source.asked == 0  # refused from the index's record, before any model


def test_the_registry_names_every_model_and_refuses_an_unknown_family(colour_family):
    assert kind_of("colour-clip") is colour_family and kind_of("MobileNet").name == "cnn"
    with pytest.raises(ModelError, match="unknown model 'nope'; choose from: .*resnet50.*colour-clip"):
        kind_of("nope")
    orphan = FeatureConfig(encoder="gone", model="x")
    with pytest.raises(ModelError, match="made by the encoder 'gone', which this cbir does not have"):
        open_encoder(EncoderRequest(orphan, Weights.random()))


@dataclasses.dataclass
class _Fixed:
    """An encoder source around a built stand-in encoder."""

    given: PixelEmbedder
    weights: Weights
    whitening: None = None
    asked: int = 0

    @property
    def config(self) -> FeatureConfig:
        return self.given.config

    def embedder(self) -> PixelEmbedder:
        self.asked += 1
        return self.given


WIDTHS = [("mobilenet", 0.25), ("mobilenetv2", 0.35), ("mobilenetv2", 1.3)]


@pytest.mark.parametrize(("model", "width"), WIDTHS)
def test_a_cnn_declares_the_dimension_its_built_model_has(model, width):
    """A Ray driver takes the declared dimension instead of building a model for it: it must be the
    built model's, MobileNet's width rules included."""
    from cbir.encoders.keras_net import build_keras_model

    config = resolve_config(FeatureConfig(model=model, width_multiplier=width), Weights.random())
    built = int(build_keras_model(config, Weights.random()).outputs[0].shape[-1])
    assert declared_dim(config) == built


def test_whitening_declares_its_dimension_and_an_undeclaring_family_none(colour_family):
    from cbir.encoders.whiten import learn_whitening

    config = resolve_config(FeatureConfig(model="mobilenetv2"), Weights.random())
    whitening = learn_whitening(np.random.default_rng(0).normal(size=(40, 1280)).astype(np.float32), 16)
    assert declared_dim(config) == 1280 and declared_dim(config, whitening) == whitening.dim == 16
    assert declared_dim(resolve_config(FeatureConfig(model="colour-clip"), Weights.random())) is None
