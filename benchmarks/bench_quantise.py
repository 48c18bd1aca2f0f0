"""LiteRT int8 against float32: throughput and retrieval quality (Corel-1k mAP), same run.

Converts the network three ways from one SavedModel: float32 (what ``--runtime litert`` uses),
dynamic-range (int8 weights, float activations) and full-integer int8 (weights and activations,
calibrated on 64 Corel-1k images; float input and output). For each: images/s on one batch of
real images (every core), lowest cosine to float32, and with real weights the mAP of an exact
search over Corel-1k. The issue-10 rule: offer int8 only if it is at least 1.3x faster and loses
at most 0.005 mAP.

    python3 benchmarks/bench_quantise.py [--model xception --weights FILE] [--no-map]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
from machine import SHARED, describe  # noqa: E402

from cbir.encoders.convert import export_saved_model, lowest_cosine  # noqa: E402
from cbir.encoders.embedder import Embedder  # noqa: E402
from cbir.encoders.features import FeatureConfig  # noqa: E402
from cbir.encoders.litert_net import LiteRTNetwork  # noqa: E402
from cbir.encoders.preprocess import preprocess  # noqa: E402
from cbir.encoders.registry import resolve_config  # noqa: E402
from cbir.encoders.weights import Weights  # noqa: E402
from cbir.evaluation.groundtruth import load_ground_truth  # noqa: E402
from cbir.ingest.decode import load_views  # noqa: E402
from cbir.ingest.files import find_images  # noqa: E402
from cbir.service.evaluate import evaluate  # noqa: E402

XCEPTION = SHARED / "weights" / "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"
COREL = SHARED / "datasets" / "corel1k" / "images"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="xception")
    ap.add_argument("--weights", default=str(XCEPTION))
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-map", action="store_true", help="skip the Corel-1k mAP (throughput only)")
    args = ap.parse_args()
    print(describe())
    import tensorflow as tf

    weights = Weights.parse(args.weights)
    config = resolve_config(FeatureConfig(model=args.model), weights)
    emb = Embedder(config, weights, runtime="keras")
    geo, mode = emb.geometry, emb.backbone.preprocess
    files = find_images(COREL)
    paths = [str(COREL / f) for f in files]
    calib = [preprocess(load_views(p, geo)[0][None], mode) for p in paths[::16][:64]]
    batch = preprocess(np.stack([load_views(p, geo)[0] for p in paths[5::50][: args.batch_size]]), mode)

    def representative():
        for x in calib:
            yield [x]

    variants = {}
    with tempfile.TemporaryDirectory() as tmp:
        export_saved_model(emb.network, tmp)
        for name in ("float32", "dynamic-range int8", "full-integer int8"):
            conv = tf.lite.TFLiteConverter.from_saved_model(tmp)
            if name != "float32":
                conv.optimizations = [tf.lite.Optimize.DEFAULT]
            if name == "full-integer int8":
                conv.representative_dataset = representative
            t0 = time.perf_counter()
            data = conv.convert()
            variants[name] = (data, time.perf_counter() - t0)
    gt = None if args.no_map else load_ground_truth(COREL, files, COREL.parent / "labels.csv")
    print(f"\n{args.model} ({weights.name}), batch {args.batch_size} at {geo.size}px, every core")
    print("| variant | MiB | convert s | images/s | vs float32 | lowest cosine to float32 | Corel-1k mAP |")
    print("|---|---|---|---|---|---|---|")
    base_rate, base_out, base_map = 0.0, None, None
    for name, (data, convert_s) in variants.items():
        net = LiteRTNetwork(bytes(data))
        out = net.run(batch)
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            net.run(batch)
        rate = len(batch) * args.repeats / (time.perf_counter() - t0)
        if base_out is None:
            base_rate, base_out = rate, out
        cell = "-"
        if gt is not None:
            emb.network = net
            feats, order = emb.embed_all(paths, progress=False)
            assert len(order) == len(paths)
            m = evaluate(feats, files, gt).map
            base_map = m if base_map is None else base_map
            cell = f"{m:.4f} ({m - base_map:+.4f})"
        print(
            f"| {name} | {len(data) / 2**20:.0f} | {convert_s:.0f} | {rate:.1f} | {rate / base_rate:.2f}x | "
            f"{lowest_cosine(out, base_out):.4f} | {cell} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
