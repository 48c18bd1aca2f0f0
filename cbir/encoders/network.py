"""The runtime seam's types: a :class:`Network` (what a runtime runs) and the :class:`NetworkRequest`
that asks a runtime for one. Runtimes live one per module (``keras_net``, ``litert_net``) and are
chosen through :data:`cbir.encoders.runtimes.RUNTIMES`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from cbir.core.errors import ModelError
from cbir.core.types import JSONDict
from cbir.encoders.backbones import Backbone, get_backbone
from cbir.encoders.features import FeatureConfig
from cbir.encoders.model_cache import CacheSlot, ModelCache, cache_slot, network_fields
from cbir.encoders.weights import Weights


class Network(Protocol):
    """A backbone plus pooling, runnable on a batch."""

    @property
    def name(self) -> str:
        """The runtime's name (``keras``, ``litert``)."""
        ...

    @property
    def dim(self) -> int:
        """The dimension of the pooled features."""
        ...

    @property
    def classes(self) -> int:
        """How many class probabilities :meth:`run_with_classes` gives (ImageNet's 1000 where the
        backbone kept its classifier head; 0 where it has none)."""
        ...

    def run(self, x: np.ndarray, eager: bool = False) -> np.ndarray:
        """Pooled features (N, dim) of a preprocessed float32 batch (N, H, W, 3); ``eager`` hints
        at a tiny job (one or two images in a fresh process)."""
        ...

    def run_with_classes(self, x: np.ndarray, eager: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Pooled features (N, dim) and class probabilities (N, classes) of a batch, in one pass;
        ModelError where :attr:`classes` is 0."""
        ...


def import_tensorflow() -> None:
    """Import TensorFlow and Keras, or fail in one line."""
    try:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    except ImportError as exc:
        raise ModelError(f"this needs TensorFlow and Keras, which cannot be imported ({exc})") from exc


@dataclass(frozen=True)
class NetworkRequest:
    """The network wanted: ``config`` resolved for ``weights`` (whitening is applied outside).

    ``load_tensorflow`` is called before anything imports TensorFlow (the command line's quiets its
    start-up); ``bulk`` says the network is for indexing; ``threads``: LiteRT's (None: every core).
    """

    config: FeatureConfig
    weights: Weights
    cache: ModelCache
    load_tensorflow: Callable[[], None] = import_tensorflow
    bulk: bool = False
    threads: int | None = None

    @property
    def backbone(self) -> Backbone:
        return get_backbone(self.config.model)

    @property
    def fields(self) -> JSONDict:
        """What identifies the network, whatever runs it."""
        return network_fields(self.config, self.backbone.input_size)

    def slot(self, runtime: str, suffix: str) -> CacheSlot:
        """Where ``runtime`` caches this network converted to its format (files ``*.{suffix}``)."""
        return cache_slot(self.fields, runtime, suffix)
