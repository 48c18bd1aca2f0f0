"""What a command works with, decided once: dataset, index folder, features, weights, whitening.

The rules (tested without a model in tests/test_settings.py):

- An existing index's settings, and the weights file it was built with, are the starting point, so
  a re-run without options never silently rebuilds with the defaults. Options given change only
  what they name (which rebuilds the index when indexing, and is refused when querying).
- New weights or another backbone start from that backbone's own width multiplier.
- An index built with a weights file that is no longer where it was needs ``--weights FILE``.
- The index's own whitening is kept while nothing else changes; ``--whiten-on DIR`` learns a new
  one (this builds the model); any other change of features drops it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from cbir.core.errors import IndexFolderError
from cbir.core.types import Param
from cbir.encoders.base import Encoder, RuntimeOptions
from cbir.encoders.classifier import ClassifierSource, default_classifier
from cbir.encoders.features import FEATURE_SETTINGS, ORIGINAL, FeatureConfig
from cbir.encoders.network import import_tensorflow
from cbir.encoders.registry import EncoderRequest, declared_dim, open_encoder, resolve_config
from cbir.encoders.weights import Weights
from cbir.encoders.whiten import Whitening, learn_from_folder, load_for_index
from cbir.stores.base import Store
from cbir.stores.folder.store import FolderStore
from cbir.stores.folder.writer import default_index_dir
from cbir.stores.manifest import Manifest


@dataclass(frozen=True, init=False, repr=False)
class FeatureChoice:
    """The feature options a user gave, by the names of
    :data:`~cbir.encoders.features.FEATURE_SETTINGS` (None: not given, keep the index's or the
    default); ``original``: the original script's features under the named ones.

    ``values`` holds the given ones as sorted ``(name, value)`` pairs, so that equal choices compare
    and hash equal; ``choice.model`` reads one (None when not given)."""

    values: tuple[tuple[str, Param], ...]
    original: bool

    def __init__(self, *, original: bool = False, **given: Param) -> None:
        known = {s.name for s in FEATURE_SETTINGS}
        unknown = sorted(set(given) - known)
        if unknown:
            raise TypeError(f"unknown feature settings {unknown}; known: {sorted(known)}")
        object.__setattr__(self, "original", original)
        object.__setattr__(self, "values", tuple(sorted((k, v) for k, v in given.items() if v is not None)))

    @property
    def given(self) -> dict[str, Param]:
        """The settings given, by name."""
        return dict(self.values)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.values)
        return f"FeatureChoice({shown}{', original=True' if self.original else ''})"

    def __getattr__(self, name: str) -> Param:
        """A setting's value as given (None when not given), e.g. ``choice.model``."""
        if name in {s.name for s in FEATURE_SETTINGS}:
            return dict(self.__dict__.get("values", ())).get(name)
        raise AttributeError(name)

    def apply(self, config: FeatureConfig) -> FeatureConfig:
        """``config`` with the given options applied (``original`` first, named options over it)."""
        if self.original:
            config = config.replace(
                pooling=ORIGINAL.pooling, geometry=ORIGINAL.geometry, resample=ORIGINAL.resample
            )
        return config.replace(**self.given)


@dataclass(frozen=True)
class WhitenRequest:
    """Learn a PCA-whitening on the images of ``folder`` (``--whiten-on``)."""

    folder: Path
    dim: int | None = None
    power: float = 0.5


@dataclass(frozen=True)
class Settings:
    """Everything resolved for one command; builds the embedder at most once, on first use.

    ``config`` is the resolved feature config, as recorded in a manifest (whitening digest included).
    ``existing`` says whether an index was found and its settings were the starting point.
    ``store`` is where the index lives (None: the folder store in ``index_dir``; see ``home``).
    ``load_tensorflow`` is called before TensorFlow is imported, if it ever is (a model the cache
    holds runs without it).
    """

    dataset: Path
    index_dir: Path
    config: FeatureConfig
    weights: Weights
    whitening: Whitening | None = None
    runtime: RuntimeOptions = RuntimeOptions()
    existing: bool = False
    load_tensorflow: Callable[[], None] = field(default=import_tensorflow, compare=False, repr=False)
    store: Store | None = field(default=None, compare=False, repr=False)
    _built: list[Encoder] = field(default_factory=list, compare=False, repr=False)

    @property
    def home(self) -> Store:
        """The store of the index: ``store``, else the folder store in ``index_dir``."""
        return self.store if self.store is not None else FolderStore(self.dataset, self.index_dir)

    @property
    def batch_size(self) -> int:
        """Images per batch of the encoder (Ray hands each actor batches of this size)."""
        return self.runtime.batch_size

    def embedder(self) -> Encoder:
        """The encoder of these settings (built on the first call, by the family its config names)."""
        if not self._built:
            request = EncoderRequest(
                self.config,
                self.weights,
                self.whitening,
                self.runtime,
                self.load_tensorflow,
            )
            self._built.append(open_encoder(request))
        return self._built[0]

    def declared_dim(self) -> int | None:
        """The vectors' dimension as the config and whitening declare it, without building the
        model (None: only the built model knows)."""
        return declared_dim(self.config, self.whitening)

    def portable(self) -> Settings:
        """These settings without what stays in this process (a built model, the store's client, the
        command line's TensorFlow loader): what another process builds its own encoder from."""
        return replace(self, _built=[], load_tensorflow=import_tensorflow, store=None)


