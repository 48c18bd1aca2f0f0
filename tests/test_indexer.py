"""Bringing an index up to date: incremental runs, bad files, rebuilds, lock, crash safety (cbir.indexer)."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, Source, interruptible, never
from helpers import run_index as run

from cbir.core.errors import DatasetError, IndexLockedError
from cbir.indexing.indexer import IndexOptions, update_index
from cbir.stores.folder.files import Lock, write_matrix
from cbir.stores.folder.snapshot import open_index
from cbir.stores.folder.store import FolderStore
from cbir.stores.folder.writer import MANIFEST, read_manifest


def vectors(root: Path, index_dir: Path | None = None) -> dict[str, np.ndarray]:
    """path -> stored vector of a committed index."""
    index = open_index(root, index_dir)
    assert len(index.paths) == len(set(index.paths)) == index.feats.shape[0]
    return {p: np.array(index.feats[i], dtype=np.float32) for i, p in enumerate(index.paths)}


def embed_one(embedder, path: Path) -> np.ndarray:
    ((_, vec),) = list(embedder.embed_files([path]))
    assert isinstance(vec, np.ndarray)
    return vec


def index_files(idir: Path) -> list[str]:
    """The files of an index folder, the matrix under its generic name ``feats-*.npy``."""
    return sorted(
        "feats-*.npy" if re.fullmatch(r"feats-[0-9a-f]+\.npy", p.name) else p.name for p in idir.iterdir()
    )


FEATS = "feats-*.npy"


def feats_file(idir: Path) -> Path:
    (segment,) = read_manifest(idir).segments
    return idir / segment.file


def test_first_run_indexes_everything(image_folder, tiny_config, tiny_embedder):
    root = image_folder(6)
    (root / "sub").mkdir()
    (root / "img00.jpg").rename(root / "sub" / "moved.jpg")
    report = run(root, tiny_config, tiny_embedder, checkpoint_every=2)
    assert (report.added, report.updated, report.removed, report.unchanged) == (6, 0, 0, 0)
    assert report.total == report.embedded == 6 and report.skipped == [] and report.rebuilt is None
    idir = root / ".cbir"
    assert index_files(idir) == [FEATS, "lock", MANIFEST]  # checkpoint segments merged and removed
    index = open_index(root)
    assert sorted(index.paths) == [f"img{i:02d}.jpg" for i in range(1, 6)] + ["sub/moved.jpg"]
    assert index.feats.shape == (6, tiny_embedder.dim) and index.feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(index.feats, axis=1), 1.0, atol=1e-5)
    for row, rel in enumerate(index.paths):  # every row belongs to its path
        np.testing.assert_allclose(index.feats[row], embed_one(tiny_embedder, root / rel), atol=1e-5)
    assert index.manifest.config == tiny_embedder.config
    assert index.manifest.root == str(root.resolve())
    d = report.to_dict()
    assert d["added"] == 6 and "images_per_second" in d


def test_up_to_date_run_loads_no_model_and_changes_nothing(image_folder, tiny_config, tiny_embedder):
    root = image_folder(4)
    run(root, tiny_config, tiny_embedder)
    before = (root / ".cbir" / MANIFEST).read_bytes(), feats_file(root / ".cbir").read_bytes()
    report = run(root, tiny_config, never)
    assert (report.added, report.updated, report.removed, report.unchanged, report.total) == (0, 0, 0, 4, 4)
    assert report.embedded == 0
    assert ((root / ".cbir" / MANIFEST).read_bytes(), feats_file(root / ".cbir").read_bytes()) == before


def test_incremental_add_modify_delete(image_folder, make_image, tiny_config, tiny_embedder):
    root = image_folder(8)
    run(root, tiny_config, tiny_embedder)
    before = vectors(root)

    make_image(root / "new_a.jpg", seed=100)
    make_image(root / "sub" / "new_b.png", seed=101)
    modified = root / "img03.jpg"
    make_image(modified, seed=102, width=120, height=90, quality=80)  # new content and size
    st = modified.stat()
    os.utime(modified, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    touched = root / "img05.jpg"  # same bytes, newer mtime: re-embedded (stat is what is compared)
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 7_000_000_000))
    (root / "img06.jpg").unlink()

    report = run(root, tiny_config, tiny_embedder)
    assert (report.added, report.updated, report.removed, report.unchanged) == (2, 2, 1, 5)
    assert report.total == 9 == report.unchanged + report.added + report.updated
    assert report.embedded == 4

    after = vectors(root)
    assert set(after) == (set(before) - {"img06.jpg"}) | {"new_a.jpg", "sub/new_b.png"}
    for rel in ["img00.jpg", "img01.jpg", "img02.jpg", "img04.jpg", "img07.jpg"]:
        np.testing.assert_array_equal(after[rel], before[rel])  # untouched rows: bit-identical
    assert not np.allclose(after["img03.jpg"], before["img03.jpg"], atol=1e-3)
    np.testing.assert_allclose(after["img03.jpg"], embed_one(tiny_embedder, modified), atol=1e-5)
    np.testing.assert_allclose(after["img05.jpg"], before["img05.jpg"], atol=1e-5)
    np.testing.assert_allclose(after["new_a.jpg"], embed_one(tiny_embedder, root / "new_a.jpg"), atol=1e-5)
    manifest = read_manifest(root / ".cbir")
    stats = {e.path: (e.size, e.mtime_ns) for e in manifest.entries}
    st = modified.stat()
    assert stats["img03.jpg"] == (st.st_size, st.st_mtime_ns)
    assert len(manifest.segments) == 1 and manifest.segments[0].file.startswith("feats-")


def test_only_deletions(image_folder, tiny_config, tiny_embedder):
    root = image_folder(5)
    run(root, tiny_config, tiny_embedder)
    before = vectors(root)
    (root / "img00.jpg").unlink()
    (root / "img04.jpg").unlink()
    report = run(root, tiny_config, never)
    assert (report.added, report.removed, report.unchanged, report.total) == (0, 2, 3, 3)
    after = vectors(root)
    assert sorted(after) == ["img01.jpg", "img02.jpg", "img03.jpg"]
    for rel, vec in after.items():
        np.testing.assert_array_equal(vec, before[rel])


def write_bad_files(root: Path, make_image) -> dict[str, str]:
    (root / "notes.jpg").write_text("not an image")
    (root / "empty.png").write_bytes(b"")
    full = make_image(root / "tmp-full.jpg", seed=50, width=300, height=200).read_bytes()
    (root / "tmp-full.jpg").unlink()
    (root / "cut.jpg").write_bytes(full[: len(full) // 3])
    return {"notes.jpg": "not a recognised image", "empty.png": "empty", "cut.jpg": "truncated"}


def test_bad_files_are_skipped_remembered_and_retried_when_changed(
    image_folder, make_image, tiny_config, tiny_embedder, caplog
):
    root = image_folder(4)
    bad = write_bad_files(root, make_image)
    with caplog.at_level(logging.WARNING, logger="cbir"):
        report = run(root, tiny_config, tiny_embedder)
    assert report.total == 4 and report.added == 4 and report.embedded == 4
    reasons = {s["path"]: s["reason"] for s in report.skipped}
    assert set(reasons) == set(bad)
    for rel, why in bad.items():
        assert why in reasons[rel]
        assert any(rel in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    manifest = read_manifest(root / ".cbir")
    assert {s.path for s in manifest.skipped} == set(bad)
    assert sorted(open_index(root).paths) == [f"img{i:02d}.jpg" for i in range(4)]

    # not retried while unchanged: no model needed, not reported again
    report = run(root, tiny_config, never)
    assert report.known_bad == 3 and report.skipped == [] and report.unchanged == 4 and report.added == 0
    assert {s.path for s in read_manifest(root / ".cbir").skipped} == set(bad)

    # fixed: indexed; deleted: forgotten
    make_image(root / "notes.jpg", seed=60)
    (root / "empty.png").unlink()
    report = run(root, tiny_config, tiny_embedder)
    assert (report.added, report.known_bad, report.total) == (1, 1, 5)
    assert [s.path for s in read_manifest(root / ".cbir").skipped] == ["cut.jpg"]
    assert "notes.jpg" in open_index(root).paths


def test_indexed_file_that_becomes_unreadable(image_folder, tiny_config, tiny_embedder):
    root = image_folder(3)
    run(root, tiny_config, tiny_embedder)
    (root / "img01.jpg").write_text("overwritten by something else")
    report = run(root, tiny_config, tiny_embedder)
    assert [s["path"] for s in report.skipped] == ["img01.jpg"]
    assert (report.added, report.updated, report.removed, report.unchanged, report.total) == (0, 0, 1, 2, 2)
    assert sorted(open_index(root).paths) == ["img00.jpg", "img02.jpg"]


def test_odd_but_legal_file_names_keep_the_index_readable(image_folder, tiny_config, tiny_embedder):
    """A backslash is an ordinary character of a POSIX name: indexed, and the index stays readable
    (it once read as damaged and was rebuilt on every run). A name with a control character is
    skipped with its reason, the character shown escaped, and the rest is indexed."""
    root = image_folder(2)
    (root / "img00.jpg").rename(root / "back\\slash.jpg")
    (root / "img01.jpg").rename(root / "new\nline.jpg")
    first = run(root, tiny_config, tiny_embedder)
    assert first.added == 1 and first.skipped == [
        {"path": "new\\x0aline.jpg", "reason": "a control character in its name; rename it to index it"}
    ]
    again = run(root, tiny_config, never)
    assert (again.unchanged, again.rebuilt, len(again.skipped)) == (1, None, 1)
    index = open_index(root)
    assert index.paths == ["back\\slash.jpg"] and index.file(0) == root / "back\\slash.jpg"


def test_only_bad_files(tmp_path, tiny_config, tiny_embedder):
    root = tmp_path / "data"
    root.mkdir()
    (root / "a.jpg").write_text("x")
    report = run(root, tiny_config, tiny_embedder)
    assert report.total == 0 and report.added == 0 and len(report.skipped) == 1
    index = open_index(root)
    assert len(index) == 0 and index.feats.shape == (0, tiny_embedder.dim)
    assert run(root, tiny_config, never).known_bad == 1


def test_empty_or_missing_dataset(tmp_path, tiny_config):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="no images"):
        run(tmp_path / "empty", tiny_config, never)
    assert not (tmp_path / "empty" / ".cbir").exists()
    with pytest.raises(DatasetError, match="not found"):
        run(tmp_path / "missing", tiny_config, never)


def test_config_change_rebuilds(image_folder, tiny_config, tiny_embedder, build_embedder):
    root = image_folder(4)
    run(root, tiny_config, tiny_embedder)
    before = vectors(root)
    other = tiny_config.replace(pooling="max")
    report = run(root, other, lambda: build_embedder(other))
    assert report.rebuilt == "settings changed"
    assert (report.added, report.unchanged, report.total) == (4, 0, 4)
    index = open_index(root)
    assert index.manifest.config.pooling == "max"
    after = vectors(root)
    assert not np.allclose(after["img00.jpg"], before["img00.jpg"], atol=1e-3)
    # back to the first settings: rebuilt again, with the first model's vectors
    report = run(root, tiny_config, tiny_embedder)
    assert report.rebuilt == "settings changed" and report.added == 4
    for rel, vec in vectors(root).items():
        np.testing.assert_allclose(vec, before[rel], atol=1e-5)


def test_rebuild_forced(image_folder, tiny_config, tiny_embedder):
    root = image_folder(3)
    run(root, tiny_config, tiny_embedder)
    report = run(root, tiny_config, tiny_embedder, rebuild=True)
    assert report.rebuilt == "asked" and report.added == 3 and report.unchanged == 0 and report.total == 3
    assert index_files(root / ".cbir") == [FEATS, "lock", MANIFEST]


def test_damaged_manifest_rebuilds(image_folder, tiny_config, tiny_embedder):
    root = image_folder(3)
    run(root, tiny_config, tiny_embedder)
    (root / ".cbir" / MANIFEST).write_text('{"format": "cbir-index", "version": 1, "entr')
    report = run(root, tiny_config, tiny_embedder)
    assert report.rebuilt == "damaged" and report.added == 3
    assert len(open_index(root)) == 3


def test_embedder_with_other_settings_is_refused(image_folder, tiny_config, tiny_embedder):
    root = image_folder(2)
    with pytest.raises(ValueError, match="settings differ"):
        run(root, tiny_config.replace(gem_p=4.0), tiny_embedder)


def test_lock_held(image_folder, tiny_config, tiny_embedder):
    root = image_folder(2)
    run(root, tiny_config, tiny_embedder)
    manifest_before = (root / ".cbir" / MANIFEST).read_bytes()
    (root / "img01.jpg").unlink()
    with Lock(root / ".cbir"):
        with pytest.raises(IndexLockedError):
            run(root, tiny_config, never)
    assert (root / ".cbir" / MANIFEST).read_bytes() == manifest_before
    assert run(root, tiny_config, never).removed == 1


def test_dtype_float16(image_folder, tiny_config, tiny_embedder):
    root = image_folder(5)
    run(root, tiny_config, tiny_embedder, index_dir=root / "idx32")
    report = run(root, tiny_config, tiny_embedder, dtype="float16", index_dir=root / "idx16")
    assert report.added == 5
    half = open_index(root, root / "idx16")
    assert half.feats.dtype == np.float16 and half.manifest.dtype == "float16"
    assert np.load(feats_file(root / "idx16"), mmap_mode="r").dtype == np.float16
    full = vectors(root, root / "idx32")
    for rel, vec in vectors(root, root / "idx16").items():
        np.testing.assert_allclose(vec, full[rel], atol=2e-3)

    # an existing float32 index converted in place, keeping its rows
    report = run(root, tiny_config, never, dtype="float16", index_dir=root / "idx32")
    assert report.unchanged == 5
    assert open_index(root, root / "idx32").feats.dtype == np.float16
    with pytest.raises(ValueError, match="dtype"):
        run(root, tiny_config, never, dtype="int8")


def test_separate_index_dir_leaves_dataset_alone(image_folder, tmp_path, tiny_config, tiny_embedder):
    root = image_folder(2)
    report = run(root, tiny_config, tiny_embedder, index_dir=tmp_path / "elsewhere")
    assert report.index_dir == str(tmp_path / "elsewhere")
    assert not (root / ".cbir").exists()
    assert len(open_index(root, tmp_path / "elsewhere")) == 2


def test_discovery_options_are_passed_on(image_folder, make_image, tiny_config, tiny_embedder):
    root = image_folder(2)
    make_image(root / "sub" / "deep.jpg", seed=9)
    make_image(root / ".hidden" / "h.jpg", seed=10)
    make_image(root / "img_thumb.jpg", seed=11)
    run(root, tiny_config, tiny_embedder, recursive=False, exclude=["*_thumb.*"])
    assert sorted(open_index(root).paths) == ["img00.jpg", "img01.jpg"]
    run(root, tiny_config, tiny_embedder, include_hidden=True)
    assert sorted(open_index(root).paths) == [
        ".hidden/h.jpg",
        "img00.jpg",
        "img01.jpg",
        "img_thumb.jpg",
        "sub/deep.jpg",
    ]


class FailingEmbedder:
    """Wraps an Embedder and raises after ``after`` vectors, like a crash in the middle of a run."""

    def __init__(self, inner, after: int, exc: BaseException):
        self.inner, self.after, self.exc = inner, after, exc
        self.config, self.dim = inner.config, inner.dim

    def embed_files(self, paths, **kwargs):
        for n, item in enumerate(self.inner.embed_files(paths, **kwargs)):
            if n == self.after:
                raise self.exc
            yield item


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_error_mid_run_keeps_finished_work(image_folder, tiny_config, tiny_embedder, exc):
    root = image_folder(12)
    failing = FailingEmbedder(tiny_embedder, after=7, exc=exc)
    with pytest.raises(type(exc)):
        run(root, tiny_config, lambda: failing, checkpoint_every=5)
    manifest = read_manifest(root / ".cbir")
    assert len(manifest.entries) == 7  # 5 checkpointed + 2 saved on the way out
    index = open_index(root)
    for row, rel in enumerate(index.paths):
        np.testing.assert_allclose(index.feats[row], embed_one(tiny_embedder, root / rel), atol=1e-5)
    report = run(root, tiny_config, tiny_embedder)
    assert (report.unchanged, report.added, report.total) == (7, 5, 12)
    assert index_files(root / ".cbir") == [FEATS, "lock", MANIFEST]


def test_crash_after_writing_a_matrix_before_committing_it(image_folder, tiny_config, tiny_embedder):
    root = image_folder(4)
    run(root, tiny_config, tiny_embedder)
    idir = root / ".cbir"
    good = vectors(root)
    # the state a crash leaves after writing a new matrix (and a temporary) but before the commit
    write_matrix(
        idir / "feats-0123abcd.npy",
        [np.zeros((7, tiny_embedder.dim), np.float32)],
        7,
        tiny_embedder.dim,
        "float32",
    )
    (idir / "part-0123.npy.tmp-1-ab").write_bytes(b"half a file")
    assert vectors(root).keys() == good.keys()  # readers go by the committed manifest
    for rel, vec in vectors(root).items():
        np.testing.assert_array_equal(vec, good[rel])
    report = run(root, tiny_config, never)  # nothing to embed: the writer only cleans up
    assert report.unchanged == 4
    assert index_files(idir) == [FEATS, "lock", MANIFEST]
    for rel, vec in vectors(root).items():
        np.testing.assert_array_equal(vec, good[rel])


CRASH_SCRIPT = """
import json, sys, time
import keras
from cbir.encoders.embedder import Embedder
from cbir.encoders.features import FeatureConfig
from cbir.encoders.registry import resolve_config
from cbir.encoders.weights import Weights
from cbir.indexing.indexer import IndexOptions, update_index

