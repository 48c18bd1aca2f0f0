"""Generate an instance-level retrieval benchmark ("same scene, same object") from Corel-1k.

For ``--groups`` source images chosen with the seed, 2-4 *views* each are made that imitate another
viewpoint rather than a re-encoded copy: a crop of 40-70% of the area at a random position, seen
through a strong perspective warp (each corner of the crop moved by up to 18% of its size), resized
to a new scale (longer side 200-400 pixels), with lighting and colour shifts (gamma, gain, per-channel
cast, saturation, contrast) and, for 60% of the views, a partial occlusion (a textured block of
8-20% of the area); saved as JPEG of quality 75-95. The first view of each group is the query,
the other views are its relevant images; every Corel image not used as a source is copied in as a
distractor (so the database holds many images of the query's *category* that are not its *instance*).

The output folder holds ``views/``, ``distractors/``, ``gt.json`` (read by ``cbir evaluate``) and
``generator.json`` (the parameters). Deterministic: each view is drawn from its own generator seeded
by (seed, group, view), so the same seed gives byte-identical files. About 10 s for 200 groups.

    python3 benchmarks/make_instance.py --out /tmp/instance
    cbir evaluate /tmp/instance --index /tmp/instance-index --model xception --weights W
    python3 benchmarks/bench_quality.py --dataset /tmp/instance ...   # mAP and N-S-style top-4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cbir.ingest.files import find_images  # noqa: E402

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "corel1k"
VIEWS = (2, 4)  # views per group, inclusive
AREA = (0.40, 0.70)  # crop area as a fraction of the source
WARP = 0.18  # corner displacement as a fraction of the crop's sides
LONG_SIDE = (200, 400)  # the view's longer side in pixels (scale change)
OCCLUDE_P = 0.6
OCCLUDE_AREA = (0.08, 0.20)


def perspective_coefficients(out_pts: np.ndarray, in_pts: np.ndarray) -> list[float]:
    """PIL's PERSPECTIVE data: the 8 coefficients mapping output corners to input points."""
    a = []
    b = []
    for (x, y), (u, v) in zip(out_pts, in_pts):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b += [u, v]
    return [float(c) for c in np.linalg.solve(np.array(a, float), np.array(b, float))]


def _crop_quad(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, float]:
    """The warped crop: 4 corners in the source (TL, TR, BR, BL) and the crop's aspect ratio."""
    area = rng.uniform(*AREA) * w * h
    aspect = (w / h) * float(np.exp(rng.uniform(-0.25, 0.25)))
    cw = min(w, np.sqrt(area * aspect))
    ch = min(h, area / cw)
    x0 = rng.uniform(0, w - cw)
    y0 = rng.uniform(0, h - ch)
    quad = np.array([[x0, y0], [x0 + cw, y0], [x0 + cw, y0 + ch], [x0, y0 + ch]])
    quad += rng.uniform(-WARP, WARP, (4, 2)) * [cw, ch]
    quad[:, 0] = np.clip(quad[:, 0], 0, w - 1)
    quad[:, 1] = np.clip(quad[:, 1], 0, h - 1)
    return quad, cw / ch


