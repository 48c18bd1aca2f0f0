"""Turning images into L2-normalised feature vectors with a Keras backbone.

Decoding, resizing and preprocessing run in a pool of threads (Pillow and NumPy release the GIL)
that feeds batches to the network while it runs; images whose inputs have the same shape share a
batch. Multi-scale features are averaged before normalisation; an optional PCA-whitening follows.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from cbir.embedding.backbones import Backbone, build_backbone, file_digest, get_backbone, width_multiplier
from cbir.embedding.features import FeatureConfig
from cbir.embedding.preprocess import preprocess
from cbir.errors import BadImageError, ModelError
from cbir.ingest.decode import LoadLimits, load_views

log = logging.getLogger(__name__)

EAGER_MAX_IMAGES = 2
"""Jobs this small run the network eagerly: tracing costs more than it saves (docs/speed.md)."""


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Scale rows to unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, np.float32(1e-12))


def weights_identity(weights: str | None) -> str:
    """How a weights choice is recorded in the manifest: imagenet, random, or file:NAME:SHA."""
    if weights in (None, "random"):
        return "random"
    if weights == "imagenet":
        return "imagenet"
    return f"file:{os.path.basename(weights)}:{file_digest(weights)}"


def _pooling_layer(pooling: str, p: float) -> Any:
    import keras
    from keras import ops

    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D()
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D()

    class GeM(keras.layers.Layer):
        """Generalised-mean pooling: (mean x^p)^(1/p); p=1 is average, p->inf is max."""

        def call(self, x: Any) -> Any:
            x = ops.maximum(x, 1e-6)
            return ops.power(ops.mean(ops.power(x, p), axis=(1, 2)), 1.0 / p)

    return GeM(name="gem")


def resolve_config(config: FeatureConfig, weights: str | None) -> FeatureConfig:
    """The config as it will be recorded: canonical model name, weights identity, MobileNet alpha.

    Cheap (no model is built), so an indexer can compare it with an existing index first.
    """
    backbone = get_backbone(config.model)
    alpha = config.alpha
    if alpha is None and weights not in (None, "random", "imagenet"):
        if not os.path.isfile(weights):
            raise ModelError(f"weights file not found: {weights}")
        alpha = width_multiplier(backbone, weights)
    return config.replace(model=backbone.name, weights=weights_identity(weights), alpha=alpha)


class Embedder:
    """A backbone plus pooling that embeds files or arrays into L2-normalised float32 vectors."""

    def __init__(
        self,
        config: FeatureConfig,
        weights: str | None = "imagenet",
        *,
        batch_size: int = 32,
        workers: int | None = None,
        limits: LoadLimits = LoadLimits(),
        draft: bool = True,
        whitening: Any = None,
    ) -> None:
        import keras

        config = resolve_config(config, weights)
        self.backbone: Backbone = get_backbone(config.model)
        trunk = build_backbone(self.backbone, None if weights == "random" else weights, config.alpha)
        pooled = _pooling_layer(config.pooling, config.gem_p)(trunk.output)
        self.model = keras.Model(trunk.input, pooled)
        if whitening is None and config.whitening is not None:
            raise ModelError("these settings need the learned whitening; pass it to the Embedder")
        self.config = config
        self.weights = weights
        self.geometry = config.geometry_for(self.backbone.input_size)
        self.batch_size = batch_size
        # one decoding thread per core: more only add contention with the network (docs/speed.md)
        self.workers = workers or min(8, os.cpu_count() or 2)
        self.limits = limits
        self.draft = draft
        self.set_whitening(whitening)
        self._infer = self._compile()

    def _compile(self) -> Callable[[np.ndarray], np.ndarray]:
        import tensorflow as tf

        fn = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)
        return lambda x: fn(tf.constant(x)).numpy()

    @property
    def dim(self) -> int:
        if self.whitening is not None:
            return int(self.whitening.dim)
        return int(self.model.output_shape[-1])

    def set_whitening(self, whitening: Any) -> None:
        """Apply ``whitening`` to every vector from now on (and record it in the config)."""
        self.whitening = whitening
        self.config = self.config.replace(whitening=None if whitening is None else whitening.digest)

    def embed_all(
        self, paths: Sequence[str | os.PathLike], progress: bool | None = None, desc: str = "embedding"
    ) -> tuple[np.ndarray, list[int]]:
        """Embed ``paths`` with a progress bar; return (vectors of the good files, their positions)."""
        from cbir.progress import progress_bar

        found: dict[int, np.ndarray] = {}
        bar = progress_bar(total=len(paths), desc=desc, unit="img", enabled=progress)
        try:
            for pos, result in self.embed_files(paths):
                if isinstance(result, BadImageError):
                    log.warning("skipped %s: %s", paths[pos], result)
                else:
                    found[pos] = result
                bar.update(1)
        finally:
            bar.close()
        order = sorted(found)
        vecs = np.stack([found[i] for i in order]) if order else np.zeros((0, self.dim), np.float32)
        return vecs, order

    def _finish(self, raw: np.ndarray) -> np.ndarray:
        vecs = l2_normalize(raw)
        if self.whitening is not None:
            vecs = self.whitening.apply(vecs)
        return vecs

    def embed_arrays(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Embed already-decoded uint8 RGB arrays (any size; each resized like a file would be)."""
        from PIL import Image

        from cbir.ingest.decode import resize

        def views() -> Iterator[tuple[int, list[np.ndarray] | BadImageError]]:
            for i, a in enumerate(images):
                img = Image.fromarray(np.asarray(a, dtype=np.uint8))
                yield i, [resize(img, self.geometry, s) for s in self.config.scales]

        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for i, vec in self._batched(views()):
            out[i] = vec
        return out

    def _batched(
        self, items: Iterator[tuple[int, list[np.ndarray] | BadImageError]], eager: bool = False
    ) -> Iterator[tuple[int, np.ndarray | BadImageError]]:
        """Group views of equal shape into batches, run them, and yield each finished vector.

        A vector is finished when all its scales have been through the network; bad items pass
        straight through.
        """
        n_scales = len(self.config.scales)
        buckets: dict[tuple[int, ...], list[tuple[int, np.ndarray]]] = defaultdict(list)
        acc: dict[int, np.ndarray] = {}
        counts: dict[int, int] = defaultdict(int)

        def flush(shape: tuple[int, ...]) -> Iterator[tuple[int, np.ndarray]]:
            group = buckets.pop(shape)
            feats = self.run_batch(np.stack([v for _, v in group]), eager=eager)
            for (i, _), f in zip(group, feats):
                acc[i] = acc[i] + f if i in acc else f.copy()
                counts[i] += 1
                if counts[i] == n_scales:
                    del counts[i]
                    yield i, self._finish(acc.pop(i)[None] / n_scales)[0]

        for i, views in items:
            if isinstance(views, BadImageError):
                yield i, views
                continue
            for v in views:
                buckets[v.shape].append((i, v))
                if len(buckets[v.shape]) >= self.batch_size:
                    yield from flush(v.shape)
        for shape in list(buckets):
            yield from flush(shape)

    def run_batch(self, batch: np.ndarray, eager: bool = False) -> np.ndarray:
        """Run the network on a uint8 batch (N, H, W, 3); returns pooled, unnormalised features.

        ``eager`` skips tracing the graph: about half the cost of a first traced call, but slower on
        every later one, so it is used for tiny jobs only (a single query in a fresh process).
        """
        x = preprocess(batch, self.backbone.preprocess)
        if eager:
            return np.asarray(self.model(x, training=False))
        return self._infer(x)

    def _load(self, path: str) -> list[np.ndarray]:
        return load_views(path, self.geometry, self.config.scales, self.limits, self.draft)

    def embed_files(
        self, paths: Sequence[str | os.PathLike]
    ) -> Iterator[tuple[int, np.ndarray | BadImageError]]:
        """Yield ``(position, vector)`` for each path, or ``(position, BadImageError)`` for a bad file.

        Results come in roughly input order (images wait for their shape's batch to fill).
        """
        prefetch = max(self.batch_size * 2, self.workers * 2)
        executor = ThreadPoolExecutor(self.workers, thread_name_prefix="cbir-decode")

        def decoded() -> Iterator[tuple[int, list[np.ndarray] | BadImageError]]:
            pending: deque[tuple[int, Future[list[np.ndarray]]]] = deque()
            todo = iter(enumerate(paths))
            for i, p in todo:
                pending.append((i, executor.submit(self._load, os.fspath(p))))
                if len(pending) >= prefetch:
                    break
            while pending:
                i, fut = pending.popleft()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append((nxt[0], executor.submit(self._load, os.fspath(nxt[1]))))
                try:
                    yield i, fut.result()
                except BadImageError as exc:
                    yield i, exc
                except Exception as exc:  # an unexpected decoder failure must not end a long run
                    yield i, BadImageError(f"cannot decode ({type(exc).__name__}: {exc})")

        try:
            yield from self._batched(
                decoded(), eager=len(paths) * len(self.config.scales) <= EAGER_MAX_IMAGES
            )
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
