"""``cbir duplicates`` end to end: real MobileNet-0.25 features of edited copies of Corel photos."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import COREL_IMAGES, require
from helpers import ContentStandIn, cli, logging_restored, ok, one_line_error
from PIL import Image, ImageEnhance

from cbir.cli.main import main
from cbir.cli.options import DEFAULT_DUPLICATES_OUT
from cbir.indexing.indexer import IndexOptions, update_index


def make_copies(data: Path) -> dict[str, str]:
    """Five Corel photos of different classes, three of them with edited copies; returns copy ->
    original."""
    data.mkdir(parents=True)
    for i, number in enumerate([5, 150, 420, 610, 880]):
        shutil.copy(require(COREL_IMAGES / f"{number}.jpg"), data / f"photo{i}.jpg")
    made = {}
    for i, edit in [(0, "small"), (0, "bright"), (1, "small"), (2, "crop"), (3, "grey")]:
        img = Image.open(data / f"photo{i}.jpg")
        if edit == "small":
            img = img.resize((img.width * 2 // 3, img.height * 2 // 3))
        elif edit == "bright":
            img = ImageEnhance.Brightness(img).enhance(1.15)
        elif edit == "grey":
            img = img.convert("L")
        else:
            img = img.crop((10, 6, img.width - 8, img.height - 10))
        name = f"edits/photo{i}_{edit}.jpg"
        (data / name).parent.mkdir(exist_ok=True)
        img.save(data / name, quality=60)
        made[name] = f"photo{i}.jpg"
    return made


@pytest.mark.slow
def test_duplicates_from_the_stored_vectors_list_link_move_and_undo(
    tmp_path, mobilenet_weights, no_ml_packages
):
    data = tmp_path / "data"
    copies = make_copies(data)
    ok(cli("index", data, "--model", "mobilenet", "--weights", mobilenet_weights, cwd=tmp_path, script=None))

    def run(*args):  # no model and no ML package: the stored vectors only
        return cli("duplicates", *args, cwd=tmp_path, script=None, first_on_path=no_ml_packages)

    doc = json.loads(ok(run(data, "--json")).stdout)
    groups = {
        Path(g["representative"]).name: sorted(Path(m["path"]).name for m in g["members"])
        for g in doc["groups"]
    }
    assert groups == {
        "photo0.jpg": ["photo0_bright.jpg", "photo0_small.jpg"],
        "photo1.jpg": ["photo1_small.jpg"],
        "photo2.jpg": ["photo2_crop.jpg"],
        "photo3.jpg": ["photo3_grey.jpg"],
    }  # the originals have the most pixels, so they are kept
    assert doc["images"] == 10 and doc["redundant"] == 5 and doc["grouping"] == "star"
    assert doc["verify"] == "orb" and doc["candidates"] >= doc["pairs"] == 6
    assert all(doc["threshold"] <= m["score"] <= 1.0001 for g in doc["groups"] for m in g["members"])
    grey = next(m["score"] for g in doc["groups"] for m in g["members"] if "grey" in m["path"])
    vectors_only = json.loads(ok(run(data, "--json", "--verify", "none")).stdout)
    assert vectors_only["threshold"] == 0.93 > grey  # the greyscale copy needs the pixel check
    assert "photo3.jpg" not in {Path(g["representative"]).name for g in vectors_only["groups"]}
    assert doc["groups"][0]["representative"] == str(data / "photo0.jpg")  # paths as in query results
    assert not (tmp_path / DEFAULT_DUPLICATES_OUT).exists()  # --json draws no plot unless asked

    rows = list(csv.DictReader(io.StringIO(ok(run(data, "--csv", "--keep", "newest")).stdout)))
    assert sum(r["role"] == "keep" for r in rows) == 4 and sum(r["role"] == "member" for r in rows) == 5
    text = ok(run(data, "--under", "edits", "--no-plot")).stdout
    assert text.startswith("1 group(s) of near-duplicates among 5 images")  # two copies of photo0
    assert "photo0_" in text and "photo1" not in text and str(data / "photo0.jpg") not in text

    listing = ok(run(data, "--link-to", tmp_path / "review")).stdout
    assert "group 1: keep " + str(data / "photo0.jpg") in listing
    assert (tmp_path / DEFAULT_DUPLICATES_OUT).stat().st_size > 0  # the plot, saved headless
    assert sorted(p.name for p in (tmp_path / "review").iterdir()) == [
        "01_photo0",
        "02_photo1",
        "03_photo2",
        "04_photo3",
    ]
    assert (tmp_path / "review/01_photo0/01_photo0.jpg").resolve() == (data / "photo0.jpg").resolve()

    moved = ok(run(data, "--move-to", tmp_path / "dups", "--no-plot")).stdout
    assert "moved 5 file(s)" in moved
    assert sorted(
        p.relative_to(tmp_path / "dups").as_posix() for p in (tmp_path / "dups").rglob("*.jpg")
    ) == sorted(copies)
    log = next((tmp_path / "dups").glob("cbir-moves-*.jsonl"))
    assert not (data / "edits" / "photo0_small.jpg").exists()
    assert ok(run("--undo", log)).stdout.startswith("put back 5 file(s)")
    assert all((data / name).is_file() for name in copies)


def test_duplicates_errors_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    one_line_error(cli("duplicates", cwd=tmp_path, script=None), "--undo LOG")
    one_line_error(cli("duplicates", tmp_path / "empty", cwd=tmp_path, script=None), "index")
    bad = cli("duplicates", tmp_path / "empty", "--threshold", "1.5", cwd=tmp_path, script=None)
    assert bad.returncode == 2 and "must be at most 1" in bad.stderr
    one_line_error(
        cli("duplicates", "--undo", tmp_path / "nope.jsonl", cwd=tmp_path, script=None), "move log"
    )


def indexed_copies(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    for name in ("a.jpg", "sub/a_copy.jpg", "b.jpg", "sub/b_copy.jpg", "c.jpg"):
        letter = Path(name).name[0]
        (data / name).write_bytes(letter.encode() * 100)
    update_index(data, ContentStandIn(), options=IndexOptions(progress=False))
    return data


@pytest.fixture
def in_process():
    """``main`` is run in this process: leave logging as it was."""
    with logging_restored():
        yield


def test_move_skips_members_changed_since_indexing_even_without_the_pixel_check(
    tmp_path, capsys, monkeypatch, in_process
):
    """Issue 27 item 12: ``--verify none --move-to`` compares size and mtime with the index first."""
    data = indexed_copies(tmp_path)
    os.utime(data / "sub/b_copy.jpg", ns=(10**18, 10**18))  # touched since indexing
    monkeypatch.chdir(tmp_path)
    code = main(["duplicates", "data", "--verify", "none", "--move-to", "dups", "--no-plot", "--json"])
    out, err = capsys.readouterr()
    assert code == 0
    assert len(json.loads(out)["groups"]) == 2
    assert "changed since it was indexed" in err and "moved 1 file(s); 1 left where they are" in err
    assert (data / "sub/b_copy.jpg").exists() and not (data / "sub/a_copy.jpg").exists()
    assert (tmp_path / "dups/sub/a_copy.jpg").exists()


def test_undo_from_another_folder_and_of_a_dataset_gone_cli(tmp_path, capsys, monkeypatch, in_process):
    """Issue 27 item 2, the repro: a relative dataset, undo run from elsewhere."""
    data = indexed_copies(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert (
        main(["duplicates", "data", "--verify", "none", "--move-to", str(tmp_path / "dups"), "--no-plot"])
        == 0
    )
    log = next((tmp_path / "dups").glob("cbir-moves-*.jsonl"))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    capsys.readouterr()
    assert main(["duplicates", "--undo", str(log)]) == 0
    assert capsys.readouterr().out.startswith("put back 2 file(s)")
    assert (data / "sub/a_copy.jpg").exists() and list((tmp_path / "elsewhere").iterdir()) == []
    assert (
        main(["duplicates", "data", "--verify", "none", "--move-to", str(tmp_path / "d2"), "--no-plot"]) == 2
    )
    assert "index" in capsys.readouterr().err  # relative to elsewhere: no such dataset
    monkeypatch.chdir(tmp_path)
    assert (
        main(["duplicates", "data", "--verify", "none", "--move-to", str(tmp_path / "d2"), "--no-plot"]) == 0
    )
    log = next((tmp_path / "d2").glob("cbir-moves-*.jsonl"))
    (tmp_path / "data").rename(tmp_path / "data_renamed")
    capsys.readouterr()
    assert main(["duplicates", "--undo", str(log)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "is not at" in err
    assert not (tmp_path / "data").exists()
    (tmp_path / "data_renamed").rename(tmp_path / "data")
    (data / "sub/a_copy.jpg").write_bytes(b"someone else's")  # a new file where one was moved from
    assert main(["duplicates", "--undo", str(log)]) == 2
    out, err = capsys.readouterr()
    assert out.startswith("put back 1 file(s)") and "not restored" in out
    assert err.strip() == "cbir: error: 1 file(s) could not be put back (listed above)"
