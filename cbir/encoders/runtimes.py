"""The runtime seam: what runs the network, chosen by ``--runtime {auto,keras,litert}``.

A :class:`~cbir.encoders.network.Network` maps a preprocessed float32 batch to pooled, unnormalised
features; the :class:`~cbir.encoders.embedder.Embedder` does everything around it (decoding, scales,
normalising, whitening) the same way whatever runs it. :data:`RUNTIMES` maps each choice to the
function that opens a network for a :class:`~cbir.encoders.network.NetworkRequest`: a new runtime is
one module (its network, its opener, its format in the model cache) plus one entry here.

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
from collections.abc import Callable

from cbir.core.errors import ModelError
from cbir.encoders.convert import converted_or_keras, open_litert
from cbir.encoders.keras_net import open_keras
from cbir.encoders.litert_net import litert_available
from cbir.encoders.network import Network, NetworkRequest

log = logging.getLogger(__name__)

GPU_DEVICE_FILES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd")
"""Where a GPU TensorFlow could use shows up; without one, nobody asks TensorFlow (no import)."""


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
    return converted_or_keras(request)


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
