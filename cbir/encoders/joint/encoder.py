"""``TextImageEncoder``: the ``siglip`` family's :class:`~cbir.encoders.base.Encoder`. Images go
through the image tower, texts through the tokenizer and the text tower, into one space (both
L2-normalised); each tower is opened on its first use, so a text query never builds the image tower
and a cached model imports no TensorFlow."""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import closing

import numpy as np

from cbir.core.errors import BadImageError, QueryError
from cbir.core.progress import with_progress
from cbir.core.vectors import finite_rows, l2_normalize
from cbir.encoders.base import IMAGE, TEXT, Result, RuntimeOptions
from cbir.encoders.features import FeatureConfig
from cbir.encoders.joint.presets import PresetSource
from cbir.encoders.joint.tokenizer import Tokenizer
from cbir.encoders.joint.towers import IMAGE_TOWER, TEXT_TOWER, Tower, TowerCache, preprocess_images
from cbir.encoders.model_cache import ModelCache
from cbir.encoders.weights import Weights
from cbir.ingest.decode import Geometry
from cbir.ingest.pipeline import BadItem, Batch, ImagePipeline, Views

MAX_TEXTS = 256
"""Texts embedded per pass of the text tower."""


class TextImageEncoder:
    """Images and texts into one space with a joint model's two towers (built on first use)."""

    whitening = None
    eager_max_images = 0

    def __init__(
        self,
        config: FeatureConfig,
        weights: Weights,
        source: PresetSource,
        runtime: RuntimeOptions,
        cache: ModelCache,
        load_tensorflow: Callable[[], None],
    ) -> None:
        self.config = config
        self.weights = weights
        self.source = source
        self.options = runtime
        self.towers = TowerCache(source, cache, runtime.runtime, load_tensorflow)
        self._image: Tower | None = None
        self._text: Tower | None = None
        self._tokenizer: Tokenizer | None = None

    @property
    def dim(self) -> int:
        return self.source.dim

    @property
    def modalities(self) -> tuple[str, ...]:
        return (IMAGE, TEXT)

    @property
    def geometry(self) -> Geometry:
        return self.config.geometry_for(self.source.image_size)

    def embedder(self) -> TextImageEncoder:
        """This encoder: it is its own source (config, weights, whitening, embedder())."""
        return self

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = Tokenizer(
                self.source.ensure() / "assets/tokenizer/vocabulary.spm", self.source.sequence_length
            )
        return self._tokenizer

    def _tokenize(self, texts: list[str]) -> np.ndarray:
        return self.tokenizer(texts)

    @property
    def image_tower(self) -> Tower:
        if self._image is None:
            self._image = self.towers.open(IMAGE_TOWER, self._tokenize)
        return self._image

    @property
    def text_tower(self) -> Tower:
        if self._text is None:
            self._text = self.towers.open(TEXT_TOWER, self._tokenize)
        return self._text

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """One L2-normalised vector per text, in the images' space."""
        if not texts or not all(t.strip() for t in texts):
            raise QueryError("give the words to search for")
        ids = self.tokenizer(list(texts))
        rows = [self.text_tower(ids[i : i + MAX_TEXTS]) for i in range(0, len(ids), MAX_TEXTS)]
        return l2_normalize(np.concatenate(rows)).astype(np.float32)

    @property
    def pipeline(self) -> ImagePipeline:
        o = self.options
        return ImagePipeline(self.geometry, (1.0,), o.limits, o.workers, o.batch_size)

    def embed_files(
        self, paths: Sequence[str | os.PathLike[str]], progress: bool | None = False, desc: str = "embedding"
    ) -> Iterator[Result]:
        """``(position, vector)`` per image file, or ``(position, BadImageError)``."""
        results = self._embed(self.pipeline.from_files(paths))
        if progress is False:
            return results
        return with_progress(results, len(paths), progress, desc)

    def embed_arrays(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Decoded uint8 RGB arrays (any size, resized like files) -> one row each."""
        return self._rows(self.pipeline.from_arrays(images), len(images))

    def embed_views(self, views: Sequence[Views]) -> np.ndarray:
        """Images given as their (one) view at the model's input size -> one row each."""
        return self._rows(self.pipeline.from_views(views), len(views))

    def _rows(self, stream: Generator[Batch | BadItem, None, None], n: int) -> np.ndarray:
        out = np.zeros((n, self.dim), dtype=np.float32)
        for i, vec in self._embed(stream):
            if isinstance(vec, BadImageError):
                raise BadImageError(f"image {i}: {vec}", transient=vec.transient)
            out[i] = vec
        return out

    def _embed(self, stream: Generator[Batch | BadItem, None, None]) -> Generator[Result, None, None]:
        with closing(stream):
            for item in stream:
                if isinstance(item, BadItem):
                    yield item.position, item.error
                    continue
                with np.errstate(invalid="ignore", over="ignore"):
                    vecs = l2_normalize(self.image_tower(preprocess_images(item.array)))
                for i, vec, ok in zip(item.items, vecs, finite_rows(vecs)):
                    yield i, vec if ok else BadImageError("non-finite features")
