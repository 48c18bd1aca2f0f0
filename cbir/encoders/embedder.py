"""Turning images into L2-normalised feature vectors with a backbone network.

The images come as ready batches from :class:`cbir.ingest.pipeline.ImagePipeline` (decoding threads,
per-scale views, one shape per batch); this module runs the network (backbone plus pooling, in
the runtime :mod:`cbir.encoders.runtimes` chooses) on each batch, averages the scales of an
image, then L2-normalises and optionally PCA-whitens.
A vector that comes out non-finite (a pathological image, broken weights) is reported as a bad
image: it must never be stored.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import closing

import numpy as np

from cbir.core.errors import BadImageError, ModelError, QueryError
from cbir.core.progress import with_progress
from cbir.core.vectors import finite_rows, l2_normalize
from cbir.encoders.backbones import Backbone, get_backbone
from cbir.encoders.base import IMAGE, Result
from cbir.encoders.features import FeatureConfig
from cbir.encoders.model_cache import ModelCache, default_cache_dir
from cbir.encoders.network import Network, NetworkRequest, import_tensorflow
from cbir.encoders.preprocess import preprocess
from cbir.encoders.runtimes import open_network
from cbir.encoders.weights import Weights
from cbir.encoders.whiten import Whitening
from cbir.ingest.decode import LoadLimits
from cbir.ingest.pipeline import BadItem, Batch, ImagePipeline, Views, default_workers

log = logging.getLogger(__name__)

Classified = tuple[int, tuple[np.ndarray, np.ndarray] | BadImageError]
"""``(position, (vector, class probabilities))`` for a usable image, ``(position, BadImageError)``."""


EAGER_MAX_IMAGES = 2
"""Jobs this small run the network eagerly: tracing costs more than it saves (docs/speed.md)."""


class Embedder:
    """A backbone plus pooling that embeds files or arrays into L2-normalised float32 vectors: the
    :class:`~cbir.encoders.base.Encoder` of the ``cnn`` family (images only).

    ``config`` must already be resolved for ``weights`` (:func:`cbir.encoders.registry.resolve_config`,
    called once by the caller): it is recorded as is, never resolved again here. ``runtime`` is a
    :data:`cbir.encoders.runtimes.RUNTIMES` choice; ``model_cache`` holds converted models (None:
    the default folder); ``bulk``: for indexing; ``load_tensorflow`` runs before TensorFlow is
    imported, if it ever is.
    """

    def __init__(
        self,
        config: FeatureConfig,
        weights: Weights,
        *,
        batch_size: int = 32,
        workers: int | None = None,
        limits: LoadLimits = LoadLimits(),
        whitening: Whitening | None = None,
        runtime: str = "auto",
        model_cache: ModelCache | None = None,
        bulk: bool = False,
        load_tensorflow: Callable[[], None] = import_tensorflow,
    ) -> None:
        if not isinstance(weights, Weights):
            raise TypeError("weights must be a Weights value (Weights.parse(text) reads the user's choice)")
        if config.weights != weights.identity:
            raise ValueError(
                f"the config is for weights {config.weights!r}, not {weights.identity!r}: "
                "pass resolve_config(config, weights)"
            )
        if whitening is None and config.whitening is not None:
            raise ModelError("these settings need the learned whitening; pass it to the Embedder")
        self.backbone: Backbone = get_backbone(config.model)
        cache = model_cache or ModelCache(default_cache_dir())
        request = NetworkRequest(config.replace(whitening=None), weights, cache, load_tensorflow, bulk)
        self.network: Network = open_network(runtime, request)
        self.config = config
        self.weights = weights
        self.geometry = config.geometry_for(self.backbone.input_size)
        self.batch_size = batch_size
        self.workers = workers or default_workers()
        self.limits = limits
        self.whitening: Whitening | None = None
        self.set_whitening(whitening)
        self.eager_max_images = EAGER_MAX_IMAGES  # a long-lived embedder sets 0: always the traced graph

    @property
    def dim(self) -> int:
        """The dimension of the vectors (the whitening's when there is one)."""
        if self.whitening is not None:
            return self.whitening.dim
        return self.network.dim

    @property
    def pipeline(self) -> ImagePipeline:
        """The image pipeline for the current settings (built per call: the settings may change)."""
        return ImagePipeline(self.geometry, self.config.scales, self.limits, self.workers, self.batch_size)

    @property
    def modalities(self) -> tuple[str, ...]:
        """An image backbone embeds images only."""
        return (IMAGE,)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Refused in one line: an ImageNet backbone has no text tower."""
        raise QueryError(f"the model {self.config.model} embeds images only; it cannot embed text")

    def embedder(self) -> Embedder:
        """This embedder: so that an Embedder can stand where settings that build one are expected
        (the indexer's ``EncoderSource``: config, weights, whitening, embedder())."""
        return self

    def set_whitening(self, whitening: Whitening | None) -> None:
        """Apply ``whitening`` to every vector from now on (and record it in the config)."""
        self.whitening = whitening
        self.config = self.config.replace(whitening=None if whitening is None else whitening.digest)

    def run_batch(self, batch: np.ndarray, eager: bool = False) -> np.ndarray:
        """Run the network on a uint8 batch (N, H, W, 3); returns pooled, unnormalised features.

        ``eager``: a tiny job (a single query in a fresh process), which Keras runs without tracing.
        """
        return self.network.run(preprocess(batch, self.backbone.preprocess), eager=eager)

    def embed_files(
        self,
        paths: Sequence[str | os.PathLike[str]],
        progress: bool | None = False,
        desc: str = "embedding",
    ) -> Iterator[Result]:
        """Yield ``(position, vector)`` for each path, or ``(position, BadImageError)`` for a bad file.

        Results come in roughly input order (images wait for their shape's batch to fill).
        ``progress`` drives a bar named ``desc`` (None: only on a terminal; False: none).
        """
        results = self._embed(self.pipeline.from_files(paths), len(paths))
        return with_progress(results, len(paths), progress, desc)

    @property
    def classes(self) -> int:
        """How many class probabilities :meth:`embed_files_with_classes` gives (0: no classifier head)."""
        return self.network.classes

    def embed_files_with_classes(
        self,
        paths: Sequence[str | os.PathLike[str]],
        progress: bool | None = False,
        desc: str = "embedding",
    ) -> Iterator[Classified]:
        """As :meth:`embed_files`, with each image's class probabilities from the same network pass:
        ``(position, (vector, probabilities))`` (probabilities averaged over the scales), or
        ``(position, BadImageError)``. ModelError where the backbone has no classifier head."""
        if not self.classes:
            raise ModelError(f"the model {self.config.model} has no classifier head")
        results = self._run(self.pipeline.from_files(paths), len(paths), with_classes=True)
        classified = ((i, v if isinstance(v, BadImageError) else (v, p)) for i, v, p in results)
        return with_progress(classified, len(paths), progress, desc)

    @property
    def classifier_name(self) -> str:
        """The classifier this embedder is (its model's own ImageNet head), "" without a head."""
        return self.config.model if self.classes else ""

    def embed_and_classify_files(
        self, paths: Sequence[str | os.PathLike[str]], progress: bool | None = False, desc: str = "embedding"
    ) -> Iterator[Classified]:
        """The vectors and the head's class probabilities, in one pass (a ``JointEncoder``)."""
        return self.embed_files_with_classes(paths, progress=progress, desc=desc)

    def embed_files_beside(
        self,
        paths: Sequence[str | os.PathLike[str]],
        side: Callable[[np.ndarray], np.ndarray],
        progress: bool | None = False,
        desc: str = "embedding",
    ) -> Iterator[Classified]:
        """As :meth:`embed_files`, with a second network run on the same decoded views: ``side``
        maps each uint8 batch (N, H, W, 3) to (N, C) outputs (a classifier's probabilities), which
        are averaged over an image's views. One decode, two networks: ``(position, (vector,
        side output))`` per image, or its BadImageError."""
        results = self._run(self.pipeline.from_files(paths), len(paths), with_classes=False, side=side)
        classified = ((i, v if isinstance(v, BadImageError) else (v, p)) for i, v, p in results)
        return with_progress(classified, len(paths), progress, desc)

    def embed_all(
        self,
        paths: Sequence[str | os.PathLike[str]],
        progress: bool | None = None,
        desc: str = "embedding",
    ) -> tuple[np.ndarray, list[int]]:
        """Embed ``paths`` with a progress bar; return (vectors of the good files, their positions).

        Bad files are logged as warnings and left out.
        """
        found: dict[int, np.ndarray] = {}
        for pos, result in self.embed_files(paths, progress=progress, desc=desc):
            if isinstance(result, BadImageError):
                log.warning("skipped %s: %s", paths[pos], result)
            else:
                found[pos] = result
        order = sorted(found)
        vecs = np.stack([found[i] for i in order]) if order else np.zeros((0, self.dim), np.float32)
        return vecs, order

    def embed_arrays(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Embed already-decoded uint8 RGB arrays (any size; each resized like a file would be).

        Returns one row per image; an image that cannot be embedded raises its BadImageError.
        """
        return self._rows(self.pipeline.from_arrays(images), len(images))

    def embed_views(self, views: Sequence[Views]) -> np.ndarray:
        """Embed images given as their views (one uint8 network input per scale, as
        :func:`~cbir.ingest.decode.load_views` makes them): one row per image, computed on this
        thread only. A server's requests make the views as they arrive, so that its model thread
        does nothing but run the network (``embed_arrays`` would resize on a pool of threads)."""
        return self._rows(self.pipeline.from_views(views), len(views))

    def _rows(self, stream: Generator[Batch | BadItem, None, None], n_images: int) -> np.ndarray:
        """The vectors of ``stream`` as (n_images, dim); an unusable image raises its BadImageError."""
        out = np.zeros((n_images, self.dim), dtype=np.float32)
        for i, vec in self._embed(stream, n_images):
            if isinstance(vec, BadImageError):
                raise BadImageError(f"image {i}: {vec}", transient=vec.transient)
            out[i] = vec
        return out

    def _embed(
        self, stream: Generator[Batch | BadItem, None, None], n_images: int
    ) -> Generator[Result, None, None]:
        """Run the batches of ``stream``; yield each image's vector once all its views went through."""
        with closing(self._run(stream, n_images, with_classes=False)) as results:
            for i, vec, _ in results:
                yield i, vec

    def _run(
        self,
        stream: Generator[Batch | BadItem, None, None],
        n_images: int,
        with_classes: bool,
        side: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> Generator[tuple[int, np.ndarray | BadImageError, np.ndarray], None, None]:
        """Run the batches of ``stream``; yield each image's vector (or error) and, ``with_classes``,
        its class probabilities (else an empty array), once all its views went through; ``side``:
        the class probabilities come from this second network, run on the same uint8 batches."""
        eager = n_images * len(self.config.scales) <= self.eager_max_images
        sums: dict[int, np.ndarray] = {}
        counts: dict[int, int] = {}
        none = np.zeros(0, np.float32)
        with closing(stream):
            for item in stream:
                if isinstance(item, BadItem):
                    yield item.position, item.error, none
                    continue
                if with_classes:
                    x = preprocess(item.array, self.backbone.preprocess)
                    feats, probs = self.network.run_with_classes(x, eager=eager)
                    feats = np.concatenate([feats, probs], axis=1)  # both averaged over the scales
                else:
                    feats = self.run_batch(item.array, eager=eager)
                if side is not None:
                    probs = np.asarray(side(item.array), dtype=np.float32)
                    feats = np.concatenate([feats, probs], axis=1)  # both averaged over the scales
                for i, f in zip(item.items, feats):
                    if i in sums:
                        sums[i] += f
                    else:
                        sums[i] = np.array(f, dtype=np.float32)
                    counts[i] = counts.get(i, 0) + 1
                if item.done:
                    means = np.stack([sums.pop(i) / counts.pop(i) for i in item.done])
                    dim = self.network.dim if with_classes or side is not None else means.shape[1]
                    vecs = self._finish(means[:, :dim])
                    for i, vec, ok, probs in zip(item.done, vecs, finite_rows(vecs), means[:, dim:]):
                        yield i, vec if ok else BadImageError("non-finite features"), probs

    def _finish(self, raw: np.ndarray) -> np.ndarray:
        """Mean features (n, D) -> L2-normalised (and whitened) vectors.

        Non-finite input gives non-finite rows quietly: the caller reports them as bad images.
        """
        with np.errstate(invalid="ignore", over="ignore"):
            vecs = l2_normalize(raw)
            if self.whitening is not None:
                vecs = self.whitening.apply(vecs)
        return vecs
