"""The instance-level benchmark generator (benchmarks/make_instance.py): seeded and byte-for-byte
deterministic, views that are new views rather than copies, and ground truth `cbir evaluate` reads."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, save_image
from PIL import Image

from cbir.evaluation.groundtruth import load_ground_truth
from cbir.ingest.files import find_images


def load_generator():
    spec = importlib.util.spec_from_file_location("make_instance", REPO / "benchmarks" / "make_instance.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_instance = load_generator()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("source") / "images"
    folder.mkdir()
    for i in range(8):
        save_image(folder / f"{i}.jpg", seed=i, width=192, height=128)
    return folder.parent


def digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_the_same_seed_gives_the_same_files_and_another_seed_other_ones(source, tmp_path):
    make_instance.generate(source, tmp_path / "a", groups=3, seed=5)
    make_instance.generate(source, tmp_path / "b", groups=3, seed=5)
    make_instance.generate(source, tmp_path / "c", groups=3, seed=6)
    a, b, c = digests(tmp_path / "a"), digests(tmp_path / "b"), digests(tmp_path / "c")
    assert a == b
    views_a = {k: v for k, v in a.items() if k.startswith("views/")}
    views_c = {k: v for k, v in c.items() if k.startswith("views/")}
    assert not set(views_a.values()) & set(views_c.values())


def test_ground_truth_groups_views_and_keeps_the_other_images_as_distractors(source, tmp_path):
    out = tmp_path / "bench"
    gt = make_instance.generate(source, out, groups=3, seed=5)
    assert len(gt) == 3
    for query, relevant in gt.items():
        group = query.split("_v")[0]
        assert query.endswith("_v0.jpg") and 1 <= len(relevant) <= 3
        assert all(r.split("_v")[0] == group for r in relevant)
    assert len(list((out / "distractors").iterdir())) == 8 - 3
    files = find_images(out)
    loaded = load_ground_truth(out, files)  # what cbir evaluate reads
    assert loaded.kind == "gt.json" and sorted(loaded.queries) == sorted(gt)
    assert all(loaded.relevant[q] == set(gt[q]) for q in gt)
    params = json.loads((out / "generator.json").read_text())
    assert params["seed"] == 5 and params["views_total"] == sum(1 + len(r) for r in gt.values())


def test_a_view_is_a_warped_rescaled_crop_not_a_copy(source):
    with Image.open(source / "images" / "0.jpg") as im:
        image = im.convert("RGB")
    sizes = set()
    for v in range(6):
        view = make_instance.make_view(image, np.random.default_rng([1, 0, v]))
        assert (
            max(view.size) >= make_instance.LONG_SIDE[0] - 1
            and max(view.size) <= make_instance.LONG_SIDE[1] + 1
        )
        sizes.add(view.size)
    assert len(sizes) == 6  # every view has its own scale and framing


def test_perspective_coefficients_map_the_output_corners_onto_the_quad():
    out = np.array([[0, 0], [100, 0], [100, 60], [0, 60]], float)
    quad = np.array([[10, 5], [120, 12], [110, 80], [3, 70]], float)
    a, b, c, d, e, f, g, h = make_instance.perspective_coefficients(out, quad)
    for (x, y), (u, v) in zip(out, quad):
        w = g * x + h * y + 1
        assert (a * x + b * y + c) / w == pytest.approx(u) and (d * x + e * y + f) / w == pytest.approx(v)


def test_a_used_folder_is_refused(source, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not empty"):
        make_instance.generate(source, tmp_path / "x", groups=2, seed=1)
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"
