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

from cbir.core.errors import BadImageError, ModelError
from cbir.core.progress import progress_bar
from cbir.encoders.base import Encoder, RuntimeOptions
from cbir.encoders.embedder import Embedder
from cbir.encoders.features import FeatureConfig
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


ClassifierBuilder = Callable[[RuntimeOptions], Classifier]


def _lite0_pending(options: RuntimeOptions) -> Classifier:
    raise ModelError(
        "labels need the EfficientNet-Lite0 classifier, which this cbir does not have yet "
        "(it comes with the EfficientNet-Lite backbones)"
    )


CLASSIFIERS: dict[str, ClassifierBuilder] = {DEFAULT_CLASSIFIER: _lite0_pending}
"""The classifiers by the name an index records with its labels."""


@dataclass
class ClassifierSource:
    """The classifier ``name`` of :data:`CLASSIFIERS` (or ``build``), built on first use only."""

    name: str = DEFAULT_CLASSIFIER
    runtime: RuntimeOptions = RuntimeOptions()
    build: ClassifierBuilder | None = None
    _built: list[Classifier] = field(default_factory=list, repr=False)

    def classifier(self) -> Classifier:
        if not self._built:
            builder = self.build or CLASSIFIERS.get(self.name)
            if builder is None:
                raise ModelError(f"unknown classifier {self.name!r}; known: {', '.join(CLASSIFIERS)}")
            self._built.append(builder(self.runtime))
        return self._built[0]
