"""The LiteRT runtime: a converted network run by ``ai-edge-litert``'s interpreter (XNNPACK on the
CPU), with no TensorFlow in the process. The model has a free batch size and free image sizes; the
interpreter is re-planned whenever a batch of another shape comes."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cbir.core.errors import ModelError
from cbir.core.quiet import native_stderr_silenced
from cbir.core.types import JSONDict

log = logging.getLogger(__name__)

NAME, SUFFIX = "litert", "tflite"
"""The runtime's name (``--runtime litert``) and the format of its files in the model cache."""

FEATURES, CLASSES = "features", "classes"
"""The names of a converted model's outputs when it has two (features and class probabilities);
a model with one output has only features."""


def litert_available() -> bool:
    """Whether ``ai-edge-litert`` can be imported (its package only: a few milliseconds)."""
    try:
        import ai_edge_litert  # noqa: F401
    except ImportError:
        return False
    return True


def default_threads() -> int:
    """Inference threads: every core (measured in benchmarks/bench_runtimes.py)."""
    return os.cpu_count() or 1


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence C++ messages on stderr (LiteRT announces its XNNPACK delegate there) unless debugging."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    with native_stderr_silenced():
        yield


class LiteRTNetwork:
    """A converted model (a file, or its bytes) behind the same ``run`` as the Keras network.

    A model converted with a classifier head has two outputs, found by their signature names
    (:data:`FEATURES`, :data:`CLASSES`); any other model's single output is its features.
    """

    name = NAME

    def __init__(self, model: Path | bytes, threads: int | None = None) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            message = f"the LiteRT runtime needs ai-edge-litert, which cannot be imported ({exc})"
            raise ModelError(message) from exc
        source = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
        try:
            self._interpreter = Interpreter(**source, num_threads=threads or default_threads())
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"cannot load the converted model: {exc}") from exc
        first = self._interpreter.get_input_details()[0]
        self._input, self._dtype = first["index"], first["dtype"]
        outputs = self._named_outputs()
        features = outputs.get(FEATURES) or self._interpreter.get_output_details()[0]
        self._output = features["index"]
        self.dim = int(features["shape_signature"][-1])
        head = outputs.get(CLASSES)
        self._classes_output = head["index"] if head else None
        self.classes = int(head["shape_signature"][-1]) if head else 0
        self._shape: tuple[int, ...] | None = None

    def _named_outputs(self) -> dict[str, JSONDict]:
        """The outputs of the model's one signature by name; empty without a signature."""
        signatures = list(self._interpreter.get_signature_list())
        if len(signatures) != 1:
            return {}
        return dict(self._interpreter.get_signature_runner(signatures[0]).get_output_details())

    def _invoke(self, x: np.ndarray) -> None:
        x = np.ascontiguousarray(x, dtype=self._dtype)  # float32 images; int32 token ids
        if x.shape != self._shape:
            self._interpreter.resize_tensor_input(self._input, x.shape, strict=False)
            with quiet_native_stderr():
                self._interpreter.allocate_tensors()
            self._shape = x.shape
        self._interpreter.set_tensor(self._input, x)
        self._interpreter.invoke()

    def run(self, x: np.ndarray, eager: bool = False) -> np.ndarray:
        """Pooled features of a preprocessed float32 batch (N, H, W, 3) (or of a text tower's int32
        token ids (N, L)); ``eager`` means nothing here."""
        self._invoke(x)
        return np.array(self._interpreter.get_tensor(self._output))

    def run_with_classes(self, x: np.ndarray, eager: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Pooled features and class probabilities of a batch, in one pass (ModelError without a head)."""
        if self._classes_output is None:
            raise ModelError("the converted network has no classifier head")
        self._invoke(x)
        features = np.array(self._interpreter.get_tensor(self._output))
        return features, np.array(self._interpreter.get_tensor(self._classes_output))
