"""Embedding spread over a Ray cluster (``cbir index DATASET --ray [ADDRESS]``, the ray extra).

The files the plan says to embed go through Ray Data: ``map_batches`` with one actor per CPU, each
holding one model built from the command's settings. The actors decode with cbir's own rules
(:class:`~cbir.encoders.embedder.Embedder`: EXIF orientation, size limits, bad files reported, not
Ray's image reader). Into a store that hands out a sink (Milvus) each actor writes its rows itself
(:class:`SinkActor`, :meth:`RayEmbedder.embed_into`) and sends the driver only each file's position,
outcome and capture time: no vector goes through the driver or Ray's object store. Otherwise (the
folder store) the actors hand back vectors or the reason a file failed and the indexer writes them,
commit by commit, as it does for a local embedder. :class:`RaySource` is an ``EncoderSource``
whose embedder is :class:`RayEmbedder`, so the indexer only asks whether it is a ``DirectEmbedder``.

Without ADDRESS, Ray joins the cluster ``$RAY_ADDRESS`` names, else starts one on this machine.
With one, cbir's code is shipped to the workers (``runtime_env`` ``py_modules``); its dependencies
must be installed there.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

import cbir
from cbir.core.errors import BadImageError, CbirError, QueryError, StoreError
from cbir.core.names import shown
from cbir.core.progress import progress_bar
from cbir.core.quiet import adopt_library_logs
from cbir.core.records import Entry
from cbir.core.types import JSONDict
from cbir.encoders.base import Encoder, EncoderSource, Result, SourceFeatures
from cbir.encoders.features import FeatureConfig
from cbir.ingest.decode import capture_time
from cbir.stores.sink import RowSink, SinkResult, Written

log = logging.getLogger(__name__)


class PortableSource(EncoderSource, Protocol):
    """An encoder source that can travel to another process and build its own encoder there (a
    command's ``Settings``)."""

    @property
    def batch_size(self) -> int: ...

    def portable(self) -> PortableSource:
        """This source without what stays in this process (a built model, open clients)."""
        ...

    def declared_dim(self) -> int | None:
        """The vectors' dimension when it is known without building the model (None: unknown)."""
        ...


def _embedder(source: PortableSource) -> Encoder:
    """A fresh encoder of ``source`` in this process (each actor builds its own)."""
    return source.portable().embedder()


def _embed_batch(embedder: Encoder, paths: Sequence[Path]) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The vectors of ``paths`` (zero where a file failed), each failure's reason ('' if none) and
    whether it may pass."""
    vectors = np.zeros((len(paths), embedder.dim), dtype=np.float32)
    errors = [""] * len(paths)
    transient = np.zeros(len(paths), dtype=bool)
    for i, result in embedder.embed_files(paths, progress=False):
        if isinstance(result, BadImageError):
            errors[i], transient[i] = shown(str(result)) or "unreadable", result.transient
        else:
            vectors[i] = result
    return vectors, errors, transient


def _name(value: object) -> str:
    """A file name that travelled through Ray Data as its bytes (Arrow strings must be UTF-8, a
    name need not be), back in memory form."""
    return os.fsdecode(value) if isinstance(value, bytes) else str(value)


class EmbedActor:
    """One model per Ray actor: a batch of ``{pos, path}`` in, vectors (or failures) out."""

    def __init__(self, source: PortableSource) -> None:
        self.embedder = _embedder(source)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vectors, errors, transient = _embed_batch(self.embedder, [Path(_name(p)) for p in batch["path"]])
        return {"pos": batch["pos"], "vector": vectors, "error": np.array(errors), "transient": transient}


class SinkActor:
    """One model per Ray actor that writes its rows itself: a batch of plan entries ``{pos, rel,
    size, mtime_ns}`` in, rows written through the sink, only outcomes (failure, capture time) out;
    ``fatal``: the store's one-line error when the rows could not be written."""

    def __init__(self, source: PortableSource, sink: RowSink, root: str) -> None:
        self.embedder, self.sink, self.root = _embedder(source), sink, Path(root)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rels = [_name(r) for r in batch["rel"]]
        vectors, errors, transient = _embed_batch(self.embedder, [self.root / r for r in rels])
        good = [i for i, error in enumerate(errors) if not error]
        taken = [""] * len(rels)
        for i in good:
            taken[i] = capture_time(self.root / rels[i]) or ""
        entries = [
            Entry(rels[i], int(batch["size"][i]), int(batch["mtime_ns"][i]), taken[i] or None) for i in good
        ]
        fatal = ""
        try:
            self.sink.write(entries, vectors[good])
        except StoreError as exc:  # Ray would hand the driver a traceback, not this one line
            fatal = str(exc)
        out = {
            "pos": batch["pos"],
            "error": np.array(errors),
            "transient": transient,
            "taken": np.array(taken),
        }
        return {**out, "fatal": np.array([fatal] * len(rels))}


def _dim_of(source: PortableSource) -> int:
    return _embedder(source).dim


ANSI = re.compile(r"\x1b\[[0-9;]*m")
OWN_ERROR = re.compile(r"^cbir\.core\.errors\.\w+: (.+)$", re.M)
"""The last line of a worker's traceback that a cbir error ended (Ray quotes an actor's failed
``__init__`` as text inside its ``ActorDiedError``)."""


def worker_error(exc: BaseException) -> CbirError:
    """A Ray worker's failure in one line: the cbir error it raised (a missing weights file, an
    unreachable store), else the first line of its root cause; Ray's own message is a traceback."""
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = getattr(cause, "cause", None) or cause.__cause__
    for err in reversed(chain):  # the worker's own, not Ray's wrapper (which may subclass it)
        if isinstance(err, CbirError) and "\n" not in str(err).strip():
            return err
    for err in reversed(chain):  # an actor that failed to start: its error reaches us as text only
        own = OWN_ERROR.search(ANSI.sub("", str(err)))
        if own:
            return CbirError(own.group(1).strip())
    # the deepest that says something: Ray Data chains an empty marker (SystemException) under
    # Ray's own error (an actor lost with its node)
    root = next((err for err in reversed(chain) if str(err).strip()), chain[-1])
    lost = " (its Ray node died)" if "its node has died" in str(root) else ""
    return CbirError(f"a Ray worker failed: {type(root).__name__}: {first_line(root)}{lost}")


def _failure(error: object, transient: object) -> BadImageError | None:
    return BadImageError(str(error), bool(transient)) if str(error) else None


@dataclass
class RayEmbedder:
    """An ``Encoder`` (and a ``DirectEmbedder``) whose files are embedded by Ray actors (see the
    module docstring). ``node``: the Ray node of this machine when it is the cluster's only one."""

    source: PortableSource
    actors: int
    node: str | None = None
    config: FeatureConfig = field(init=False)
    _dim: int | None = None

    def __post_init__(self) -> None:
        self.config = self.source.config
        self.source = self.source.portable()

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.config.modalities

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Refused: Ray embeds the files of an indexing run; a text query is embedded locally."""
        raise QueryError("--ray embeds the files of an indexing run; a text query is embedded locally")

    @property
    def dim(self) -> int:
        """The vector dimension, asked of one worker (the driver never builds the model). Not yet
        ``source.declared_dim()``: with it, an actor whose model cannot be built (a bad weights file)
        is the first to fail, and that run's stdout is not empty (tests/test_scale.py, see
        docs/decisions.md, branch i26f)."""
        if self._dim is None:
            import ray

            try:
                self._dim = int(ray.get(ray.remote(num_cpus=1)(_dim_of).remote(self.source)))
            except ray.exceptions.RayError as exc:
                raise worker_error(exc) from None
        return self._dim

    @property
    def one_machine(self) -> bool:
        return self.node is not None

    def embed_files(
        self, paths: Sequence[str | os.PathLike[str]], progress: bool | None = False, desc: str = "embedding"
    ) -> Iterator[Result]:
        items: list[JSONDict] = [{"pos": i, "path": os.fsencode(p)} for i, p in enumerate(paths)]
        for out in self._run(items, EmbedActor, {"source": self.source}, progress, desc, pin=False):
            for pos, vector, error, transient in zip(
                out["pos"], out["vector"], out["error"], out["transient"]
            ):
                failed = _failure(error, transient)
                yield int(pos), failed if failed is not None else np.asarray(vector, dtype=np.float32)

    def embed_into(
        self,
        sink: RowSink,
        root: Path,
        entries: Sequence[Entry],
        progress: bool | None = False,
        desc: str = "embedding",
    ) -> Iterator[SinkResult]:
        """The actors write the rows through ``sink``; only each file's outcome comes back."""
        items: list[JSONDict] = [
            {"pos": i, "rel": os.fsencode(e.path), "size": e.size, "mtime_ns": e.mtime_ns}
            for i, e in enumerate(entries)
        ]
        kwargs = {"source": self.source, "sink": sink, "root": str(root)}
        for out in self._run(items, SinkActor, kwargs, progress, desc, pin=True):
            if len(out["fatal"]) and str(out["fatal"][0]):
                raise StoreError(str(out["fatal"][0]))  # the rows were not written: the run stops
            for pos, error, transient, taken in zip(out["pos"], out["error"], out["transient"], out["taken"]):
                failed = _failure(error, transient)
                yield int(pos), failed if failed is not None else Written(str(taken) or None)

    def _run(
        self,
        items: list[JSONDict],
        actor: type[EmbedActor | SinkActor],
        kwargs: JSONDict,
        progress: bool | None,
        desc: str,
        *,
        pin: bool,
    ) -> Iterator[dict[str, np.ndarray]]:
        """``items`` through ``map_batches`` with a pool of ``actor``; ``pin``: kept on this node when
        the cluster was only this machine (a sink only it reaches stays reachable if nodes join)."""
        import ray.data
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        batch = self.source.batch_size
        blocks = max(1, min(len(items), max(self.actors, -(-len(items) // batch))))
        remote: JSONDict = {"max_restarts": 0}  # a lost actor fails the run (finished work committed)
        if pin and self.node is not None:
            remote["scheduling_strategy"] = NodeAffinitySchedulingStrategy(self.node, soft=False)
        done = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
            actor,
            fn_constructor_kwargs=kwargs,
            batch_size=batch,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(self.actors, blocks)),
            num_cpus=1,
            ray_remote_args_fn=lambda: dict(remote),
        )
        bar = progress_bar(total=len(items), desc=desc, unit="img", enabled=progress)
        try:
            for out in done.iter_batches(batch_size=None, batch_format="numpy"):
                yield out
                bar.update(len(out["pos"]))
        except ray.exceptions.RayError as exc:
            raise worker_error(exc) from None
        finally:
            bar.close()


@dataclass(frozen=True)
class RaySource(SourceFeatures):
    """The features of ``base`` (a command's settings), embedded on Ray: an ``EncoderSource`` for
    ``update_index``."""

    base: PortableSource
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
            self._start()
        import ray.data  # before the handlers are taken back: importing it installs Ray Data's own

        # Ray installs its own handlers on import and in ray.init, Ray Data on import; left there, a
        # failed run's traceback (a worker node lost) reached the terminal before cbir's one line
        adopt_library_logs()
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        cpus = int(ray.cluster_resources().get("CPU", 1))
        return RayEmbedder(self.base, actors=max(1, cpus), node=_only_node())

    def _start(self) -> None:
        """Join the cluster at ``address``, or start a local one; a local start that times out (Ray's
        own processes starting on a loaded machine: seen on 2 busy cores) is tried once more."""
        import ray

        shipped = {"py_modules": [str(Path(cbir.__file__).parent)]} if self.address else None
        tries = 1 if self.address else 2
        for attempt in range(tries):
            try:
                ray.init(
                    address=self.address or None,
                    runtime_env=shipped,
                    log_to_driver=False,
                    logging_level=logging.ERROR,
                    include_dashboard=False,
                )
                return
            except Exception as exc:  # Ray raises bare Exception, RuntimeError, ConnectionError...
                ray.shutdown()
                if attempt + 1 == tries:
                    where = self.address or "(local)"
                    raise StoreError(f"cannot join the Ray cluster {where}: {first_line(exc)}") from None
                log.warning("Ray did not start (%s); trying once more", first_line(exc))


def first_line(exc: BaseException) -> str:
    return next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def _only_node() -> str | None:
    """This machine's Ray node when the cluster has no other, else None (checked once, at the start)."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    alive = [str(n["NodeID"]) for n in ray.nodes() if n.get("Alive")]
    return here if alive == [here] else None
