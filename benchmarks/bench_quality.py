"""Retrieval quality of feature configurations on Corel-1k (Wang), with images/s for each row.

Every configuration embeds the 1000 images with the same backbone and weights (Xception, real
ImageNet weights from ../shared/weights), then scores mAP and P@10 with the standard protocol
(every image a query, relevant = the other 99 of its class, the query excluded). The first row is
the original script's configuration. Prints a Markdown table (docs/quality.md holds a copy).

    python3 benchmarks/bench_quality.py                 # all rows (about 25 min on 2 cores)
    python3 benchmarks/bench_quality.py --only gem-long # one row
    python3 benchmarks/bench_quality.py --model mobilenetv2 --weights FILE
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from machine import SHARED, describe  # noqa: E402

from cbir.embedding.embedder import Embedder  # noqa: E402
from cbir.embedding.features import FeatureConfig, resolve_config  # noqa: E402
from cbir.embedding.weights import Weights  # noqa: E402
from cbir.embedding.whiten import learn_whitening  # noqa: E402
from cbir.evaluation.evaluate import evaluate  # noqa: E402
from cbir.evaluation.groundtruth import load_ground_truth  # noqa: E402
from cbir.ingest.files import find_images  # noqa: E402
from cbir.search.exact import ExactSearcher  # noqa: E402
from cbir.search.rerank import Reranking, rerank  # noqa: E402

CORE = "--pooling {pooling} --gem-p {gem_p:g} --geometry {geometry} --resample {resample} --size {size}"


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
    note: str = ""
    flags: list[str] = field(default_factory=list)


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


def command(row: Row, dataset: str, weights: str, model: str) -> str:
    c = row.config
    cmd = (
        f"cbir evaluate {dataset} --index /tmp/cbir-{row.name} --model {model} --weights {weights} "
        + CORE.format(pooling=c.pooling, gem_p=c.gem_p, geometry=c.geometry, resample=c.resample, size=c.size)
    )
    if len(c.scales) > 1:
        cmd += " --scales 1,1/sqrt2,sqrt2"
    if row.qe:
        cmd += f" --qe {row.qe}"
    if row.dba:
        cmd += f" --dba {row.dba}"
    if row.whiten == "leak":
        cmd += f" --whiten-on {dataset} --whiten-dim {row.whiten_dim} --whiten-power {row.whiten_power}"
    if row.whiten == "heldout":
        cmd = f"python3 benchmarks/bench_quality.py --model {model} --weights {weights} --only {row.name}"
    return cmd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default=str(SHARED / "datasets" / "corel1k"))
    ap.add_argument("--model", default="xception")
    ap.add_argument(
        "--weights", default=str(SHARED / "weights" / "xception_weights_tf_dim_ordering_tf_kernels_notop.h5")
    )
    ap.add_argument("--only", action="append", help="run only these rows")
    ap.add_argument("--base", default="gem-antialias", help="row that re-ranking and whitening rows build on")
    ap.add_argument("--limit", type=int, help="use the first N images (quick checks)")
    ap.add_argument(
        "--cache", help="folder to keep embeddings between runs (re-scoring rows is then instant)"
    )
    args = ap.parse_args()
    import logging

    logging.getLogger("cbir.groundtruth").setLevel(logging.ERROR)  # halves leave labelled files out
    print(describe())
    from cbir.embedding.backbones import get_backbone

    size = get_backbone(args.model).input_size
    weights = Weights.parse(args.weights)  # resolved once, for every row
    rows = [r for r in rows_for(size, args.base) if not args.only or r.name in args.only]
    files = find_images(args.dataset)[: args.limit]
    gt = load_ground_truth(Path(args.dataset), files)
    paths = [os.path.join(args.dataset, f) for f in files]
    print(
        f"dataset: {args.dataset} ({len(files)} images), model {args.model}, "
        f"weights {os.path.basename(args.weights)}"
    )
    print()
    print("| configuration | mAP | P@10 | images/s | notes |")
    print("|---|---|---|---|---|")
    cache: dict[str, tuple[np.ndarray, float]] = {}
    commands = []
    for row in rows:
        key = repr(row.config)
        disk = (
            Path(args.cache)
            / (hashlib.sha1(f"{key}{args.model}{args.weights}{len(files)}".encode()).hexdigest()[:16])
        )
        if key not in cache and args.cache and disk.with_suffix(".npy").exists():
            cache[key] = (np.load(disk.with_suffix(".npy")), float(disk.with_suffix(".ips").read_text()))
        if key not in cache:
            emb = Embedder(resolve_config(row.config.replace(model=args.model), weights), weights)
            emb.embed_all(paths[:8], progress=False)  # warm-up: graph tracing is not throughput
            t = time.perf_counter()
            feats, order = emb.embed_all(paths, progress=False)
            cache[key] = (feats, len(order) / (time.perf_counter() - t))
            assert len(order) == len(paths), "benchmark images must all decode"
            if args.cache:
                Path(args.cache).mkdir(parents=True, exist_ok=True)
                np.save(disk.with_suffix(".npy"), cache[key][0])
                disk.with_suffix(".ips").write_text(str(cache[key][1]))
        feats, ips = cache[key]
        if row.whiten == "heldout":
            cells, base = _heldout_whitening(feats, files, args.dataset, row.whiten_dim, row.whiten_power)
            print(f"| {row.name} | {cells} | {ips:.1f} | {row.note}; {base} |", flush=True)
            commands.append(f"- {row.name}: `{command(row, args.dataset, args.weights, args.model)}`")
            continue
        if row.whiten == "leak":
            feats = learn_whitening(feats, row.whiten_dim, power=row.whiten_power).apply(feats)
        searcher = rerank(ExactSearcher(feats), Reranking(qe=row.qe, dba=row.dba))
        rep = evaluate(searcher, files, gt)
        print(
            f"| {row.name} | {rep.map:.4f} | {rep.precision[10]:.4f} | {ips:.1f} | {row.note} |", flush=True
        )
        commands.append(f"- {row.name}: `{command(row, args.dataset, args.weights, args.model)}`")
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