def classifier_for(settings: Settings) -> ClassifierSource:
    """What labels an index of these settings (``--labels``): the backbone's own ImageNet head when
    it has one, else EfficientNet-Lite0 (run beside the backbone on the same decoded images)."""
    return ClassifierSource(
        default_classifier(settings.config.model), settings.runtime, load_tensorflow=settings.load_tensorflow
    )


def existing_manifest(store: Store, rebuild: bool = False, strict: bool = False) -> Manifest | None:
    """The committed record (a folder's manifest) to inherit settings from: None when absent or
    rebuilding.

    A damaged one is None too (the indexer rebuilds it), unless ``strict`` (a query, which must not
    rebuild an index with default settings behind the user's back): then it is an error.
    """
    if rebuild:
        return None
    try:
        return store.committed()
    except IndexFolderError:
        if strict:
            raise
        return None


def choose_features(
    manifest: Manifest | None, features: FeatureChoice, weights: str | None
) -> tuple[FeatureConfig, Weights, bool]:
    """The unresolved config, the weights, and whether the index's whitening still applies."""
    if manifest is None:
        return features.apply(FeatureConfig()), Weights.parse(weights), False
    base = manifest.config
    config = features.apply(base)
    if weights is not None or config.model != base.model:
        return config.replace(width_multiplier=None, whitening=None), Weights.parse(weights), False
    if base.weights.startswith("file:"):
        path = manifest.weights_path
        if not path or not os.path.isfile(path):
            name = Path(path).name if path else "a local weights file"
            raise IndexFolderError(f"the index was built with the weights file {name}; pass --weights FILE")
        chosen = Weights.from_file(path)
    else:
        chosen = Weights.recorded(base.weights)
    keep_whitening = config.replace(whitening=None) == base.replace(whitening=None)
    return config.replace(whitening=None), chosen, keep_whitening


def resolve_settings(
    dataset: str | os.PathLike[str],
    *,
    index_dir: str | os.PathLike[str] | None = None,
    features: FeatureChoice = FeatureChoice(),
    weights: str | None = None,
    rebuild: bool = False,
    whiten: WhitenRequest | None = None,
    runtime: RuntimeOptions = RuntimeOptions(),
    load_tensorflow: Callable[[], None] = import_tensorflow,
    strict: bool = False,
    store: Store | None = None,
) -> Settings:
    """Resolve what a command needs (see the module docstring for the rules).

    Cheap unless ``whiten`` asks for a new whitening, which embeds its folder. ``strict``: a damaged
    index is an error instead of something to rebuild. ``store``: where the index lives (None: the
    folder store in ``index_dir``).
    """
    root = Path(dataset)
    idir = Path(index_dir) if index_dir is not None else default_index_dir(root)
    home = store if store is not None else FolderStore(root, idir)
    manifest = existing_manifest(home, rebuild, strict) if root.is_dir() else None
    config, chosen, keep_whitening = choose_features(manifest, features, weights)
    whitening = None
    if manifest is not None and keep_whitening and whiten is None:
        whitening = load_for_index(idir, manifest.config.whitening)
    resolved = resolve_config(config, chosen)
    settings = Settings(
        dataset=root,
        index_dir=idir,
        config=resolved.replace(whitening=None if whitening is None else whitening.digest),
        weights=chosen,
        whitening=whitening,
        runtime=runtime,
        existing=manifest is not None,
        load_tensorflow=load_tensorflow,
        store=store,
    )
    if whiten is None:
        return settings
    learned = learn_from_folder(settings.embedder(), whiten.folder, whiten.dim, power=whiten.power)
    whitened = settings.config.replace(whitening=learned.digest)
    return replace(settings, config=whitened, whitening=learned, _built=[])  # the encoder, whitened
