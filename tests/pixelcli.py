"""The command line run in this process with a tiny encoder family, for tests of many runs.

The ``pixels`` family (model ``pixel-4x4``) is :class:`stores.PixelEmbedder` (the real decoder, a
48-d thumbnail feature) registered as any family is, one entry in ``ENCODERS``; ``cbir`` then runs
as a user runs it, options and all, in milliseconds instead of seconds (no TensorFlow, no
subprocess). :func:`run` gives the exit status and what went to stdout and stderr.
"""

from __future__ import annotations

import contextlib
import io
import logging
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from stores import DIM, PixelEmbedder

from cbir.cli.main import main
from cbir.encoders.base import IMAGE
from cbir.encoders.registry import ENCODERS, EncoderKind, ModelInfo

MODEL = ("--model", "pixel-4x4", "--weights", "random")


def _kind() -> EncoderKind:
    return EncoderKind(
        name="pixels",
        modalities=(IMAGE,),
        models=lambda: ["pixel-4x4"],
        knows=lambda model: model == "pixel-4x4",
        resolve=lambda config, weights: config.replace(weights=weights.identity),
        build=lambda request: PixelEmbedder(request.config),
        describe=lambda cache: [ModelInfo("pixel-4x4", "pixels", (IMAGE,), DIM, 4, "none")],
    )


@contextlib.contextmanager
def pixel_family() -> Iterator[None]:
    """``ENCODERS`` with the pixels family for the duration (a context, so Hypothesis can use it)."""
    ENCODERS["pixels"] = _kind()
    try:
        yield
    finally:
        ENCODERS.pop("pixels", None)


@dataclass
class Ran:
    code: int
    out: str
    err: str


class _Strict(io.TextIOWrapper):
    """A UTF-8 stream that refuses what a terminal's would (a lone surrogate), as real stdout does."""

    def __init__(self) -> None:
        super().__init__(io.BytesIO(), encoding="utf-8", errors="strict", write_through=True)

    def text(self) -> str:
        self.flush()
        buffer = self.buffer
        assert isinstance(buffer, io.BytesIO)
        return buffer.getvalue().decode("utf-8")


def run(*args: object) -> Ran:
    """``cbir ARGS`` in this process: stdout strict UTF-8 as a terminal's, stderr as Python's own
    (``backslashreplace``)."""
    out, err = _Strict(), io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace")
    old = sys.stdout, sys.stderr
    cbir_log = logging.getLogger("cbir")  # main() sets up logging and SIGTERM: put them back after
    saved = cbir_log.handlers[:], cbir_log.level, cbir_log.propagate, signal.getsignal(signal.SIGTERM)
    sys.stdout, sys.stderr = out, err
    try:
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse's usage errors
            code = int(exc.code or 0)
    finally:
        sys.stdout, sys.stderr = old
        cbir_log.handlers[:], cbir_log.level, cbir_log.propagate = saved[:3]
        signal.signal(signal.SIGTERM, saved[3])
    err.flush()
    raw = err.buffer
    assert isinstance(raw, io.BytesIO)
    return Ran(code, out.text(), raw.getvalue().decode("utf-8"))
