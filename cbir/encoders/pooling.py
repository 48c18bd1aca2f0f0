"""The poolings that turn the backbone's last feature map into one vector per image.

Each :class:`Pooling` in :data:`POOLINGS` has two implementations of one definition: a NumPy one
(the reference the tests and the benchmarks' feature-map cache use) and a Keras layer (part of the
reference network, converted with it to LiteRT). A new pooling is one entry here; ``--pooling``
lists the registry's keys.

Regional poolings (Tolias et al., "Particular object retrieval with integral max-pooling of CNN
activations", ICLR 2016) pool each region of a multi-scale grid, L2-normalise each region's
vector and sum them. The grid (:func:`region_grid`): at level l = 1..L, l x l regions whose sides
are 2/(l+1) of the map's (at least one cell), evenly spaced from edge to edge, so level 1 is the
whole map. On the square maps of the default ``squash`` geometry this is Tolias' grid; on other
shapes the regions stretch with the map instead of adding columns, which keeps the number of
regions fixed (14 for L=3) and lets the network keep a free input size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cbir.core.types import KerasModel

RMAC_LEVELS = 3
"""Levels of the regional grid: 1 + 4 + 9 = 14 regions."""

REGION_EPS = 1e-6
"""Floor of a region vector's norm before it is normalised (an all-zero region stays zero)."""


def _starts(n: int, side: int, count: int) -> list[int]:
    """``count`` evenly spaced starts of windows of ``side`` cells over ``n`` cells (integer maths)."""
    if count == 1:
        return [0]
    return [(i * (n - side)) // (count - 1) for i in range(count)]


def region_grid(h: int, w: int, levels: int = RMAC_LEVELS) -> list[tuple[int, int, int, int]]:
    """The regions ``(y0, y1, x0, x1)`` of an ``h`` x ``w`` map, level by level, row-major."""
    regions = []
    for level in range(1, levels + 1):
        rh = max(1, (2 * h) // (level + 1))
        rw = max(1, (2 * w) // (level + 1))
        for y0 in _starts(h, rh, level):
            for x0 in _starts(w, rw, level):
                regions.append((y0, y0 + rh, x0, x0 + rw))
    return regions


def _gem_numpy(maps: np.ndarray, p: float) -> np.ndarray:
    x = np.maximum(maps.astype(np.float64), 1e-6)
    return np.power(np.mean(np.power(x, p), axis=(1, 2)), 1.0 / p)


def regional_sum(maps: np.ndarray, reduce: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Sum over the grid of each region's L2-normalised pooled vector; maps (N, H, W, C)."""
    x = maps.astype(np.float64)
    total = np.zeros((x.shape[0], x.shape[3]))
    for y0, y1, x0, x1 in region_grid(x.shape[1], x.shape[2]):
        v = reduce(x[:, y0:y1, x0:x1, :])
        total += v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), REGION_EPS)
    return total


@dataclass(frozen=True)
class Pooling:
    """One pooling: ``numpy(maps, p)`` maps (N, H, W, C) to (N, C); ``layer(p)`` is its Keras layer
    (``p``: the GeM exponent, ignored by the others)."""

    name: str
    numpy: Callable[[np.ndarray, float], np.ndarray]
    layer: Callable[[float], KerasModel]
    help: str


def _max_layer(p: float) -> KerasModel:
    import keras

    return keras.layers.GlobalMaxPooling2D()


def _avg_layer(p: float) -> KerasModel:
    import keras

    return keras.layers.GlobalAveragePooling2D()


def _gem_layer(p: float) -> KerasModel:
    import keras
    from keras import ops

    class GeM(keras.layers.Layer):
        """Generalised-mean pooling: (mean x^p)^(1/p); p=1 is average, p->inf is max."""

        def call(self, x: KerasModel) -> KerasModel:  # a backend tensor
            x = ops.maximum(x, 1e-6)
            return ops.power(ops.mean(ops.power(x, p), axis=(1, 2)), 1.0 / p)

    return GeM(name="gem")


def _regional_layer(name: str, reduce_max: bool) -> KerasModel:
    """The regional pooling as a Keras layer: the grid is computed from the map's dynamic shape with
    the same integer formulas as :func:`region_grid`, so any input size works (and converts)."""
    import keras
    from keras import ops

    class Regional(keras.layers.Layer):
        def call(self, x: KerasModel) -> KerasModel:  # a backend tensor
            shape = ops.shape(x)
            h, w = shape[1], shape[2]
            total = None
            for level in range(1, RMAC_LEVELS + 1):
                rh = ops.maximum(1, (2 * h) // (level + 1))
                rw = ops.maximum(1, (2 * w) // (level + 1))
                for i in range(level):
                    y0 = 0 if level == 1 else (i * (h - rh)) // (level - 1)
                    for j in range(level):
                        x0 = 0 if level == 1 else (j * (w - rw)) // (level - 1)
                        region = x[:, y0 : y0 + rh, x0 : x0 + rw, :]
                        v = ops.max(region, axis=(1, 2)) if reduce_max else ops.mean(region, axis=(1, 2))
                        norm = ops.sqrt(ops.sum(ops.square(v), axis=1, keepdims=True))
                        v = v / ops.maximum(norm, REGION_EPS)
                        total = v if total is None else total + v
            return total

        def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
            return (input_shape[0], input_shape[3])

    return Regional(name=name)


POOLINGS: dict[str, Pooling] = {
    p.name: p
    for p in [
        Pooling("max", lambda m, p: m.max(axis=(1, 2)), _max_layer, "global max"),
        Pooling("avg", lambda m, p: m.astype(np.float64).mean(axis=(1, 2)), _avg_layer, "global average"),
        Pooling("gem", _gem_numpy, _gem_layer, "generalised mean (--gem-p)"),
        Pooling(
            "rmac",
            lambda m, p: regional_sum(m, lambda r: r.max(axis=(1, 2))),
            lambda p: _regional_layer("rmac", reduce_max=True),
            "R-MAC: regional max on a 3-level grid, regions L2-normalised and summed",
        ),
    ]
}


def pool(maps: np.ndarray, pooling: str, p: float = 3.0) -> np.ndarray:
    """The NumPy reference of ``pooling`` on feature maps (N, H, W, C): float64 (N, C)."""
    return np.asarray(POOLINGS[pooling].numpy(maps, p), dtype=np.float64)
