"""The Milvus store against the folder store, and Ray indexing against the plain indexer, in one run.

Part 1 (stores): ``--rows`` synthetic vectors from the generator of ``bench_search.py`` (2048-d,
clustered, L2-normalised) are written through each store's writer (``--checkpoint`` rows per
commit, as the indexer does) and made searchable (the folder store builds its faiss HNSW in
``finish``; Milvus Lite indexes as it goes). Then, per store: single-query latency (one query per
call, median and p95) and recall@10 of its default searcher against exact float32 search. The
stores: the folder store, Milvus Lite, and a real Milvus server (the standalone server of PyPI's
``milvus`` package, started here on free ports by ``tests/milvus_server.py`` and always stopped;
``--no-server`` leaves it out, and it is left out with the reason where it cannot start).

Part 2 (Ray): ``--images`` Corel-1k images (copied to a temporary folder) indexed by the plain
indexer (into the folder store and into Milvus Lite) and by ``--ray`` on a local Ray with this
machine's cores into Milvus Lite, twice: the rows sent back to the driver, which writes them (the
folder store's path), and the rows written by the actors themselves (Milvus' path). Same model
(MobileNetV2 0.35, real weights, Keras runtime); Ray is started before the timings, each Ray figure
includes starting its actors. On one machine the two Ray paths should be about equal: direct writes
remove the driver as the one writer and the vectors' trip through Ray's object store, which matters
on a cluster, not here.

    python3 benchmarks/bench_store.py --rows 20000 --images 100     # a few minutes
    python3 benchmarks/bench_store.py --rows 100000 --images 300    # the figures of docs/scale.md
    python3 benchmarks/bench_store.py --rows 0 --images 200         # the Ray part only
    python3 benchmarks/bench_store.py --rows 0 --images 0 --filter-rows 50000 --dim 1024   # --under

Part 3 (``--filter-rows N``): N synthetic vectors in 1,000 folders, in every store; a query with
``--under`` one folder (0.1% of the rows) and ten folders (1%), k=10: the folder store's mask,
Milvus with the filter expression (the default), and Milvus with the mask alone (how it was
before: more candidates asked until k pass, and past 16,384 of them every vector read); the real
server with the expression.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# the tests' helper that starts PyPI's milvus standalone server on free ports (one copy of that logic)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import contextlib  # noqa: E402

import numpy as np  # noqa: E402
from bench_search import Space  # noqa: E402
from machine import SHARED, describe, version  # noqa: E402
from milvus_server import MilvusServer, why_not  # noqa: E402

from cbir.core.records import Entry
from cbir.encoders.base import (
    EncoderSource,  # noqa: E402
    Result,
    RuntimeOptions,
)
from cbir.encoders.features import FeatureConfig  # noqa: E402
from cbir.indexing.indexer import IndexOptions, update_index  # noqa: E402
from cbir.indexing.ray_runner import RayEmbedder, RaySource  # noqa: E402
from cbir.search.base import Searcher  # noqa: E402
from cbir.search.exact import top_k  # noqa: E402
from cbir.search.filters import ResultFilter  # noqa: E402
from cbir.service.query import SearchRequest, search_index  # noqa: E402
from cbir.service.settings import FeatureChoice, resolve_settings
from cbir.stores.base import Store
from cbir.stores.folder.store import FolderStore
from cbir.stores.milvus import reader as milvus_reader  # noqa: E402
from cbir.stores.milvus.client import LIVE  # noqa: E402
from cbir.stores.milvus.store import MilvusStore  # noqa: E402

K = 10
CONFIG = FeatureConfig(model="synthetic", weights="none", size=224)
WEIGHTS = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
COREL = SHARED / "datasets" / "corel1k" / "images"


def flat_name(i: int) -> str:
    return f"v{i:07d}.jpg"


def insert(
    store: Store, feats: np.ndarray, checkpoint: int, name: Callable[[int], str] = flat_name
) -> tuple[float, float]:
    """Write every row (row i as ``name(i)``) through the store's writer; (seconds to write,
    seconds to finish)."""
    t0 = time.perf_counter()
    with store.writer(CONFIG, dtype="float32", rebuild=True, whitening=None, weights_path=None) as w:
        w.set_dim(feats.shape[1])
        for start in range(0, len(feats), checkpoint):
            block = np.ascontiguousarray(feats[start : start + checkpoint])
            w.put([Entry(name(start + i), 1, 1) for i in range(len(block))], block)
            w.commit()
        t1 = time.perf_counter()
        w.finish("hnsw")
    return t1 - t0, time.perf_counter() - t1


def measure(store: Store, feats: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Latency of single queries (ms) and recall@10 of the store's default searcher."""
    index = store.open()
    order = np.array([int(p[1:8]) for p in index.paths])  # the store's rows -> generated rows
    searcher = index.searcher()
    searcher.search(queries[:1], K)  # warm up
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        rows, _ = searcher.search(q[None], K)
        times.append(time.perf_counter() - t)
        found.append(order[rows[0]])
    recall = np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)])
    return {
        "p50": 1e3 * float(np.median(times)),
        "p95": 1e3 * float(np.percentile(times, 95)),
        "recall": recall,
    }


