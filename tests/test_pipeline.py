"""The image pipeline (cbir.ingest.pipeline): batches of one shape, every view once, bad items in place."""

from __future__ import annotations

import errno
import threading

import numpy as np
import pytest
from conftest import save_image, smooth_image

from cbir.core.errors import BadImageError
from cbir.ingest.decode import Geometry, load_views
from cbir.ingest.pipeline import BadItem, Batch, ImagePipeline


def collect(stream):
    """(batches, bad items by position, views by position in delivery order, done order)."""
    batches, bad, views, done = [], {}, {}, []
    for item in stream:
        if isinstance(item, BadItem):
            assert isinstance(item.error, BadImageError)
            pos, error = item  # a plain (position, error) pair as well
            bad[pos] = error
            continue
        assert isinstance(item, Batch)
        assert item.array.dtype == np.uint8 and item.array.ndim == 4 and item.array.shape[-1] == 3
        assert len(item.items) == len(item.array)
        batches.append(item)
        for pos, view in zip(item.items, item.array):
            assert pos not in done, "a view came after its image was done"
            views.setdefault(pos, []).append(view)
        done += item.done
    return batches, bad, views, done


def test_views_of_files_batched_by_shape(tmp_path):
    sizes = [(96, 72), (72, 96), (96, 72), (120, 60), (72, 96), (96, 72), (96, 72)]
    paths = [save_image(tmp_path / f"{i}.png", seed=i, width=w, height=h) for i, (w, h) in enumerate(sizes)]
    geometry = Geometry(64, "long", "bilinear")
    pipeline = ImagePipeline(geometry, scales=(1.0, 0.5), workers=2, batch_size=3)
    batches, bad, views, done = collect(pipeline.from_files(paths))
    assert bad == {} and sorted(done) == list(range(len(paths)))
    for b in batches:
        assert 1 <= len(b.array) <= 3  # one shape per batch, never more than batch_size rows
    for i, p in enumerate(paths):
        expected = load_views(p, geometry, (1.0, 0.5))
        got = sorted(views[i], key=lambda v: -v.size)  # delivery order follows the batches
        assert len(got) == 2
        for v, e in zip(got, expected):
            np.testing.assert_array_equal(v, e)
    w, h = geometry.output_size(120, 60)
    assert pipeline.load(paths[3])[0].shape == (h, w, 3) == (32, 64, 3)


def test_bad_files_keep_their_position(tmp_path):
    good = [save_image(tmp_path / f"{i}.png", seed=i) for i in range(3)]
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    files = [good[0], tmp_path / "broken.jpg", good[1], tmp_path / "missing.jpg", good[2]]
    _, bad, views, done = collect(ImagePipeline(Geometry(64), workers=2).from_files(files))
    assert sorted(bad) == [1, 3] and sorted(done) == [0, 2, 4]
    assert "not a recognised image" in str(bad[1]) and "cannot read" in str(bad[3])
    assert all(len(views[i]) == 1 for i in (0, 2, 4))


def test_unexpected_decoder_failure_becomes_a_bad_image(tmp_path, monkeypatch):
    paths = [save_image(tmp_path / f"{i}.png", seed=i) for i in range(3)]
    pipeline = ImagePipeline(Geometry(64), workers=2)
    load = pipeline.load

    def flaky(path):
        if path.endswith("1.png"):
            raise RuntimeError("decoder bug")
        if path.endswith("2.png"):
            raise PermissionError(errno.EACCES, "Permission denied")
        return load(path)

    monkeypatch.setattr(pipeline, "load", flaky)
    _, bad, _, done = collect(pipeline.from_files(paths))
    assert done == [0] and sorted(bad) == [1, 2]
    assert str(bad[1]) == "cannot decode (RuntimeError: decoder bug)" and not bad[1].transient
    assert bad[2].transient


def test_from_arrays_matches_from_files_for_lossless_images(tmp_path):
    arrays = [smooth_image(s, 96, 72) for s in range(3)] + [np.full((50, 40, 4), 255, np.uint8)]
    paths = [save_image(tmp_path / f"{s}.png", seed=s) for s in range(3)]
    pipeline = ImagePipeline(Geometry(64, "squash", "bilinear"), scales=(1.0, 2.0), workers=2, batch_size=2)
    _, _, from_files, _ = collect(pipeline.from_files(paths))
    _, bad, from_arrays, done = collect(pipeline.from_arrays(arrays))
    assert bad == {} and sorted(done) == [0, 1, 2, 3]
    for i in range(3):
        for a, b in zip(from_arrays[i], from_files[i]):
            np.testing.assert_array_equal(a, b)
    assert from_arrays[3][0].shape == (64, 64, 3)  # RGBA composited to RGB like a file


def test_an_unusable_array_is_a_bad_item():
    _, bad, _, done = collect(ImagePipeline(Geometry(64), workers=1).from_arrays([np.zeros((2, 2, 2, 2))]))
    assert done == [] and "cannot decode" in str(bad[0])


def test_prefetch_is_bounded_and_threads_stop_when_the_consumer_does(tmp_path):
    paths = [save_image(tmp_path / f"{i}.png", seed=i % 3) for i in range(40)]
    pipeline = ImagePipeline(Geometry(64), workers=2, batch_size=2)
    started = []
    load = pipeline.load
    pipeline.load = lambda p: started.append(p) or load(p)  # type: ignore[method-assign]
    stream = pipeline.from_files(paths)
    first = next(stream)
    assert isinstance(first, Batch) and first.items == [0, 1]
    assert len(started) <= 2 * 2 + 3  # prefetch = max(2 * batch_size, 2 * workers), plus refills
    stream.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("cbir-decode")]


def test_settings_are_checked():
    with pytest.raises(ValueError, match="batch_size"):
        ImagePipeline(Geometry(64), batch_size=0)
    with pytest.raises(ValueError, match="scale"):
        ImagePipeline(Geometry(64), scales=())
    assert ImagePipeline(Geometry(64)).workers >= 1
