"""Retrieval quality of feature and re-ranking configurations, with images/s beside each row.

The default run (``--rows study``, issue 22) decides the defaults on three benchmarks at once:
category search on Corel-1k (every image a query, relevant = the other 99 of its class), instance
search on the generated benchmark of make_instance.py (views cut and warped from one photo) and on
the real instance benchmark of make_real_instance.py (photos of one product taken separately).
For every backbone of ``BACKBONES`` and every input geometry of ``STUDY_GEOMETRIES`` the backbone
runs once per benchmark (its feature maps are kept in ``--maps``, so a rerun only re-scores); every
pooling of ``STUDY_POOLINGS`` is pooled from those maps in NumPy with the product's reference
poolings, and every re-ranking of ``STUDY_RERANKINGS`` is applied at query time over the same
vectors. It prints one table per benchmark (mAP, P@1, the N-S-style top-4 score, images/s), the
three benchmarks side by side, and the check of the issue's rule: a re-ranking may become the
default only if it loses no more than 0.005 mAP against none on every benchmark.

    python3 benchmarks/make_instance.py --out /tmp/instance
    python3 benchmarks/make_real_instance.py GROCERY_REPO --out /tmp/real-instance
    python3 benchmarks/bench_quality.py --instance /tmp/instance --real /tmp/real-instance --maps /tmp/maps
    # a new backbone first on the default features only (every re-ranking), beside the others:
    python3 benchmarks/bench_quality.py ... --geometry squash --pooling avg

images/s is the backbone's throughput in the run that made the maps (decoding included, pooling
and search not timed).

Two older row sets stay for their tables in docs/quality.md: ``--rows classic`` (the first study:
pooling, resizing, multi-scale, whitening on Corel-1k) and ``--rows regional`` (issue 14: regional
poolings x input resolution, and adaptive re-ranking), both on one ``--dataset`` with one
``--model``/``--weights``. Every row scores mAP, P@10 and the N-S-style top-4 (the query is
excluded from its ranking, except in N-S, whose UKBench protocol counts it: the number of its
group's images, itself included, in its top 4; a perfect score is the mean group size, at most 4).

    python3 benchmarks/bench_quality.py --rows classic  # all classic rows (about 25 min on 2 cores)
    python3 benchmarks/bench_quality.py --rows classic --only gem-long # one row
    python3 benchmarks/bench_quality.py --rows regional --maps /tmp/maps --dataset /tmp/instance
    python3 benchmarks/bench_quality.py --rows regional --throughput 200 --only avg --only rmac
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from machine import SHARED, describe  # noqa: E402

from cbir.encoders.embedder import Embedder  # noqa: E402
from cbir.encoders.features import FeatureConfig
from cbir.encoders.pooling import pool, regional_sum  # noqa: E402
from cbir.encoders.registry import resolve_config
from cbir.encoders.weights import Weights  # noqa: E402
from cbir.encoders.whiten import learn_whitening  # noqa: E402
from cbir.evaluation.groundtruth import GroundTruth, load_ground_truth  # noqa: E402
from cbir.ingest.files import find_images  # noqa: E402
from cbir.search.base import Searcher  # noqa: E402
from cbir.search.exact import ExactSearcher  # noqa: E402
from cbir.search.rerank import DEFAULT_RERANKING, Reranking, rerank  # noqa: E402
from cbir.service.evaluate import evaluate  # noqa: E402

CORE = "--pooling {pooling} --gem-p {gem_p:g} --geometry {geometry} --resample {resample} --size {size}"


def _l2(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


EXTRA_POOLINGS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "ravg": lambda m: regional_sum(m, lambda r: r.mean(axis=(1, 2))),
    "rgem": lambda m: regional_sum(m, lambda r: pool(r, "gem", 3.0)),
    "avg+rmac": lambda m: _l2(pool(m, "avg")) + _l2(pool(m, "rmac")),
}
"""Exploration-only poolings (NumPy, from cached maps): regional average, regional GeM (p=3), and
the sum of the L2-normalised global average and R-MAC vectors."""


@dataclass
class Row:
    name: str
    config: FeatureConfig
    whiten: str | None = (
        None  # None | "leak" (learned on the benchmark) | "heldout" (learned on the other half)
    )
    whiten_dim: int | None = None
    whiten_power: float = 0.5
    qe: int = 0
    dba: int = 0
    threshold: float | None = None
    mutual: int = 0
    extra: str | None = None  # an EXTRA_POOLINGS name (the config's pooling is then ignored)
    note: str = ""
    flags: list[str] = field(default_factory=list)

    @property
    def reranking(self) -> Reranking:
        return Reranking(qe=self.qe, dba=self.dba, threshold=self.threshold, mutual=self.mutual)


def rows_for(size: int, base: str) -> list[Row]:
    """The configurations; re-ranking and whitening rows are built on the ``base`` row."""
    orig = FeatureConfig(pooling="max", geometry="squash", resample="nearest", size=224)
    gem = FeatureConfig(pooling="gem", geometry="squash", resample="nearest", size=size)
    long = FeatureConfig(pooling="gem", geometry="long", resample="bilinear", size=size)
    ms = (1.0, 2**-0.5, 2**0.5)
    rows = [
        Row("original", orig, note="the original script: 224x224 squash, nearest, max pooling"),
        Row("max-native", orig.replace(size=size), note="max pooling at the backbone's own input size"),
        Row("avg", orig.replace(size=size, pooling="avg")),
        Row("gem", gem),
        Row("gem2", gem.replace(gem_p=2.0), note="GeM with p=2"),
        Row("gem-antialias", gem.replace(resample="bilinear")),
        Row("avg-antialias", gem.replace(pooling="avg", resample="bilinear")),
        Row("gem-crop", gem.replace(geometry="crop", resample="bilinear")),
        Row("gem-short", gem.replace(geometry="short", resample="bilinear"), note="shorter side to the size"),
        Row("gem-long", long, note="longer side to the size (whole image, fewer pixels)"),
        Row("gem-long-large", long.replace(size=int(size * 1.5)), note="full image, longer side 1.5x"),
        Row("avg-short", gem.replace(pooling="avg", geometry="short", resample="bilinear")),
        Row(
            "gem-antialias-multiscale",
            gem.replace(resample="bilinear", scales=ms),
            note="scales 1, 1/sqrt2, sqrt2",
        ),
        Row(
            "avg-antialias-multiscale",
            gem.replace(pooling="avg", resample="bilinear", scales=ms),
            note="scales 1, 1/sqrt2, sqrt2",
        ),
    ]
    by_name = {r.name: r.config for r in rows}
    b = by_name[base]
    rows += [
        Row(f"{base}+qe", b, qe=5, note="alpha-QE, n=5, alpha=3"),
        Row(f"{base}+dba+qe", b, qe=5, dba=5, note="DBA n=5 then alpha-QE n=5"),
        Row(
            f"{base}+whiten-heldout",
            b,
            whiten="heldout",
            whiten_dim=256,
            note="PCA-whitening (power 0.5) learned on the other half (2-fold), 256-d; halves of 500",
        ),
        Row(
            f"{base}+whiten-heldout-soft",
            b,
            whiten="heldout",
            whiten_dim=64,
            whiten_power=0.25,
            note="softened whitening (power 0.25) learned on the other half, 64-d; halves of 500",
        ),
        Row(
            f"{base}+whiten-leak",
            b,
            whiten="leak",
            whiten_dim=64,
            whiten_power=0.25,
            note="LEAKS: softened whitening learned on the benchmark itself, 64-d",
        ),
    ]
    return rows


def regional_rows(size: int, base: str) -> list[Row]:
    """Issue 14: pooling x input resolution, then re-ranking (fixed and adaptive) on ``base``."""
    squash = FeatureConfig(pooling="avg", geometry="squash", resample="bilinear", size=size)
    geometries = {
        "": squash,
        "-long384": squash.replace(geometry="long", size=384),
        "-long448": squash.replace(geometry="long", size=448),
    }
    rows = []
    for suffix, config in geometries.items():
        for name, changes in POOLING_ROWS.items():
            rows.append(Row(f"{name}{suffix}", config.replace(**changes)))
        for extra in EXTRA_POOLINGS:
            rows.append(Row(f"{extra}{suffix}", config, extra=extra, note="exploration only"))
    by_name = {r.name: r for r in rows}
    b = by_name[base]
    rerankings = [
        ("+qe5", {"qe": 5, "mutual": 0}, "alpha-QE, n=5, alpha=3 (fixed n)"),
        ("+qe2", {"qe": 2, "mutual": 0}, "alpha-QE, n=2 (fixed n)"),
        ("+dba5+qe5", {"qe": 5, "dba": 5, "mutual": 0}, "DBA n=5 then alpha-QE n=5 (fixed n)"),
        ("+dba2+qe2", {"qe": 2, "dba": 2, "mutual": 0}, "DBA n=2 then alpha-QE n=2 (fixed n)"),
    ]
    for t in (0.5, 0.7, 0.8, 0.9):
        note = f"adaptive: up to 10 neighbours at least {t:g} similar"
        rerankings.append((f"+qe10@{t:g}", {"qe": 10, "threshold": t, "mutual": 0}, f"alpha-QE, {note}"))
    note = "adaptive: up to 10 neighbours at least 0.8 similar"
    rerankings.append(
        ("+dba10+qe10@0.8", {"qe": 10, "dba": 10, "threshold": 0.8, "mutual": 0}, "DBA + QE, " + note)
    )
    for n, k in ((5, 2), (5, 3), (10, 3), (5, 4)):
        note = f"adaptive: up to {n} neighbours, mutual {k}-nearest"
        rerankings.append((f"+qe{n}m{k}", {"qe": n, "mutual": k}, f"alpha-QE, {note}"))
    rerankings.append(
        ("+dba5+qe5m3", {"qe": 5, "dba": 5, "mutual": 3}, "DBA + alpha-QE, up to 5, mutual 3-nearest")
    )
    for suffix, options, note in rerankings:
        rows.append(Row(base + suffix, b.config, extra=b.extra, note=note, **options))  # type: ignore[arg-type]
    return rows


POOLING_ROWS: dict[str, dict[str, str | float]] = {
    "avg": {"pooling": "avg"},
    "max": {"pooling": "max"},
    "gem": {"pooling": "gem", "gem_p": 3.0},
    "gem0.5": {"pooling": "gem", "gem_p": 0.5},
    "rmac": {"pooling": "rmac"},
}


def command(row: Row, dataset: str, weights: str, model: str) -> str:
    c = row.config
    if row.extra is not None or row.whiten == "heldout":
        rows = " --rows classic" if row.extra is None else " --rows regional --maps /tmp/maps"
        bench = "python3 benchmarks/bench_quality.py"
        return f"{bench} --dataset {dataset} --model {model} --weights {weights}{rows} --only {row.name}"
    cmd = (
        f"cbir evaluate {dataset} --index /tmp/cbir-{row.name} --model {model} --weights {weights} "
        + CORE.format(pooling=c.pooling, gem_p=c.gem_p, geometry=c.geometry, resample=c.resample, size=c.size)
    )
    if len(c.scales) > 1:
        cmd += " --scales 1,1/sqrt2,sqrt2"
    cmd += f" --qe {row.qe}"  # always, as the default has changed before (issue 22)
    if row.dba:
        cmd += f" --dba {row.dba}"
    if row.threshold is not None:
        cmd += f" --rerank-threshold {row.threshold:g}"
    if row.qe or row.dba:
        cmd += f" --mutual {row.mutual}"
    if row.whiten == "leak":
        cmd += f" --whiten-on {dataset} --whiten-dim {row.whiten_dim} --whiten-power {row.whiten_power}"
    return cmd


def ns_top4(searcher: Searcher, files: list[str], gt: GroundTruth) -> float:
    """N-S-style: the mean number of a query's group images (itself included) in its top 4."""
    row_of = {f: i for i, f in enumerate(files)}
    rows = np.array([row_of[q] for q in gt.queries])
    top = searcher.search(searcher.vectors(rows), 4)[0]
    hits = [sum(files[r] in gt.relevant[q] or r == rows[i] for r in top[i]) for i, q in enumerate(gt.queries)]
    return float(np.mean(hits))