@contextlib.contextmanager
def milvus_server(args: argparse.Namespace, tmp: Path) -> Iterator[str | None]:
    """A real Milvus standalone server (PyPI's milvus package, started on free ports of 127.0.0.1
    with its data in ``tmp``): its ``milvus://`` URI, or None (said why) with --no-server or where
    it cannot start. Always stopped."""
    reason = "--no-server" if args.no_server else why_not()
    if reason is not None:
        print(f"no Milvus server: {reason}")
        yield None
        return
    server = MilvusServer(tmp / "milvus-server")
    try:
        server.start()
        yield server.uri
    finally:
        server.stop()


def server_version(uri: str) -> str:
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri.replace("milvus://", "http://"))
    try:
        return str(client.get_server_version())
    finally:
        client.close()


def bench_stores(args: argparse.Namespace, tmp: Path, server: str | None) -> None:
    space = Space()
    feats = np.concatenate(
        [
            space.draw(min(65536, args.rows - s), seed=1000 + i)
            for i, s in enumerate(range(0, args.rows, 65536))
        ]
    )[:, : args.dim]
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    queries = space.draw(args.queries, seed=7)[:, : args.dim]
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth, _ = top_k(feats, queries, K)
    print(
        f"\n{args.rows} vectors of {args.dim} dimensions, {args.queries} queries, "
        f"commits of {args.checkpoint} rows"
    )
    print(
        f"{'store':<16}{'insert rows/s':>14}{'finish s':>10}{'p50 ms':>9}{'p95 ms':>9}"
        f"{'recall@10':>11}{'x folder':>12}"
    )
    results = {}
    stores: list[tuple[str, Store]] = [
        ("folder (faiss)", FolderStore(tmp, tmp / "folder-index")),
        ("milvus lite", MilvusStore.from_uri(f"milvus:{tmp / 'bench.db'}", tmp)),
    ]
    if server is not None:
        stores.append(("milvus server", MilvusStore.from_uri(f"{server}/bench", tmp)))
    for name, store in stores:
        write, finish = insert(store, feats, args.checkpoint)
        m = measure(store, feats, queries, truth)
        rate = args.rows / (write + finish)
        results[name] = (rate, m)
        base_rate, base = results["folder (faiss)"]
        ratio = f"{rate / base_rate:.2f}/{m['p50'] / base['p50']:.1f}"
        print(
            f"{name:<16}{rate:>14,.0f}{finish:>10.1f}{m['p50']:>9.2f}{m['p95']:>9.2f}{m['recall']:>11.3f}{ratio:>12}"
        )
    print("x folder: insert rate / p50 latency, as ratios of the folder store's in this run")
    versions = [(name, store) for name, store in stores if isinstance(store, MilvusStore)]
    if versions:
        bench_version_filter(versions, feats, queries)


