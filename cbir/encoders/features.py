"""What a feature vector is: the settings that must match between an index and its queries."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Literal

from cbir.core.types import JSONDict, Param
from cbir.encoders.pooling import POOLINGS
from cbir.ingest.decode import GEOMETRY_MODES, RESAMPLERS, Geometry


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

    model: str = "resnet50"
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
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError("scales must be positive numbers")

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


Kind = Literal["text", "positive", "input size", "scales"]
"""How a feature setting's text is read (``cbir.cli.arguments.KINDS`` holds a parser for each):
as it is, a number above 0, a whole number of at least 32, or ``--scales``' factors."""


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
    _S("gem_p", "GeM exponent (default 3)", kind="positive", network=True),
    _S("size", "input size, at least 32 (default: the backbone's)", kind="input size", network=True),
    _S("geometry", "how images are fitted to the input size", choices=lambda: list(GEOMETRY_MODES)),
    _S("resample", "resampling filter for resizing", choices=lambda: list(RESAMPLERS)),
    _S("scales", "multi-scale factors, e.g. 1,1/sqrt2,sqrt2", kind="scales"),
)
"""The feature settings a user chooses, in the order of the command line's options (which puts
``--weights`` after ``--model``). A new one is a :class:`FeatureConfig` field with its default and
one entry here; the parser, ``FeatureChoice``, the model cache's key and the README check follow."""