class Features:
    """The vectors of each row: embedded by the real Embedder, or pooled from cached maps."""

    def __init__(self, args: argparse.Namespace, paths: list[str], weights: Weights) -> None:
        self.args = args
        self.paths = paths
        self.weights = weights
        self.memory: dict[str, tuple[np.ndarray, float]] = {}

    def of(self, row: Row) -> tuple[np.ndarray, float]:
        config = resolve_config(row.config.replace(model=self.args.model), self.weights)
        if self.args.maps and len(config.scales) == 1:
            key = f"{config.replace(pooling='avg', gem_p=3.0)!r}|{row.extra or config.pooling}|{config.gem_p}"
            if key not in self.memory:
                from feature_maps import feature_maps

                maps = feature_maps(self.paths, config, self.weights, Path(self.args.maps))
                fn = EXTRA_POOLINGS.get(row.extra or "") or (lambda m: pool(m, config.pooling, config.gem_p))
                self.memory[key] = (maps.pooled(fn), maps.ips)
            return self.memory[key]
        if row.extra is not None:
            raise SystemExit(f"row {row.name} needs --maps (its pooling exists only in NumPy)")
        return self._embedded(row.config, config)

    def _embedded(self, row_config: FeatureConfig, config: FeatureConfig) -> tuple[np.ndarray, float]:
        key = repr(row_config)
        args, paths = self.args, self.paths
        disk = (
            Path(args.cache)
            / (hashlib.sha1(f"{key}{args.model}{args.weights}{len(paths)}".encode()).hexdigest()[:16])
            if args.cache
            else None
        )
        if key not in self.memory and disk is not None and disk.with_suffix(".npy").exists():
            self.memory[key] = (
                np.load(disk.with_suffix(".npy")),
                float(disk.with_suffix(".ips").read_text()),
            )
        if key not in self.memory:
            emb = Embedder(config, self.weights)
            emb.embed_all(paths[:8], progress=False)  # warm-up: graph tracing is not throughput
            t = time.perf_counter()
            feats, order = emb.embed_all(paths, progress=False)
            self.memory[key] = (feats, len(order) / (time.perf_counter() - t))
            assert len(order) == len(paths), "benchmark images must all decode"
            if disk is not None:
                disk.parent.mkdir(parents=True, exist_ok=True)
                np.save(disk.with_suffix(".npy"), self.memory[key][0])
                disk.with_suffix(".ips").write_text(str(self.memory[key][1]))
        return self.memory[key]


