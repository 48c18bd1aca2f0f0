"""The Keras runtime: the reference network (backbone plus pooling) that every other runtime is
converted from and checked against. Importing this module does not import Keras; building does."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cbir.core.errors import ModelError
from cbir.core.types import KerasModel, Tensor
from cbir.encoders.backbones import build_backbone, get_backbone
from cbir.encoders.features import FeatureConfig
from cbir.encoders.network import NetworkRequest
from cbir.encoders.pooling import POOLINGS
from cbir.encoders.weights import Weights


def build_keras_model(config: FeatureConfig, weights: Weights) -> KerasModel:
    """The ``keras.Model`` of ``config``: backbone with ``weights`` and a free input size, then pooling.

    Its output is the pooled features; where the backbone has a classifier head, the outputs are
    the pooled features and the class probabilities, computed in the same pass.
    """
    import keras

    trunk = build_backbone(get_backbone(config.model), weights, config.width_multiplier)
    feature_map, *head = trunk.outputs
    pooled = POOLINGS[config.pooling].layer(config.gem_p)(feature_map)
    return keras.Model(trunk.input, [pooled, *head] if head else pooled)


class KerasNetwork:
    """A Keras model run through a traced ``tf.function`` (or eagerly, for one or two images).

    The model's first output is the features; a second one, where there is one, the class
    probabilities (:attr:`classes` of them).
    """

    name = "keras"

    def __init__(self, model: KerasModel) -> None:
        self.model = model
        outputs = model.outputs
        self.dim = int(outputs[0].shape[-1])
        self.classes = int(outputs[1].shape[-1]) if len(outputs) > 1 else 0
        self._infer = self._compile()

    def _compile(self) -> Callable[[np.ndarray], list[np.ndarray]]:
        """The traced network (a tf.function that accepts new shapes without retracing each time)."""
        import tensorflow as tf

        fn = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)
        return lambda x: _arrays(fn(tf.constant(x)))

    def _outputs(self, x: np.ndarray, eager: bool) -> list[np.ndarray]:
        if eager:
            return _arrays(self.model(x, training=False))
        return self._infer(x)

    def run(self, x: np.ndarray, eager: bool = False) -> np.ndarray:
        """Pooled features of a preprocessed float32 batch (N, H, W, 3).

        ``eager`` skips tracing the graph: about half the cost of a first traced call, but slower on
        every later one, so it is used for tiny jobs only (a single query in a fresh process).
        """
        return self._outputs(x, eager)[0]

    def run_with_classes(self, x: np.ndarray, eager: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Pooled features and class probabilities of a batch, in one pass (ModelError without a head)."""
        if not self.classes:
            raise ModelError(f"the network {self.model.name} has no classifier head")
        features, probabilities = self._outputs(x, eager)
        return features, probabilities


def _arrays(out: Tensor | list[Tensor]) -> list[np.ndarray]:
    """A model's output (one tensor or a list of them) as a list of (writable) arrays."""
    return [t.numpy() for t in (out if isinstance(out, list | tuple) else [out])]


def open_keras(request: NetworkRequest) -> KerasNetwork:
    """The reference runtime (``--runtime keras``): builds the Keras network, importing TensorFlow."""
    request.load_tensorflow()
    return KerasNetwork(build_keras_model(request.config, request.weights))
