"""Checking candidate pairs on their pixels: are the two images one photograph?

ImageNet vectors rank a greyscale or tightly cropped copy below other photos of the same subject
(bench_duplicates.py: greyscale copies score a median 0.81 with Xception, while hard negatives reach
0.97), so no single cosine threshold separates them. The graph is therefore built at a low
similarity floor, and each candidate pair is verified geometrically: ORB keypoints of both images
(greyscale, upright, longer side scaled to :data:`SIDE`), matched by Hamming distance with Lowe's
ratio test, and a similarity transform (rotation, scale, shift) fitted by RANSAC. A pair is a
near-duplicate when at least :data:`MIN_INLIERS` matches agree on one transform: true of re-encoded,
resized, cropped, rotated, relit, greyscale and watermarked copies, rarely of two photos of one scene.

OpenCV (``opencv-python-headless``) does the keypoints, matching and RANSAC; it is imported only
here. Keypoints are computed once per image in a thread pool (OpenCV releases the GIL) and dropped
once the last pair that needs them is checked, so memory follows the pairs, not the collection.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

from cbir.core.errors import BadImageError, CbirError
from cbir.core.progress import progress_bar
from cbir.duplicates.graph import Edges
from cbir.ingest.decode import LoadLimits, open_rgb

log = logging.getLogger(__name__)

SIDE = 320  # longer side the keypoints are found at (small copies are scaled up to it)
MAX_KEYPOINTS = 500  # ORB keypoints kept per image
RATIO = 0.8  # Lowe's ratio test: best match clearly better than the second
RANSAC_PX = 5.0  # reprojection error (pixels at SIDE) for a match to agree with the transform
# Chosen by benchmarks/bench_duplicates.py (docs/duplicates.md): F1 is flat from 25 to 40 inliers
MIN_INLIERS = 30
# Vectors this close are one picture (re-saved, renamed, re-tagged): such a pair needs no check, so
# small or flat images with few keypoints are still found as copies of themselves. On the
# benchmark no other photo scores above 0.97 (bench_duplicates.py), and no copy above this
# threshold failed the check.
SAME_PICTURE = 0.995
BLOCK = 2048  # pairs checked per step (keypoints of rows no later pair needs are then dropped)


@dataclass(frozen=True)
class Keypoints:
    """An image's ORB keypoints: positions (n, 2) and 256-bit descriptors (n, 32)."""

    xy: np.ndarray
    descriptors: np.ndarray

    def __len__(self) -> int:
        return int(len(self.xy))


def _cv2() -> ModuleType:
    try:
        import cv2
    except ImportError as e:
        raise CbirError(
            "near-duplicate verification needs OpenCV: pip install opencv-python-headless "
            "(or pass --verify none)"
        ) from e
    return cv2


def keypoints_of(path: Path, limits: LoadLimits = LoadLimits()) -> Keypoints | None:
    """The keypoints of the image at ``path`` (EXIF-upright, greyscale), or None if it cannot be read."""
    cv2 = _cv2()
    try:
        img = open_rgb(path, limits, draft_for=(SIDE, SIDE)).convert("L")
    except (BadImageError, OSError) as e:
        log.warning("skipping %s in the pixel check: %s", path, e)
        return None
    scale = SIDE / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    grey = np.asarray(img.resize(size, Image.Resampling.BILINEAR))
    found, descriptors = cv2.ORB_create(nfeatures=MAX_KEYPOINTS).detectAndCompute(grey, None)
    if descriptors is None or not found:
        return Keypoints(np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8))
    return Keypoints(np.array([k.pt for k in found], dtype=np.float32), descriptors)


def agreeing_matches(a: Keypoints | None, b: Keypoints | None) -> int:
    """How many keypoint matches between ``a`` and ``b`` fit one similarity transform (RANSAC)."""
    if a is None or b is None or len(a) < 2 or len(b) < 2:
        return 0
    cv2 = _cv2()
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(a.descriptors, b.descriptors, k=2)
    good = [m[0] for m in pairs if len(m) == 2 and m[0].distance < RATIO * m[1].distance]
    if len(good) < 3:
        return 0
    src = a.xy[[m.queryIdx for m in good]]
    dst = b.xy[[m.trainIdx for m in good]]
    _, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PX)
    return 0 if mask is None else int(mask.sum())


def count_inliers(
    edges: Edges, file_of: Callable[[int], Path], progress: bool | None = None, workers: int = 0
) -> np.ndarray:
    """The agreeing keypoint matches of every pair of ``edges`` (rows named by ``file_of``)."""
    _cv2()  # a missing OpenCV is one clear error before any work
    counts = np.zeros(len(edges), dtype=np.int32)
    if not len(edges):
        return counts
    last_use = _last_use(edges)
    held: dict[int, Keypoints | None] = {}
    bar = progress_bar(len(edges), "verifying", unit="pair", enabled=progress)
    try:
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            for start, stop in _blocks(len(edges)):
                a, b = edges.a[start:stop], edges.b[start:stop]
                missing = sorted(set(np.concatenate([a, b]).tolist()) - held.keys())
                held.update(zip(missing, pool.map(lambda r: keypoints_of(file_of(r)), missing)))
                counts[start:stop] = list(
                    pool.map(lambda p: agreeing_matches(held[p[0]], held[p[1]]), zip(a.tolist(), b.tolist()))
                )
                for row in [r for r in held if last_use[r] < stop]:
                    del held[row]
                bar.update(stop - start)
    finally:
        bar.close()
    return counts


def _blocks(n: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, BLOCK):
        yield start, min(n, start + BLOCK)


def _last_use(edges: Edges) -> dict[int, int]:
    """For each row, the index of the last pair it is in."""
    last: dict[int, int] = {}
    for i, (a, b) in enumerate(zip(edges.a.tolist(), edges.b.tolist())):
        last[a] = last[b] = i
    return last


def keep_verified(edges: Edges, inliers: np.ndarray, min_inliers: int = MIN_INLIERS) -> Edges:
    """The pairs of ``edges`` with at least ``min_inliers`` agreeing matches (``inliers``, one per
    pair), or scoring :data:`SAME_PICTURE`."""
    keep = (inliers >= min_inliers) | (edges.score >= SAME_PICTURE)
    return Edges(edges.a[keep], edges.b[keep], edges.score[keep])


def verified(edges: Edges, file_of: Callable[[int], Path], progress: bool | None = None) -> Edges:
    """The pairs of ``edges`` that pass the pixel check; pairs scoring :data:`SAME_PICTURE` are
    kept without reading their files."""
    check = edges.score < SAME_PICTURE
    inliers = np.zeros(len(edges), dtype=np.int32)
    inliers[check] = count_inliers(
        Edges(edges.a[check], edges.b[check], edges.score[check]), file_of, progress
    )
    return keep_verified(edges, inliers)
