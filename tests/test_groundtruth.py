"""Ground-truth detection and parsing on tiny folders (the loader only reads names, CSV and JSON)."""

import json
import os
from pathlib import Path

import pytest

from cbir.core.errors import DatasetError
from cbir.evaluation.groundtruth import load_ground_truth

SHARED = Path(__file__).resolve().parents[2] / "shared"
COREL = SHARED / "datasets" / "corel1k"


def touch(root: Path, *names: str) -> list[str]:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).touch()
    return sorted(names)


def test_labels_csv_matches_basenames_into_a_subfolder(tmp_path):
    files = touch(
        tmp_path,
        "images/a1.jpg",
        "images/a2.jpg",
        "images/a3.jpg",
        "images/b1.jpg",
        "images/b2.jpg",
        "images/unlabelled.jpg",
    )
    (tmp_path / "labels.csv").write_text(
        "file,label,label_name\na1.jpg,0,cats\na2.jpg,0,cats\na3.jpg,0,cats\nb1.jpg,1,dogs\nb2.jpg,1,dogs\n"
    )
    gt = load_ground_truth(tmp_path, files)
    assert gt.kind == "labels" and not gt.ukbench
    assert gt.queries == ["images/a1.jpg", "images/a2.jpg", "images/a3.jpg", "images/b1.jpg", "images/b2.jpg"]
    assert gt.relevant["images/a1.jpg"] == {"images/a2.jpg", "images/a3.jpg"}  # never the query itself
    assert gt.relevant["images/b2.jpg"] == {"images/b1.jpg"}
    assert len(gt.relevant["images/a2.jpg"]) == 2
    assert "images/unlabelled.jpg" not in gt.relevant  # a distractor, not a query
    assert gt.labels["images/b1.jpg"] == "1"
    assert gt.class_names == {"0": "cats", "1": "dogs"}
    assert dict(gt.relevant.items()).keys() == set(gt.queries)


def test_labels_csv_exact_paths_and_extra_columns(tmp_path):
    files = touch(tmp_path, "x/1.jpg", "y/1.jpg", "x/2.jpg")
    (tmp_path / "labels.csv").write_text("file,label,note\nx/1.jpg,a,\ny/1.jpg,a,\nx/2.jpg,b,\n")
    gt = load_ground_truth(tmp_path, files)
    assert gt.relevant["x/1.jpg"] == {"y/1.jpg"}
    assert gt.relevant["x/2.jpg"] == set()
    assert gt.class_names == {}


def test_labels_csv_ambiguous_basename_is_an_error(tmp_path):
    files = touch(tmp_path, "x/1.jpg", "y/1.jpg")
    (tmp_path / "labels.csv").write_text("file,label\n1.jpg,a\n")
    with pytest.raises(DatasetError, match="matches 2 indexed images"):
        load_ground_truth(tmp_path, files)


def test_labels_csv_file_not_indexed_is_left_out_with_a_warning(tmp_path, caplog):
    # a skipped (unreadable) image is not in the index: it drops out of the ground truth
    files = touch(tmp_path, "1.jpg", "2.jpg")
    (tmp_path / "labels.csv").write_text("file,label\n1.jpg,a\nmissing.jpg,a\n2.jpg,a\n")
    gt = load_ground_truth(tmp_path, files)
    assert sorted(gt.queries) == ["1.jpg", "2.jpg"]
    assert gt.relevant["1.jpg"] == {"2.jpg"}
    assert "missing.jpg" in caplog.text
    (tmp_path / "labels.csv").write_text("file,label\nmissing.jpg,a\n")
    with pytest.raises(DatasetError, match="no labelled images among the indexed"):
        load_ground_truth(tmp_path, files)


def test_labels_csv_bad_header_and_conflicting_labels(tmp_path):
    files = touch(tmp_path, "1.jpg")
    (tmp_path / "labels.csv").write_text("name,class\n1.jpg,a\n")
    with pytest.raises(DatasetError, match="header"):
        load_ground_truth(tmp_path, files)
    (tmp_path / "labels.csv").write_text("file,label\n1.jpg,a\n1.jpg,b\n")
    with pytest.raises(DatasetError, match="two labels"):
        load_ground_truth(tmp_path, files)


def test_gt_json(tmp_path):
    files = touch(tmp_path, "q1.jpg", "r1.jpg", "r2.jpg", "q2.jpg", "sub/r3.jpg", "other.jpg")
    doc = {"q1.jpg": ["r1.jpg", "r2.jpg", "q1.jpg"], "q2.jpg": ["r3.jpg"]}  # the query itself is dropped
    (tmp_path / "gt.json").write_text(json.dumps(doc))
    gt = load_ground_truth(tmp_path, files)
    assert gt.kind == "gt.json" and gt.labels is None
    assert gt.queries == ["q1.jpg", "q2.jpg"]
    assert gt.relevant == {"q1.jpg": {"r1.jpg", "r2.jpg"}, "q2.jpg": {"sub/r3.jpg"}}


