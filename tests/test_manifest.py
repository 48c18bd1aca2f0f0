"""The manifest: typed records, JSON round trip, validation, and the reader of version-1 indexes."""

from __future__ import annotations

import json

import pytest

from cbir.core.records import Entry, Skipped
from cbir.encoders.features import FeatureConfig
from cbir.stores.manifest import AnnRecord, Manifest, Segment

CONFIG = FeatureConfig(model="mobilenet", width_multiplier=0.25)


def sample_manifest() -> Manifest:
    return Manifest(
        config=CONFIG,
        dim=4,
        dtype="float16",
        entries=[Entry("a.jpg", 10, 111), None, Entry("sub/été b.png", 20, 222)],
        segments=[Segment("part-1.npy", 2), Segment("feats-2.npy", 1)],
        skipped=[
            Skipped("bad.jpg", 3, 333, "not a recognised image"),
            Skipped("x.jpg", 1, 2, "denied", True),
        ],
        weights_path="/w/m.h5",
        root="/data",
        whitening="whitening-abc.npz",
        ann=AnnRecord("ann-1-hnsw.faiss", "hnsw", {"M": 32.0}, "g", 3, 4, "float16", 1.5, 2.0),
    )


def edit(m: Manifest, **changes: object) -> str:
    d = json.loads(m.to_json())
    d.update(changes)
    return json.dumps(d)


def test_manifest_round_trip():
    m = sample_manifest()
    back = Manifest.from_json(m.to_json())
    assert back == m
    assert back.entries[1] is None
    assert back.entries[2] == Entry("sub/été b.png", 20, 222)
    assert back.skipped[0].reason == "not a recognised image" and not back.skipped[0].transient
    assert back.skipped[1].transient
    doc = json.loads(m.to_json())
    assert (doc["format"], doc["version"]) == ("cbir-index", 2)
    assert m.files() == {"part-1.npy", "feats-2.npy", "whitening-abc.npz", "ann-1-hnsw.faiss"}
    assert m.live_rows() == [0, 2]


@pytest.mark.parametrize(
    "bad",
    [
        "../x.jpg",
        "/etc/passwd",
        "a/../../x.jpg",
        "",
        "a//b.jpg",
        "a\x00b.jpg",
        "new\nline.jpg",
        "\x7f.jpg",
        7,
    ],
)
def test_manifest_refuses_unsafe_paths(bad):
    m = sample_manifest()
    with pytest.raises(ValueError, match="unsafe path"):
        Manifest.from_json(edit(m, entries=[["a.jpg", 1, 1], None, [bad, 1, 1]]))
    with pytest.raises(ValueError, match="unsafe path"):
        Manifest.from_json(edit(m, skipped=[[bad, 1, 1, "x"]]))


@pytest.mark.parametrize(
    "name",
    ["../feats.npy", "/tmp/feats.npy", "sub/part.npy", ".hidden.npy", "..", 7, None, "", "manifest.json"],
)
def test_manifest_refuses_bad_file_names(name):
    m = sample_manifest()
    with pytest.raises(ValueError, match="bad index file name"):
        Manifest.from_json(edit(m, segments=[["part-1.npy", 2], [name, 1]]))
    with pytest.raises(ValueError, match="bad index file name"):
        Manifest.from_json(edit(m, whitening=name if name is not None else 0))
    with pytest.raises(ValueError, match="bad index file name"):
        Manifest.from_json(edit(m, ann={**json.loads(m.to_json())["ann"], "file": name}))


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"format": "something-else"}, "not a cbir index"),
        ({"version": 99}, "version 99"),
        ({"segments": [["feats-1.npy", 2]]}, "rows do not match"),
        ({"dtype": "float64"}, "bad matrix type"),
    ],
)
def test_manifest_refuses_inconsistent(changes, message):
    with pytest.raises(ValueError, match=message):
        Manifest.from_json(edit(sample_manifest(), **changes))


def version_1(**changes: object) -> str:
    """A manifest as the first release wrote it."""
    doc = {
        "format": "cbir-index",
        "version": 1,
        "config": {"model": "mobilenet", "weights": "random", "alpha": 0.25, "scales": [1.0], "extra": {}},
        "dim": 4,
        "dtype": "float32",
        "generation": "g1",
        "created": 1.0,
        "updated": 2.0,
        "root": "/data",
        "weights_path": None,
        "segments": [{"file": "feats.npy", "rows": 2}],
        "entries": [["a.jpg", 1, 1], ["b.jpg", 2, 2]],
        "skipped": [["bad.jpg", 3, 3, "empty file"]],
        "extra": {
            "files": ["whitening-0123.npz", "ann.faiss"],
            "ann": {"kind": "hnsw", "params": {"M": 32}, "generation": "g1", "rows": 2, "dim": 4},
        },
    }
    doc.update(changes)
    return json.dumps(doc)


def test_version_1_is_read():
    m = Manifest.from_json(version_1())
    assert m.config.width_multiplier == 0.25 and m.config.model == "mobilenet"
    assert m.segments == [Segment("feats.npy", 2)]
    assert m.whitening == "whitening-0123.npz"
    assert m.ann is not None and (m.ann.file, m.ann.kind, m.ann.rows) == ("ann.faiss", "hnsw", 2)
    assert m.skipped == [Skipped("bad.jpg", 3, 3, "empty file")]
    assert json.loads(m.to_json())["version"] == 2  # written back as version 2


def test_version_1_interrupted_rename_asks_for_a_rebuild():
    text = version_1(segments=[{"file": "feats.npy", "rows": 2, "staged": "feats.npy.tmp-1-ab"}])
    with pytest.raises(ValueError, match="interrupted"):
        Manifest.from_json(text)


def test_capture_times_round_trip_and_are_checked():
    m = sample_manifest()
    m.entries[0] = Entry("a.jpg", 10, 111, "2019-07-14T18:30:05")
    back = Manifest.from_json(m.to_json())
    assert back.entries[0].taken == "2019-07-14T18:30:05" and back.entries[2].taken is None
    for bad in ("2019-07-14", "yesterday", 7):
        entries = [["a.jpg", 1, 1, bad], None, ["b.jpg", 1, 1]]
        with pytest.raises(ValueError, match="bad capture time"):
            Manifest.from_json(edit(m, entries=entries))