def bench_version_filter(
    stores: list[tuple[str, MilvusStore]], feats: np.ndarray, queries: np.ndarray
) -> None:
    """Each Milvus store's single-query p50 with its reader's version filter (and the horizon check
    after each search) against the same collection read without either (how reads were before
    versions), queries alternating between the two; then, after a commit that re-wrote 10% of the
    rows (a tenth of the rows are now dead ones the filter skips), with the filter again. The plain
    reader is measured only before the re-write: with dead rows it would meet two rows of a path."""
    print(f"\nversion filter: p50 of {len(queries)} single queries (ms)")
    print(
        f"{'store':<16}{'rows':>9}{'plain':>9}{'filtered':>10}{'x plain':>9}"
        f"{'dead':>8}{'filtered':>10}{'x plain':>9}"
    )
    for name, store in stores:
        versioned, plain = store.open(), store.open()
        plain.number, plain.mine = None, ""  # every row, no horizon check
        first = alternating({"filtered": versioned.searcher(), "plain": plain.searcher()}, queries)
        again = np.arange(0, len(feats), 10)
        with store.writer(CONFIG, dtype="float32", rebuild=False, whitening=None, weights_path=None) as w:
            w.put([Entry(flat_name(int(i)), 1, 2) for i in again], np.ascontiguousarray(feats[again]))
            w.commit()
            w.finish("hnsw")
        after = alternating({"filtered": store.open().searcher()}, queries)
        dead = sum(1 for _ in store.collection().rows(f"dies < {LIVE}", ["path"]))
        f, p, a = first["filtered"], first["plain"], after["filtered"]
        print(
            f"{name:<16}{len(versioned):>9,}{p:>9.2f}{f:>10.2f}{f / p:>9.2f}{dead:>8,}{a:>10.2f}{a / p:>9.2f}"
        )


def alternating(searchers: dict[str, Searcher], queries: np.ndarray) -> dict[str, float]:
    """The p50 (ms) of single queries through each searcher, one query through each in turn."""
    for searcher in searchers.values():
        searcher.search(queries[:1], K)  # warm up
    times: dict[str, list[float]] = {kind: [] for kind in searchers}
    for q in queries:
        for kind, searcher in searchers.items():
            t = time.perf_counter()
            searcher.search(q[None], K)
            times[kind].append(time.perf_counter() - t)
    return {kind: 1e3 * float(np.median(t)) for kind, t in times.items()}


@dataclass
class DriverOnly:
    """A Ray embedder seen only as a ``Encoder`` (no ``embed_into``): its rows come back to the
    driver even into Milvus, the path before direct writes (and still the folder store's)."""

    ray: RayEmbedder

    @property
    def config(self) -> FeatureConfig:
        return self.ray.config

    @property
    def dim(self) -> int:
        return self.ray.dim

    def embed_files(
        self, paths: Sequence[str | os.PathLike[str]], progress: bool | None = False, desc: str = ""
    ) -> Iterator[Result]:
        return self.ray.embed_files(paths, progress, desc)


@dataclass(frozen=True)
class ViaDriver(RaySource):
    """``RaySource`` whose embedder is :class:`DriverOnly`."""

    def embedder(self) -> DriverOnly:
        return DriverOnly(super().embedder())


def bench_ray(args: argparse.Namespace, tmp: Path) -> None:
    if not (WEIGHTS.exists() and COREL.is_dir()):
        print(f"\nRay: skipped (needs {WEIGHTS} and {COREL})")
        return
    data = tmp / "images"
    data.mkdir()
    for src in sorted(COREL.glob("*.jpg"))[: args.images]:
        shutil.copy2(src, data / src.name)
    settings = resolve_settings(
        data,
        features=FeatureChoice(model="mobilenetv2"),
        weights=str(WEIGHTS),
        runtime=RuntimeOptions(runtime="keras", bulk=True),
    )
    RaySource(settings).embedder()  # Ray started once, outside the timings (each run starts its actors)
    milvus = lambda name: MilvusStore.from_uri(f"milvus:{tmp / name}.db", data)  # noqa: E731
    runs: list[tuple[str, EncoderSource, Store]] = [
        ("plain (threads)", replace(settings, _built=[]), FolderStore(data, tmp / "index-plain")),
        ("plain (threads)", replace(settings, _built=[]), milvus("plain")),
        ("ray, rows via the driver", ViaDriver(settings), milvus("driver")),
        ("ray, rows from the workers", RaySource(settings), milvus("direct")),
    ]
    print(
        f"\n{args.images} Corel images, MobileNetV2 0.35 at 224 (Keras), local Ray, {os.cpu_count()} actors"
    )
    print("(Ray started before the timings; every run includes building its model(s), Ray's its actors)")
    print(f"{'indexer':<28}{'store':<14}{'seconds':>9}{'img/s':>8}{'x plain':>9}")
    rates: dict[str, float] = {}
    for name, source, store in runs:
        t = time.perf_counter()
        report = update_index(data, source, options=IndexOptions(progress=False, rebuild=True), store=store)
        seconds = time.perf_counter() - t
        assert report.total == args.images, report
        rate = args.images / seconds
        kind = "folder" if isinstance(store, FolderStore) else "milvus lite"
        base = rates.setdefault(kind, rate)  # the plain indexer into the same store
        rates[name] = rate
        print(f"{name:<28}{kind:<14}{seconds:>9.1f}{rate:>8.1f}{rate / base:>9.2f}")
    direct = rates["ray, rows from the workers"] / rates["ray, rows via the driver"]
    print(
        f"rows from the workers / via the driver: {direct:.2f} (one machine: no driver bottleneck to remove)"
    )


