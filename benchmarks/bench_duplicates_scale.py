"""Near-duplicates at scale (``bench_duplicates.py --scale N...``): time and memory of
``cbir duplicates`` on synthetic collections, and the recall of the copies planted in them.
``--effort N...``: the neighbour graph's search effort against a query's, on one index.

The vectors come from ``bench_search.py``'s generator (2048-d, clustered like CNN features); 1% of
the rows are then replaced by near-copies of other rows (cosine 0.95-0.99 to them). Each collection
is written as a real index folder (``--ann auto``: the HNSW index from 200,000 rows, built as
``cbir index`` builds it, timed apart), then ``cbir duplicates --json --no-plot --verify none``
runs on it in a fresh process: its wall time, its peak resident memory, and the share of planted
pairs it groups.

``--effort``: the same rows, written with the index's own HNSW (``--ann hnsw``, so at any size);
then, in this process and on that one index, the graph of ``cbir duplicates`` (every row's
neighbour list, at the default verification's floor) is built at several search efforts, the
query's first (the baseline): seconds, ratio to the query effort, the pairs found at ``--verify
none``'s threshold and the candidates at ``--verify orb``'s floor, how many of each differ from the
query-effort run, and the planted pairs recalled.
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

from cbir.core.records import Entry
from cbir.duplicates.graph import Edges, similar_pairs
from cbir.encoders.features import FeatureConfig
from cbir.search.approximate import ApproximateSearcher
from cbir.service.duplicates import GRAPH_CANDIDATES, GRAPH_EF_SEARCH, VERIFICATIONS
from cbir.stores.folder import ann
from cbir.stores.folder.snapshot import open_index
from cbir.stores.folder.writer import FolderWriter

# the files are placeholders: the graph of the stored vectors is what is measured here (the pixel
# check's cost per image and per pair is printed by the benchmark on real photos)
VECTORS_ONLY = ("--verify", "none")
PLANTED = 0.01  # share of rows replaced by a near-copy of another row
CONFIG = FeatureConfig(model="xception", weights="random")  # only its name is stored
# (efSearch, re-scored candidates) tried by --effort after the query's and the graph's own
EFFORTS = ((32, 16), (16, 16))


def near_copies(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows at cosine 0.95-0.99 to ``x``'s rows: the noise is orthogonal to each row."""
    noise = rng.standard_normal(x.shape).astype(np.float32)
    noise -= np.sum(noise * x, axis=1, keepdims=True) * x
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    cos = rng.uniform(0.95, 0.99, size=(len(x), 1)).astype(np.float32)
    return cos * x + np.sqrt(1 - cos**2) * noise


def write_index(rows: int, root: Path, ann_mode: str = "auto") -> tuple[set[tuple[int, int]], float, str]:
    """An index folder of ``rows`` synthetic vectors; returns the planted pairs, the seconds spent
    on the approximate index (``ann_mode``, as ``cbir index --ann``), and its kind."""
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
        kind = writer.finish(ann_mode)
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


def run_effort(sizes: list[int], tmp: str | None) -> None:
    """The graph at each search effort on one index of each size (the module docstring)."""
    import faiss

    orb, none = VERIFICATIONS["orb"], VERIFICATIONS["none"]
    print(f"faiss {faiss.__version__}; graph at floor {orb.threshold}, lists grown above {orb.grow_above}")
    for rows in sizes:
        with tempfile.TemporaryDirectory(dir=tmp) as folder:
            root = Path(folder) / "data"
            planted, ann_s, kind = write_index(rows, root, "hnsw")
            index = open_index(root)
            query = index.searcher()
            if not isinstance(query, ApproximateSearcher):
                sys.exit(f"no approximate index was built ({kind})")
            a, b = (np.array(side, dtype=np.int64) for side in zip(*sorted(planted)))
            va, vb = (np.asarray(index.feats[side], dtype=np.float32) for side in (a, b))
            still = np.einsum("ij,ij->i", va, vb) >= none.threshold
            alive = _keys(Edges(a[still], b[still], np.ones(int(still.sum()), dtype=np.float32)), rows)
            print(
                f"\n{rows} rows, HNSW built in {ann_s:.0f} s; {len(planted)} planted pairs, {len(alive)} "
                f"still scoring >= {none.threshold} (the generator overwrote the others' source rows)"
            )
            ef_query = int(faiss.downcast_index(query.index).hnsw.efSearch)
            runs = [(f"query effort (efSearch {ef_query}, {query.candidates} candidates)", query)]
            for ef, cand in ((GRAPH_EF_SEARCH, GRAPH_CANDIDATES), *EFFORTS):
                name = f"efSearch {ef}, {cand} candidates" + (
                    " (graph default)" if (ef, cand) == (GRAPH_EF_SEARCH, GRAPH_CANDIDATES) else ""
                )
                runs.append((name, query.with_effort(cand, ann.effort(query.index, ef))))
            all_rows = np.arange(len(index), dtype=np.int64)
            similar_pairs(query, all_rows[:2048], orb.threshold, grow_above=orb.grow_above)  # warm up
            print(
                f"{'effort':<44} {'s':>7} {'ratio':>6} {'ms/row':>6} {'pairs':>6} {'-lost/+new':>11} "
                f"{'planted found':>13} {'candidates':>10} {'-lost/+new':>15}"
            )
            base: tuple[float, np.ndarray, np.ndarray] | None = None
            for name, searcher in runs:
                t = time.perf_counter()
                edges = similar_pairs(searcher, all_rows, orb.threshold, grow_above=orb.grow_above)
                seconds = time.perf_counter() - t
                cands, pairs = _keys(edges, rows), _keys(edges.above(none.threshold), rows)
                base = base or (seconds, pairs, cands)
                hit = len(np.intersect1d(alive, pairs))
                print(
                    f"{name:<44} {seconds:>7.1f} {seconds / base[0]:>5.2f}x {seconds / rows * 1000:>6.2f} "
                    f"{len(pairs):>6} {_change(base[1], pairs):>11} {hit:>6} / {len(alive):<4} "
                    f"{len(cands):>10} {_change(base[2], cands):>15}"
                )


def _keys(edges: Edges, rows: int) -> np.ndarray:
    """Each pair as one sorted int64 (a * rows + b), for set operations in NumPy."""
    return np.unique(edges.a * rows + edges.b)


def _change(before: np.ndarray, after: np.ndarray) -> str:
    """``-lost/+new`` pairs of ``after`` against ``before``."""
    return f"-{len(np.setdiff1d(before, after))}/+{len(np.setdiff1d(after, before))}"
