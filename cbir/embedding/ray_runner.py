"""Embedding spread over a Ray cluster (``cbir index DATASET --ray [ADDRESS]``, the ray extra).

The files the plan says to embed go through Ray Data: ``map_batches`` with one actor per CPU, each
holding one model built from the command's settings. The actors decode with cbir's own rules
(:class:`~cbir.embedding.embedder.Embedder`: EXIF orientation, size limits, bad files reported, not
Ray's image reader) and hand back vectors or the reason a file failed; the indexer writes them to
the chosen store, commit by commit, as it does for a local embedder. :class:`RaySource` is an
``EmbedderSource`` whose embedder is :class:`RayEmbedder`, so the indexer does not change.

Without ADDRESS, Ray joins the cluster ``$RAY_ADDRESS`` names, else starts one on this machine.
With one, cbir's code is shipped to the workers (``runtime_env`` ``py_modules``); its dependencies
must be installed there.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

import cbir
from cbir.embedding.embedder import Embedder, Result
from cbir.embedding.features import FeatureConfig
from cbir.embedding.runtimes import import_tensorflow
from cbir.errors import BadImageError, StoreError
from cbir.progress import progress_bar
from cbir.settings import Settings, SettingsFeatures
from cbir.types import JSONDict

log = logging.getLogger(__name__)


def shippable(settings: Settings) -> Settings:
    """``settings`` without what stays on the driver (a built model, the store's client)."""
    return replace(settings, _built=[], load_tensorflow=import_tensorflow, store=None)


def _embedder(settings: Settings) -> Embedder:
    """A fresh embedder of ``settings`` in this process (each actor builds its own)."""
    return shippable(settings).embedder()


class EmbedActor:
    """One model per Ray actor: a batch of ``{pos, path}`` in, vectors (or failures) out."""

    def __init__(self, settings: Settings) -> None:
        self.embedder = _embedder(settings)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        vectors = np.zeros((len(paths), self.embedder.dim), dtype=np.float32)
        errors = [""] * len(paths)
        transient = np.zeros(len(paths), dtype=bool)
        for i, result in self.embedder.embed_files(paths, progress=False):
            if isinstance(result, BadImageError):
                errors[i], transient[i] = str(result) or "unreadable", result.transient
            else:
                vectors[i] = result
        return {"pos": batch["pos"], "vector": vectors, "error": np.array(errors), "transient": transient}


def _dim_of(settings: Settings) -> int:
    return _embedder(settings).dim


@dataclass
class RayEmbedder:
    """A ``FileEmbedder`` whose files are embedded by Ray actors (see the module docstring)."""

    settings: Settings
    actors: int
    config: FeatureConfig = field(init=False)
    _dim: int | None = None

    def __post_init__(self) -> None:
        self.config = self.settings.config
        self.settings = shippable(self.settings)

    @property
    def dim(self) -> int:
        """The vector dimension, asked of one worker (the driver never builds the model)."""
        if self._dim is None:
            import ray

            self._dim = int(ray.get(ray.remote(num_cpus=1)(_dim_of).remote(self.settings)))
        return self._dim

    def embed_files(
        self, paths: Sequence[str | os.PathLike[str]], progress: bool | None = False, desc: str = "embedding"
    ) -> Iterator[Result]:
        import ray.data

        items: list[JSONDict] = [{"pos": i, "path": str(p)} for i, p in enumerate(paths)]
        batch = self.settings.runtime.batch_size
        blocks = max(1, min(len(items), max(self.actors, -(-len(items) // batch))))
        done = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
            EmbedActor,
            fn_constructor_kwargs={"settings": self.settings},
            batch_size=batch,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(self.actors, blocks)),
            num_cpus=1,
            # a lost actor fails the run (the finished work is committed) instead of restarting
            ray_remote_args_fn=lambda: {"max_restarts": 0},
        )
        bar = progress_bar(total=len(items), desc=desc, unit="img", enabled=progress)
        try:
            for out in done.iter_batches(batch_size=None, batch_format="numpy"):
                for pos, vector, error, transient in zip(
                    out["pos"], out["vector"], out["error"], out["transient"]
                ):
                    failed = BadImageError(str(error), bool(transient)) if error else None
                    yield int(pos), failed if failed is not None else np.asarray(vector, dtype=np.float32)
                bar.update(len(out["pos"]))
        finally:
            bar.close()


@dataclass(frozen=True)
class RaySource(SettingsFeatures):
    """The command's settings, embedded on Ray: an ``EmbedderSource`` for ``update_index``."""

    settings: Settings
    address: str | None = None

    def embedder(self) -> RayEmbedder:
        """Join (or start) the cluster; one actor per CPU it has."""
        try:
            import ray
        except ImportError as exc:
            raise StoreError(f"--ray needs the ray extra ({exc}): pip install 'cbir[ray]'") from None
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")  # Ray's notes are not the user's
        logging.getLogger("ray").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module=r"ray\..*")
        warnings.filterwarnings("ignore", message=r".*deprecated and will be removed in Ray")
        if not ray.is_initialized():
            shipped = {"py_modules": [str(Path(cbir.__file__).parent)]} if self.address else None
            try:
                ray.init(
                    address=self.address or None,
                    runtime_env=shipped,
                    log_to_driver=False,
                    logging_level=logging.ERROR,
                    include_dashboard=False,
                )
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise StoreError(f"cannot join the Ray cluster {self.address or '(local)'}: {exc}") from None
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        cpus = int(ray.cluster_resources().get("CPU", 1))
        return RayEmbedder(self.settings, actors=max(1, cpus))
