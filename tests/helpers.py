"""Helpers shared by test modules: indexing a folder with a test embedder, running the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cbir.embedding.features import FeatureConfig, resolve_config
from cbir.embedding.weights import Weights
from cbir.embedding.whiten import Whitening
from cbir.index.indexer import IndexOptions, IndexReport, update_index

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Source:
    """An ``EmbedderSource`` around a test embedder (or a factory of one) with random weights."""

    given: Any  # an Embedder, a stand-in with embed_files/dim/config, or a zero-argument factory
    features: FeatureConfig
    whitening: Whitening | None = None

    @property
    def config(self) -> FeatureConfig:
        digest = None if self.whitening is None else self.whitening.digest
        return resolve_config(self.features, self.weights).replace(whitening=digest)

    @property
    def weights(self) -> Weights:
        return Weights.random()

    def embedder(self) -> Any:
        return self.given() if callable(self.given) and not hasattr(self.given, "embed_files") else self.given


def run_index(
    root: Path, config: FeatureConfig, embedder: Any, index_dir: Path | None = None, **options: Any
) -> IndexReport:
    """``update_index`` with random-weights features and test-friendly options (no progress bar)."""
    options.setdefault("progress", False)
    if "exclude" in options:
        options["exclude"] = tuple(options["exclude"])
    return update_index(root, Source(embedder, config), index_dir=index_dir, options=IndexOptions(**options))


def never(*_args: object) -> None:
    """A factory that fails the test: the embedder was needed although nothing had to be embedded."""
    raise AssertionError("the embedder was needed although nothing had to be embedded")


def cli(
    *args: object, cwd: Path, script: Path | None = REPO / "run_cbir.py", timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``run_cbir.py ARGS`` (or ``python -m cbir ARGS`` with script=None) and capture its output."""
    command = [sys.executable, str(script)] if script else [sys.executable, "-m", "cbir"]
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(REPO))
    env.pop("DISPLAY", None)
    return subprocess.run(
        command + [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


Factory = Callable[[], Any]
