"""PCA-whitening learned on a set of features, stored beside the index.

Whitening decorrelates the feature dimensions and down-weights the dominant (often uninformative)
directions; with dimension reduction it also shrinks the index. Learned vectors stay L2-normalised
afterwards, so dot products remain cosine similarities and the ``feats.npy`` contract holds.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from cbir.core.errors import BadImageError, CbirError
from cbir.core.vectors import l2_normalize
from cbir.ingest.files import find_images

if TYPE_CHECKING:  # the encoder seam imports this module: a type-only import avoids the cycle
    from cbir.encoders.base import Encoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Whitening:
    """``apply(x) = normalise((x - mean) @ projection)``; projection is (D, d)."""

    mean: np.ndarray
    projection: np.ndarray

    @property
    def dim(self) -> int:
        """The dimension of the whitened vectors."""
        return int(self.projection.shape[1])

    @property
    def digest(self) -> str:
        """16 hex digits of the content's SHA-256: names the file and goes into FeatureConfig.whitening."""
        h = hashlib.sha256(self.mean.astype(np.float32).tobytes())
        h.update(self.projection.astype(np.float32).tobytes())
        return h.hexdigest()[:16]

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Whiten vectors (n, D) or one vector (D,); the result is L2-normalised float32."""
        return l2_normalize((np.asarray(x, dtype=np.float32) - self.mean) @ self.projection)

    def write_to(self, f: BinaryIO) -> None:
        """Write the ``.npz`` content into an open binary file (for the index's atomic writer)."""
        np.savez(f, mean=self.mean.astype(np.float32), projection=self.projection.astype(np.float32))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Whitening:
        """Read a file written by :meth:`write_to`; CbirError when it is missing or damaged."""
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(mean=z["mean"], projection=z["projection"])
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise CbirError(f"cannot read whitening file {path}: {exc}") from exc


def learn_whitening(
    features: np.ndarray, dim: int | None = None, shrinkage: float = 1.0, power: float = 0.5
) -> Whitening:
    """Learn PCA-whitening from L2-normalised ``features`` (n, D).

    ``dim`` keeps the leading components (at most n - 1, the rank of the centred data). Each kept
    component is scaled by (eigenvalue + shrinkage * mean eigenvalue) ** -power: ``power`` 0.5 is
    classic whitening, 0.25 a softened one; ``shrinkage`` stops the many tiny eigenvalues of a small
    learning set from turning noise into signal (measured in docs/quality.md).
    """
    x = np.asarray(features, dtype=np.float64)
    n, d_in = x.shape
    if n < 2:
        raise CbirError("whitening needs at least 2 images")
    mean = x.mean(axis=0)
    xc = x - mean
    cov = xc.T @ xc / n
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = np.maximum(eigval[order], 0), eigvec[:, order]
    keep = min(dim or d_in, d_in, n - 1)
    scale = (eigval[:keep] + shrinkage * eigval.mean()) ** -power
    projection = eigvec[:, :keep] * scale
    return Whitening(mean=mean.astype(np.float32), projection=projection.astype(np.float32))


def whitening_filename(digest: str) -> str:
    """The file a whitening is stored under in an index folder (named by content: never overwritten)."""
    return f"whitening-{digest}.npz"


def learn_from_folder(
    encoder: Encoder,
    folder: str | os.PathLike[str],
    dim: int | None = None,
    progress: bool | None = None,
    power: float = 0.5,
) -> Whitening:
    """Embed the images of ``folder`` (no whitening) and learn a whitening from them; a bad file is
    logged and left out."""
    files = find_images(folder)
    if not files:
        raise CbirError(f"no images found in {folder} to learn the whitening from")
    paths = [Path(folder) / f for f in files]
    good = []
    for pos, result in encoder.embed_files(paths, progress=progress, desc="learning whitening"):
        if isinstance(result, BadImageError):
            log.warning("skipped %s: %s", paths[pos], result)
        else:
            good.append(result)
    vecs = np.stack(good) if good else np.zeros((0, encoder.dim), np.float32)
    return learn_whitening(vecs, dim, power=power)


def load_for_index(index_dir: str | os.PathLike[str], digest: str | None) -> Whitening | None:
    """The whitening an index's features were made with (None when it has none)."""
    if digest is None:
        return None
    path = Path(index_dir) / whitening_filename(digest)
    if not path.exists():
        raise CbirError(
            f"the index needs its whitening file {path}, which is missing; rebuild with --rebuild"
        )
    w = Whitening.load(path)
    if w.digest != digest:
        raise CbirError(f"whitening file {path} is damaged; rebuild with --rebuild")
    return w
