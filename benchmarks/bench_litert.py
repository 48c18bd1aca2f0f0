"""LiteRT against Keras on real weights: the features (cosine on real images) and retrieval quality.

For each backbone with real weights in ``../shared/weights`` (Xception, MobileNet 1.0 and 0.25,
MobileNetV2 0.35): convert it as ``--runtime litert`` does (timed), embed the sample ``dataset/``
with both runtimes in the same process, and print the lowest and median cosine similarity
(target >= 0.9999). With ``--corel``, also ``cbir evaluate`` on Corel-1k with ``--runtime keras``
and ``--runtime litert`` (same run, fresh indexes): mAP to 3 decimals must be equal.

    python3 benchmarks/bench_litert.py [--only xception] [--corel]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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

from cbir.encoders.convert import lowest_cosine  # noqa: E402
from cbir.encoders.embedder import Embedder  # noqa: E402
from cbir.encoders.features import FeatureConfig  # noqa: E402
from cbir.encoders.model_cache import ModelCache  # noqa: E402
from cbir.encoders.registry import resolve_config  # noqa: E402
from cbir.encoders.weights import Weights  # noqa: E402

W = SHARED / "weights"
MODELS = {
    "xception": ("xception", W / "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "mobilenet": ("mobilenet", W / "mobilenet_1_0_224_tf_no_top.h5"),
    "mobilenet-0.25": ("mobilenet", W / "mobilenet_2_5_224_tf_no_top.h5"),
    "mobilenetv2-0.35": (
        "mobilenetv2",
        W / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5",
    ),
}
COREL = SHARED / "datasets" / "corel1k" / "images"


def features(name: str, model: str, weights_file: Path, cache: ModelCache) -> str:
    weights = Weights.from_file(weights_file)
    config = resolve_config(FeatureConfig(model=model), weights)
    images = sorted(str(p) for p in (ROOT / "dataset").glob("*.jpg"))
    keras = Embedder(config, weights, runtime="keras", model_cache=cache)
    t0 = time.perf_counter()
    lite = Embedder(config, weights, runtime="litert", model_cache=cache)
    convert_s = time.perf_counter() - t0
    assert lite.network.name == "litert", f"{name} did not convert"
    a, _ = keras.embed_all(images, progress=False)
    b, _ = lite.embed_all(images, progress=False)
    per_image = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return (
        f"| {name} | {len(images)} | {lowest_cosine(a, b):.6f} | {np.median(per_image):.6f} | "
        f"{convert_s:.0f}s |"
    )


def evaluate(model: str, weights_file: Path, runtime: str, tmp: Path) -> tuple[float, float]:
    index = tmp / f"index-{model}-{runtime}"
    cmd = [sys.executable, "-m", "cbir", "evaluate", str(COREL), "--index", str(index), "--json"]
    cmd += ["--gt", str(COREL.parent / "labels.csv")]
    cmd += ["--model", model, "--weights", str(weights_file), "--runtime", runtime]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out)["map"], time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=list(MODELS), action="append")
    ap.add_argument("--corel", action="store_true", help="also evaluate on Corel-1k with both runtimes")
    args = ap.parse_args()
    print(describe())
    chosen = {k: v for k, v in MODELS.items() if (not args.only or k in args.only) and v[1].exists()}
    with tempfile.TemporaryDirectory(prefix="cbir-bench-litert-") as tmp:
        os.environ["CBIR_MODEL_CACHE"] = str(Path(tmp) / "models")
        cache = ModelCache(Path(tmp) / "models")
        print("\nLiteRT vs Keras features on dataset/ (same process; target: lowest cosine >= 0.9999)")
        print("| model | images | lowest cosine | median cosine | convert |\n|---|---|---|---|---|")
        for name, (model, weights_file) in chosen.items():
            print(features(name, model, weights_file, cache), flush=True)
        if args.corel:
            print("\ncbir evaluate on Corel-1k, fresh index per runtime (target: equal mAP to 3 decimals)")
            print("| model | keras mAP | litert mAP | equal to 3 decimals | keras s | litert s |")
            print("|---|---|---|---|---|---|")
            for name, (model, weights_file) in chosen.items():
                (mk, sk), (ml, sl) = (
                    evaluate(model, weights_file, r, Path(tmp)) for r in ("keras", "litert")
                )
                same = f"{mk:.3f}" == f"{ml:.3f}"
                print(f"| {name} | {mk:.4f} | {ml:.4f} | {same} | {sk:.0f} | {sl:.0f} |", flush=True)


if __name__ == "__main__":
    main()
