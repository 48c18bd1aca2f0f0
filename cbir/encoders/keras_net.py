"""The Keras runtime: the reference network (backbone plus pooling) that every other runtime is
converted from and checked against. Importing this module does not import Keras; building does."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cbir.core.types import KerasModel
from cbir.encoders.backbones import build_backbone, get_backbone
from cbir.encoders.features import FeatureConfig
from cbir.encoders.network import NetworkRequest
from cbir.encoders.pooling import POOLINGS
from cbir.encoders.weights import Weights


def build_keras_model(config: FeatureConfig, weights: Weights) -> KerasModel:
    """The ``keras.Model`` of ``config``: backbone with ``weights`` and a free input size, then pooling."""
    import keras

    trunk = build_backbone(get_backbone(config.model), weights, config.width_multiplier)
    pooled = POOLINGS[config.pooling].layer(config.gem_p)(trunk.output)
    return keras.Model(trunk.input, pooled)


class KerasNetwork:
    """A Keras model run through a traced ``tf.function`` (or eagerly, for one or two images)."""

    name = "keras"

    def __init__(self, model: KerasModel) -> None:
        self.model = model
        self.dim = int(model.output_shape[-1])
        self._infer = self._compile()

    def _compile(self) -> Callable[[np.ndarray], np.ndarray]:
        """The traced network (a tf.function that accepts new shapes without retracing each time)."""
        import tensorflow as tf

        fn = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)
        return lambda x: fn(tf.constant(x)).numpy()

    def run(self, x: np.ndarray, eager: bool = False) -> np.ndarray:
        """Pooled features of a preprocessed float32 batch (N, H, W, 3).

        ``eager`` skips tracing the graph: about half the cost of a first traced call, but slower on
        every later one, so it is used for tiny jobs only (a single query in a fresh process).
        """
        if eager:
            return np.asarray(self.model(x, training=False))
        return self._infer(x)


def open_keras(request: NetworkRequest) -> KerasNetwork:
    """The reference runtime (``--runtime keras``): builds the Keras network, importing TensorFlow."""
    request.load_tensorflow()
    return KerasNetwork(build_keras_model(request.config, request.weights))
