"""The two towers of a joint model as networks: built by Keras Hub from a preset folder, converted
to LiteRT once and cached (the model cache, keyed by model, weights and tower), so that a query whose
towers are cached imports no TensorFlow. Each conversion is checked against Keras (cosine >=
:data:`~cbir.encoders.convert.MIN_COSINE` on fixed inputs), as the image backbones' are.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cbir.core.errors import ModelError
from cbir.core.types import KerasModel
from cbir.encoders.convert import MIN_COSINE, check_batches, lowest_cosine
from cbir.encoders.joint.presets import INSTALL_KERAS_HUB, VOCABULARY, PresetSource
from cbir.encoders.litert_net import NAME, SUFFIX, LiteRTNetwork, litert_available
from cbir.encoders.model_cache import FORMAT, Cached, CacheSlot, ModelCache, cache_slot

log = logging.getLogger(__name__)

IMAGE_TOWER, TEXT_TOWER = "image", "text"
CHECK_TEXTS = ("a photo of a dog", "two red buses in the snow", "x", "")
"""Texts the converted text tower is checked on (with the model's own tokenizer)."""


def preprocess_images(batch: np.ndarray) -> np.ndarray:
    """uint8 RGB -> SigLIP's input range [-1, 1] (its image converter: scale 1/127.5, offset -1)."""
    return batch.astype(np.float32) / 127.5 - 1.0


class Tower:
    """One tower behind a lock (a server's request threads may share it): ``run(x)`` -> (N, dim)."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], runtime: str) -> None:
        self._run = run
        self.runtime = runtime
        self._lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            return np.asarray(self._run(x), dtype=np.float32)


@dataclass
class KerasTowers:
    """The Keras Hub backbone of a preset folder and its two towers as Keras models."""

    backbone: KerasModel

    @classmethod
    def load(cls, source: PresetSource) -> KerasTowers:
        folder = source.ensure()
        try:
            from keras_hub.models import SigLIPBackbone
        except ImportError as exc:
            raise ModelError(f"building {source.model} needs keras-hub ({exc}): {INSTALL_KERAS_HUB}") from exc
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                return cls(SigLIPBackbone.from_preset(str(folder)))
        except Exception as exc:
            raise ModelError(f"cannot build {source.model} from {folder}: {str(exc)[:300]}") from exc

    def tower(self, which: str) -> KerasModel:
        """The image tower (images in [-1, 1] -> embeddings) or the text tower (ids -> embeddings)."""
        import keras

        bb = self.backbone
        if which == IMAGE_TOWER:
            inputs = keras.Input(shape=tuple(bb.vision_encoder.image_shape), name="images")
            return keras.Model(inputs, bb.get_vision_embeddings(inputs))
        length = bb.text_encoder.max_sequence_length
        ids = keras.Input(shape=(length,), dtype="int32", name="token_ids")
        return keras.Model(ids, bb.get_text_embeddings(ids))


def to_litert(model: KerasModel, spec: tuple[list[int | None], str]) -> bytes:
    """The LiteRT flatbuffer of a one-input Keras model (float32, free batch)."""
    import tensorflow as tf
    from keras.export import ExportArchive

    shape, dtype = spec
    archive = ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve", lambda x: model(x, training=False), input_signature=[tf.TensorSpec(shape, dtype)]
    )
    with tempfile.TemporaryDirectory(prefix="cbir-export-") as tmp:
        with contextlib.redirect_stdout(io.StringIO()):
            archive.write_out(tmp, verbose=False)
        return bytes(tf.lite.TFLiteConverter.from_saved_model(tmp).convert())


def check_inputs(which: str, source: PresetSource, tokenize: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """Fixed inputs to compare a converted tower with Keras on."""
    if which == IMAGE_TOWER:
        return preprocess_images(check_batches(source.image_size)[0])
    return tokenize(list(CHECK_TEXTS))


class TowerCache:
    """The towers of one model in the model cache: found there, else built, converted and stored."""

    def __init__(
        self,
        source: PresetSource,
        cache: ModelCache,
        runtime: str,
        load_tensorflow: Callable[[], None],
        threads: int | None = None,
    ) -> None:
        self.source = source
        self.cache = cache
        self.runtime = runtime
        self.load_tensorflow = load_tensorflow
        self.threads = threads
        self._keras: KerasTowers | None = None

    def slot(self, which: str) -> CacheSlot:
        fields = {
            "format": FORMAT,
            "model": self.source.label,
            "weights": self.source.identity,
            "tower": which,
        }
        return cache_slot(fields, NAME, SUFFIX)

    def keras(self) -> KerasTowers:
        if self._keras is None:
            self.load_tensorflow()
            self._keras = KerasTowers.load(self.source)
        return self._keras

    def open(self, which: str, tokenize: Callable[[list[str]], np.ndarray]) -> Tower:
        """The tower ``which``: LiteRT from the cache (converted on first need), or Keras where the
        runtime is ``keras``, LiteRT is missing under ``auto``, or the conversion was found unfaithful."""
        if self.runtime == "keras" or (self.runtime == "auto" and not litert_available()):
            return self._keras_tower(which)
        if not litert_available():
            raise ModelError("--runtime litert needs the ai-edge-litert package (pip install ai-edge-litert)")
        slot = self.slot(which)
        found = self.cache.lookup(slot)
        if isinstance(found, Cached):
            return Tower(LiteRTNetwork(found.path, self.threads).run, NAME)
        if found is not None:
            log.info(
                "the %s tower of %s runs in Keras (the model cache says: %s)",
                which,
                self.source.model,
                found.reason,
            )
            return self._keras_tower(which)
        return self._convert(which, slot, tokenize)

    def _keras_tower(self, which: str) -> Tower:
        model = self.keras().tower(which)
        return Tower(lambda x: model(x, training=False), "keras")

    def _convert(self, which: str, slot: CacheSlot, tokenize: Callable[[list[str]], np.ndarray]) -> Tower:
        model = self.keras().tower(which)
        log.info(
            "converting the %s tower of %s for LiteRT (once; cached in %s)",
            which,
            self.source.model,
            self.cache.root,
        )
        start = time.perf_counter()
        x = check_inputs(which, self.source, tokenize)
        spec: tuple[list[int | None], str] = (
            [None, *x.shape[1:]],
            "float32" if which == IMAGE_TOWER else "int32",
        )
        try:
            data = to_litert(model, spec)
            converted = LiteRTNetwork(data, self.threads)
            cosine = lowest_cosine(converted.run(x), np.asarray(model(x, training=False)))
        except Exception as exc:  # any converter failure means: stay with Keras
            last = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            return self._failed(which, slot, f"conversion failed: {last[:200]}", model)
        if not cosine >= MIN_COSINE:
            return self._failed(
                which, slot, f"converted tower differs (cosine {cosine:.6f} < {MIN_COSINE})", model
            )
        record = {
            "network": slot.network,
            "cosine_to_keras": cosine,
            "seconds": round(time.perf_counter() - start, 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        path = self.cache.store(slot, data, record)
        return Tower(LiteRTNetwork(path or data, self.threads).run, NAME)

    def _failed(self, which: str, slot: CacheSlot, reason: str, model: KerasModel) -> Tower:
        log.warning("the %s tower of %s runs in Keras: %s", which, self.source.model, reason)
        self.cache.store_failure(slot, reason, slot.network or {})
        return Tower(lambda x: model(x, training=False), "keras")


def save_preset(backbone: KerasModel, vocabulary: bytes, folder: Path) -> Path:
    """Write a SigLIP backbone and its SentencePiece model as a preset folder (``--model DIR``): a
    model trained or fine-tuned outside cbir, in the layout of Keras Hub's presets."""
    with contextlib.redirect_stdout(io.StringIO()):
        backbone.save_to_preset(str(folder))
    spm = folder / VOCABULARY
    spm.parent.mkdir(parents=True, exist_ok=True)
    spm.write_bytes(vocabulary)
    return folder
