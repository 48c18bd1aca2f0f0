"""Small operations on feature vectors shared by embedding, whitening and re-ranking.

Kept apart from the embedder so that code working on stored vectors never imports the network.
"""

from __future__ import annotations

import numpy as np


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Scale rows to unit length as float32 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, np.float32(1e-12))


def finite_rows(x: np.ndarray) -> np.ndarray:
    """A boolean per row (last axis reduced): True where every value of the row is finite."""
    return np.isfinite(np.asarray(x)).all(axis=-1)
