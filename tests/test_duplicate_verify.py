"""The pixel check of near-duplicate candidates: ORB keypoints + RANSAC on real Corel photos."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import COREL_IMAGES, require
from PIL import Image, ImageEnhance

from cbir.core.errors import CbirError
from cbir.duplicates.graph import Edges, similar_pairs
from cbir.duplicates.verify import (
    MIN_INLIERS,
    SAME_PICTURE,
    agreeing_matches,
    count_inliers,
    keep_verified,
    keypoints_of,
    verified,
)
from cbir.search.exact import ExactSearcher

EDITS = {
    "grey": lambda im: im.convert("L"),
    "crop": lambda im: im.crop((30, 20, im.width - 25, im.height - 15)),
    "rotate": lambda im: im.rotate(4, resample=Image.Resampling.BICUBIC),
    "small": lambda im: im.resize((im.width // 3, im.height // 3)),
    "light": lambda im: ImageEnhance.Contrast(ImageEnhance.Brightness(im).enhance(1.2)).enhance(0.8),
}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A Corel photo, its edited copies (JPEG quality 40), and two other photos of the same class."""
    folder = tmp_path_factory.mktemp("photos")
    original = Image.open(require(COREL_IMAGES / "520.jpg")).convert("RGB")
    original.save(folder / "original.jpg", quality=95)
    for name, edit in EDITS.items():
        edit(original).save(folder / f"{name}.jpg", quality=40)
    for n in (530, 545):  # elephants too, other photos
        Image.open(require(COREL_IMAGES / f"{n}.jpg")).save(folder / f"other{n}.jpg")
    return folder


@pytest.mark.parametrize("edit", list(EDITS))
def test_an_edited_copy_matches_its_original(photos, edit):
    original = keypoints_of(photos / "original.jpg")
    assert agreeing_matches(original, keypoints_of(photos / f"{edit}.jpg")) >= MIN_INLIERS


@pytest.mark.parametrize("other", [530, 545])
def test_another_photo_of_the_same_subject_does_not(photos, other):
    original = keypoints_of(photos / "original.jpg")
    assert agreeing_matches(original, keypoints_of(photos / f"other{other}.jpg")) < MIN_INLIERS // 2


def test_unreadable_or_featureless_images_never_match(photos, tmp_path, caplog):
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    Image.new("RGB", (200, 150), (90, 90, 90)).save(tmp_path / "flat.png")
    assert keypoints_of(tmp_path / "broken.jpg") is None and "broken.jpg" in caplog.text
    flat = keypoints_of(tmp_path / "flat.png")
    assert flat is not None and len(flat) == 0
    original = keypoints_of(photos / "original.jpg")
    assert agreeing_matches(original, None) == agreeing_matches(original, flat) == 0


def test_count_inliers_checks_every_pair_and_keeps_the_verified(photos):
    files = [photos / n for n in ("original.jpg", "grey.jpg", "other530.jpg", "missing.jpg", "crop.jpg")]
    edges = Edges(
        np.array([0, 0, 0, 1], dtype=np.int64),
        np.array([1, 2, 3, 4], dtype=np.int64),
        np.array([0.8, 0.9, 0.7, 0.6], dtype=np.float32),
    )
    inliers = count_inliers(edges, lambda r: files[r], progress=False, workers=2)
    assert inliers.shape == (4,) and inliers[2] == 0  # the missing file: no match, no error
    kept = keep_verified(edges, inliers)
    assert list(zip(kept.a.tolist(), kept.b.tolist())) == [(0, 1), (1, 4)]
    assert kept.score.tolist() == pytest.approx([0.8, 0.6])  # the cosine stays the pair's score


def test_a_missing_opencv_is_one_clear_error(monkeypatch, photos):
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(CbirError, match="opencv-python-headless"):
        keypoints_of(photos / "original.jpg")


def test_a_low_threshold_keeps_only_the_first_neighbours_unless_they_all_score_high():
    rng = np.random.default_rng(3)
    centre = rng.standard_normal(16)
    feats = centre + 0.45 * rng.standard_normal((60, 16))  # one loose cluster, cosine ~0.8
    feats = (feats / np.linalg.norm(feats, axis=1, keepdims=True)).astype(np.float32)
    searcher = ExactSearcher(feats)
    rows = np.arange(len(feats))
    capped = similar_pairs(searcher, rows, 0.3, first_k=4, grow_above=0.99)
    grown = similar_pairs(searcher, rows, 0.3, first_k=4)
    per_row = np.bincount(np.concatenate([capped.a, capped.b]), minlength=len(feats))
    assert len(capped) <= 4 * len(feats) < len(grown) and per_row.min() >= 4
    assert len(grown) == int(np.triu(feats @ feats.T >= 0.3, 1).sum())  # without the cap: every pair


def test_the_same_picture_needs_no_check_even_without_keypoints(tmp_path):
    Image.new("RGB", (60, 40), (200, 30, 30)).save(tmp_path / "red.png")
    Image.new("RGB", (60, 40), (200, 30, 30)).save(tmp_path / "red copy.png")
    files = [tmp_path / "red.png", tmp_path / "red copy.png", tmp_path / "gone.png"]
    edges = Edges(
        np.array([0, 0], dtype=np.int64),
        np.array([1, 2], dtype=np.int64),
        np.array([1.0, SAME_PICTURE - 0.01], dtype=np.float32),
    )
    opened: list[int] = []

    def file_of(row: int):
        opened.append(row)
        return files[row]

    kept = verified(edges, file_of, progress=False)
    assert list(zip(kept.a.tolist(), kept.b.tolist())) == [(0, 1)]  # flat: no keypoints, same picture
    assert sorted(set(opened)) == [0, 2]  # only the pair below SAME_PICTURE was read
