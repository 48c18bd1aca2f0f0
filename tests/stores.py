"""Helpers of the store tests: a fast pixel embedder and the stores the contract suite runs on."""

from __future__ import annotations

import dataclasses
import os
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.core.errors import BadImageError, QueryError
from cbir.core.records import Entry
from cbir.encoders.features import FeatureConfig
from cbir.ingest.decode import capture_time, open_rgb
from cbir.stores.base import IndexReader, Store
from cbir.stores.sink import RowSink, SinkResult, Written

DIM = 48


class PixelEmbedder:
    """A real decoder and a tiny deterministic feature: the 4x4 RGB thumbnail, centred and
    L2-normalised (48-d). Stands in for the network where only the store is under test."""

    def __init__(self, config: FeatureConfig) -> None:
        self.config = config
        self.dim = DIM
        self.modalities = ("image",)
        self.embedded: list[str] = []

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        raise QueryError("the pixel embedder embeds images only")

    def vector(self, path: str | os.PathLike[str]) -> np.ndarray:
        """The feature of one file; the real decoder's BadImageError (and whether it can pass)."""
        img = open_rgb(path)
        try:
            small = np.asarray(img.resize((4, 4), Image.Resampling.BOX), dtype=np.float32)
        finally:
            img.close()
        v = small.reshape(-1) - small.mean()
        return (v / (np.linalg.norm(v) or 1.0)).astype(np.float32)

    def embed_files(
        self, paths: Sequence[str | os.PathLike[str]], progress: bool | None = False, desc: str = ""
    ) -> Iterator[tuple[int, np.ndarray | BadImageError]]:
        for i, p in enumerate(paths):
            self.embedded.append(Path(p).name)
            try:
                yield i, self.vector(p)
            except BadImageError as exc:
                yield i, exc
            except (OSError, ValueError) as exc:
                yield i, BadImageError(f"cannot decode: {exc}")


class DirectPixelEmbedder(PixelEmbedder):
    """The pixel embedder as a ``DirectEmbedder``: it writes the rows through the store's sink itself,
    the sink going through pickle first as it does to a Ray worker. ``ahead``: rows written before
    the indexer hears of the first (a worker ahead of the driver, with commits in between);
    ``stop_after``: KeyboardInterrupt once that many outcomes were handed over."""

    one_machine = True

    def __init__(self, config: FeatureConfig, ahead: int = 0, stop_after: int | None = None) -> None:
        super().__init__(config)
        self.ahead, self.stop_after = ahead, stop_after
        self.written: list[str] = []

    def embed_into(
        self,
        sink: RowSink,
        root: Path,
        entries: Sequence[Entry],
        progress: bool | None = False,
        desc: str = "",
    ) -> Iterator[SinkResult]:
        worker_sink: RowSink = pickle.loads(pickle.dumps(sink))
        outcomes: list[SinkResult] = []
        for i, entry in enumerate(entries):
            self.embedded.append(Path(entry.path).name)
            try:
                vector = self.vector(root / entry.path)
            except BadImageError as exc:
                outcomes.append((i, exc))
            except (OSError, ValueError) as exc:
                outcomes.append((i, BadImageError(f"cannot decode: {exc}")))
            else:
                taken = capture_time(root / entry.path)
                worker_sink.write([dataclasses.replace(entry, taken=taken)], vector[None])
                self.written.append(entry.path)
                outcomes.append((i, Written(taken)))
            while len(outcomes) > self.ahead:
                yield self._hand_over(outcomes.pop(0))
        while outcomes:
            yield self._hand_over(outcomes.pop(0))

    def _hand_over(self, outcome: SinkResult) -> SinkResult:
        if self.stop_after is not None and outcome[0] >= self.stop_after:
            raise KeyboardInterrupt
        return outcome


def rows_of(index: IndexReader) -> dict[str, np.ndarray]:
    return {p: np.asarray(index.feats[i]) for i, p in enumerate(index.paths)}


def same_rows(a: IndexReader, b: IndexReader, atol: float = 1e-6) -> None:
    ra, rb = rows_of(a), rows_of(b)
    assert sorted(ra) == sorted(rb)
    for path, vec in ra.items():
        np.testing.assert_allclose(vec, rb[path], atol=atol)


def exact_top(feats: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact top k rows and scores of each query (plain NumPy, the reference)."""
    scores = np.asarray(queries, np.float32) @ np.asarray(feats, np.float32).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def milvus_store(path: Path, root: Path) -> Store:
    """A Milvus Lite store in ``path``; the test is skipped where the milvus extra is not installed
    (the folder store's tests of the same module still run)."""
    pytest.importorskip("pymilvus", reason="the milvus extra is not installed")
    pytest.importorskip("milvus_lite", reason="the milvus extra is not installed")
    from cbir.stores.milvus.store import MilvusStore

    return MilvusStore.from_uri(f"milvus:{path}", root)


def milvus_writer() -> type:
    """The Milvus store's writer class (skipped as :func:`milvus_store` is)."""
    pytest.importorskip("pymilvus", reason="the milvus extra is not installed")
    from cbir.stores.milvus.writer import MilvusWriter

    return MilvusWriter
