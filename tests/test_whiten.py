"""PCA-whitening: the learned transform, its dimension reduction, its file and its digest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cbir.core.errors import CbirError, IndexWriteError
from cbir.encoders.whiten import (
    Whitening,
    learn_from_folder,
    learn_whitening,
    load_for_index,
    whitening_filename,
)
from cbir.ingest.files import find_images
from cbir.stores.folder.files import write_atomic


def correlated(n: int = 2000, d: int = 8, seed: int = 0) -> np.ndarray:
    """``n`` samples of a ``d``-dimensional Gaussian with strongly unequal, correlated axes."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((d, d)) * np.linspace(3.0, 0.2, d)[:, None]
    return (rng.standard_normal((n, d)) @ mixing + rng.standard_normal(d)).astype(np.float32)


def whitened_raw(w: Whitening, x: np.ndarray) -> np.ndarray:
    """The whitened data before the final L2 normalisation of :meth:`Whitening.apply`."""
    return (x.astype(np.float64) - w.mean) @ w.projection.astype(np.float64)


def covariance(x: np.ndarray) -> np.ndarray:
    return np.cov(x, rowvar=False, bias=True)


def test_classic_whitening_gives_identity_covariance():
    x = correlated()
    assert np.abs(covariance(x) - np.diag(np.diag(covariance(x)))).max() > 0.5  # really correlated
    w = learn_whitening(x, shrinkage=0.0, power=0.5)
    assert w.dim == x.shape[1]
    np.testing.assert_allclose(covariance(whitened_raw(w, x)), np.eye(w.dim), atol=1e-3)
    np.testing.assert_allclose(w.mean, x.mean(axis=0), atol=1e-5)


def test_reduced_whitening_keeps_the_leading_components():
    x = correlated()
    w = learn_whitening(x, dim=3, shrinkage=0.0, power=0.5)
    assert w.projection.shape == (8, 3)
    np.testing.assert_allclose(covariance(whitened_raw(w, x)), np.eye(3), atol=1e-3)
    # the kept subspace is the one of the 3 largest eigenvalues of the data covariance
    eigval, eigvec = np.linalg.eigh(covariance(x))
    top = eigvec[:, np.argsort(eigval)[::-1][:3]]
    kept, _ = np.linalg.qr(w.projection.astype(np.float64))
    assert np.linalg.norm(top.T @ kept) ** 2 == pytest.approx(3.0, abs=1e-3)


def test_power_and_shrinkage_soften_the_whitening():
    x = correlated()
    eigval = np.sort(np.linalg.eigvalsh(covariance(x)))[::-1]
    # power 0.25 without shrinkage: component variances become eigenvalue ** (1 - 2 * 0.25)
    soft = learn_whitening(x, shrinkage=0.0, power=0.25)
    np.testing.assert_allclose(np.diag(covariance(whitened_raw(soft, x))), np.sqrt(eigval), rtol=1e-3)
    # shrinkage 1: variances eigenvalue / (eigenvalue + mean eigenvalue), all below 1, largest first
    shrunk = learn_whitening(x, shrinkage=1.0, power=0.5)
    expected = eigval / (eigval + eigval.mean())
    np.testing.assert_allclose(np.diag(covariance(whitened_raw(shrunk, x))), expected, rtol=1e-3)


@pytest.mark.parametrize(
    ("n", "d", "dim", "kept"),
    [(5, 8, None, 4), (5, 8, 3, 3), (5, 8, 6, 4), (50, 8, None, 8), (50, 8, 100, 8), (50, 8, 2, 2)],
)
def test_dimension_is_at_most_n_minus_1_and_dim(n, d, dim, kept):
    w = learn_whitening(correlated(n, d), dim=dim)
    assert w.dim == kept and w.projection.shape == (d, kept) and w.mean.shape == (d,)
    assert np.isfinite(w.projection).all()


def test_too_few_samples():
    with pytest.raises(CbirError, match="at least 2"):
        learn_whitening(correlated(1))


def test_outputs_are_l2_normalised():
    x = correlated(300)
    for w in (learn_whitening(x), learn_whitening(x, dim=3), learn_whitening(x, power=0.25)):
        y = w.apply(x)
        assert y.shape == (300, w.dim) and y.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)
    single = learn_whitening(x).apply(x[0])  # one vector
    assert single.shape == (8,) and np.linalg.norm(single) == pytest.approx(1.0, abs=1e-5)