config = FeatureConfig.from_dict(json.loads(sys.argv[2]))
keras.utils.set_random_seed(1234)
embedder = Embedder(resolve_config(config, Weights.random()), Weights.random(), workers=2, batch_size=1)
run_batch = embedder.run_batch

def slow(batch, **kwargs):
    time.sleep(0.15)  # leaves time to kill it in the middle of the run
    return run_batch(batch, **kwargs)

embedder.run_batch = slow
embedder.embedder = lambda: embedder  # the Embedder is its own EncoderSource
update_index(sys.argv[1], embedder, options=IndexOptions(checkpoint_every=5, progress=False))
print("finished", flush=True)
"""


def committed_rows(idir: Path) -> int:
    try:
        return len(json.loads((idir / MANIFEST).read_text())["entries"])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_killed_indexer_subprocess(image_folder, tiny_config, tiny_embedder, sig):
    root = image_folder(40)
    idir = root / ".cbir"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASH_SCRIPT, str(root), json.dumps(tiny_config.to_dict())],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO,
        preexec_fn=interruptible,
    )
    try:
        deadline = time.monotonic() + 120
        while committed_rows(idir) == 0:
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint committed in time"
            time.sleep(0.02)
        assert proc.poll() is None, "the indexer finished before it could be interrupted"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0 and b"finished" not in out
    if sig == signal.SIGINT:
        assert b"KeyboardInterrupt" in err

    rows = committed_rows(idir)
    assert 5 <= rows < 40
    if sig == signal.SIGKILL:
        assert rows % 5 == 0  # only whole checkpoints survive a hard kill
    index = open_index(root)  # what is on disk is a consistent index
    assert len(index) == rows == index.feats.shape[0]
    assert len(set(index.paths)) == rows
    for row, rel in enumerate(index.paths):  # rows and paths line up (same seeded model)
        np.testing.assert_allclose(index.feats[row], embed_one(tiny_embedder, root / rel), atol=1e-4)

    report = run(root, tiny_config, tiny_embedder)
    assert report.unchanged == rows  # checkpointed images are not embedded again
    assert report.added == report.embedded == 40 - rows
    assert report.total == 40
    assert index_files(idir) == [FEATS, "lock", MANIFEST]  # stale segments and temporaries gone
    assert len(open_index(root)) == 40


def test_messy_photo_folder(tmp_path, tiny_config, tiny_embedder, caplog):
    """A real-life folder in one go: every format and mode, broken files, junk, odd names, a loop."""
    from conftest import smooth_image
    from PIL import Image

    root = tmp_path / "photos"
    (root / "2024" / "été").mkdir(parents=True)
    (root / ".thumbnails").mkdir()
    rgb = Image.fromarray(smooth_image(1, 90, 60))
    good = {
        "a.JPG": lambda p: rgb.save(p, "JPEG"),
        "b.jpeg": lambda p: rgb.rotate(90, expand=True).save(p, "JPEG"),
        "c.png": lambda p: rgb.convert("RGBA").save(p),
        "d.bmp": lambda p: rgb.save(p),
        "e.gif": lambda p: rgb.convert("P").save(p),
        "f.webp": lambda p: rgb.save(p),
        "g.TIFF": lambda p: rgb.convert("CMYK").save(p),
        "2024/grey scale.png": lambda p: rgb.convert("L").save(p),
        "2024/été/plage ünïcode.png": lambda p: rgb.convert("LA").save(p),
        "2024/sixteen.png": lambda p: Image.fromarray(
            smooth_image(2, 90, 60)[..., 0].astype(np.uint16) * 257
        ).save(p),
    }
    for name, save in good.items():
        save(root / name)
    bad = {"empty.jpg": b"", "notes.jpg": b"just text, not a picture"}
    for name, data in bad.items():
        (root / name).write_bytes(data)
    jpeg = (root / "a.JPG").read_bytes()
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (root / "._a.JPG").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    rgb.save(root / ".thumbnails" / "t.jpg")
    (root / "2024" / "loop").symlink_to(root, target_is_directory=True)

    rep = run(root, tiny_config, tiny_embedder)
    index = open_index(root)
    assert sorted(index.paths) == sorted(good)
    assert sorted(s["path"] for s in rep.skipped) == ["empty.jpg", "notes.jpg", "truncated.jpg"]
    assert (rep.added, rep.total, rep.embedded) == (len(good), len(good), len(good))
    assert all(name in caplog.text for name in ("empty.jpg", "notes.jpg", "truncated.jpg"))
    assert np.allclose(np.linalg.norm(np.asarray(index.feats), axis=1), 1, atol=1e-5)
    again = run(root, tiny_config, tiny_embedder)
    assert (again.added, again.unchanged, again.known_bad, again.embedded) == (0, len(good), 3, 0)


def test_a_store_given_to_the_indexer_is_the_one_written_and_read(
    image_folder, tmp_path, tiny_config, tiny_embedder
):

    root = image_folder(3)
    store = FolderStore(root, tmp_path / "elsewhere")
    report = update_index(
        root, Source(tiny_embedder, tiny_config), options=IndexOptions(progress=False), store=store
    )
    assert report.index_dir == store.location == str(tmp_path / "elsewhere") and report.total == 3
    assert not (root / ".cbir").exists()
    assert sorted(store.open().paths) == ["img00.jpg", "img01.jpg", "img02.jpg"]
