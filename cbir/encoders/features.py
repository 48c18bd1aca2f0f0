"""What a feature vector is: the settings that must match between an index and its queries."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Literal

from cbir.core.types import JSONDict, Param
from cbir.encoders.pooling import POOLINGS
from cbir.ingest.decode import GEOMETRY_MODES, RESAMPLERS, Geometry

DEFAULT_MODEL = "resnet50"
MIN_INPUT_SIDE = 32
MAX_INPUT_SIDE = 2048
"""The largest side of a network input (``--size`` times each scale): one 2048x2048 view is 48 MiB of
float32 and ResNet50's first feature maps on it about 1 GiB, per image of a batch; beyond this
decoding and the network only run out of memory (``--scales 100`` asked for 22400x22400)."""
MAX_SCALES = 8
MIN_GEM_P, MAX_GEM_P = 0.1, 8.0
"""GeM's exponent: below 0.1 its inverse overflows; above 8 ``x**p`` overflows float32 for activations
above 65,000 (3.4e38 ** (1/8)), and the pooling is max pooling in all but name."""


@dataclass(frozen=True)
class FeatureConfig:
    """Everything that changes the numbers in ``feats.npy``; stored in the index manifest.

    The defaults (average pooling, antialiased resize to the backbone's own input size) won on
    Corel-1k against the original script's settings (see docs/quality.md).

    ``weights`` is a :class:`~cbir.encoders.weights.Weights` identity: ``"imagenet"``,
    ``"random"`` or ``"file:NAME:SHA"``. ``size`` None means the backbone's default input size.
    ``scales`` > 1 entry: multi-scale, pooled features averaged before L2 normalisation.
    ``width_multiplier`` is MobileNet's width (Keras' ``alpha``; None: the default or read from the
    weights file). ``whitening`` is the digest of a learned PCA-whitening stored beside the index.
    ``encoder`` names the encoder family that made the vectors (:data:`cbir.encoders.registry.ENCODERS`)
    and ``modalities`` what it can embed (``image``; ``text`` too for a joint text-image model), so
    that a reader knows whether the index can answer a text query without loading any model.
    """

    model: str = DEFAULT_MODEL
    weights: str = "imagenet"
    pooling: str = "avg"
    gem_p: float = 3.0
    size: int | None = None
    geometry: str = "squash"
    resample: str = "bilinear"
    scales: tuple[float, ...] = (1.0,)
    width_multiplier: float | None = None
    whitening: str | None = None
    encoder: str = "cnn"
    modalities: tuple[str, ...] = ("image",)

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; choose from {', '.join(POOLINGS)}")
        if not self.scales or any(not 0 < s < math.inf for s in self.scales):
            raise ValueError("scales must be positive numbers")
        if not 0 < self.gem_p < math.inf:  # indexes made before the command line's range still open
            raise ValueError("the GeM exponent must be a positive number")

    def geometry_for(self, default_size: int) -> Geometry:
        """How images become network input; ``default_size``: the backbone's own input size."""
        return Geometry(size=self.size or default_size, mode=self.geometry, resample=self.resample)

    def to_dict(self) -> JSONDict:
        """The manifest form (JSON-ready)."""
        d = asdict(self)
        d["scales"] = list(self.scales)
        d["modalities"] = list(self.modalities)
        return d

    @classmethod
    def from_dict(cls, d: JSONDict) -> FeatureConfig:
        """Read the manifest form; unknown keys are ignored, the old key ``alpha`` is the width multiplier."""
        d = dict(d)
        if "alpha" in d and d.get("width_multiplier") is None:
            d["width_multiplier"] = d["alpha"]  # manifests of release 0.1 call it alpha
        d["scales"] = tuple(d.get("scales", (1.0,)))
        d["modalities"] = tuple(d.get("modalities", ("image",)))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def replace(self, **changes: Param) -> FeatureConfig:
        """A copy with ``changes`` applied (validated again)."""
        return replace(self, **changes)


ORIGINAL = FeatureConfig(pooling="max", geometry="squash", resample="nearest")
"""The original script's settings: ResNet50, 224x224 squash with nearest-neighbour, max pooling."""


Kind = Literal["text", "exponent", "input size", "scales"]
"""How a feature setting's text is read (``cbir.cli.arguments.KINDS`` holds a parser for each):
as it is, GeM's exponent (:data:`MIN_GEM_P` to :data:`MAX_GEM_P`), a whole number of pixels
(:data:`MIN_INPUT_SIDE` to :data:`MAX_INPUT_SIDE`), or ``--scales``' factors."""


@dataclass(frozen=True)
class FeatureSetting:
    """A feature setting a user may choose, declared once: a :class:`FeatureConfig` field.

    The command line's option (``--`` and the name with dashes; ``metavar``, None: argparse's), its
    parse-time check (``kind``; ``choices``), its help, and whether it identifies the converted
    network in the model cache (``network``) all derive from this record. Every feature setting is
    recorded in the index and compared with the query's (an existing index decides it).
    """

    name: str
    help: str
    kind: Kind = "text"
    choices: Callable[[], Sequence[str]] | None = None
    metavar: str | None = None
    network: bool = False

    @property
    def flag(self) -> str:
        """The command line's option: ``gem_p`` is ``--gem-p``."""
        return "--" + self.name.replace("_", "-")


_S = FeatureSetting
FEATURE_SETTINGS: tuple[FeatureSetting, ...] = (
    _S("model", "backbone (default resnet50; see `cbir models`)", network=True),
    _S("pooling", "pooling of the last feature map", choices=lambda: list(POOLINGS), network=True),
    _S("gem_p", f"GeM exponent, {MIN_GEM_P:g} to {MAX_GEM_P:g} (default 3)", kind="exponent", network=True),
    _S(
        "size",
        f"input size, {MIN_INPUT_SIDE} to {MAX_INPUT_SIDE} (default: the backbone's)",
        kind="input size",
        network=True,
    ),
    _S("geometry", "how images are fitted to the input size", choices=lambda: list(GEOMETRY_MODES)),
    _S("resample", "resampling filter for resizing", choices=lambda: list(RESAMPLERS)),
    _S(
        "scales",
        f"multi-scale factors, e.g. 1,1/sqrt2,sqrt2 (input size x scale at most {MAX_INPUT_SIDE})",
        kind="scales",
    ),
)
"""The feature settings a user chooses, in the order of the command line's options (which puts
``--weights`` after ``--model``). A new one is a :class:`FeatureConfig` field with its default and
one entry here; the parser, ``FeatureChoice``, the model cache's key and the README check follow."""
