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

log = logging.getLogger(__name__)

NAME, SUFFIX = "litert", "tflite"
"""The runtime's name (``--runtime litert``) and the format of its files in the model cache."""


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
    """A converted model (a file, or its bytes) behind the same ``run`` as the Keras network."""

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
        self._input = self._interpreter.get_input_details()[0]["index"]
        output = self._interpreter.get_output_details()[0]
        self._output = output["index"]
        self.dim = int(output["shape_signature"][-1])
        self._shape: tuple[int, ...] | None = None

    def run(self, x: np.ndarray, eager: bool = False) -> np.ndarray:
        """Pooled features of a preprocessed float32 batch (N, H, W, 3); ``eager`` means nothing here."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape != self._shape:
            self._interpreter.resize_tensor_input(self._input, x.shape, strict=False)
            with quiet_native_stderr():
                self._interpreter.allocate_tensors()
            self._shape = x.shape
        self._interpreter.set_tensor(self._input, x)
        self._interpreter.invoke()
        return np.array(self._interpreter.get_tensor(self._output))