def test_gt_json_wrong_shape(tmp_path):
    files = touch(tmp_path, "q1.jpg")
    (tmp_path / "gt.json").write_text(json.dumps(["q1.jpg"]))
    with pytest.raises(DatasetError, match="expected an object"):
        load_ground_truth(tmp_path, files)


def test_labels_csv_wins_over_gt_json(tmp_path):
    files = touch(tmp_path, "a.jpg", "b.jpg")
    (tmp_path / "labels.csv").write_text("file,label\na.jpg,x\nb.jpg,x\n")
    (tmp_path / "gt.json").write_text(json.dumps({"a.jpg": []}))
    assert load_ground_truth(tmp_path, files).kind == "labels"


def test_holidays_naming(tmp_path):
    files = touch(
        tmp_path, "jpg/100000.jpg", "jpg/100001.jpg", "jpg/100002.jpg", "jpg/100100.jpg", "jpg/100101.jpg"
    )
    gt = load_ground_truth(tmp_path, files)
    assert gt.kind == "holidays" and not gt.ukbench
    assert gt.queries == ["jpg/100000.jpg", "jpg/100100.jpg"]
    assert gt.relevant["jpg/100000.jpg"] == {"jpg/100001.jpg", "jpg/100002.jpg"}
    assert gt.relevant["jpg/100100.jpg"] == {"jpg/100101.jpg"}
    assert "jpg/100001.jpg" not in gt.relevant  # only the xxxx00 image of a group is a query
    assert gt.labels["jpg/100002.jpg"] == "1000"


def test_ukbench_naming(tmp_path):
    files = touch(tmp_path, *(f"full/ukbench{i:05d}.jpg" for i in range(8)))
    gt = load_ground_truth(tmp_path, files)
    assert gt.kind == "ukbench" and gt.ukbench
    assert gt.queries == files  # every image is a query
    assert gt.relevant["full/ukbench00000.jpg"] == {f"full/ukbench{i:05d}.jpg" for i in (1, 2, 3)}
    assert gt.relevant["full/ukbench00006.jpg"] == {f"full/ukbench{i:05d}.jpg" for i in (4, 5, 7)}
    assert gt.labels["full/ukbench00005.jpg"] == gt.labels["full/ukbench00007.jpg"] != gt.labels[files[0]]


def test_no_ground_truth(tmp_path):
    files = touch(tmp_path, "cat.jpg", "100000.jpg")  # mixed names: neither Holidays nor UKBench
    with pytest.raises(DatasetError, match="no ground truth"):
        load_ground_truth(tmp_path, files)
    with pytest.raises(DatasetError):
        load_ground_truth(tmp_path, [])


def test_explicit_path_elsewhere(tmp_path):
    root = tmp_path / "data" / "images"
    files = touch(root, "0.jpg", "1.jpg", "2.jpg")
    # labels.csv above the root, with paths relative to its own folder
    labels = tmp_path / "data" / "my_labels.csv"
    labels.write_text("file,label\nimages/0.jpg,a\nimages/1.jpg,a\nimages/2.jpg,b\n")
    gt = load_ground_truth(root, files, path=labels)
    assert gt.relevant["0.jpg"] == {"1.jpg"}
    js = tmp_path / "elsewhere.json"
    js.write_text(json.dumps({"0.jpg": ["2.jpg"]}))
    gt = load_ground_truth(root, files, path=js)
    assert gt.kind == "gt.json" and gt.relevant == {"0.jpg": {"2.jpg"}}
    with pytest.raises(DatasetError, match="not found"):
        load_ground_truth(root, files, path=tmp_path / "nope.csv")
    with pytest.raises(DatasetError, match="unknown ground truth format"):
        load_ground_truth(root, files, path=labels.rename(labels.with_suffix(".txt")))


@pytest.mark.skipif(not (COREL / "labels.csv").is_file(), reason=f"corel1k dataset not present at {COREL}")
def test_corel1k_labels_resolve():
    files = sorted(f"images/{name}" for name in os.listdir(COREL / "images"))
    gt = load_ground_truth(COREL, files)
    assert gt.kind == "labels"
    assert len(gt.queries) == 1000
    assert all(len(gt.relevant[q]) == 99 for q in gt.queries)
    assert len(gt.relevant["images/0.jpg"]) == 99 and "images/0.jpg" not in gt.relevant["images/0.jpg"]
    assert gt.class_names["0"] == "africa"
