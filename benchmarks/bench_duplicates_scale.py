"""Near-duplicates at scale (``bench_duplicates.py --scale N...``): time and memory of
``cbir duplicates`` on synthetic collections, and the recall of the copies planted in them.

The vectors come from ``bench_search.py``'s generator (2048-d, clustered like CNN features); 1% of
the rows are then replaced by near-copies of other rows (cosine 0.95-0.99 to them). Each collection
is written as a real index folder (``--ann auto``: the HNSW index from 200,000 rows, built as
``cbir index`` builds it, timed apart), then ``cbir duplicates --json --no-plot --verify none``
runs on it in a fresh process: its wall time, its peak resident memory, and the share of planted
pairs it groups.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_search import CHUNK, DIM, Space

from cbir.embedding.features import FeatureConfig
from cbir.index.manifest import Entry
from cbir.index.store import FolderWriter

# the files are placeholders: the graph of the stored vectors is what is measured here (the pixel
# check's cost per image and per pair is printed by the benchmark on real photos)
VECTORS_ONLY = ("--verify", "none")
PLANTED = 0.01  # share of rows replaced by a near-copy of another row
CONFIG = FeatureConfig(model="xception", weights="random")  # only its name is stored


def near_copies(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows at cosine 0.95-0.99 to ``x``'s rows: the noise is orthogonal to each row."""
    noise = rng.standard_normal(x.shape).astype(np.float32)
    noise -= np.sum(noise * x, axis=1, keepdims=True) * x
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    cos = rng.uniform(0.95, 0.99, size=(len(x), 1)).astype(np.float32)
    return cos * x + np.sqrt(1 - cos**2) * noise


def write_index(rows: int, root: Path) -> tuple[set[tuple[int, int]], float, str]:
    """An index folder of ``rows`` synthetic vectors; returns the planted pairs, the seconds spent
    on the approximate index, and its kind."""
    space = Space()
    rng = np.random.default_rng(7)
    planted: set[tuple[int, int]] = set()
    with FolderWriter(root / ".cbir", CONFIG) as writer:
        writer.set_dim(DIM)
        for i, start in enumerate(range(0, rows, CHUNK)):
            x = space.draw(min(CHUNK, rows - start), seed=1000 + i)
            copies = np.flatnonzero(rng.random(len(x)) < PLANTED)
            copies = copies[copies > 0]
            sources = rng.integers(0, copies)  # an earlier row of the same chunk
            x[copies] = near_copies(x[sources], rng)
            planted |= {(start + int(s), start + int(c)) for s, c in zip(sources, copies)}
            entries = [Entry(f"img{start + j:07d}.jpg", 1000, 1) for j in range(len(x))]
            writer.put(entries, x)
            writer.commit()
        t = time.perf_counter()
        kind = writer.finish("auto")
    return planted, time.perf_counter() - t, kind


def run_scale(sizes: list[int], tmp: str | None) -> None:
    print(
        f"{'rows':>9} {'ann':>6} {'ann build s':>11} {'duplicates s':>12} {'peak RSS MB':>11} "
        f"{'groups':>7} {'planted pairs':>13} {'recall':>7}"
    )
    for rows in sizes:
        with tempfile.TemporaryDirectory(dir=tmp) as folder:
            root = Path(folder) / "data"
            planted, ann_s, kind = write_index(rows, root)
            t = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "cbir", "duplicates", str(root), "--json", "--no-plot", *VECTORS_ONLY],
                capture_output=True,
                text=True,
                check=False,
            )
            seconds = time.perf_counter() - t
            if done.returncode:
                sys.exit(f"cbir duplicates failed: {done.stderr.strip()}")
            peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            doc = json.loads(done.stdout)
            found = set()
            for g in doc["groups"]:
                members = [g["representative"], *(m["path"] for m in g["members"])]
                ids = sorted(int(Path(p).stem[3:]) for p in members)
                found |= {(a, b) for i, a in enumerate(ids) for b in ids[i + 1 :]}
            hit = sum((min(p), max(p)) in found for p in planted)
            print(
                f"{rows:>9} {kind:>6} {ann_s:>11.0f} {seconds:>12.0f} {peak_mb:>11.0f} "
                f"{len(doc['groups']):>7} {len(planted):>13} {hit / max(1, len(planted)):>7.3f}"
            )
