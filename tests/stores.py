"""Helpers of the store tests: a fast pixel embedder and the stores the contract suite runs on."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from cbir.embedding.features import FeatureConfig
from cbir.errors import BadImageError

DIM = 48


class PixelEmbedder:
    """A real decoder and a tiny deterministic feature: the 4x4 RGB thumbnail, centred and
    L2-normalised (48-d). Stands in for the network where only the store is under test."""

    def __init__(self, config: FeatureConfig) -> None:
        self.config = config
        self.dim = DIM
        self.embedded: list[str] = []

    def vector(self, path: str | os.PathLike[str]) -> np.ndarray:
        with Image.open(path) as img:
            small = np.asarray(img.convert("RGB").resize((4, 4), Image.Resampling.BOX), dtype=np.float32)
        v = small.reshape(-1) - small.mean()
        return (v / (np.linalg.norm(v) or 1.0)).astype(np.float32)

    def embed_files(
        self, paths: Sequence[str | os.PathLike[str]], progress: bool | None = False, desc: str = ""
    ) -> Iterator[tuple[int, np.ndarray | BadImageError]]:
        for i, p in enumerate(paths):
            self.embedded.append(Path(p).name)
            try:
                yield i, self.vector(p)
            except (OSError, ValueError) as exc:
                yield i, BadImageError(f"cannot decode: {exc}")


def exact_top(feats: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact top k rows and scores of each query (plain NumPy, the reference)."""
    scores = np.asarray(queries, np.float32) @ np.asarray(feats, np.float32).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)
