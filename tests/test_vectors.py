"""Vector helpers (cbir.core.vectors) shared by embedding, whitening and re-ranking."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from conftest import REPO

from cbir.core.vectors import finite_rows, l2_normalize


def test_l2_normalize():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-30, 0.0]])
    y = l2_normalize(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y[0], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(y[1], [0, 0])  # zero rows stay zero
    np.testing.assert_allclose(l2_normalize(np.array([0.0, 2.0])), [0, 1])
    np.testing.assert_allclose(l2_normalize(np.array([[3.0], [4.0]]), axis=0), [[0.6], [0.8]], rtol=1e-6)


def test_finite_rows():
    x = np.ones((4, 3), np.float32)
    x[1, 2], x[3, 0] = np.nan, -np.inf
    assert finite_rows(x).tolist() == [True, False, True, False]
    assert finite_rows(np.zeros((0, 3))).shape == (0,)
    assert bool(finite_rows(np.array([1.0, np.inf]))) is False  # one vector: one answer


def test_vectors_and_whitening_do_not_load_the_network():
    code = (
        "import sys, cbir.core.vectors, cbir.encoders.whiten, cbir.ingest.pipeline; "
        "print(any(m in sys.modules for m in ('tensorflow', 'keras', 'cbir.encoders.embedder')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"