def test_digest_follows_the_content():
    x = correlated(300)
    w = learn_whitening(x)
    assert w.digest == learn_whitening(x.copy()).digest  # deterministic
    changed = x.copy()
    changed[0] += 1.0
    assert learn_whitening(changed).digest != w.digest
    assert learn_whitening(x, dim=4).digest != w.digest
    assert learn_whitening(x, power=0.25).digest != w.digest
    assert len(w.digest) == 16 and int(w.digest, 16) >= 0


def save(w: Whitening, path: Path) -> None:
    """Write a whitening as the index folder does: whole, through the atomic-write helper."""
    write_atomic(path, w.write_to)


def test_save_load_round_trip_is_atomic(tmp_path):
    w = learn_whitening(correlated(300), dim=5)
    path = tmp_path / whitening_filename(w.digest)
    save(w, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"whitening-{w.digest}.npz"]
    loaded = Whitening.load(path)
    assert loaded.digest == w.digest and loaded.dim == 5
    np.testing.assert_array_equal(loaded.mean, w.mean)
    np.testing.assert_array_equal(loaded.projection, w.projection)
    x = correlated(10, seed=1)
    np.testing.assert_array_equal(loaded.apply(x), w.apply(x))


def test_failed_save_leaves_no_temporary_file(tmp_path):
    w = learn_whitening(correlated(300))
    (tmp_path / "target.npz").mkdir()  # a folder where the file should go: the rename fails
    with pytest.raises(IndexWriteError):
        save(w, tmp_path / "target.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["target.npz"]
    assert (tmp_path / "target.npz").is_dir()


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "missing projection", "zip garbage"])
def test_load_of_a_damaged_file_raises_cbir_error(tmp_path, damage):
    w = learn_whitening(correlated(300))
    good = tmp_path / "good.npz"
    save(w, good)
    bad = tmp_path / "bad.npz"
    data = good.read_bytes()
    if damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "garbage":
        bad.write_bytes(b"not a whitening file\n" * 20)
    elif damage == "zip garbage":
        bad.write_bytes(b"PK\x03\x04" + bytes(200))
    else:
        np.savez(bad, mean=w.mean)
    with pytest.raises(CbirError, match="cannot read whitening file"):
        Whitening.load(bad)


def test_load_for_index(tmp_path):
    assert load_for_index(tmp_path, None) is None
    w = learn_whitening(correlated(300), dim=4)
    with pytest.raises(CbirError, match="rebuild") as info:
        load_for_index(tmp_path, w.digest)
    assert "missing" in str(info.value) and whitening_filename(w.digest) in str(info.value)
    save(w, tmp_path / whitening_filename(w.digest))
    loaded = load_for_index(tmp_path, w.digest)
    assert loaded is not None and loaded.digest == w.digest
    np.testing.assert_array_equal(loaded.projection, w.projection)
    # a file under the right name with other content
    other = learn_whitening(correlated(300, seed=5), dim=4)
    save(other, tmp_path / whitening_filename(w.digest))
    with pytest.raises(CbirError, match="damaged.*rebuild"):
        load_for_index(tmp_path, w.digest)
    (tmp_path / whitening_filename(w.digest)).write_bytes(b"")
    with pytest.raises(CbirError):
        load_for_index(tmp_path, w.digest)


def test_learn_from_folder(image_folder, tiny_embedder):
    folder = image_folder(6)
    w = learn_from_folder(tiny_embedder, folder, progress=False)
    assert w.dim == 5  # 6 images: rank 5 (the features have far more dimensions)
    assert tiny_embedder.whitening is None  # learning does not change the embedder
    vecs, positions = tiny_embedder.embed_all([folder / f for f in find_images(folder)], progress=False)
    assert positions == list(range(6)) and vecs.shape[1] == w.mean.shape[0] > 6
    np.testing.assert_allclose(w.mean, vecs.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(w.apply(vecs), axis=1), 1.0, atol=1e-5)
    # exactly learn_whitening on the folder's unwhitened features (up to eigenvector signs)
    reference = learn_whitening(vecs, power=0.25)
    soft = learn_from_folder(tiny_embedder, folder, dim=3, progress=False, power=0.25)
    assert soft.dim == 3
    np.testing.assert_allclose(
        np.abs(soft.projection), np.abs(reference.projection[:, :3]), rtol=1e-3, atol=1e-4
    )


def test_learn_from_folder_without_enough_images(tmp_path, make_image, tiny_embedder):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(CbirError, match="no images"):
        learn_from_folder(tiny_embedder, tmp_path / "empty", progress=False)
    make_image(tmp_path / "one" / "a.jpg")
    with pytest.raises(CbirError, match="at least 2"):
        learn_from_folder(tiny_embedder, tmp_path / "one", progress=False)
