"""``cbir index --ray ADDRESS`` on a two-node Ray cluster against a one-node one, with the plain
indexer as the baseline, all in one run on this machine.

``--images`` Corel-1k images (copied to a temporary folder) are indexed by ``cbir index`` (a fresh
process each run, as a user runs it: every figure includes starting Python, joining Ray, Ray's actors
and building the model in each):

- plain: no Ray, the indexer's decoding threads and one model;
- ``--ray`` on one node with two CPUs (two actors in that node);
- ``--ray`` on two nodes with one CPU each (one actor per node), the shape of a real cluster.

Each into two stores: the real Milvus server (the actors write the rows themselves) and the folder
store (the rows go back through the driver, which writes them). The clusters are started by
``tests/ray_cluster.py`` (``ray start`` on free ports, its own token, only its own processes killed)
and the server by ``tests/milvus_server.py``; both before the timings. Same model for every run
(MobileNetV2 0.35 at 224, real weights, Keras runtime). On one machine two nodes cannot be faster
than one with the same cores: the figure is what the multi-node path costs (a second raylet and
object store, cbir's code shipped to the node), not a speed-up.

    python3 benchmarks/bench_ray.py --images 300
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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))  # the tests' helpers that start Ray and the Milvus server

from machine import SHARED, describe, version  # noqa: E402
from milvus_server import MilvusServer  # noqa: E402
from milvus_server import why_not as no_server  # noqa: E402
from ray_cluster import RayCluster  # noqa: E402
from ray_cluster import why_not as no_ray  # noqa: E402

WEIGHTS = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
COREL = SHARED / "datasets" / "corel1k" / "images"


def index(data: Path, where: list[str], ray: RayCluster | None, cwd: Path) -> tuple[float, int]:
    """Seconds of one ``cbir index`` run (a fresh process) and the rows it reports."""
    args = ["index", str(data), *where, "--model", "mobilenetv2", "--weights", str(WEIGHTS)]
    args += ["--runtime", "keras", "--json", "--rebuild"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if ray is not None:
        args += ["--ray", ray.address]
        env.update(ray.auth)
    t = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "cbir", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=1800
    )
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"cbir index failed: {done.stderr.strip()}")
    return seconds, int(json.loads(done.stdout)["total"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    args = parser.parse_args()
    for reason in (no_ray(), no_server()):
        if reason is not None:
            raise SystemExit(f"bench_ray: {reason}")
    if not (WEIGHTS.exists() and COREL.is_dir()):
        raise SystemExit(f"bench_ray: needs {WEIGHTS} and {COREL}")
    print(describe())
    print(
        f"ray {version('ray')}, pymilvus {version('pymilvus')}, milvus server {version('milvus')}, "
        f"cbir from {REPO}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as name:
        tmp = Path(name)
        data = tmp / "images"
        data.mkdir()
        for src in sorted(COREL.glob("*.jpg"))[: args.images]:
            shutil.copy2(src, data / src.name)
        server = MilvusServer(tmp / "milvus")
        server.start()
        clusters = {
            "one node, 2 CPUs": RayCluster(head_cpus=2, second=False),
            "two nodes, 1 CPU each": RayCluster(),
        }
        try:
            for cluster in clusters.values():
                cluster.start()
            stores = {
                "milvus server": lambda run: ["--store", f"{server.uri}/{run}"],
                "folder": lambda run: ["--index", str(tmp / f"index-{run}")],
            }
            print(f"\n{args.images} Corel images, MobileNetV2 0.35 at 224 (Keras), each run a fresh process")
            print(f"{'indexer':<26}{'store':<15}{'seconds':>9}{'img/s':>8}{'x plain':>9}")
            for store, where in stores.items():
                base = 0.0
                runs: list[tuple[str, RayCluster | None]] = [("plain", None)]
                runs += [(f"--ray {shape}", cluster) for shape, cluster in clusters.items()]
                for n, (label, cluster) in enumerate(runs):
                    seconds, total = index(data, where(f"r{n}"), cluster, tmp)
                    assert total == args.images, (label, total)
                    rate = args.images / seconds
                    base = base or rate
                    print(f"{label:<26}{store:<15}{seconds:>9.1f}{rate:>8.1f}{rate / base:>9.2f}", flush=True)
        finally:
            for cluster in clusters.values():
                cluster.stop()
            server.stop()


if __name__ == "__main__":
    main()
