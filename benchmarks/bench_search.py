"""Search at scale: exact blocked search (float32 / float16, memory-mapped) vs the approximate index.

The vectors are synthetic but shaped like CNN features (2048-d, L2-normalised, clustered, low
intrinsic dimension), generated as follows (seeded, reproducible):

  * a latent space of 512 dimensions with a decaying spectrum s_i = (1 + i)^-0.7, embedded in 2048-d
    by a random orthonormal basis B (512 x 2048);
  * 4096 cluster centres c_j = m + s * g_j (g_j standard normal; m = s * |N(0, 1)|, a shared offset
    like the positive mean of ReLU features, so unrelated vectors still have cosine ~0.3); cluster j
    is drawn with probability proportional to (1 + j)^-0.5 (a few big categories, a long tail);
  * a point of cluster j: x = (c_j + 0.5 * s * h) B + 0.02 * e, with h ~ N(0, I_512) (anisotropic
    noise with the same decaying spectrum) and e ~ N(0, I_2048) (a full-rank noise floor, ~10% of
    the energy), then L2-normalised. At 100k rows the nearest neighbour has cosine ~0.81, the 10th
    ~0.77, the 100th ~0.69 and a random pair ~0.31 (printed for every run).
  * queries: drawn the same way with another seed (not in the database).

The database is generated in chunks straight into memory-mapped .npy files (float32 and float16) in
a temporary folder, deleted at the end: 1M rows take 8 + 4 GB of disk and are never all in RAM.

For each size it prints: the machine; the copy bandwidth of a large NumPy array and the
memory-bandwidth bound of exact search (bytes scanned per query / bandwidth); then per method the
build time, index size, load time, process memory (anonymous RSS, i.e. not counting mapped files),
latency of single queries (one per call: median and p95) and batched (100 per call: time per
query), and recall@10 against exact float32 search.

    python3 benchmarks/bench_search.py --rows 20000                    # smoke test, about a minute
    python3 benchmarks/bench_search.py --rows 100000                   # ~10 min on 2 cores
    python3 benchmarks/bench_search.py --rows 1000000 --ann hnsw       # see the docstring of cbir.ann
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from machine import describe  # noqa: E402

import cbir.stores.folder.ann as ann_mod  # noqa: E402
from cbir.search.approximate import ApproximateSearcher  # noqa: E402
from cbir.search.exact import ExactSearcher, top_k  # noqa: E402

DIM = 2048
LATENT = 512
DECAY = 0.7
CENTRES = 4096
WITHIN = 0.5
ISO = 0.02
CHUNK = 65536
K = 10

SearchFn = Callable[[np.ndarray], np.ndarray]  # queries -> the rows found for each


class Space:
    """The generative model of the module docstring (everything but the points themselves)."""

    def __init__(self, dim: int = DIM, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        q, _ = np.linalg.qr(rng.standard_normal((dim, LATENT), dtype=np.float32))
        self.basis = np.ascontiguousarray(q.T)
        self.spec = (1.0 + np.arange(LATENT, dtype=np.float32)) ** -DECAY
        offset = np.abs(rng.standard_normal(LATENT).astype(np.float32)) * self.spec
        self.centres = offset + rng.standard_normal((CENTRES, LATENT), dtype=np.float32) * self.spec
        weights = 1.0 / (1.0 + np.arange(CENTRES)) ** 0.5
        self.p = weights / weights.sum()

    def draw(self, n: int, seed: int) -> np.ndarray:
        """``n`` normalised float32 points."""
        rng = np.random.default_rng(seed)
        labels = rng.choice(CENTRES, size=n, p=self.p)
        lat = self.centres[labels] + WITHIN * rng.standard_normal((n, LATENT), dtype=np.float32) * self.spec
        x = lat @ self.basis
        x += ISO * rng.standard_normal(x.shape, dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x


def generate(space: Space, rows: int, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Write ``rows`` points into feats32.npy and feats16.npy under ``folder``; return both memmaps."""
    f32 = np.lib.format.open_memmap(folder / "feats32.npy", mode="w+", dtype=np.float32, shape=(rows, DIM))
    f16 = np.lib.format.open_memmap(folder / "feats16.npy", mode="w+", dtype=np.float16, shape=(rows, DIM))
    for i, start in enumerate(range(0, rows, CHUNK)):
        x = space.draw(min(CHUNK, rows - start), seed=1000 + i)
        f32[start : start + len(x)] = x
        f16[start : start + len(x)] = x
    f32.flush()
    f16.flush()
    del f32, f16
    return (
        np.load(folder / "feats32.npy", mmap_mode="r"),
        np.load(folder / "feats16.npy", mmap_mode="r"),
    )


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Bytes per second read + written by ``np.copyto`` of a large array (best of 3)."""
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(3))
    return 2 * nbytes / best


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def rss_mb() -> tuple[float, float]:
    """(anonymous RSS, peak RSS) of this process in MB (mapped feature files are not anonymous)."""
    vals = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "VmHWM"):
                vals[key] = int(rest.split()[0]) / 1024
    return vals.get("RssAnon", 0.0), vals.get("VmHWM", 0.0)


def recall(rows: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a[:K]) & set(b[:K])) / K for a, b in zip(rows, truth)]))


def time_single(search: SearchFn, queries: np.ndarray, n: int, budget_s: float) -> tuple[float, float, int]:
    """Median and p95 ms of one-query calls (at most ``n`` calls or ``budget_s`` seconds, at least 3)."""
    times = []
    start = time.perf_counter()
    for i in range(min(n, len(queries))):
        times.append(_timed(partial(search, queries[i : i + 1])))
        if i >= 2 and time.perf_counter() - start > budget_s:
            break
    return float(np.median(times) * 1e3), float(np.percentile(times, 95) * 1e3), len(times)


def time_batched(search: SearchFn, queries: np.ndarray, batch: int) -> tuple[float, np.ndarray]:
    """ms per query when searching ``batch`` queries per call; and the rows found for all queries."""
    out = []
    t = time.perf_counter()
    for start in range(0, len(queries), batch):
        out.append(search(queries[start : start + batch]))
    return (time.perf_counter() - t) / len(queries) * 1e3, np.concatenate(out)


def print_row(
    name: str,
    params: str,
    build: str,
    size: str,
    load: str,
    mem: str,
    single: tuple[float, float, int],
    batched: float,
    rec: float,
) -> None:
    med, p95, n = single
    print(
        f"{name:<12} {params:<26} {build:>8} {size:>9} {load:>7} {mem:>9} "
        f"{med:>9.2f} {p95:>9.2f} {n:>4} {batched:>9.2f} {rec:>7.4f}",
        flush=True,
    )


def bench_size(rows: int, args: argparse.Namespace, bandwidth: float) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="cbir-bench-search-", dir=args.tmp))
    try:
        space = Space()
        t = time.perf_counter()
        f32, f16 = generate(space, rows, tmp)
        gen_s = time.perf_counter() - t
        queries = space.draw(args.queries, seed=7)
        t = time.perf_counter()
        truth, truth_scores = top_k(f32, queries, 100)
        gt_s = time.perf_counter() - t
        sample = np.asarray(f32[np.random.default_rng(3).choice(rows, 2000, replace=False)], np.float32)
        random_cos = float(np.median(sample[:1000] @ sample[1000:].T))
        print(
            f"\n== {rows} rows x {DIM}: generated in {gen_s:.0f}s; ground truth ({args.queries} queries, "
            f"exact float32, batched) in {gt_s:.0f}s"
        )
        print(
            f"cosine of the 1st / 10th / 100th neighbour: {truth_scores[:, 0].mean():.3f} / "
            f"{truth_scores[:, 9].mean():.3f} / {truth_scores[:, 99].mean():.3f}; "
            f"random pair {random_cos:.3f}"
        )
        truth = truth[:, :K]
        bound32 = rows * DIM * 4 / bandwidth * 1e3
        bound16 = rows * DIM * 2 / bandwidth * 1e3
        print(
            f"memory-bandwidth bound of one exact query: float32 {bound32:.1f} ms "
            f"({rows * DIM * 4 / 1e9:.2f} GB), float16 {bound16:.1f} ms"
        )
        print(
            f"\n{'method':<12} {'params':<26} {'build s':>8} {'index MB':>9} {'load s':>7} {'anon MB':>9} "
            f"{'single ms':>9} {'p95 ms':>9} {'n':>4} {'batch ms':>9} {'recall':>7}"
        )
        ratios = {}
        for name, feats, bound in (("exact-f32", f32, bound32), ("exact-f16", f16, bound16)):

            def search(q: np.ndarray, feats: np.ndarray = feats) -> np.ndarray:
                return top_k(feats, q, K)[0]

            single = time_single(search, queries, args.single, args.exact_budget)
            batched, found = time_batched(search, queries[: args.batch], args.batch)
            rec = recall(found, truth[: args.batch])
            mb = feats.shape[0] * DIM * feats.dtype.itemsize / 1e6
            print_row(
                name,
                "blocked, memory-mapped",
                "-",
                f"{mb:.0f}",
                "-",
                f"{rss_mb()[0]:.0f}",
                single,
                batched,
                rec,
            )
            ratios[name] = single[0] / bound
        # the searcher queries use: a float16 matrix goes through faiss's float16 kernel (built once)
        t = time.perf_counter()
        kernel = ExactSearcher(f16)
        kernel.search(queries[:1], K)
        build_s = time.perf_counter() - t

        def search16(q: np.ndarray) -> np.ndarray:
            return kernel.search(q, K)[0]

        single = time_single(search16, queries, args.single, args.exact_budget)
        batched, found = time_batched(search16, queries[: args.batch], args.batch)
        print_row(
            "exact-f16k",
            "float16 kernel (faiss), copy",
            f"{build_s:.1f}",
            f"{f16.shape[0] * DIM * 2 / 1e6:.0f}",
            "-",
            f"{rss_mb()[0]:.0f}",
            single,
            batched,
            recall(found, truth[: args.batch]),
        )
        ratios["exact-f16k"] = single[0] / bound16
        sweep_16 = []
        for nq in (1, 16, 32, 64, 128):  # where KERNEL_MAX_QUERIES comes from
            q = queries[:nq]
            t = time.perf_counter()
            kernel._search_float16(q, K, None)  # the kernel alone, whatever the batch size
            per_kernel = (time.perf_counter() - t) / len(q) * 1e3
            t = time.perf_counter()
            top_k(f16, q, K)
            per_scan = (time.perf_counter() - t) / len(q) * 1e3
            sweep_16.append(f"{len(q)}: {per_kernel:.1f} vs {per_scan:.1f}")
        print("float16 ms per query by queries per call, kernel vs scan: " + "; ".join(sweep_16))
        print(
            f"exact single-query latency / bandwidth bound: float32 {ratios['exact-f32']:.2f}x, "
            f"float16 scan {ratios['exact-f16']:.2f}x, float16 kernel {ratios['exact-f16k']:.2f}x "
            "(target: within 2x; the kernel's first query also pays its build, column 'build s')"
        )
        for kind in args.ann:
            bench_ann(kind, f32, queries, truth, tmp, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sweep(kind: str, params: dict) -> list[dict]:
    """The default parameters and a cheaper and a dearer search setting around them."""
    if kind == "hnsw":
        ef = params["efSearch"]
        return [{**params, "efSearch": v} for v in (ef // 2, ef, ef * 2)]
    npr = params["nprobe"]
    values = sorted({max(1, npr // 2), npr, min(params["nlist"], npr * 2)})
    return [{**params, "nprobe": v} for v in values]


def bench_ann(
    kind: str, f32: np.ndarray, queries: np.ndarray, truth: np.ndarray, tmp: Path, args: argparse.Namespace
) -> None:
    import faiss

    rows = f32.shape[0]
    params = ann_mod.default_params(kind, rows, DIM)
    t = time.perf_counter()
    index = ann_mod.build_ann(f32, kind, **params)
    build_s = time.perf_counter() - t
    path = tmp / "ann.faiss"
    ann_mod.save_ann(index, path)
    del index
    size_mb = path.stat().st_size / 1e6
    t = time.perf_counter()
    index = ann_mod.load_ann(path)
    load_s = time.perf_counter() - t
    anon = rss_mb()[0]
    for p in sweep(kind, params):
        ann_mod.set_search_params(index, kind, p)
        searcher = ApproximateSearcher(index, f32, int(p["candidates"]))

        def search(q: np.ndarray, searcher: ApproximateSearcher = searcher) -> np.ndarray:
            return searcher.search(q, K)[0]

        search(queries[:1])
        single = time_single(search, queries, args.single, 120.0)
        batched, found = time_batched(search, queries, args.batch)
        shown = ",".join(f"{k}={v}" for k, v in p.items() if k not in ("efConstruction",))
        default = "*" if p == params else " "
        print_row(
            f"{kind}{default}",
            shown[:26],
            f"{build_s:.0f}",
            f"{size_mb:.0f}",
            f"{load_s:.2f}",
            f"{anon:.0f}",
            single,
            batched,
            recall(found, truth),
        )
    del index
    path.unlink()
    print(
        f"  ({kind}: faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads; "
        "* = default parameters)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000], help="database sizes (default 100000)")
    ap.add_argument(
        "--ann",
        nargs="*",
        default=["hnsw", "ivfsq8"],
        choices=ann_mod.ANN_KINDS,
        help="ANN kinds (default hnsw ivfsq8)",
    )
    ap.add_argument("--queries", type=int, default=300, help="queries for recall (default 300)")
    ap.add_argument("--single", type=int, default=200, help="queries timed one at a time (default 200)")
    ap.add_argument("--batch", type=int, default=100, help="queries per batched call (default 100)")
    ap.add_argument(
        "--exact-budget",
        type=float,
        default=60.0,
        help="seconds of single exact queries per method (default 60)",
    )
    ap.add_argument("--threads", type=int, help="faiss threads (default: all cores)")
    ap.add_argument("--tmp", help="folder for the generated features (default: the system temp folder)")
    args = ap.parse_args()
    if args.threads:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    print(describe())
    import faiss

    print(f"faiss {faiss.__version__}")
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth (np.copyto of 1 GiB, read + written): {bandwidth / 1e9:.1f} GB/s")
    for rows in args.rows:
        bench_size(rows, args, bandwidth)


if __name__ == "__main__":
    main()