FOLDERS = 1000


def foldered_name(i: int) -> str:
    return f"f{i % FOLDERS:04d}/v{i:07d}.jpg"


def filtered_latency(store: Store, queries: np.ndarray, where: ResultFilter) -> tuple[float, float]:
    """A fresh reader's first filtered query and the median of the rest (ms), k=10."""
    index = store.open()
    times = []
    for q in queries:
        t = time.perf_counter()
        (found,) = search_index(index, q[None], ["q"], SearchRequest(k=10, exclude_self=False, where=where))
        times.append(time.perf_counter() - t)
        assert len(found.matches) == 10
    return 1e3 * times[0], 1e3 * float(np.median(times[1:]))


def bench_filters(args: argparse.Namespace, tmp: Path, server: str | None) -> None:
    """``--under`` on Milvus searched inside Milvus (a filter expression) against the mask alone
    (more candidates asked until k pass), and the folder store's mask, same rows and queries."""
    space = Space()
    feats = space.draw(args.filter_rows, seed=2000)[:, : args.dim]
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    queries = space.draw(11, seed=8)[:, : args.dim]
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    stores = {
        "folder": FolderStore(tmp, tmp / "filter-index"),
        "milvus lite": MilvusStore.from_uri(f"milvus:{tmp / 'filters.db'}", tmp),
    }
    if server is not None:
        stores["milvus server"] = MilvusStore.from_uri(f"{server}/filters", tmp)
    for store in stores.values():
        insert(store, feats, args.checkpoint, foldered_name)
    print(
        f"\n--under on {args.filter_rows} vectors of {args.dim} dimensions in {FOLDERS} folders, k=10, "
        "a fresh reader: first query, then the median of 10"
    )
    print(f"{'store, filter':<34}{'share':>7}{'first ms':>10}{'p50 ms':>9}{'p50 x folder':>14}")
    listed = milvus_reader.MAX_LISTED
    for share, folders in (("1%", 10), ("0.1%", 1)):
        where = ResultFilter(tuple(f"f{i:04d}" for i in range(folders)))
        rows = []
        for name, store, limit in (
            ("folder (mask)", stores["folder"], listed),
            ("milvus lite (expression + mask)", stores["milvus lite"], listed),
            ("milvus lite (mask only)", stores["milvus lite"], 0),
            *([("milvus server (expression + mask)", stores["milvus server"], listed)] if server else []),
        ):
            milvus_reader.MAX_LISTED = limit
            rows.append((name, *filtered_latency(store, queries, where)))
        milvus_reader.MAX_LISTED = listed
        base = rows[0][2]
        for name, first, p50 in rows:
            print(f"{name:<34}{share:>7}{first:>10.1f}{p50:>9.1f}{p50 / base:>13.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="vectors for the store part (0: skip it)")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--checkpoint", type=int, default=5000, help="rows per commit")
    parser.add_argument("--images", type=int, default=300, help="images for the Ray part (0: skip it)")
    parser.add_argument(
        "--filter-rows", type=int, default=0, help="vectors for the --under part (0: skip it; 50000 in docs)"
    )
    parser.add_argument(
        "--no-server", action="store_true", help="leave out the real Milvus server (PyPI's milvus package)"
    )
    args = parser.parse_args()
    print(describe())
    print(", ".join(f"{n} {version(n)}" for n in ("pymilvus", "milvus-lite", "milvus", "faiss-cpu", "ray")))
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp, milvus_server(args, Path(tmp)) as server:
        if server is not None:
            print(f"Milvus server {server_version(server)} (standalone, embedded etcd, local storage)")
        if args.rows:
            bench_stores(args, Path(tmp), server)
        if args.filter_rows:
            bench_filters(args, Path(tmp), server)
        if args.images:
            bench_ray(args, Path(tmp))


if __name__ == "__main__":
    main()
