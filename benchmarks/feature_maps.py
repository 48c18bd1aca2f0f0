"""A disk cache of backbone feature maps (before pooling), so that every pooling is scored from one
network run per (dataset, model, weights, input geometry).

The trunk (the backbone without pooling) is converted to LiteRT once (the same converter as the
product, :func:`cbir.encoders.convert.to_litert`) and run on the product's own image pipeline and
preprocessing, so the maps are the ones the product's models pool. Maps are stored as float16 (one
flat array plus an index of offsets and shapes); poolings run in NumPy with the product's reference
definitions (:mod:`cbir.encoders.pooling`).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cbir.core.vectors import l2_normalize
from cbir.encoders.backbones import build_backbone, get_backbone
from cbir.encoders.features import FeatureConfig
from cbir.encoders.keras_net import KerasNetwork
from cbir.encoders.litert_net import LiteRTNetwork
from cbir.encoders.preprocess import preprocess
from cbir.encoders.weights import Weights
from cbir.ingest.decode import LoadLimits
from cbir.ingest.pipeline import BadItem, ImagePipeline, default_workers


class Maps:
    """The feature maps of N images: ``groups()`` yields (positions, maps (n, h, w, C)) per shape."""

    def __init__(self, flat: np.ndarray, index: np.ndarray, ips: float) -> None:
        self.flat = flat
        self.index = index  # (N, 4): offset, h, w, c
        self.ips = ips

    def __len__(self) -> int:
        return len(self.index)

    def groups(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        shapes = [tuple(r[1:]) for r in self.index]
        for shape in sorted(set(shapes)):
            pos = np.array([i for i, s in enumerate(shapes) if s == shape])
            size = int(np.prod(shape))
            maps = np.stack([self.flat[o : o + size] for o in self.index[pos, 0]]).reshape(
                (len(pos),) + shape
            )
            yield pos, maps

    def pooled(self, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """``fn`` (maps (n, h, w, C) -> (n, D)) over every image, L2-normalised, float32, in order."""
        out: np.ndarray | None = None
        for pos, maps in self.groups():
            v = np.asarray(fn(maps), dtype=np.float64)
            if out is None:
                out = np.zeros((len(self), v.shape[1]))
            out[pos] = v
        assert out is not None
        return l2_normalize(out.astype(np.float32))


def _trunk(config: FeatureConfig, weights: Weights, work: Path) -> LiteRTNetwork:
    """The backbone without pooling, converted to LiteRT (kept in ``work``)."""
    from cbir.encoders.convert import to_litert

    name = hashlib.sha1(f"{config.model}{weights.identity}{config.width_multiplier}".encode()).hexdigest()
    path = work / f"trunk-{config.model}-{name[:12]}.tflite"
    if not path.exists():
        trunk = build_backbone(get_backbone(config.model), weights, config.width_multiplier)
        path.write_bytes(to_litert(KerasNetwork(trunk)))
    return LiteRTNetwork(path)


def feature_maps(paths: list[str], config: FeatureConfig, weights: Weights, work: Path) -> Maps:
    """The maps of ``paths`` under ``config``'s geometry (computed once, then read from ``work``)."""
    backbone = get_backbone(config.model)
    geometry = config.geometry_for(backbone.input_size)
    key = f"{config.model}|{weights.identity}|{config.width_multiplier}|{geometry}|{len(paths)}|{paths[0]}"
    stem = work / f"maps-{hashlib.sha1(key.encode()).hexdigest()[:16]}"
    if stem.with_suffix(".ips").exists():
        flat = np.load(stem.with_suffix(".flat.npy"), mmap_mode="r")
        return Maps(
            flat, np.load(stem.with_suffix(".index.npy")), float(stem.with_suffix(".ips").read_text())
        )
    work.mkdir(parents=True, exist_ok=True)
    net = _trunk(config, weights, work)
    pipe = ImagePipeline(geometry, (1.0,), LoadLimits(), default_workers(), 16)
    found: dict[int, np.ndarray] = {}
    for item in pipe.from_files(paths[:4]):  # warm-up: planning the interpreter is not throughput
        if not isinstance(item, BadItem):
            net.run(preprocess(item.array, backbone.preprocess))
    start = time.perf_counter()
    for item in pipe.from_files(paths):
        if isinstance(item, BadItem):
            raise SystemExit(f"benchmark image {paths[item.position]} does not decode: {item.error}")
        out = net.run(preprocess(item.array, backbone.preprocess))
        for i, m in zip(item.items, out):
            found[i] = m.astype(np.float16)
    ips = len(paths) / (time.perf_counter() - start)
    index = np.zeros((len(paths), 4), dtype=np.int64)
    offset = 0
    for i in range(len(paths)):
        index[i] = (offset, *found[i].shape)
        offset += found[i].size
    flat = np.concatenate([found[i].ravel() for i in range(len(paths))])
    np.save(stem.with_suffix(".flat.npy"), flat)
    np.save(stem.with_suffix(".index.npy"), index)
    stem.with_suffix(".ips").write_text(f"{ips}\n")
    return Maps(flat, index, ips)


def main() -> None:
    """Fill the cache for one dataset and geometry (what bench_quality.py --maps would do first)."""
    from cbir.encoders.registry import resolve_config
    from cbir.ingest.files import find_images

    ap = argparse.ArgumentParser(description="cache the feature maps of a dataset")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--model", default="xception")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--geometry", default="squash")
    ap.add_argument("--size", type=int)
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    weights = Weights.parse(args.weights)
    config = FeatureConfig(model=args.model, geometry=args.geometry, size=args.size)
    config = resolve_config(config, weights)
    paths = [os.path.join(args.dataset, f) for f in find_images(args.dataset)]
    maps = feature_maps(paths, config, weights, Path(args.work))
    print(f"{args.dataset} {args.geometry} {args.size}: {len(maps)} images, {maps.ips:.2f} images/s")


if __name__ == "__main__":
    main()
