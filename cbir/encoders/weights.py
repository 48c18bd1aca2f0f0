"""Which weights a backbone gets: ImageNet's, a local file's, or random ones (for tests).

The choice is resolved once, where the user makes it, into a :class:`Weights` value that is carried
everywhere after: its ``identity`` is what the index manifest records, so two runs compare weights
by value (a file is known by its name and content digest) and nothing parses that string back.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cbir.core.errors import ModelError

WeightsKind = Literal["imagenet", "file", "random", "own"]


def file_digest(path: str | os.PathLike[str], length: int = 16) -> str:
    """A short SHA-256 of a file, used to tell weight files apart in the index manifest."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


@dataclass(frozen=True)
class Weights:
    """A resolved weights choice; build it with :meth:`imagenet`, :meth:`random`, :meth:`from_file`
    or :meth:`parse`.

    ``identity`` is ``"imagenet"``, ``"random"`` or ``"file:NAME:SHA16"`` (the file's name and the
    first 16 hex digits of its SHA-256), the string stored as ``FeatureConfig.weights``; kind ``own``
    is a model's own weights named by its family (a joint model's preset, :meth:`recorded`).
    """

    kind: WeightsKind
    path: Path | None
    identity: str

    def __post_init__(self) -> None:
        if (self.kind == "file") != (self.path is not None):
            raise ValueError("a path is given exactly for weights of kind 'file'")

    @classmethod
    def imagenet(cls) -> Weights:
        """Keras' ImageNet weights (downloaded once into its cache)."""
        return cls("imagenet", None, "imagenet")

    @classmethod
    def random(cls) -> Weights:
        """Randomly initialised weights: for tests and benchmarks, never for real retrieval."""
        return cls("random", None, "random")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Weights:
        """A local HDF5 weights file; its digest is computed here, once."""
        if not os.path.isfile(path):
            raise ModelError(f"weights file not found: {os.fspath(path)}")
        try:
            digest = file_digest(path)
        except OSError as exc:
            raise ModelError(f"cannot read weights file {os.fspath(path)}: {exc.strerror or exc}") from exc
        absolute = Path(os.path.abspath(path))
        return cls("file", absolute, f"file:{absolute.name}:{digest}")

    @classmethod
    def parse(cls, text: str | None) -> Weights:
        """The user's ``--weights`` text: None or ``imagenet``, ``random``, else a file path."""
        if text is None or text == "imagenet":
            return cls.imagenet()
        if text == "random":
            return cls.random()
        return cls.from_file(text)

    @classmethod
    def recorded(cls, identity: str) -> Weights:
        """The weights an index records (not a file's: the caller finds that): ``imagenet``,
        ``random``, or a model's own published weights as its family names them (``keras-hub:...``,
        ``preset:NAME:SHA``), kind ``own``."""
        if identity in ("imagenet", "random"):
            return cls.parse(identity)
        return cls("own", None, identity)

    @property
    def is_file(self) -> bool:
        return self.kind == "file"

    @property
    def name(self) -> str:
        """The file's name, or the kind (``imagenet``/``random``): for messages."""
        return self.path.name if self.path is not None else self.kind

    @property
    def keras_arg(self) -> str | None:
        """The ``weights`` argument of ``keras.applications``: 'imagenet', the file's path, or None."""
        if self.path is not None:
            return str(self.path)
        return "imagenet" if self.kind == "imagenet" else None
