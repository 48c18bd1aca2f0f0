"""The near-duplicates review of `cbir serve`: what opening it costs now that the groups are made in
the background and stored with the index, against making them on the request (the old
``GET /api/duplicates``, measured in the same run).

Indexes a folder (default: Corel-1k from ../shared, with a copy of some of its photos re-encoded
and resized beside it, so there are groups) into a temporary index folder, then measures:

- making the groups (``find_duplicates`` with the CLI's defaults, ORB included): what the old
  request did after every index change (the baseline);
- ``GET /api/duplicates`` while they are being made (answers ``computing`` at once);
- ``GET /api/duplicates`` once made (in memory), and a restart's reading of the stored file.

    python3 benchmarks/bench_review.py [--copies 60] [--repeat 50]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from machine import SHARED, describe
from PIL import Image

from cbir.cli.options import build_parser, settings_from
from cbir.indexing.indexer import IndexOptions, update_index
from cbir.stores.folder.store import FolderStore
from cbir.web.collection import Collection
from cbir.web.duplicates import DuplicateReview, duplicate_groups_of

WEIGHTS = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"


def make_dataset(base: Path, source: Path, copies: int) -> Path:
    """Copies of the source photos, plus ``copies`` of them re-encoded at 3/4 size (the groups)."""
    ds = base / "photos"
    (ds / "copies").mkdir(parents=True)
    photos = sorted(source.glob("*.jpg"))
    for p in photos:
        shutil.copyfile(p, ds / p.name)
    for p in photos[:: max(1, len(photos) // copies)][:copies]:
        with Image.open(p) as im:
            im.resize((im.width * 3 // 4, im.height * 3 // 4)).save(ds / "copies" / p.name, quality=75)
    return ds


def ms(seconds: list[float]) -> str:
    return f"p50 {statistics.median(seconds) * 1000:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=SHARED / "datasets" / "corel1k" / "images")
    parser.add_argument("--copies", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    from fastapi.testclient import TestClient

    from cbir.web.app import create_app
    from cbir.web.model import ModelWorker
    from cbir.web.service import Service

    print(describe())
    base = Path(tempfile.mkdtemp(prefix="bench-review-"))
    try:
        ds = make_dataset(base, args.source, args.copies)
        index_dir = base / "index"
        cli = ["serve", str(ds), "--index", str(index_dir), "--model", "mobilenetv2", "--size", "224"]
        settings = settings_from(build_parser().parse_args([*cli, "--weights", str(WEIGHTS)]))
        t0 = time.perf_counter()
        update_index(ds, settings, options=IndexOptions(progress=False), store=settings.home)
        print(f"indexed {ds} in {time.perf_counter() - t0:.1f} s")
        collection = Collection(ds, FolderStore(ds, index_dir))
        index = collection.require()

        t0 = time.perf_counter()
        doc = duplicate_groups_of(index, None)
        on_request = time.perf_counter() - t0
        print(f"{len(index)} images, {len(doc['groups'])} groups, {doc['redundant']} redundant copies")

        release = threading.Event()

        def gated(index, threshold):  # noqa: ANN001, ANN202
            release.wait()
            return duplicate_groups_of(index, threshold)

        review = DuplicateReview(collection, base / "trash", compute=gated).start()
        client = TestClient(create_app(Service(collection, ModelWorker(lambda: None), review=review)))
        computing = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            assert client.get("/api/duplicates").json()["state"] == "computing"
            computing.append(time.perf_counter() - t0)
        release.set()
        assert review.wait(review.version_of(index), timeout=600)
        ready = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            answer = client.get("/api/duplicates")
            ready.append(time.perf_counter() - t0)
        assert answer.json()["state"] == "ready"
        review.stop()

        restarted = DuplicateReview(collection, base / "trash", compute=duplicate_groups_of)
        t0 = time.perf_counter()
        restarted.run_once()  # reads the stored groups
        from_file = time.perf_counter() - t0
        assert restarted.groups()["groups"] == doc["groups"]

        print(f"baseline, groups made on the request (the old GET): {on_request * 1000:.0f} ms")
        print(f"GET while computing: {ms(computing)} ({on_request / statistics.median(computing):.0f}x less)")
        print(
            f"GET when ready: {ms(ready)}, {len(answer.content) / 1024:.0f} KiB "
            f"({on_request / statistics.median(ready):.0f}x less)"
        )
        restart = f"{from_file * 1000:.1f} ms ({on_request / from_file:.0f}x less)"
        print(f"a restart reading the stored groups: {restart}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
