"""Near-duplicate detection: pair precision, recall and F1 of ``cbir duplicates`` against
perceptual hashing (imagehash pHash, dHash, wHash) on the same generated set, in the same run.

The set (seeded, in a temp folder): ORIGINALS Corel-1k images (the same number from each class) each
get 1-4 copies, one transformation each: JPEG quality 30-60, resized to 25-75%, cropped 5-15%,
brightness and contrast +-20%, rotated +-5 degrees, greyscale, a text watermark, or the pixels
stored rotated with an EXIF orientation that shows them upright. The other Corel images of the same
classes are mixed in as hard negatives (same subject, another photo). A pair is a true duplicate
when both images come from the same original.

For each backbone the set is indexed with ``cbir index`` (real ImageNet weights from
../shared/weights), the similarity graph is built once at the lowest threshold, and the grouping
rules are scored at every threshold (the pairs of each group against the true pairs); the hashes
are scored on their Hamming distances, as pairs and grouped into connected components. Prints the
machine, the tables, and the threshold with the best F1 over the backbones (the default).

    pip install -e '.[bench]'                       # imagehash, for the hash rows
    python3 benchmarks/bench_duplicates.py            # Xception and MobileNet-0.25 (about 6 min)
    python3 benchmarks/bench_duplicates.py --scale 100000 1000000   # synthetic vectors: time, memory
    python3 benchmarks/bench_duplicates.py --effort 200000 100000    # the graph's HNSW search effort
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from machine import SHARED, describe  # noqa: E402
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps  # noqa: E402

from cbir.duplicates.graph import Edges, similar_pairs  # noqa: E402
from cbir.duplicates.grouping import GROUPINGS, Group, Ranker, Scorer, components  # noqa: E402
from cbir.duplicates.keep import KEEP_RULES, RowFacts  # noqa: E402
from cbir.duplicates.verify import MIN_INLIERS, SAME_PICTURE, count_inliers, keep_verified  # noqa: E402
from cbir.service.duplicates import VERIFICATIONS  # noqa: E402
from cbir.stores.folder.snapshot import Index, open_index  # noqa: E402

COREL = SHARED / "datasets" / "corel1k" / "images"
WEIGHTS = SHARED / "weights"
BACKBONES = {
    "xception": ("xception", WEIGHTS / "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "mobilenet-0.25": ("mobilenet", WEIGHTS / "mobilenet_2_5_224_tf_no_top.h5"),
}
THRESHOLDS = np.round(np.arange(0.60, 0.995, 0.01), 2)
ORB = VERIFICATIONS["orb"]
FLOORS = (0.45, 0.50, 0.55, 0.60, 0.65, 0.70)  # candidate thresholds tried with the pixel check
INLIERS = (10, 15, 20, 25, 30, 40, 50)  # least agreeing keypoint matches tried
HASH_DEFAULT = 10  # imagededup's default max_distance_threshold for its 64-bit hashes


# --- the generated set ---------------------------------------------------------------------------


def _jpeg(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, int]:
    return img, int(rng.integers(30, 61))


def _resize(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, int]:
    f = rng.uniform(0.25, 0.75)
    return img.resize((max(8, round(img.width * f)), max(8, round(img.height * f))), Image.BICUBIC), 90


def _crop(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, int]:
    cut = rng.uniform(0.05, 0.15)  # of each side's length, split at random between both ends
    w, h = img.size
    dx, dy = round(w * cut), round(h * cut)
    x0, y0 = int(rng.integers(0, dx + 1)), int(rng.integers(0, dy + 1))
    return img.crop((x0, y0, x0 + w - dx, y0 + h - dy)), 90


def _light(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, int]:
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.8, 1.2))
    return ImageEnhance.Contrast(img).enhance(rng.uniform(0.8, 1.2)), 90


def _rotate(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, int]:
    angle = rng.uniform(2, 5) * rng.choice([-1, 1])
    return img.rotate(angle, resample=Image.BICUBIC), 90


def _grey(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, int]:
    return ImageOps.grayscale(img), 90


def _watermark(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, int]:
    out = img.convert("RGBA")
    layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
    font = ImageFont.load_default(size=max(10, img.height // 10))
    text = f"(c) {int(rng.integers(1990, 2026))} photo"
    x = int(rng.integers(0, max(1, img.width // 3)))
    y = int(rng.integers(img.height // 2, max(img.height // 2 + 1, img.height - img.height // 8)))
    ImageDraw.Draw(layer).text((x, y), text, font=font, fill=(255, 255, 255, 170))
    return Image.alpha_composite(out, layer).convert("RGB"), 90


TRANSFORMS: dict[str, Callable[[Image.Image, np.random.Generator], tuple[Image.Image, int]]] = {
    "jpeg": _jpeg,
    "resize": _resize,
    "crop": _crop,
    "light": _light,
    "rotate": _rotate,
    "grey": _grey,
    "watermark": _watermark,
    "exif": lambda img, rng: (img, 90),  # saved rotated, with orientation 6, below
}


def make_set(folder: Path, originals: int, seed: int) -> dict[str, int]:
    """Write the set into ``folder``; returns each file's family (its original's number)."""
    rng = np.random.default_rng(seed)
    family: dict[str, int] = {}
    per_class = originals // 10
    for c in range(10):
        ids = rng.permutation(np.arange(100 * c, 100 * c + 100))
        for i, n in enumerate(ids):
            name = f"{n}.jpg"
            src = COREL / name
            (folder / name).write_bytes(src.read_bytes())
            family[name] = int(n)
            if i >= per_class:
                continue  # a hard negative: same class, no copies
            img = Image.open(src).convert("RGB")
            for t in rng.choice(list(TRANSFORMS), size=int(rng.integers(1, 5)), replace=False):
                copy, quality = TRANSFORMS[t](img, rng)
                out = f"{n}_{t}.jpg"
                if t == "exif":
                    exif = Image.Exif()
                    exif[0x0112] = 6  # "rotate 90 clockwise to show": the pixels are stored turned left
                    copy.transpose(Image.ROTATE_90).save(folder / out, quality=quality, exif=exif.tobytes())
                else:
                    copy.save(folder / out, quality=quality)
                family[out] = int(n)
    return family


# --- scoring -------------------------------------------------------------------------------------


@dataclass
class Score:
    precision: float
    recall: float
    f1: float

    def cells(self) -> str:
        return f"{self.precision:6.3f} {self.recall:6.3f} {self.f1:6.3f}"


def true_pairs(families: np.ndarray) -> int:
    _, counts = np.unique(families, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def score_pairs(a: np.ndarray, b: np.ndarray, families: np.ndarray, total_true: int) -> Score:
    tp = int((families[a] == families[b]).sum())
    return _score(tp, len(a), total_true)


def score_groups(groups: Sequence[Sequence[int]], families: np.ndarray, total_true: int) -> Score:
    tp = predicted = 0
    for rows in groups:
        n = len(rows)
        predicted += n * (n - 1) // 2
        _, counts = np.unique(families[list(rows)], return_counts=True)
        tp += int((counts * (counts - 1) // 2).sum())
    return _score(tp, predicted, total_true)


def _score(tp: int, predicted: int, total_true: int) -> Score:
    p = tp / predicted if predicted else 1.0
    r = tp / total_true if total_true else 1.0
    return Score(p, r, 2 * p * r / (p + r) if p + r else 0.0)


def chained(groups: Sequence[Group], feats: np.ndarray, threshold: float) -> tuple[float, float]:
    """(share of groups, share of grouped pairs) where two members score below the threshold."""
    bad_groups = bad_pairs = pairs = 0
    for g in groups:
        v = np.asarray(feats[g.rows], dtype=np.float32)
        sims = v @ v.T
        iu = np.triu_indices(len(g.rows), 1)
        below = int((sims[iu] < threshold).sum())
        bad_groups += below > 0
        bad_pairs += below
        pairs += len(iu[0])
    return bad_groups / max(1, len(groups)), bad_pairs / max(1, pairs)


# --- the runs ------------------------------------------------------------------------------------


def index_set(folder: Path, model: str, weights: Path, index_dir: Path) -> tuple[float, int]:
    """``cbir index`` the set; returns (seconds, images)."""
    cmd = [sys.executable, "-m", "cbir", "index", str(folder), "--model", model, "--weights", str(weights)]
    t = time.perf_counter()
    done = subprocess.run(
        [*cmd, "--index", str(index_dir), "--json"], capture_output=True, text=True, check=False
    )
    if done.returncode:
        sys.exit(f"indexing failed: {done.stderr.strip()}")
    return time.perf_counter() - t, int(json.loads(done.stdout)["total"])


def bench_verified(index: Index, families: np.ndarray, total: int, rank: Ranker, score: Scorer) -> float:
    """The pixel check (``--verify orb``, the default): candidates at each floor, verified with each
    least number of agreeing matches; returns the star F1 at the defaults."""
    t = time.perf_counter()
    rows = np.arange(len(index))
    candidates = similar_pairs(index.searcher(exact=True), rows, FLOORS[0], grow_above=ORB.grow_above)
    graph_s = time.perf_counter() - t
    t = time.perf_counter()
    inliers = count_inliers(candidates, index.file, progress=False)
    check_s = time.perf_counter() - t
    inliers[candidates.score >= SAME_PICTURE] = max(INLIERS)  # kept without a check, as in the tool
    print(
        f"\npixel check (--verify orb): {len(candidates)} candidate pairs at >= {FLOORS[0]} "
        f"(16 nearest per image) in {graph_s:.1f} s, checked in {check_s:.1f} s "
        f"({check_s / len(index) * 1000:.1f} s per 1000 images, "
        f"{check_s / len(candidates) * 1000:.2f} ms a pair)"
    )
    print(f"{'floor':>5} {'ceiling':>7}  " + "  ".join(f"{'F1 m>=' + str(m):>9}" for m in INLIERS))
    default = 0.0
    for floor in FLOORS:
        keep = candidates.score >= floor
        cand = candidates.above(floor)
        ceiling = score_pairs(cand.a, cand.b, families, total).recall
        f1 = []
        for m in INLIERS:
            star = GROUPINGS["star"](keep_verified(cand, inliers[keep], m), rank, score)
            f1.append(score_groups([g.rows for g in star], families, total).f1)
            if floor == ORB.threshold and m == MIN_INLIERS:
                default = f1[-1]
        print(f"{floor:5.2f} {ceiling:7.3f}  " + "  ".join(f"{v:9.3f}" for v in f1))
    keep = candidates.score >= ORB.threshold
    verified = keep_verified(candidates.above(ORB.threshold), inliers[keep])
    raw = score_pairs(verified.a, verified.b, families, total)
    star = score_groups([g.rows for g in GROUPINGS["star"](verified, rank, score)], families, total)
    conn = score_groups(components(verified), families, total)
    print(
        f"defaults (floor {ORB.threshold}, >= {MIN_INLIERS} matches): pairs P R F1 {raw.cells()}, "
        f"star {star.cells()}, connected {conn.cells()}"
    )
    return default


def bench_backbone(
    name: str, folder: Path, family: dict[str, int], tmp: Path
) -> tuple[dict[float, float], float]:
    model, weights = BACKBONES[name]
    seconds, n = index_set(folder, model, weights, tmp / f"idx-{name}")
    index = open_index(folder, tmp / f"idx-{name}")
    families = np.array([family[p] for p in index.paths])
    total = true_pairs(families)
    t = time.perf_counter()
    edges = similar_pairs(index.searcher(exact=True), np.arange(len(index)), float(THRESHOLDS[0]))
    graph_s = time.perf_counter() - t
    facts = RowFacts(index.root, index.entries)
    rank = lambda rows: KEEP_RULES["largest"](facts, rows)  # noqa: E731
    feats = np.asarray(index.feats, dtype=np.float32)
    score = lambda rep, rows: feats[list(rows)] @ feats[rep]  # noqa: E731
    print(
        f"\n## {name}: {n} images indexed in {seconds:.0f} s; graph at >= {THRESHOLDS[0]} in {graph_s:.2f} s"
    )
    print(f"{total} true pairs; pair precision / recall / F1 by threshold")
    print(f"{'T':>5}  {'pairs (P R F1)':>20}  {'star (P R F1)':>20}  {'connected (P R F1)':>20}  chained")
    print("similarity of each copy to its original, by transformation (min / 10th percentile / median):")
    row = {p: i for i, p in enumerate(index.paths)}
    by_kind: dict[str, list[float]] = {}
    for path, i in row.items():
        if "_" in path:
            original = row[path.split("_")[0] + ".jpg"]
            by_kind.setdefault(path.split("_")[1][:-4], []).append(float(feats[i] @ feats[original]))
    print(
        "  "
        + ", ".join(
            f"{k} {min(v):.2f}/{np.percentile(v, 10):.2f}/{np.median(v):.2f}"
            for k, v in sorted(by_kind.items())
        )
    )
    f1_star: dict[float, float] = {}
    for th in THRESHOLDS:
        e: Edges = edges.above(float(th))
        raw = score_pairs(e.a, e.b, families, total)
        by = {rule: GROUPINGS[rule](e, rank, score) for rule in GROUPINGS}
        star = score_groups([g.rows for g in by["star"]], families, total)
        conn = score_groups([g.rows for g in by["connected"]], families, total)
        f1_star[float(th)] = star.f1
        chain_g, chain_p = chained(by["connected"], feats, float(th))
        if round(th * 100) % 2 == 0 or th >= 0.8:
            print(
                f"{th:5.2f}  {raw.cells():>20}  {star.cells():>20}  {conn.cells():>20}  "
                f"{chain_g:5.1%} of groups, {chain_p:5.1%} of pairs"
            )
    return f1_star, bench_verified(index, families, total, rank, score)


def bench_hashes(folder: Path, family: dict[str, int]) -> float:
    """The hash rows; returns the best F1 of any hash at any distance (pairs or grouped)."""
    try:
        import imagehash
    except ImportError:
        print("\n(imagehash is not installed: pip install -e '.[bench]' for the hash rows)")
        return float("nan")
    best = 0.0
    names = sorted(family)
    families = np.array([family[p] for p in names])
    total = true_pairs(families)
    print("\n## perceptual hashes (imagehash, 64 bits; loaded as imagededup does: no EXIF rotation)")
    print(f"{'method':<7} {'t':>3}  {'pairs (P R F1)':>20}  {'connected (P R F1)':>20}  s/1000 img")
    for method in ("phash", "dhash", "whash"):
        fn = getattr(imagehash, method)
        t = time.perf_counter()
        bits = np.array(
            [fn(Image.open(folder / p).convert("RGB")).hash.flatten() for p in names], dtype=np.uint8
        )
        per_k = (time.perf_counter() - t) / len(names) * 1000
        dist = (bits[:, None, :] != bits[None, :, :]).sum(axis=2)
        iu = np.triu_indices(len(names), 1)
        rows = []
        for th in range(0, 33):
            close = dist[iu] <= th
            a, b = iu[0][close], iu[1][close]
            raw = score_pairs(a, b, families, total)
            e = Edges(a.astype(np.int64), b.astype(np.int64), np.ones(len(a), dtype=np.float32))
            rows.append((th, raw, score_groups(components(e), families, total)))
        default = rows[HASH_DEFAULT]
        best_raw = max(rows, key=lambda r: r[1].f1)
        best_grouped = max(rows, key=lambda r: r[2].f1)
        best = max(best, best_raw[1].f1, best_grouped[2].f1)
        for (th, raw, conn), note in [
            (default, "imagededup default"),
            (best_raw, "best t for pairs"),
            (best_grouped, "best t grouped"),
        ]:
            print(f"{method:<7} {th:>3}  {raw.cells():>20}  {conn.cells():>20}  {per_k:8.1f}  ({note})")
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--originals", type=int, default=300, help="images given copies (default 300)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    synthetic = ap.add_mutually_exclusive_group()
    synthetic.add_argument("--scale", type=int, nargs="+", help="synthetic collection sizes instead")
    synthetic.add_argument("--effort", type=int, nargs="+", help="synthetic sizes: the graph's HNSW effort")
    ap.add_argument("--tmp", help="folder for the generated set and indexes (default: the system temp)")
    ap.add_argument(
        "--workdir", help="keep the set and its indexes in this folder, reused by the next run (same seed)"
    )
    args = ap.parse_args()
    print(describe())
    if args.scale or args.effort:  # bench_duplicates_scale.py
        from bench_duplicates_scale import run_effort, run_scale

        (run_scale if args.scale else run_effort)(args.scale or args.effort, args.tmp)
        return
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp_name:
        tmp = Path(args.workdir or tmp_name)
        folder = tmp / "set"
        folder.mkdir(parents=True, exist_ok=True)
        family = make_set(folder, args.originals, args.seed)
        copies = len(family) - 1000
        print(f"set: {args.originals} originals with {copies} copies, {1000 - args.originals} hard negatives")
        runs = {name: bench_backbone(name, folder, family, tmp) for name in args.backbones}
        best_hash = bench_hashes(folder, family)
        results = {name: r[0] for name, r in runs.items()}
        worst = {th: min(r[th] for r in results.values()) for th in map(float, THRESHOLDS)}
        th = max(worst, key=lambda t: (worst[t], -abs(t - 0.9)))
        print(
            f"\n--verify none: best threshold for the worst backbone (star grouping): {th:.2f}, F1 "
            + ", ".join(f"{name} {r[th]:.3f}" for name, r in results.items())
        )
        verified = {name: r[1] for name, r in runs.items()}
        met = all(f >= 0.95 and f > best_hash for f in verified.values())
        print(
            f"--verify orb (the default: floor {ORB.threshold}, >= {MIN_INLIERS} matches), star F1 "
            + ", ".join(f"{name} {f:.3f}" for name, f in verified.items())
            + f"; best hash F1 {best_hash:.3f}; target F1 >= 0.95 and above the hashes: "
            + ("met" if met else "MISSED")
        )


if __name__ == "__main__":
    main()
