"""Embedder: batching by shape, multi-scale averaging, bad files in place, arrays vs files."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import build_tiny_embedder, save_image, smooth_image

from cbir.core.errors import BadImageError
from cbir.encoders import backbones, registry
from cbir.encoders.embedder import Embedder
from cbir.encoders.registry import resolve_config
from cbir.encoders.weights import Weights


def _pngs(tmp_path, sizes):
    paths = []
    for i, (w, h) in enumerate(sizes):
        p = tmp_path / f"img{i}.png"
        save_image(p, seed=i, width=w, height=h)
        paths.append(p)
    return paths


def test_vectors_are_unit_length_and_bad_files_keep_their_position(tmp_path, tiny_embedder):
    paths = _pngs(tmp_path, [(96, 72)] * 3)
    (tmp_path / "broken.jpg").write_bytes(b"not an image at all")
    files = [paths[0], tmp_path / "broken.jpg", paths[1], paths[2]]
    results = dict(tiny_embedder.embed_files(files))
    assert sorted(results) == [0, 1, 2, 3]
    assert isinstance(results[1], BadImageError)
    for i in (0, 2, 3):
        assert results[i].shape == (tiny_embedder.dim,)
        assert abs(np.linalg.norm(results[i]) - 1) < 1e-5
    assert not np.allclose(results[0], results[2])


def test_mixed_shapes_batched_together_equal_one_at_a_time(tmp_path, tiny_config):
    # "long" geometry gives each aspect ratio its own input shape: images are grouped by shape
    config = tiny_config.replace(geometry="long")
    sizes = [(96, 72), (72, 96), (96, 72), (120, 60), (72, 96), (96, 72)]
    paths = _pngs(tmp_path, sizes)
    embedder = build_tiny_embedder(config, batch_size=4)
    batched = dict(embedder.embed_files(paths))
    embedder.batch_size = 1
    single = dict(embedder.embed_files(paths))
    for i in range(len(paths)):
        np.testing.assert_allclose(batched[i], single[i], atol=2e-5)


def test_multiscale_is_the_normalised_mean_of_the_scales(tmp_path, tiny_config):
    paths = _pngs(tmp_path, [(96, 72), (80, 80)])
    scales = (1.0, 0.5)
    multi = build_tiny_embedder(tiny_config.replace(scales=scales))
    per_scale = [build_tiny_embedder(tiny_config.replace(size=int(64 * s) if s != 1 else 64)) for s in scales]
    got = dict(multi.embed_files(paths))
    for i, p in enumerate(paths):
        raws = [e.run_batch(np.stack(e.pipeline.load(p)))[0] for e in per_scale]
        expected = np.mean(raws, axis=0)
        expected /= np.linalg.norm(expected)
        np.testing.assert_allclose(got[i], expected, atol=2e-5)


def test_embed_arrays_matches_embed_files_for_lossless_images(tmp_path, tiny_embedder):
    arrays = [smooth_image(s, 96, 72) for s in range(3)]
    paths = []
    for i, a in enumerate(arrays):
        from PIL import Image

        p = tmp_path / f"a{i}.png"
        Image.fromarray(a).save(p)
        paths.append(p)
    from_files = dict(tiny_embedder.embed_files(paths))
    from_arrays = tiny_embedder.embed_arrays(arrays)
    for i in range(3):
        np.testing.assert_allclose(from_arrays[i], from_files[i], atol=2e-5)


def test_embed_views_of_an_uploaded_file_equal_embedding_the_file(tmp_path, tiny_config):
    """The server's path (bytes decoded and resized where they arrive, then embed_views) gives the
    vectors indexing gives the same files, with two scales and a large JPEG decoded in draft mode."""
    from cbir.ingest.decode import decode_views

    embedder = build_tiny_embedder(tiny_config.replace(scales=(1.0, 0.75)))
    paths = [save_image(tmp_path / "big.jpg", seed=1, width=900, height=600), *_pngs(tmp_path, [(96, 72)])]
    from_files = dict(embedder.embed_files(paths))
    views = [decode_views(p.read_bytes(), embedder.geometry, embedder.config.scales) for p in paths]
    assert [len(v) for v in views] == [2, 2]
    from_views = embedder.embed_views(views)
    for i in range(2):
        np.testing.assert_allclose(from_views[i], from_files[i], atol=2e-5)


def test_embed_all_returns_good_rows_and_their_positions(tmp_path, tiny_embedder):
    paths = _pngs(tmp_path, [(96, 72)] * 2)
    (tmp_path / "empty.jpg").write_bytes(b"")
    vecs, order = tiny_embedder.embed_all([paths[0], tmp_path / "empty.jpg", paths[1]], progress=False)
    assert order == [0, 2]
    assert vecs.shape == (2, tiny_embedder.dim)


def test_eager_and_traced_runs_give_the_same_features(tmp_path, tiny_embedder):
    # tiny jobs (a single query) skip graph tracing; the numbers must not depend on it
    paths = _pngs(tmp_path, [(96, 72)] * 3)
    single = dict(tiny_embedder.embed_files(paths[:1]))[0]
    batch = dict(tiny_embedder.embed_files(paths))[0]
    np.testing.assert_allclose(single, batch, atol=2e-5)
    x = np.stack(tiny_embedder.pipeline.load(paths[1]))
    np.testing.assert_allclose(tiny_embedder.run_batch(x, eager=True), tiny_embedder.run_batch(x), atol=2e-5)


def test_exif_rotated_photo_and_its_upright_twin_get_the_same_features(tmp_path, tiny_embedder):
    from PIL import Image

    upright = Image.fromarray(smooth_image(7, 120, 80))
    upright.save(tmp_path / "upright.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: the viewer must turn it 90 degrees clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "sideways.jpg", quality=95)
    got = dict(
        tiny_embedder.embed_files([tmp_path / n for n in ("upright.jpg", "phone.jpg", "sideways.jpg")])
    )
    assert float(got[0] @ got[1]) > 0.999
    assert float(got[0] @ got[2]) < float(got[0] @ got[1]) - 1e-3  # without EXIF it would differ


def test_non_finite_features_are_a_bad_image_never_a_vector(tmp_path, tiny_config, monkeypatch):
    # a pathological image or broken weights can give NaN/inf: such a vector must never be stored
    embedder = build_tiny_embedder(tiny_config.replace(scales=(1.0, 0.5)))
    paths = _pngs(tmp_path, [(96, 72)] * 4)
    clean = dict(embedder.embed_files(paths))
    run_batch = embedder.run_batch
    poisoned = {1: np.nan, 3: np.inf}  # one value of one scale of images 1 and 3
    full_views = {i: embedder.pipeline.load(paths[i])[0] for i in poisoned}

    def broken(batch, eager=False):
        feats = run_batch(batch, eager=eager)
        for row, view in enumerate(batch):
            for i, value in poisoned.items():
                if view.shape == full_views[i].shape and np.array_equal(view, full_views[i]):
                    feats[row, 0] = value
        return feats

    monkeypatch.setattr(embedder, "run_batch", broken)
    got = dict(embedder.embed_files(paths))
    assert sorted(got) == [0, 1, 2, 3]
    for i in poisoned:
        assert isinstance(got[i], BadImageError) and str(got[i]) == "non-finite features"
        assert not got[i].transient
    for i in (0, 2):
        np.testing.assert_allclose(got[i], clean[i], atol=2e-5)
    vecs, order = embedder.embed_all(paths, progress=False)
    assert order == [0, 2] and np.isfinite(vecs).all()
    with pytest.raises(BadImageError, match="image 1: non-finite features"):
        embedder.embed_arrays([smooth_image(0), smooth_image(1)])  # files 0, 1 hold these pixels


def test_embed_files_drives_a_progress_bar(tmp_path, tiny_embedder, monkeypatch):
    from cbir.core import progress as progress_module

    bars = []

    class Bar:
        def __init__(self, total, desc, unit, enabled):
            self.args, self.updates, self.closed = (total, desc, unit, enabled), 0, False
            bars.append(self)

        def update(self, n):
            self.updates += n

        def close(self):
            self.closed = True

    monkeypatch.setattr(progress_module, "progress_bar", Bar)
    paths = _pngs(tmp_path, [(96, 72)] * 3)
    assert len(list(tiny_embedder.embed_files(paths))) == 3
    assert bars == []  # no bar unless asked for
    list(tiny_embedder.embed_files(paths, progress=True, desc="indexing"))
    (bar,) = bars
    assert bar.args == (3, "indexing", "img", True) and bar.updates == 3 and bar.closed
    tiny_embedder.embed_all(paths[:2], progress=None, desc="learning whitening")
    assert bars[1].args == (2, "learning whitening", "img", None) and bars[1].closed


def test_stopping_early_closes_the_bar(tmp_path, tiny_embedder, monkeypatch):
    from cbir.core import progress as progress_module

    closed = []

    class Bar:
        def __init__(self, **kwargs):
            pass

        def update(self, n):
            pass

        def close(self):
            closed.append(True)

    monkeypatch.setattr(progress_module, "progress_bar", Bar)
    results = tiny_embedder.embed_files(_pngs(tmp_path, [(96, 72)] * 5), progress=True)
    next(results)
    results.close()
    assert closed == [True]


def test_embedder_takes_a_resolved_config_and_does_not_resolve_again(tiny_config, monkeypatch):
    weights = Weights.random()
    resolved = resolve_config(tiny_config, weights)
    assert resolved.weights == "random" and resolved.width_multiplier == 0.35

    def never(*args, **kwargs):
        raise AssertionError("resolved twice")

    monkeypatch.setattr(registry, "resolve_config", never)
    monkeypatch.setattr(registry, "width_multiplier", never)
    monkeypatch.setattr(backbones, "width_multiplier", never)
    embedder = Embedder(resolved, weights, workers=2)
    assert embedder.config == resolved and embedder.weights is weights
    assert embedder.embedder() is embedder and embedder.whitening is None
    assert embedder.dim == 1280
    with pytest.raises(ValueError, match="resolve_config"):
        Embedder(tiny_config, weights)  # recorded for ImageNet weights, built with random ones
    with pytest.raises(TypeError, match="Weights"):
        Embedder(resolved, "random")
