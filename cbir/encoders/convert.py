"""The LiteRT runtime's making: the Keras network converted into a LiteRT model, checked to compute
the same features, cached (:mod:`cbir.encoders.model_cache`, format ``tflite``) and opened
(:func:`open_litert`, the ``--runtime litert`` entry of :data:`cbir.encoders.runtimes.RUNTIMES`).

The model is exported as a SavedModel with a free batch and image size, converted with TensorFlow's
own ``TFLiteConverter`` (float32, no optimisation), then run by LiteRT on a fixed check batch next
to Keras: it is accepted only if every feature vector (and, for a network with a classifier head,
every row of class probabilities) has a cosine of at least :data:`MIN_COSINE` to Keras' (at the
configured input size and at one other size and batch).
Needs TensorFlow (it is loaded anyway whenever the Keras model is built).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from cbir.core.errors import ModelError
from cbir.encoders.keras_net import KerasNetwork, open_keras
from cbir.encoders.litert_net import CLASSES, FEATURES, NAME, SUFFIX, LiteRTNetwork, litert_available
from cbir.encoders.model_cache import Cached, Failed
from cbir.encoders.network import Network, NetworkRequest
from cbir.encoders.preprocess import preprocess

log = logging.getLogger(__name__)

MIN_COSINE = 0.9999


@dataclass(frozen=True)
class Conversion:
    """A converted model that passed the check (``data``), or why there is none (``error``)."""

    data: bytes | None
    cosine: float | None
    error: str | None = None


def check_batches(size: int) -> list[np.ndarray]:
    """Fixed uint8 images to compare the runtimes on: smooth colour fields with texture, two shapes."""
    rng = np.random.default_rng(20240607)
    out = []
    for n, (h, w) in ((3, (size, size)), (1, (size + size // 4, size))):
        coarse = rng.integers(0, 256, (n, 8, 8, 3)).astype(np.float32)
        fields = coarse.repeat(-(-h // 8), axis=1).repeat(-(-w // 8), axis=2)[:, :h, :w]
        noise = rng.normal(0, 24, (n, h, w, 3))
        out.append(np.clip(fields + noise, 0, 255).astype(np.uint8))
    return out


def lowest_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The lowest cosine similarity between matching rows of ``a`` and ``b``."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.min((a * b).sum(1) / np.maximum(norms, 1e-30)))


def export_saved_model(keras_net: KerasNetwork, folder: str) -> None:
    """Write the Keras network as a SavedModel with a free batch and image size into ``folder``."""
    import tensorflow as tf
    from keras.export import ExportArchive

    model = keras_net.model

    def serve(x: object) -> object:
        """The features; with a classifier head, the features and class probabilities by name."""
        out = model(x, training=False)
        return {FEATURES: out[0], CLASSES: out[1]} if keras_net.classes else out

    archive = ExportArchive()
    archive.track(model)
    spec = [tf.TensorSpec([None, None, None, 3], tf.float32)]
    archive.add_endpoint("serve", serve, input_signature=spec)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints a summary
        archive.write_out(folder, verbose=False)


def to_litert(keras_net: KerasNetwork) -> bytes:
    """The LiteRT flatbuffer of the Keras network (float32, free batch and image size)."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="cbir-export-") as tmp:
        export_saved_model(keras_net, tmp)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        return bytes(converter.convert())


def convert(keras_net: KerasNetwork, preprocess_mode: str, size: int) -> Conversion:
    """Convert and check ``keras_net``; a network that fails either comes back with its ``error``."""
    try:
        data = to_litert(keras_net)
        converted = LiteRTNetwork(data)
    except Exception as exc:  # any converter failure means: stay with Keras
        last = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        return Conversion(None, None, f"conversion failed: {last[:200]}")
    if converted.classes != keras_net.classes:
        return Conversion(
            None, None, f"the converted network has {converted.classes} classes, not {keras_net.classes}"
        )
    cosines: list[float] = []
    for batch in check_batches(size):
        x = preprocess(batch, preprocess_mode)
        if keras_net.classes:  # the class probabilities must agree as well
            pairs = zip(converted.run_with_classes(x), keras_net.run_with_classes(x))
            cosines.extend(lowest_cosine(a, b) for a, b in pairs)
        else:
            cosines.append(lowest_cosine(converted.run(x), keras_net.run(x)))
    cosine = min(cosines)
    if not cosine >= MIN_COSINE:
        return Conversion(None, cosine, f"converted features differ (cosine {cosine:.6f} < {MIN_COSINE})")
    return Conversion(data, cosine)


def convert_for(request: NetworkRequest, keras_net: KerasNetwork, cache: bool = True) -> Network | None:
    """Convert ``keras_net`` and cache the result (or the failure); None: stay with Keras (logged)."""
    fields, slot = request.fields, request.slot(NAME, SUFFIX)
    log.info("converting %s for LiteRT (once; cached in %s)", request.config.model, request.cache.root)
    start = time.perf_counter()
    made = convert(keras_net, request.backbone.preprocess, fields["size"])
    if made.data is None:
        log.warning("%s runs in Keras: %s", request.config.model, made.error)
        if cache:
            request.cache.store_failure(slot, str(made.error), fields)
        return None
    record = {
        "network": fields,
        "cosine_to_keras": made.cosine,
        "seconds": round(time.perf_counter() - start, 1),
        "tensorflow": _version("tensorflow"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = request.cache.store(slot, made.data, record) if cache else None
    return LiteRTNetwork(path or made.data, request.threads)


def _version(module: str) -> str:
    found = sys.modules.get(module)
    return str(getattr(found, "__version__", "unknown"))


def converted_or_keras(request: NetworkRequest) -> Network:
    """The network from the cache, converting it on first need; Keras where that fails."""
    found = request.cache.lookup(request.slot(NAME, SUFFIX))
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
    return converted_or_keras(request)