def _photometric(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Lighting and colour: gamma, gain, per-channel cast, saturation, contrast (float 0..1 in/out)."""
    x = x ** rng.uniform(0.7, 1.4)
    x = x * rng.uniform(0.65, 1.35) * rng.uniform(0.85, 1.15, 3)
    grey = x.mean(axis=2, keepdims=True)
    x = grey + (x - grey) * rng.uniform(0.6, 1.4)
    mean = x.mean()
    x = mean + (x - mean) * rng.uniform(0.7, 1.3)
    return np.clip(x, 0, 1)


def _occlude(rng: np.random.Generator, x: np.ndarray) -> None:
    """Cover 8-20% of the view with a textured block of a random colour (in place)."""
    h, w, _ = x.shape
    area = rng.uniform(*OCCLUDE_AREA) * w * h
    aspect = float(np.exp(rng.uniform(-0.7, 0.7)))
    bw = int(min(w, np.sqrt(area * aspect)))
    bh = int(min(h, area / max(bw, 1)))
    bx = int(rng.integers(0, w - bw + 1))
    by = int(rng.integers(0, h - bh + 1))
    colour = rng.uniform(0, 1, 3)
    ramp = np.linspace(0.7, 1.1, max(bw, 1))[None, :, None]
    block = colour * ramp + rng.normal(0, 0.05, (bh, bw, 3))
    x[by : by + bh, bx : bx + bw] = np.clip(block, 0, 1)


def make_view(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One view of ``image`` (RGB) drawn with ``rng``: warp + crop, scale, photometry, occlusion."""
    w, h = image.size
    quad, aspect = _crop_quad(rng, w, h)
    long_side = rng.uniform(*LONG_SIDE)
    ow, oh = (long_side, long_side / aspect) if aspect >= 1 else (long_side * aspect, long_side)
    ow, oh = max(32, round(ow)), max(32, round(oh))
    out_pts = np.array([[0, 0], [ow, 0], [ow, oh], [0, oh]], float)
    coeffs = perspective_coefficients(out_pts, quad)
    warped = image.transform((ow, oh), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BICUBIC)
    x = _photometric(rng, np.asarray(warped, np.float64) / 255.0)
    if rng.uniform() < OCCLUDE_P:
        _occlude(rng, x)
    return Image.fromarray(np.round(x * 255).astype(np.uint8))


def generate(source: Path, out: Path, groups: int, seed: int) -> dict[str, list[str]]:
    """Write the benchmark into ``out`` (must not exist or be empty); returns the ground truth."""
    images = source / "images" if (source / "images").is_dir() else source
    files = find_images(images)
    if groups < 1 or groups > len(files):
        raise SystemExit(f"--groups must be between 1 and {len(files)}")
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty; give a new folder")
    chosen = sorted(int(i) for i in np.random.default_rng(seed).choice(len(files), groups, replace=False))
    (out / "views").mkdir(parents=True, exist_ok=True)
    (out / "distractors").mkdir(exist_ok=True)
    gt: dict[str, list[str]] = {}
    for g, i in enumerate(chosen):
        with Image.open(images / files[i]) as im:
            rgb = im.convert("RGB")
        n = int(np.random.default_rng([seed, g]).integers(VIEWS[0], VIEWS[1] + 1))
        names = []
        for v in range(n):
            rng = np.random.default_rng([seed, g, v])
            name = f"views/g{g:04d}_v{v}.jpg"
            make_view(rgb, rng).save(out / name, quality=int(rng.integers(75, 96)))
            names.append(name)
        gt[names[0]] = names[1:]
    used = set(chosen)
    for i, f in enumerate(files):
        if i not in used:
            dest = out / "distractors" / f.replace("/", "_")
            shutil.copyfile(images / f, dest)
    (out / "gt.json").write_text(json.dumps(gt, indent=1) + "\n")
    params = {"source": str(source), "groups": groups, "seed": seed, "views": VIEWS, "area": AREA}
    params |= {"warp": WARP, "long_side": LONG_SIDE, "occlude_p": OCCLUDE_P, "occlude_area": OCCLUDE_AREA}
    params |= {"distractors": len(files) - groups, "views_total": sum(1 + len(r) for r in gt.values())}
    (out / "generator.json").write_text(json.dumps(params, indent=1) + "\n")
    return gt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default=str(DEFAULT_SOURCE), help="Corel-1k folder (or any image folder)")
    ap.add_argument("--out", required=True, help="new folder for the benchmark (e.g. under /tmp)")
    ap.add_argument("--groups", type=int, default=200, help="source images, one group of views each")
    ap.add_argument("--seed", type=int, default=14)
    args = ap.parse_args()
    gt = generate(Path(args.source), Path(args.out), args.groups, args.seed)
    n_rel = [len(r) for r in gt.values()]
    print(
        f"{args.out}: {len(gt)} queries, {sum(n_rel) + len(gt)} views "
        f"({np.mean(n_rel):.2f} relevant per query), distractors in {args.out}/distractors"
    )


if __name__ == "__main__":
    main()
