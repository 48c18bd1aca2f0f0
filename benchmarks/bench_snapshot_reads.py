#!/usr/bin/env python3
"""Readers during rewrites: a loop of ``open_index`` while an indexer commits 100 incremental runs.

Every opened version is checked whole: each row must be the vector of the path and mtime its
manifest records (the stand-in embedder's vectors are a function of the file's name and mtime, so a
row attached to the wrong path, or from another version, is caught). Prints the machine and the
counts of good, torn and failed opens. No model is needed (a deterministic stand-in embedder).

    python3 benchmarks/bench_snapshot_reads.py [--runs 100] [--images 400]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from machine import describe

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import StandIn, stand_in_vector  # noqa: E402  (the tests' stand-in embedder)

from cbir.core.errors import CbirError
from cbir.indexing.indexer import IndexOptions, update_index
from cbir.stores.folder.snapshot import open_index


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--images", type=int, default=400)
    args = ap.parse_args()
    print(describe())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        root.mkdir()
        for i in range(args.images):
            (root / f"{i:05d}.jpg").write_bytes(b"stand-in")  # never decoded: the stand-in reads names
        source = StandIn()
        options = IndexOptions(progress=False, checkpoint_every=20)
        update_index(root, source, options=options)
        counts = {"good": 0, "torn": 0, "failed": 0}
        stop = threading.Event()

        def read_loop() -> None:
            while not stop.is_set():
                try:
                    index = open_index(root)
                    entries = [e for e in index.manifest.entries if e is not None]
                    # each row must be the vector of the file and mtime its own manifest records
                    want = np.stack([stand_in_vector(e.path, e.mtime_ns) for e in entries])
                    if np.array_equal(np.asarray(index.feats), want):
                        counts["good"] += 1
                    else:
                        counts["torn"] += 1
                except (CbirError, OSError, ValueError):
                    counts["failed"] += 1

        reader = threading.Thread(target=read_loop)
        reader.start()
        t0 = time.perf_counter()
        rng = np.random.default_rng(0)
        for run in range(args.runs):
            for i in rng.choice(args.images, size=args.images // 8, replace=False):
                path = root / f"{i:05d}.jpg"
                st = path.stat()
                os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9 * (run + 1)))
            update_index(root, source, options=options)
        stop.set()
        reader.join()
        seconds = time.perf_counter() - t0
    print(
        f"{args.runs} incremental runs of {args.images} images "
        f"({args.images // 8} changed each) in {seconds:.1f}s"
    )
    total = sum(counts.values())
    print(
        f"reader opens: {total}; whole and consistent: {counts['good']}; torn: {counts['torn']}; "
        f"failed: {counts['failed']}"
    )


if __name__ == "__main__":
    main()
