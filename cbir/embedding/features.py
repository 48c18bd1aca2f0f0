"""What a feature vector is: the settings that must match between an index and its queries."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from cbir.ingest.decode import Geometry

POOLINGS = ("max", "avg", "gem")


@dataclass(frozen=True)
class FeatureConfig:
    """Everything that changes the numbers in ``feats.npy``; stored in the index manifest.

    The defaults (average pooling, antialiased resize to the backbone's own input size) won on
    Corel-1k against the original script's settings (see docs/quality.md).

    ``weights`` is ``"imagenet"``, ``"random"`` or ``"file:NAME:SHA"`` (a local file's identity).
    ``size`` None means the backbone's default input size. ``scales`` > 1 entry: multi-scale,
    pooled features averaged before L2 normalisation. ``whitening`` is the digest of a learned
    PCA-whitening stored beside the index, or None.
    """

    model: str = "resnet50"
    weights: str = "imagenet"
    pooling: str = "avg"
    gem_p: float = 3.0
    size: int | None = None
    geometry: str = "squash"
    resample: str = "bilinear"
    scales: tuple[float, ...] = (1.0,)
    alpha: float | None = None
    whitening: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; choose from {', '.join(POOLINGS)}")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError("scales must be positive numbers")

    def geometry_for(self, default_size: int) -> Geometry:
        return Geometry(size=self.size or default_size, mode=self.geometry, resample=self.resample)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scales"] = list(self.scales)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureConfig:
        d = dict(d)
        d["scales"] = tuple(d.get("scales", (1.0,)))
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    def replace(self, **changes: Any) -> FeatureConfig:
        return replace(self, **changes)


ORIGINAL = FeatureConfig(pooling="max", geometry="squash", resample="nearest")
"""The original script's settings: ResNet50, 224x224 squash with nearest-neighbour, max pooling."""
