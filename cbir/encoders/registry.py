"""The registry of encoder families: which family makes a model's vectors, and how it is built.

An encoder family (today ``cnn``: the ``keras.applications`` backbones with a pooling, run by any
:data:`~cbir.encoders.runtimes.RUNTIMES` runtime) is one :class:`EncoderKind` in :data:`ENCODERS`:
the models it offers, how a user's config is resolved into the identity the index records, and how
the encoder is built. A joint text-image family is one more package and one more entry here; the
indexer, the stores and the queries only see the :class:`~cbir.encoders.base.Encoder` it builds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from cbir.core.errors import ModelError
from cbir.core.types import JSONDict
from cbir.encoders.backbones import ALIASES, REGISTRY, get_backbone, width_multiplier
from cbir.encoders.base import IMAGE, TEXT, Encoder, RuntimeOptions
from cbir.encoders.embedder import Embedder
from cbir.encoders.features import FeatureConfig
from cbir.encoders.joint.encoder import TextImageEncoder
from cbir.encoders.joint.presets import PRESETS, is_preset_folder, preset_source
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
class ModelInfo:
    """One model as ``cbir models`` lists it: what it embeds, its vectors' ``dim``, its input size and
    preprocessing; for a model downloaded on first use, about how much (``download_bytes``) and
    whether it is already in the model cache (``cached``)."""

    name: str
    family: str
    modalities: tuple[str, ...]
    dim: int
    input_size: int
    preprocess: str
    architecture: str | None = None
    download_bytes: int | None = None
    cached: bool | None = None

    def to_dict(self) -> JSONDict:
        """The ``--json`` form (the fields that do not apply to the model are left out)."""
        d = {k: v for k, v in asdict(self).items() if v is not None}
        d["modalities"] = list(self.modalities)
        return d


@dataclass(frozen=True)
class EncoderKind:
    """One encoder family: its ``models``, what it ``resolve``s a config into, how it ``build``s,
    what ``cbir models`` says of each model (``describe``, given the model cache folder) and the
    ``dim`` of a resolved config's vectors when it is known without building the model (None: only
    the built model knows)."""

    name: str
    modalities: tuple[str, ...]
    models: Callable[[], Sequence[str]]
    knows: Callable[[str], bool]
    resolve: Callable[[FeatureConfig, Weights], FeatureConfig]
    build: Callable[[EncoderRequest], Encoder]
    describe: Callable[[Path], list[ModelInfo]]
    dim: Callable[[FeatureConfig], int | None] = lambda config: None


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


def _dim_cnn(config: FeatureConfig) -> int:
    """The backbone's feature channels at the config's width: every pooling keeps the channels."""
    return get_backbone(config.model).features(config.width_multiplier)


def _resolve_siglip(config: FeatureConfig, weights: Weights) -> FeatureConfig:
    """A built-in model's name, or a preset folder's absolute path with its digest as the weights;
    the settings a joint model has no use for are refused (its input size is the model's own)."""
    if weights.kind not in ("imagenet", "own"):
        raise ModelError(f"--weights does not apply to {config.model}: give a preset folder as --model DIR")
    default = FeatureConfig()
    for name in ("pooling", "size", "scales", "width_multiplier"):
        if getattr(config, name) != getattr(default, name):
            raise ModelError(
                f"--{name.replace('_', '-')} does not apply to the text-image model {config.model}"
            )
    source = preset_source(config.model, default_cache_dir(None))
    return config.replace(model=source.model, weights=source.identity)


def _build_siglip(request: EncoderRequest) -> TextImageEncoder:
    if request.whitening is not None:
        raise ModelError(
            "whitening does not apply to a text-image model: texts would leave the images' space"
        )
    root = default_cache_dir(request.runtime.model_cache)
    return TextImageEncoder(
        request.config,
        request.weights,
        preset_source(request.config.model, root, request.load_tensorflow),
        request.runtime,
        ModelCache(root),
        request.load_tensorflow,
    )


def _dim_siglip(config: FeatureConfig) -> int | None:
    """The preset's width, read from its config file when the model cache holds it (else None:
    nothing is downloaded to learn it)."""
    source = preset_source(config.model, default_cache_dir(None))
    return source.dim if source.complete() else None


def _describe_cnn(cache: Path) -> list[ModelInfo]:
    """The backbones (their Keras ImageNet weights live in Keras' own cache, not listed here)."""
    return [ModelInfo(b.name, "cnn", (IMAGE,), b.dim, b.input_size, b.preprocess) for b in REGISTRY.values()]


def _describe_siglip(cache: Path) -> list[ModelInfo]:
    """The SigLIP presets, from what is known of them before a download, and whether their files
    are complete in ``cache`` (``cache/keras-hub/PRESET/``)."""
    return [
        ModelInfo(
            p.name,
            "siglip",
            (IMAGE, TEXT),
            p.dim,
            p.image_size,
            "siglip",
            architecture=p.architecture,
            download_bytes=p.download_bytes,
            cached=preset_source(p.name, cache).complete(),
        )
        for p in PRESETS.values()
    ]


ENCODERS: dict[str, EncoderKind] = {
    "cnn": EncoderKind(
        name="cnn",
        modalities=(IMAGE,),
        models=lambda: list(REGISTRY),
        knows=lambda model: ALIASES.get(model.lower(), model.lower()) in REGISTRY,
        resolve=_resolve_cnn,
        build=_build_cnn,
        describe=_describe_cnn,
        dim=_dim_cnn,
    ),
    "siglip": EncoderKind(
        name="siglip",
        modalities=(IMAGE, TEXT),
        models=lambda: list(PRESETS),
        knows=lambda model: model.lower() in PRESETS or is_preset_folder(model),
        resolve=_resolve_siglip,
        build=_build_siglip,
        describe=_describe_siglip,
        dim=_dim_siglip,
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


def describe_models(cache: Path) -> list[ModelInfo]:
    """Every model of every family, as ``cbir models`` lists them (``cache``: the model cache)."""
    return [info for kind in ENCODERS.values() for info in kind.describe(cache)]


def declared_dim(config: FeatureConfig, whitening: Whitening | None = None) -> int | None:
    """The dimension of the vectors of a resolved ``config`` (and its ``whitening``) as the family
    declares it, without building the model (a Ray driver learns it so, not from an extra worker);
    None where only the built model knows."""
    if whitening is not None:
        return whitening.dim
    kind = ENCODERS.get(config.encoder)
    return None if kind is None else kind.dim(config)


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