def throughput(rows: list[Row], paths: list[str], weights: Weights, model: str, rounds: int = 2) -> None:
    """Images/s of each row's real embedder (the default runtime) on ``paths``, measured side by side:
    every row once per round, rounds interleaved, best round kept; ratio to the first row."""
    embedders = {}
    for row in rows:
        emb = Embedder(resolve_config(row.config.replace(model=model), weights), weights)
        emb.embed_all(paths[:8], progress=False)  # warm-up
        embedders[row.name] = emb
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, emb in embedders.items():
            t = time.perf_counter()
            emb.embed_all(paths, progress=False)
            best[name] = max(best.get(name, 0.0), len(paths) / (time.perf_counter() - t))
    base = best[rows[0].name]
    print(f"| configuration | runtime | images/s | ratio to {rows[0].name} |")
    print("|---|---|---|---|")
    for row in rows:
        runtime = embedders[row.name].network.name
        print(f"| {row.name} | {runtime} | {best[row.name]:.2f} | {best[row.name] / base:.2f} |")


def query_cost(rows: int, dim: int = 2048, queries: int = 50) -> None:
    """Search time per query (k=9) without and with the default re-ranking, on ``rows`` random
    unit vectors (exact search; the images' embedding time is not included)."""
    d = DEFAULT_RERANKING
    rng = np.random.default_rng(0)
    db = rng.standard_normal((rows, dim)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q = db[:queries] + 0.1 * rng.standard_normal((queries, dim)).astype(np.float32)
    print(f"| rows | plain ms/query | --qe {d.qe} --mutual {d.mutual} ms/query | ratio |\n|---|---|---|---|")
    times = []
    for reranking in (Reranking(), d):
        searcher = rerank(ExactSearcher(db), reranking)
        searcher.search(q[:1], 9)  # warm-up
        t = time.perf_counter()
        for i in range(queries):
            searcher.search(q[i : i + 1], 9)
        times.append((time.perf_counter() - t) / queries * 1000)
    print(f"| {rows} | {times[0]:.1f} | {times[1]:.1f} | {times[1] / times[0]:.1f} |")


BACKBONES: list[tuple[str, str | None]] = [
    ("xception", "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    ("mobilenet", "mobilenet_1_0_224_tf_no_top.h5"),
    ("efficientnet-lite0", None),
    ("efficientnet-lite1", None),
    ("efficientnet-lite2", None),
]
"""The study's backbones, (model, weights): a file name in ../shared/weights, a path, or None for
the model's own weights. One line adds a backbone, e.g. ``("efficientnet-lite0", None)``."""

STUDY_GEOMETRIES: list[tuple[str, int | None]] = [("squash", None), ("long", 448)]
"""(geometry, size) of the inputs; None is the backbone's own input size (squashed, the default)."""

STUDY_POOLINGS: list[tuple[str, float]] = [("avg", 3.0), ("gem", 0.5), ("gem", 2.0), ("gem", 3.0)]
"""(pooling, GeM p); the first is the default."""

STUDY_RERANKINGS: list[tuple[str, Reranking]] = [
    ("none", Reranking()),
    ("qe10 m3", Reranking(qe=10, mutual=3)),
    ("qe5 m3", Reranking(qe=5, mutual=3)),
    ("qe10 m2", Reranking(qe=10, mutual=2)),
    ("qe10 m4", Reranking(qe=10, mutual=4)),
    ("qe2", Reranking(qe=2)),
    ("qe5", Reranking(qe=5)),
    ("dba5 qe5", Reranking(qe=5, dba=5)),
]
"""Query-time settings scored over every pooled index; "qe10 m3" was the default before issue 22."""

RULE_SLACK = 0.005
"""A default re-ranking may lose at most this much mAP against none on any benchmark (issue 22)."""


@dataclass
class Benchmark:
    name: str
    root: str
    files: list[str]
    gt: GroundTruth

    @property
    def ns_best(self) -> float:
        """The N-S score of a perfect ranking: the mean group size (query included), at most 4."""
        return float(np.mean([min(4, 1 + len(self.gt.relevant[q])) for q in self.gt.queries]))


@dataclass
class Score:
    map: float
    p1: float
    ns: float
    ips: float
    per_query: dict[str, float] = field(default_factory=dict)
    default_features: bool = False


def _weights(spec: str | None, shared: Path) -> tuple[Weights, str]:
    if spec is None:
        return Weights.imagenet(), "imagenet"
    path = Path(spec) if os.sep in spec else shared / "weights" / spec
    return Weights.parse(str(path)), path.name


def _input_name(geometry: str, size: int | None, native: int) -> str:
    return f"{geometry} {size or native}"


def _pooling_name(pooling: str, p: float) -> str:
    return pooling if pooling != "gem" else f"gem p={p:g}"


def study(args: argparse.Namespace) -> None:
    """Every backbone x input x pooling x re-ranking on the three benchmarks; tables as Markdown."""
    from feature_maps import feature_maps

    from cbir.encoders.backbones import get_backbone

    if not (args.instance and args.real and args.maps):
        raise SystemExit(
            "--rows study needs --instance, --real and --maps (see make_instance.py, make_real_instance.py)"
        )
    benchmarks = []
    corel = args.corel or str(Path(args.shared) / "datasets" / "corel1k")
    for name, root in (
        ("Corel-1k", corel),
        ("generated instance", args.instance),
        ("real instance", args.real),
    ):
        files = find_images(root)
        benchmarks.append(Benchmark(name, root, files, load_ground_truth(Path(root), files)))
    backbones = [b for b in BACKBONES if not args.backbone or b[0] in args.backbone]
    geometries = [g for g in STUDY_GEOMETRIES if not args.geometry or g[0] in args.geometry]
    poolings = [q for q in STUDY_POOLINGS if not args.pooling or _pooling_name(*q) in args.pooling]
    scores: dict[tuple[str, str, str, str, str], Score] = {}
    for model, spec in backbones:
        weights, wname = _weights(spec, Path(args.shared))
        native = get_backbone(model).input_size
        for geometry, size in geometries:
            config = resolve_config(FeatureConfig(model=model, geometry=geometry, size=size), weights)
            for bench in benchmarks:
                paths = [os.path.join(bench.root, f) for f in bench.files]
                maps = feature_maps(paths, config, weights, Path(args.maps))
                for pooling, p in poolings:
                    feats = maps.pooled(partial(pool, pooling=pooling, p=p))
                    for rname, reranking in STUDY_RERANKINGS:
                        searcher = rerank(ExactSearcher(feats), reranking)
                        rep = evaluate(searcher, bench.files, bench.gt, ks=(1, 10))
                        ns = ns_top4(searcher, bench.files, bench.gt)
                        row = (model, _input_name(geometry, size, native), _pooling_name(pooling, p))
                        default = (geometry, size, pooling, p) == STUDY_GEOMETRIES[0] + STUDY_POOLINGS[0]
                        score = Score(rep.map, rep.precision[1], ns, maps.ips, rep.per_query, default)
                        scores[row + (rname, bench.name)] = score
        print(f"{model} (weights {wname}): scored", file=sys.stderr, flush=True)
    _print_study(benchmarks, [(m, _weights(w, Path(args.shared))[1]) for m, w in backbones], scores)


def _configs(scores: dict[tuple[str, str, str, str, str], Score]) -> list[tuple[str, str, str, str]]:
    seen: dict[tuple[str, str, str, str], None] = {}
    for key in scores:
        seen.setdefault(key[:4], None)
    return list(seen)


def _print_study(
    benchmarks: list[Benchmark],
    backbones: list[tuple[str, str]],
    scores: dict[tuple[str, str, str, str, str], Score],
) -> None:
    configs = _configs(scores)
    for bench in benchmarks:
        print(
            f"\n### {bench.name}: {len(bench.files)} images, {len(bench.gt.queries)} queries "
            f"(N-S of {bench.ns_best:.2f} at best)\n"
        )
        print("| backbone | input | pooling | re-ranking | mAP | P@1 | N-S | images/s |")
        print("|---|---|---|---|---|---|---|---|")
        for c in configs:
            sc = scores[c + (bench.name,)]
            print(f"| {' | '.join(c)} | {sc.map:.4f} | {sc.p1:.4f} | {sc.ns:.3f} | {sc.ips:.1f} |")
    names = [b.name for b in benchmarks]
    print("\n### Side by side: mAP (change against the same features without re-ranking)\n")
    print("| backbone | input | pooling | re-ranking | " + " | ".join(names) + " | worst change | images/s |")
    print("|---|---|---|---|" + "---|" * len(names) + "---|---|")
    for c in configs:
        base = c[:3] + ("none",)
        cells, worst = [], np.inf
        for name in names:
            sc, b0 = scores[c + (name,)], scores[base + (name,)]
            delta = sc.map - b0.map
            worst = min(worst, delta)
            cells.append(f"{sc.map:.4f}" if c[3] == "none" else f"{sc.map:.4f} ({delta:+.3f})")
        ips = " / ".join(f"{scores[c + (n,)].ips:.1f}" for n in names)
        worst_cell = "" if c[3] == "none" else f"{worst:+.3f}"
        print(f"| {' | '.join(c)} | {' | '.join(cells)} | {worst_cell} | {ips} |")
    print("\n### Default features: change of mAP against none, ± the standard error of the paired")
    print("per-query differences (same queries, same vectors)\n")
    print("| backbone | re-ranking | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for c in configs:
        if c[3] == "none" or not scores[c + (names[0],)].default_features:
            continue
        print(f"| {c[0]} | {c[3]} | {' | '.join(_paired(scores, c, n) for n in names)} |")
    print(f"\n### The rule: re-rankings that lose at most {RULE_SLACK} mAP against none on every benchmark\n")
    print("| re-ranking | feature settings where it holds | where it gains on all three |")
    print("|---|---|---|")
    features = [c[:3] for c in configs if c[3] == "none"]
    for rname, _ in STUDY_RERANKINGS[1:]:
        holds = gains = 0
        for f in features:
            deltas = [scores[f + (rname, n)].map - scores[f + ("none", n)].map for n in names]
            holds += min(deltas) >= -RULE_SLACK
            gains += min(deltas) > 0
        print(f"| {rname} | {holds} of {len(features)} | {gains} of {len(features)} |")
    default = next(name for name, r in STUDY_RERANKINGS if r == DEFAULT_RERANKING)
    print(f"\n### Feature settings where the default re-ranking ({default}) does not gain on all three:")
    print("change of mAP against none ± the standard error of the paired per-query differences\n")
    print("| backbone | input | pooling | " + " | ".join(names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for f in features:
        if min(scores[f + (default, n)].map - scores[f + ("none", n)].map for n in names) <= 0:
            print(f"| {' | '.join(f)} | {' | '.join(_paired(scores, f + (default,), n) for n in names)} |")
    print(f"\nbackbones: {', '.join(f'{m} (weights {w})' for m, w in backbones)}")


def _paired(scores: dict[tuple[str, str, str, str, str], Score], c: tuple[str, ...], bench: str) -> str:
    """Mean change of AP of config ``c`` against the same features without re-ranking, ± its SE."""
    now, plain = scores[c + (bench,)].per_query, scores[c[:3] + ("none", bench)].per_query
    d = np.array([now[q] - plain[q] for q in plain])
    return f"{d.mean():+.4f} ± {d.std(ddof=1) / np.sqrt(len(d)):.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default=str(SHARED / "datasets" / "corel1k"))
    ap.add_argument("--model", default="xception")
    ap.add_argument(
        "--weights", default=str(SHARED / "weights" / "xception_weights_tf_dim_ordering_tf_kernels_notop.h5")
    )
    ap.add_argument("--rows", choices=["study", "classic", "regional"], default="study")
    ap.add_argument("--shared", default=str(SHARED), help="study: the shared folder (weights/, datasets/)")
    ap.add_argument("--corel", help="study: Corel-1k folder (default: SHARED/datasets/corel1k)")
    ap.add_argument("--instance", help="study: the generated instance benchmark (make_instance.py)")
    ap.add_argument("--real", help="study: the real instance benchmark (make_real_instance.py)")
    ap.add_argument("--backbone", action="append", help="study: only these BACKBONES (quick checks)")
    ap.add_argument(
        "--geometry",
        action="append",
        choices=sorted({g for g, _ in STUDY_GEOMETRIES}),
        help="study: only these STUDY_GEOMETRIES (new backbones on the default input first)",
    )
    ap.add_argument(
        "--pooling",
        action="append",
        choices=[_pooling_name(*q) for q in STUDY_POOLINGS],
        help="study: only these STUDY_POOLINGS ('avg', 'gem p=2', ...)",
    )
    ap.add_argument("--only", action="append", help="run only these rows")
    ap.add_argument("--base", help="row that re-ranking (and whitening) rows build on")
    ap.add_argument("--limit", type=int, help="use the first N images (quick checks)")
    ap.add_argument(
        "--cache", help="folder to keep embeddings between runs (re-scoring rows is then instant)"
    )
    ap.add_argument("--maps", help="folder of cached feature maps: single-scale rows are pooled from them")
    ap.add_argument("--throughput", type=int, metavar="N", help="only time the rows' embedders on N images")
    ap.add_argument("--query-cost", type=int, metavar="N", help="only time searches over N random vectors")
    args = ap.parse_args()
    import logging

    logging.getLogger("cbir.groundtruth").setLevel(logging.ERROR)  # halves leave labelled files out
    print(describe())
    if args.query_cost:
        query_cost(args.query_cost)
        return
    if args.rows == "study":
        study(args)
        return
    from cbir.encoders.backbones import get_backbone

    size = get_backbone(args.model).input_size
    weights = Weights.parse(args.weights)  # resolved once, for every row
    all_rows = (
        rows_for(size, args.base or "gem-antialias")
        if args.rows == "classic"
        else regional_rows(size, args.base or "avg")
    )
    rows = [r for r in all_rows if not args.only or r.name in args.only]
    files = find_images(args.dataset)[: args.limit]
    paths = [os.path.join(args.dataset, f) for f in files]
    print(
        f"dataset: {args.dataset} ({len(files)} images), model {args.model}, "
        f"weights {os.path.basename(args.weights)}"
    )
    print()
    if args.throughput:
        throughput(rows, paths[: args.throughput], weights, args.model)
        return
    gt = load_ground_truth(Path(args.dataset), files)
    print("| configuration | mAP | P@10 | N-S | images/s | notes |")
    print("|---|---|---|---|---|---|")
    features = Features(args, paths, weights)
    commands = []
    for row in rows:
        feats, ips = features.of(row)
        commands.append(f"- {row.name}: `{command(row, args.dataset, args.weights, args.model)}`")
        if row.whiten == "heldout":
            cells, base = _heldout_whitening(feats, files, args.dataset, row.whiten_dim, row.whiten_power)
            print(f"| {row.name} | {cells} | - | {ips:.1f} | {row.note}; {base} |", flush=True)
            continue
        if row.whiten == "leak":
            feats = learn_whitening(feats, row.whiten_dim, power=row.whiten_power).apply(feats)
        searcher = rerank(ExactSearcher(feats), row.reranking)
        rep = evaluate(searcher, files, gt)
        ns = ns_top4(searcher, files, gt)
        cells = f"{rep.map:.4f} | {rep.precision[10]:.4f} | {ns:.3f} | {ips:.1f}"
        print(f"| {row.name} | {cells} | {row.note} |", flush=True)
    print()
    print("\n".join(commands))


def _heldout_whitening(
    feats: np.ndarray, files: list[str], dataset: str, dim: int | None, power: float
) -> tuple[str, str]:
    """2-fold: learn on one half (even/odd files), evaluate on the other half alone; mean of both folds.

    Returns the table cells; the note carries the unwhitened score under the same half-set protocol
    (fewer relevant images per query, so its numbers differ from the full-set rows).
    """
    idx = np.arange(len(files))
    halves = [idx[idx % 2 == 0], idx[idx % 2 == 1]]
    whitened, plain = [], []
    for learn, test in (halves, halves[::-1]):
        sub = [files[i] for i in test]
        gt = load_ground_truth(Path(dataset), sub)
        w = learn_whitening(feats[learn], dim, power=power)
        whitened.append(evaluate(w.apply(feats[test]), sub, gt))
        plain.append(evaluate(feats[test], sub, gt))
    m = np.mean([r.map for r in whitened])
    p = np.mean([r.precision[10] for r in whitened])
    m0 = np.mean([r.map for r in plain])
    p0 = np.mean([r.precision[10] for r in plain])
    return f"{m:.4f} | {p:.4f}", f"same halves without whitening: mAP {m0:.4f}, P@10 {p0:.4f}"


if __name__ == "__main__":
    main()
