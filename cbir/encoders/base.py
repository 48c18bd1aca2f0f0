"""The encoder seam: what turns a query or a file into a vector, whatever model or runtime does it.

- :class:`Encoder`: images (and, for a joint text-image model, text) in, L2-normalised float32
  vectors out, with its identity (:attr:`Encoder.config`, recorded in the index) and the kinds of
  query it can embed (:attr:`Encoder.modalities`).
- :class:`EncoderSource`: the features to embed with, and the encoder, built only when something
  must be embedded (a command's ``Settings``; an ``Encoder`` is its own source).
- :class:`RuntimeOptions`: how an encoder runs; nothing there changes the vectors.

An encoder family is a package (or module) plus one entry in :data:`cbir.encoders.registry.ENCODERS`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from cbir.core.errors import BadImageError
from cbir.encoders.features import FeatureConfig
from cbir.encoders.weights import Weights
from cbir.encoders.whiten import Whitening
from cbir.ingest.decode import LoadLimits

IMAGE, TEXT = "image", "text"
"""The kinds of query an encoder may embed (:attr:`Encoder.modalities`)."""

Result = tuple[int, np.ndarray | BadImageError]
"""``(position, vector)`` for a usable image, ``(position, BadImageError)`` for an unusable one."""


class Encoder(Protocol):
    """Images (and text, where :data:`TEXT` is among its modalities) in, vectors out."""

    config: FeatureConfig
    """What made the vectors, as the index records it (the encoder family, model, weights, ...)."""

    @property
    def dim(self) -> int:
        """The dimension of the vectors."""
        ...

    @property
    def modalities(self) -> tuple[str, ...]:
        """What it embeds: :data:`IMAGE`, and :data:`TEXT` for a joint text-image model."""
        ...

    def embed_files(
        self, paths: Sequence[str | os.PathLike[str]], progress: bool | None = ..., desc: str = ...
    ) -> Iterator[Result]:
        """``(position, vector)`` per image file, or ``(position, BadImageError)`` for a bad one."""
        ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """One vector per text, in the images' space; QueryError where text is not a modality."""
        ...


class EncoderSource(Protocol):
    """The features to embed with, and the encoder, built only when something must be embedded."""

    @property
    def config(self) -> FeatureConfig: ...

    @property
    def weights(self) -> Weights: ...

    @property
    def whitening(self) -> Whitening | None: ...

    def embedder(self) -> Encoder: ...


@dataclass(frozen=True)
class RuntimeOptions:
    """How the encoder runs; nothing here changes the features.

    ``runtime``: a :data:`cbir.encoders.runtimes.RUNTIMES` choice (``auto``, ``keras``, ``litert``);
    ``model_cache``: the folder of converted models (None: ``$CBIR_MODEL_CACHE`` or the user's cache
    folder); ``bulk``: the encoder is for indexing (``auto`` keeps Keras there on a GPU).
    """

    batch_size: int = 32
    workers: int | None = None
    limits: LoadLimits = LoadLimits()
    runtime: str = "auto"
    model_cache: Path | None = None
    bulk: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.workers is not None and self.workers < 1:
            raise ValueError("workers must be at least 1")


class SourceFeatures:
    """The features (config, weights, whitening) of ``self.base``, for a source that embeds another
    source's features in its own way (the web server's warm model, Ray actors)."""

    base: EncoderSource

    @property
    def config(self) -> FeatureConfig:
        return self.base.config

    @property
    def weights(self) -> Weights:
        return self.base.weights

    @property
    def whitening(self) -> Whitening | None:
        return self.base.whitening
