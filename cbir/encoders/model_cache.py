"""The cache of converted models: one file per network and runtime, verified whenever it is opened.

A converted network is known by everything that changes its output (backbone, weights identity,
pooling, GeM exponent, width multiplier, input size), the runtime that runs it and :data:`FORMAT`,
hashed into a key ``RUNTIME-MODEL-DIGEST``; the runtime names the format of its file (a
:class:`CacheSlot`). Each key has up to three files in the cache folder:

- ``KEY.SUFFIX`` (``.tflite`` for LiteRT): the converted model, written whole under a temporary
  name, then renamed;
- ``KEY.json``: its record (size, SHA-256, the cosine measured against Keras, the settings),
  written the same way after the model: it is the commit point, so a model without a record, or
  whose size or digest differ from it, is damaged and made again;
- ``KEY.failed.json``: the network could not be converted faithfully (the reason): it runs in
  Keras from then on without trying again.

The folder is ``--model-cache DIR``, else ``$CBIR_MODEL_CACHE``, else the user's cache folder as
``platformdirs`` names it (``~/.cache/cbir/models`` on Linux). Nothing here imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from cbir.core.atomic import write_bytes
from cbir.core.types import JSONDict
from cbir.encoders.features import FEATURE_SETTINGS, FeatureConfig
from cbir.encoders.weights import file_digest

log = logging.getLogger(__name__)

FORMAT = 2
"""Bumped whenever the conversion or the key changes: older files are then simply not found (2: the
runtime joined the key, so that another runtime's files can share the folder)."""
ENV = "CBIR_MODEL_CACHE"


def default_cache_dir(option: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: the option's, else ``$CBIR_MODEL_CACHE``'s, else the user's cache folder."""
    if option:
        return Path(option)
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    import platformdirs  # light, but only needed when neither is given

    return Path(platformdirs.user_cache_dir("cbir")) / "models"


def network_fields(config: FeatureConfig, input_size: int) -> JSONDict:
    """What identifies a converted network: the weights, the width and the feature settings declared
    as the network's (:data:`~cbir.encoders.features.FEATURE_SETTINGS`); whitening and scales are
    applied outside it. The GeM exponent counts only with GeM pooling, the size defaults to the
    backbone's."""
    declared = {s.name: getattr(config, s.name) for s in FEATURE_SETTINGS if s.network}
    declared["gem_p"] = config.gem_p if config.pooling == "gem" else None
    declared["size"] = config.size or input_size
    return {
        "format": FORMAT,
        "weights": config.weights,
        "width_multiplier": config.width_multiplier,
        **declared,
    }


@dataclass(frozen=True)
class CacheSlot:
    """Where one runtime's conversion of one network lives: ``key`` (file-name safe), the ``suffix``
    of the runtime's format, and the ``network`` fields its records must name (a model copied over
    another's entry is not used: :meth:`ModelCache.lookup`)."""

    key: str
    suffix: str
    network: JSONDict | None = field(default=None, compare=False)


def cache_slot(fields: JSONDict, runtime: str, suffix: str) -> CacheSlot:
    """The slot of the network ``fields`` converted for ``runtime`` (its files end in ``.{suffix}``):
    the runtime and model names, then a digest of everything."""
    keyed = {**fields, "runtime": runtime, "suffix": suffix}
    digest = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:20]
    return CacheSlot(f"{runtime}-{fields['model']}-{digest}", suffix, json.loads(json.dumps(fields)))


@dataclass(frozen=True)
class Cached:
    """A converted model found in the cache and verified."""

    path: Path
    record: JSONDict


@dataclass(frozen=True)
class Failed:
    """The network was found not to convert faithfully; ``reason`` says why."""

    reason: str


Lookup = Cached | Failed | None
"""What the cache knows of a network: a verified model, a recorded failure, or nothing."""


class ModelCache:
    """The converted models of one cache folder (created when the first one is stored)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def paths(self, slot: CacheSlot) -> tuple[Path, Path, Path]:
        """The model, record and failure files of ``slot``."""
        key = slot.key
        return (
            self.root / f"{key}.{slot.suffix}",
            self.root / f"{key}.json",
            self.root / f"{key}.failed.json",
        )

    def lookup(self, slot: CacheSlot) -> Lookup:
        """What the cache holds for ``slot``; a damaged entry, or one whose record names another
        network than the slot's, is logged and reported as absent."""
        model, record_file, failed = self.paths(slot)
        if failed.is_file():
            try:
                doc = json.loads(failed.read_text())
                reason = str(doc["reason"])
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("the model cache's failure record %s is unreadable; trying again", failed)
                return None
            if not _same_network(slot, doc):
                log.warning("the model cache's failure record %s names another network; trying again", failed)
                return None
            return Failed(reason)
        if not record_file.is_file() and not model.is_file():
            return None
        problem = self._verify(model, record_file)
        if isinstance(problem, dict) and not _same_network(slot, problem):
            problem = "its record names another network"
        if isinstance(problem, str):
            log.warning("the cached model %s is damaged (%s); it will be made again", model, problem)
            return None
        return Cached(model, problem)

    @staticmethod
    def _verify(model: Path, record_file: Path) -> JSONDict | str:
        """The model's record if the file matches it, else what is wrong."""
        try:
            record = json.loads(record_file.read_text())
            size, digest = int(record["size"]), str(record["sha256"])
        except FileNotFoundError:
            return "no record"
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"unreadable record: {exc}"
        try:
            if model.stat().st_size != size:
                return f"size {model.stat().st_size} instead of {size}"
            if file_digest(model, length=64) != digest:
                return "content differs from its digest"
        except OSError as exc:
            return f"unreadable: {exc.strerror or exc}"
        return dict(record)

    def store(self, slot: CacheSlot, data: bytes, record: JSONDict) -> Path | None:
        """Write the model then its record, each atomically; None (logged) if the folder is unwritable."""
        model, record_file, _ = self.paths(slot)
        full = {**record, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        try:
            self._write(model, data)
            self._write(record_file, json.dumps(full, indent=2, sort_keys=True).encode())
        except OSError as exc:
            log.warning("cannot write the model cache in %s (%s); not kept", self.root, exc.strerror or exc)
            return None
        return model

    def store_failure(self, slot: CacheSlot, reason: str, fields: JSONDict) -> None:
        """Remember that ``slot``'s network does not convert (so the next run does not try again)."""
        _, _, failed = self.paths(slot)
        try:
            self._write(failed, json.dumps({"reason": reason, "network": fields}, indent=2).encode())
        except OSError as exc:
            log.warning("cannot write the model cache in %s (%s)", self.root, exc.strerror or exc)

    def _write(self, path: Path, data: bytes) -> None:
        """Write ``data`` to ``path`` whole or not at all (the one atomic-write helper)."""
        self.root.mkdir(parents=True, exist_ok=True)
        write_bytes(path, data)


def _same_network(slot: CacheSlot, record: JSONDict) -> bool:
    """Whether ``record`` (a model's or a failure's) names the network of ``slot`` (any record
    passes a slot made without its fields)."""
    return slot.network is None or (isinstance(record, dict) and record.get("network") == slot.network)
