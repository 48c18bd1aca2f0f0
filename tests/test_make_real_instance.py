"""The real instance benchmark builder (benchmarks/make_real_instance.py): which photos it picks,
that every file is checked against the manifest, and ground truth `cbir evaluate` reads."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, save_image

from cbir.evaluation.groundtruth import load_ground_truth
from cbir.ingest.files import find_images


def load_builder():
    path = REPO / "benchmarks" / "make_real_instance.py"
    spec = importlib.util.spec_from_file_location("make_real_instance", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mri = load_builder()
PHOTOS = 13  # per product: more than PER_PRODUCT, so the choice is a real choice


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A folder laid out like the Grocery Store Dataset: two products, two fruits, three splits."""
    root = tmp_path_factory.mktemp("grocery") / "GroceryStoreDataset-main"
    seed = 0
    for kind, name in (
        ("Packages/Milk", "Milk-A"),
        ("Packages/Juice", "Juice-B"),
        ("Fruit/Apple", "Red"),
        ("Fruit/Kiwi", "Kiwi"),
    ):
        for i in range(PHOTOS):
            split = "train" if i < 8 else ("val" if i < 10 else "test")
            seed += 1
            save_image(
                root / "dataset" / split / kind / name / f"{name}_{i:03d}.jpg", seed=seed, width=64, height=64
            )
    # the same shot saved twice, sorted next to its original where plain even spacing (14 photos,
    # positions 0 2 3 4 6 7 8 10 11 13) would pick both: the builder must pass one over
    milk = root / "dataset" / "train" / "Packages" / "Milk" / "Milk-A"
    shutil.copyfile(milk / "Milk-A_002.jpg", milk / "Milk-A_001b.jpg")
    return root.parent


def test_ten_distinct_photos_per_product_spread_over_the_splits_and_every_eighth_distractor(source):
    src = mri.Source(str(source))
    products, distractors = mri.choose(src.files, lambda p: mri.average_hash(src.read(p)))
    assert sorted(products) == ["Juice-B", "Milk-A"]
    for paths in products.values():
        assert len(paths) == mri.PER_PRODUCT == len(set(paths))
        assert {p.split("/")[1] for p in paths} == {"train", "val", "test"}
        hashes = [mri.average_hash(src.read(p)) for p in paths]
        assert all(
            bin(a ^ b).count("1") > mri.SAME_SHOT for i, a in enumerate(hashes) for b in hashes[i + 1 :]
        )
    chosen_milk = {p.rsplit("/", 1)[1] for p in products["Milk-A"]}
    assert len({"Milk-A_002.jpg", "Milk-A_001b.jpg"} & chosen_milk) == 1
    assert len(distractors) == -(-2 * PHOTOS // mri.DISTRACTOR_STEP)
    assert all("/Fruit/" in p for p in distractors)


def test_builds_ground_truth_that_evaluate_reads_and_checks_every_file(source, tmp_path):
    manifest = tmp_path / "pinned.sha256"
    gt = mri.build(mri.Source(str(source)), tmp_path / "a", manifest=manifest, write_manifest=True)
    assert len(gt) == 2 * mri.PER_PRODUCT
    files = find_images(tmp_path / "a")
    loaded = load_ground_truth(tmp_path / "a", files)
    assert loaded.kind == "gt.json" and len(loaded.queries) == 2 * mri.PER_PRODUCT
    for query in loaded.queries:
        rel = loaded.relevant[query]
        assert len(rel) == mri.PER_PRODUCT - 1 and all(r.split("/")[1] == query.split("/")[1] for r in rel)
    assert json.loads((tmp_path / "a" / "gt.json").read_text()) == gt
    assert "MIT" in (tmp_path / "a" / "SOURCE").read_text()
    # rebuilt from the pinned manifest: the same bytes
    mri.build(mri.Source(str(source)), tmp_path / "b", manifest=manifest)
    for f in find_images(tmp_path / "a"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    # one changed digest: refused, and no half-written folder is left behind
    lines = manifest.read_text().splitlines()
    lines[0] = "0" * 64 + lines[0][64:]
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(mri.SourceError, match="checksum mismatch"):
        mri.build(mri.Source(str(source)), tmp_path / "c", manifest=manifest)
    assert not (tmp_path / "c").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".real-instance-")]


def test_the_command_line_refuses_a_source_that_is_not_the_pinned_one(source, tmp_path):
    script = REPO / "benchmarks" / "make_real_instance.py"
    proc = subprocess.run(
        [sys.executable, script, str(source), "--out", str(tmp_path / "out")], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("make_real_instance: the chosen files differ")
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
    proc = subprocess.run(
        [sys.executable, script, str(tmp_path / "missing"), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "source not found" in proc.stderr
