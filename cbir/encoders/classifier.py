"""The labelling seam: an ImageNet-1k classifier, what ``cbir index --labels`` runs on every image.

- :class:`Classifier`: image files in, probabilities over the 1000 ImageNet-1k classes out, in the
  class order of :mod:`cbir.core.labels` (the sorted WordNet ids, every ImageNet classifier's).
- :class:`JointEncoder`: an encoder that also classifies, in the same decode pass (a backbone with
  its own ImageNet head, or a classifier run beside the backbone on the same decoded batch); the
  indexer then decodes each image once for both.
- :class:`ClassifierSource`: the classifier's name (recorded in the index with its labels) and the
  classifier itself, built only when some image needs labels.
- :data:`CLASSIFIERS`: the classifiers by name; the default is EfficientNet-Lite0.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from cbir.core.errors import BadImageError, ModelError
from cbir.encoders.base import Encoder, RuntimeOptions

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
