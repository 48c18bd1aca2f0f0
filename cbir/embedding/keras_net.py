"""The Keras runtime: the reference network (backbone plus pooling) that every other runtime is
converted from and checked against. Importing this module does not import Keras; building does."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cbir.embedding.backbones import build_backbone, get_backbone
from cbir.embedding.features import FeatureConfig
from cbir.embedding.weights import Weights
from cbir.types import KerasModel


def _pooling_layer(pooling: str, p: float) -> KerasModel:
    """The global pooling that turns the trunk's feature map into one vector per image."""
    import keras
    from keras import ops

    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D()
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D()

    class GeM(keras.layers.Layer):
        """Generalised-mean pooling: (mean x^p)^(1/p); p=1 is average, p->inf is max."""

        def call(self, x: KerasModel) -> KerasModel:  # a backend tensor
            x = ops.maximum(x, 1e-6)
            return ops.power(ops.mean(ops.power(x, p), axis=(1, 2)), 1.0 / p)

    return GeM(name="gem")


def build_keras_model(config: FeatureConfig, weights: Weights) -> KerasModel:
    """The ``keras.Model`` of ``config``: backbone with ``weights`` and a free input size, then pooling."""
    import keras

    trunk = build_backbone(get_backbone(config.model), weights, config.width_multiplier)
    pooled = _pooling_layer(config.pooling, config.gem_p)(trunk.output)
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
