"""The runtime seam: what runs the network, chosen by ``--runtime {auto,keras,litert}``.

A :class:`Network` maps a preprocessed float32 batch to pooled, unnormalised features; the
:class:`~cbir.encoders.embedder.Embedder` does everything around it (decoding, scales,
normalising, whitening) the same way whatever runs it. :data:`RUNTIMES` maps each choice to the
function that opens a network for a :class:`NetworkRequest`; a new runtime is one more entry.

- ``keras``: the reference; builds the Keras model (imports TensorFlow).
- ``litert``: the converted model from the cache (:mod:`cbir.encoders.model_cache`), made from
  the Keras model on first need and checked against it (:mod:`cbir.encoders.convert`); a network
  that does not convert faithfully runs in Keras, with one log line, and is not tried again.
- ``auto``: ``litert`` where ai-edge-litert is installed and the weights are real (random weights
  differ in every process, so their conversion cannot be reused), except for indexing where
  TensorFlow sees a GPU; else ``keras``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from cbir.core.errors import ModelError
from cbir.core.types import JSONDict
from cbir.encoders.backbones import Backbone, get_backbone
from cbir.encoders.convert import convert
from cbir.encoders.features import FeatureConfig
from cbir.encoders.keras_net import KerasNetwork, build_keras_model
from cbir.encoders.litert_net import LiteRTNetwork, litert_available
from cbir.encoders.model_cache import Cached, Failed, ModelCache, cache_key, network_fields
from cbir.encoders.weights import Weights

log = logging.getLogger(__name__)

GPU_DEVICE_FILES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd")
"""Where a GPU TensorFlow could use shows up; without one, nobody asks TensorFlow (no import)."""


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

    def run(self, x: np.ndarray, eager: bool = False) -> np.ndarray:
        """Pooled features (N, dim) of a preprocessed float32 batch (N, H, W, 3); ``eager`` hints
        at a tiny job (one or two images in a fresh process)."""
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
        return network_fields(self.config, self.backbone.input_size)

    @property
    def key(self) -> str:
        return cache_key(self.fields)


def open_keras(request: NetworkRequest) -> KerasNetwork:
    """The reference runtime."""
    request.load_tensorflow()
    return KerasNetwork(build_keras_model(request.config, request.weights))


def convert_for(request: NetworkRequest, keras_net: KerasNetwork, cache: bool = True) -> Network | None:
    """Convert ``keras_net`` and cache the result (or the failure); None: stay with Keras (logged)."""
    fields = request.fields
    log.info("converting %s for LiteRT (once; cached in %s)", request.config.model, request.cache.root)
    start = time.perf_counter()
    made = convert(keras_net, request.backbone.preprocess, fields["size"])
    if made.data is None:
        log.warning("%s runs in Keras: %s", request.config.model, made.error)
        if cache:
            request.cache.store_failure(request.key, str(made.error), fields)
        return None
    record = {
        "network": fields,
        "cosine_to_keras": made.cosine,
        "seconds": round(time.perf_counter() - start, 1),
        "tensorflow": _version("tensorflow"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = request.cache.store(request.key, made.data, record) if cache else None
    return LiteRTNetwork(path or made.data, request.threads)


def _version(module: str) -> str:
    found = sys.modules.get(module)
    return str(getattr(found, "__version__", "unknown"))


def _converted_or_keras(request: NetworkRequest) -> Network:
    """The network from the cache, converting it on first need; Keras where that fails."""
    found = request.cache.lookup(request.key)
    if isinstance(found, Cached):
        return LiteRTNetwork(found.path, request.threads)
    if isinstance(found, Failed):
        log.info("%s runs in Keras (the model cache says: %s)", request.config.model, found.reason)
        return open_keras(request)
    keras_net = open_keras(request)
    return convert_for(request, keras_net) or keras_net


def open_litert(request: NetworkRequest) -> Network:
    """The LiteRT runtime (random weights are converted but not cached)."""
    if not litert_available():
        raise ModelError("--runtime litert needs the ai-edge-litert package (pip install ai-edge-litert)")
    if request.weights.kind == "random":
        keras_net = open_keras(request)
        return convert_for(request, keras_net, cache=False) or keras_net
    return _converted_or_keras(request)


def gpu_visible(load_tensorflow: Callable[[], None]) -> bool:
    """Whether TensorFlow sees a GPU; asked only where a GPU device file exists (or TF is loaded)."""
    if "tensorflow" not in sys.modules and not any(map(os.path.exists, GPU_DEVICE_FILES)):
        return False
    load_tensorflow()
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def open_auto(request: NetworkRequest) -> Network:
    """LiteRT where it can run the real weights, Keras otherwise and for indexing on a GPU."""
    if not litert_available() or request.weights.kind == "random":
        return open_keras(request)
    if request.bulk and gpu_visible(request.load_tensorflow):
        log.info("TensorFlow sees a GPU: indexing runs in Keras")
        return open_keras(request)
    return _converted_or_keras(request)


RUNTIMES: dict[str, Callable[[NetworkRequest], Network]] = {
    "auto": open_auto,
    "keras": open_keras,
    "litert": open_litert,
}
"""``--runtime`` choices and the function that opens the network for each."""


def open_network(runtime: str, request: NetworkRequest) -> Network:
    """The network of ``request`` in ``runtime`` (one of :data:`RUNTIMES`), its choice logged."""
    try:
        opener = RUNTIMES[runtime]
    except KeyError:
        raise ModelError(f"unknown runtime {runtime!r}; choose from: {', '.join(RUNTIMES)}") from None
    network = opener(request)
    log.info("runtime: %s (%s asked)", network.name, runtime)
    return network
