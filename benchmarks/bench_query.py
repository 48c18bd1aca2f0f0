"""Query latency: where the time of one query goes, and the cost per query in a shared process.

Indexes the sample ``dataset/`` into a temporary index (timed), then:
  * a cold query in a new process, broken down into: import TensorFlow/Keras, build the model and
    load its weights, open the index (memory-mapped), embed the query, search, plot;
  * the same through the command line, with 1 and with 20 query images in one process: the
    difference gives the cost of each additional query (no second model load);
  * "more like this": the same image queried by file and with ``--like`` (its stored vector, no
    model), cold processes, and whether both give the same results.

    python3 benchmarks/bench_query.py [--model xception --weights FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import SHARED, describe  # noqa: E402

XCEPTION = SHARED / "weights" / "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"

COLD = r"""
import json, os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
t = {}
t0 = time.perf_counter()
import numpy as np
import tensorflow, keras
from cbir.index.snapshot import open_index
from cbir.embedding.embedder import Embedder
from cbir.embedding.weights import Weights
from cbir.search.query import embed_queries, search_index
from cbir.output.plot import plot_results
t["import"] = time.perf_counter() - t0
dataset, index_dir, query, weights, out = sys.argv[1:6]
t0 = time.perf_counter(); index = open_index(dataset, index_dir); t["index load"] = time.perf_counter() - t0
t0 = time.perf_counter(); emb = Embedder(index.config, Weights.parse(weights))
t["model+weights"] = time.perf_counter() - t0
t0 = time.perf_counter(); q = embed_queries(emb, [query]); t["embed"] = time.perf_counter() - t0
t0 = time.perf_counter(); res = search_index(index, q, [query], 9); t["search"] = time.perf_counter() - t0
t0 = time.perf_counter(); plot_results(res, out); t["plot"] = time.perf_counter() - t0
print(json.dumps(t))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="xception" if XCEPTION.exists() else "resnet50")
    ap.add_argument("--weights", default=str(XCEPTION) if XCEPTION.exists() else "random")
    ap.add_argument("--dataset", default=str(ROOT / "dataset"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(describe())
    tmp = Path(tempfile.mkdtemp(prefix="cbir-bench-query-"))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    cli = [sys.executable, "-m", "cbir"]
    try:
        idx = tmp / "index"
        common = ["--index", str(idx), "--model", args.model, "--weights", args.weights]
        t = time.perf_counter()
        done = subprocess.run(
            cli + ["index", args.dataset, "--json"] + common,
            check=True,
            env=env,
            capture_output=True,
            text=True,
        )
        wall_index = time.perf_counter() - t
        rep = json.loads(done.stdout)
        print(
            f"\nindexing {args.dataset} ({rep['total']} images) with {args.model}: whole process "
            f"{wall_index:.1f}s, of which indexing {rep['seconds']:.1f}s "
            f"({rep['images_per_second']:.1f} img/s, model load included)"
        )
        images = sorted(str(p) for p in Path(args.dataset).glob("*.jpg"))
        query = images[0]
        runs = []
        for _ in range(args.repeats):
            out = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    COLD,
                    args.dataset,
                    str(idx),
                    query,
                    args.weights,
                    str(tmp / "cold.png"),
                ],
                check=True,
                env=env,
                capture_output=True,
                text=True,
            )
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"\nmodel {args.model}; cold query in a new process, median of {args.repeats} runs (seconds):")
        total = 0.0
        for stage in runs[0]:
            v = sorted(r[stage] for r in runs)[len(runs) // 2]
            total += v
            print(f"  {stage:<16}{v:8.3f}")
        print(f"  {'total':<16}{total:8.3f}")

        def wall(n: int) -> float:
            cmd = (
                cli
                + ["query", args.dataset]
                + images[:n]
                + common[:2]
                + ["--weights", args.weights, "--no-plot", "--json"]
            )
            t = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, capture_output=True)
            return time.perf_counter() - t

        one = min(wall(1) for _ in range(args.repeats))
        many = min(wall(20) for _ in range(args.repeats))
        print(
            f"\ncommand line, whole process: 1 query {one:.2f}s, 20 queries {many:.2f}s "
            f"-> {(many - one) / 19 * 1000:.0f} ms per additional query"
        )

        def answer(extra: list[str]) -> tuple[float, dict]:
            cmd = cli + ["query", args.dataset] + extra + ["--index", str(idx), "--no-plot", "--json"]
            t = time.perf_counter()
            done = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
            return time.perf_counter() - t, json.loads(done.stdout)["results"][0]

        by_file = [answer([query, "--weights", args.weights]) for _ in range(args.repeats)]
        like = [answer(["--like", Path(query).name]) for _ in range(args.repeats)]
        t_file, r_file = min(by_file, key=lambda x: x[0])
        t_like, r_like = min(like, key=lambda x: x[0])
        same_paths = [m["path"] for m in r_file["matches"]] == [m["path"] for m in r_like["matches"]]
        worst = max(abs(a["score"] - b["score"]) for a, b in zip(r_file["matches"], r_like["matches"]))
        print(
            f"\nmore like this (cold, --no-plot, best of {args.repeats}): by file {t_file:.2f}s, "
            f"--like {t_like:.2f}s = {t_like / t_file:.3f}x (target <= 0.15x); "
            f"same paths: {same_paths}, largest score difference {worst:.1e} (target <= 1e-4)"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
