"""The registry of encoder families: which family makes a model's vectors, and how it is built.

An encoder family (today ``cnn``: the ``keras.applications`` backbones with a pooling, run by any
:data:`~cbir.encoders.runtimes.RUNTIMES` runtime) is one :class:`EncoderKind` in :data:`ENCODERS`:
the models it offers, how a user's config is resolved into the identity the index records, and how
the encoder is built. A joint text-image family is one more package and one more entry here; the
indexer, the stores and the queries only see the :class:`~cbir.encoders.base.Encoder` it builds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cbir.core.errors import ModelError
from cbir.encoders.backbones import ALIASES, REGISTRY, get_backbone, width_multiplier
from cbir.encoders.base import IMAGE, Encoder, RuntimeOptions
from cbir.encoders.embedder import Embedder
from cbir.encoders.features import FeatureConfig
from cbir.encoders.model_cache import ModelCache, default_cache_dir
from cbir.encoders.network import import_tensorflow
from cbir.encoders.weights import Weights
from cbir.encoders.whiten import Whitening


@dataclass(frozen=True)
class EncoderRequest:
    """An encoder wanted: ``config`` resolved for ``weights``, the learned ``whitening`` if any, how
    it runs, and what to call before TensorFlow is imported (if it ever is)."""

    config: FeatureConfig
    weights: Weights
    whitening: Whitening | None = None
    runtime: RuntimeOptions = RuntimeOptions()
    load_tensorflow: Callable[[], None] = import_tensorflow


@dataclass(frozen=True)
class EncoderKind:
    """One encoder family: its ``models``, what it ``resolve``s a config into, and how it ``build``s."""

    name: str
    modalities: tuple[str, ...]
    models: Callable[[], Sequence[str]]
    knows: Callable[[str], bool]
    resolve: Callable[[FeatureConfig, Weights], FeatureConfig]
    build: Callable[[EncoderRequest], Encoder]


def _resolve_cnn(config: FeatureConfig, weights: Weights) -> FeatureConfig:
    """Canonical backbone name, weights identity and MobileNet width (a weights file's header is read
    at most: no model is built)."""
    backbone = get_backbone(config.model)
    width = config.width_multiplier
    if width is None and weights.path is not None:
        width = width_multiplier(backbone, weights.path)
    return config.replace(model=backbone.name, weights=weights.identity, width_multiplier=width)


def _build_cnn(request: EncoderRequest) -> Embedder:
    options = request.runtime
    return Embedder(
        request.config.replace(whitening=None),
        request.weights,
        batch_size=options.batch_size,
        workers=options.workers,
        limits=options.limits,
        whitening=request.whitening,
        runtime=options.runtime,
        model_cache=ModelCache(default_cache_dir(options.model_cache)),
        bulk=options.bulk,
        load_tensorflow=request.load_tensorflow,
    )


ENCODERS: dict[str, EncoderKind] = {
    "cnn": EncoderKind(
        name="cnn",
        modalities=(IMAGE,),
        models=lambda: list(REGISTRY),
        knows=lambda model: ALIASES.get(model.lower(), model.lower()) in REGISTRY,
        resolve=_resolve_cnn,
        build=_build_cnn,
    ),
}
"""The encoder families, by the name the index records (``FeatureConfig.encoder``)."""


def kind_of(model: str) -> EncoderKind:
    """The family that offers ``model``; ModelError lists every model when none does."""
    for kind in ENCODERS.values():
        if kind.knows(model):
            return kind
    names = [m for kind in ENCODERS.values() for m in kind.models()]
    raise ModelError(f"unknown model {model!r}; choose from: {', '.join(names)}")


def resolve_config(config: FeatureConfig, weights: Weights) -> FeatureConfig:
    """The config as the index will record it: the family's canonical identity of the model and its
    weights, plus the family's name and modalities.

    Cheap (no model is built), so an indexer can compare it with an existing index first. Called
    once; the encoder takes its result.
    """
    kind = kind_of(config.model)
    return kind.resolve(config, weights).replace(encoder=kind.name, modalities=kind.modalities)


def open_encoder(request: EncoderRequest) -> Encoder:
    """Build the encoder of ``request`` with the family its config names."""
    try:
        kind = ENCODERS[request.config.encoder]
    except KeyError:
        raise ModelError(
            f"the index was made by the encoder {request.config.encoder!r}, which this cbir does not have "
            f"(known: {', '.join(ENCODERS)})"
        ) from None
    return kind.build(request)
