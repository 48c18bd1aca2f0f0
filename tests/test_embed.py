"""Embedder: batching by shape, multi-scale averaging, bad files in place, arrays vs files."""

from __future__ import annotations

import numpy as np
from conftest import build_tiny_embedder, save_image, smooth_image

from cbir.errors import BadImageError


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
        raws = [e.run_batch(np.stack(e._load(str(p))))[0] for e in per_scale]
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
    x = np.stack(tiny_embedder._load(str(paths[1])))
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
