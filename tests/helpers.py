"""Helpers shared by test modules: indexing a folder with a test embedder, running the CLI."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cbir.encoders.features import FeatureConfig
from cbir.encoders.registry import resolve_config
from cbir.encoders.weights import Weights
from cbir.encoders.whiten import Whitening
from cbir.indexing.indexer import IndexOptions, IndexReport, update_index

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = ("--weights", "random", "--model", "mobilenetv2", "--size", "64")
"""Command-line options of a small untrained model: fast, for runs that do not compare features."""


@dataclass
class Source:
    """An ``EncoderSource`` around a test embedder (or a factory of one) with random weights."""

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
    *args: object,
    cwd: Path,
    script: Path | None = REPO / "run_cbir.py",
    timeout: float = 600,
    first_on_path: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``run_cbir.py ARGS`` (or ``python -m cbir ARGS`` with script=None) and capture its output;
    ``first_on_path``: a folder searched for modules before everything else (stub packages)."""
    command = [sys.executable, str(script)] if script else [sys.executable, "-m", "cbir"]
    path = [str(first_on_path)] if first_on_path is not None else []
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=os.pathsep.join([*path, str(REPO)]))
    env.pop("DISPLAY", None)
    return subprocess.run(
        command + [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def together(*commands: Sequence[object], **kwargs: Any) -> list[subprocess.CompletedProcess[str]]:
    """``subprocess.run(command, capture_output=True, text=True, **kwargs)`` of each command, all at
    once: for independent processes that share no writable state (each start loads its libraries
    for seconds, and a test machine has more than one core); the results in the commands' order."""
    started = [
        subprocess.Popen(
            [str(a) for a in c], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
        )
        for c in commands
    ]
    results = []
    for proc in started:
        out, err = proc.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def cbir_cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    return cli(*args, cwd=cwd, script=None)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("cbir: error: ")
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    for w in words:
        assert w in lines[0]
    return lines[0]


def corel_class(path: str) -> int:
    return int(Path(path).stem) // 100


def same_class(result: dict) -> int:
    return sum(corel_class(m["path"]) == corel_class(result["query"]) for m in result["matches"])


def check_result(result: dict, dataset: Path, k: int = 9) -> None:
    matches = result["matches"]
    assert len(matches) == k
    assert all(set(m) == {"path", "score"} for m in matches)
    scores = [m["score"] for m in matches]
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0 <= s <= 1.0001 for s in scores)
    paths = [m["path"] for m in matches]
    assert len(set(paths)) == k
    assert os.path.realpath(result["query"]) not in {os.path.realpath(p) for p in paths}
    for p in paths:
        assert Path(p).is_file() and Path(p).resolve().parent == dataset.resolve()


def stand_in_vector(name: str, mtime_ns: int, dim: int = 64) -> np.ndarray:
    """The stand-in embedder's vector of a file: a function of its name and mtime only."""
    seed = hashlib.sha256(f"{name}:{mtime_ns}".encode()).digest()
    v = np.random.default_rng(int.from_bytes(seed[:8], "little")).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


class StandIn:
    """An embedder and its source at once, with no network: for crash and concurrency tests where
    only which row belongs to which file matters. Files are never decoded."""

    dim = 64
    whitening = None

    def __init__(self) -> None:
        self.weights = Weights.random()
        self.config = resolve_config(FeatureConfig(model="mobilenetv2", width_multiplier=0.35), self.weights)

    def embedder(self) -> StandIn:
        return self

    def embed_files(
        self, paths: Sequence[str | os.PathLike[str]], progress: bool | None = False, desc: str = ""
    ) -> Iterator[tuple[int, np.ndarray]]:
        for i, p in enumerate(paths):
            yield i, stand_in_vector(Path(p).name, Path(p).stat().st_mtime_ns)


class ContentStandIn(StandIn):
    """A stand-in whose vector is a function of the file's bytes: identical copies are duplicates."""

    def embed_files(
        self, paths: Sequence[str | os.PathLike[str]], progress: bool | None = False, desc: str = ""
    ) -> Iterator[tuple[int, np.ndarray]]:
        for i, p in enumerate(paths):
            yield i, stand_in_vector(hashlib.sha256(Path(p).read_bytes()).hexdigest(), 0)


def clustered(n: int, dim: int = 32, centres: int = 40, seed: int = 0) -> np.ndarray:
    """L2-normalised points around random centres (neighbours are mostly in the same cluster)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered_data() -> tuple[np.ndarray, np.ndarray]:
    """3000 clustered database vectors and 50 queries near the same centres."""
    x = clustered(3000, seed=0)
    q = clustered(3050, seed=0)[3000:]  # same centres, other points
    rng = np.random.default_rng(5)
    q = q + 0.05 * rng.standard_normal(q.shape).astype(np.float32)
    return x, q / np.linalg.norm(q, axis=1, keepdims=True)


@contextlib.contextmanager
def logging_restored() -> Iterator[None]:
    """Undo what ``cbir.cli.main.main`` run in-process does to logging (``route_logs``): the root's
    handlers and level, cbir's logger, Python's warnings."""
    import logging

    root, own = logging.getLogger(), logging.getLogger("cbir")
    saved = (list(root.handlers), root.level, list(own.handlers), own.level, own.propagate)
    try:
        yield
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        own.handlers[:] = saved[2]
        own.setLevel(saved[3])
        own.propagate = saved[4]
        logging.captureWarnings(False)


def interruptible() -> None:
    """``preexec_fn`` for a child that a test stops with SIGINT: Ctrl-C restored to its default.

    A shell starts background jobs with SIGINT ignored, and children inherit that (Python then
    never raises KeyboardInterrupt); a test suite run in the background must still test Ctrl-C.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _attack_images() -> Any:
    """benchmarks/serve_attack.py, where the hostile uploads of the benchmark are made."""
    spec = importlib.util.spec_from_file_location("serve_attack", REPO / "benchmarks" / "serve_attack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


_ATTACK = _attack_images()
flat_png = _ATTACK.flat_png  # a one-colour PNG of any size, a few hundred KB
claimed_jpeg = _ATTACK.claimed_jpeg  # a small JPEG whose header claims any size


@contextlib.contextmanager
def running_cli(
    *args: object, cwd: Path | None = None
) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str]]]:
    """``python -m cbir ARGS`` in a subprocess and a queue of its stdout lines; stopped with Ctrl-C
    when the block ends, which must leave no traceback on its stderr."""
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cbir", *map(str, args)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or ()], daemon=True).start()
    try:
        yield proc, lines
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert "Traceback" not in err, err


def ready_groups(client: Any, service: Any, threshold: float | None = None) -> dict:
    """``GET /api/duplicates`` once the server's background job made the groups: the first answer
    may say ``computing``; then wait for that version's groups (an event, no polling)."""
    params = {} if threshold is None else {"threshold": threshold}
    answer = client.get("/api/duplicates", params=params).json()
    if answer.get("state") == "computing":
        assert service.review.wait(answer["version"], threshold, timeout=120), "the groups were not made"
        answer = client.get("/api/duplicates", params=params).json()
    assert answer["state"] == "ready", answer
    return answer


PHONE = {"width": 390, "height": 844}
"""A phone's viewport (CSS pixels) for the page's browser tests."""
