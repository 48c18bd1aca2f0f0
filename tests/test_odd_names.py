"""File names as bytes through every command, on both stores (issue 27, items 3 and 4).

Names that are not UTF-8, hold a backslash, quotes or ``%``, are 255 bytes long, or are the same
word in NFC and NFD (two files on Linux) go through index, query by file, ``--like``, duplicates,
``--json``, ``--csv``, ``--link-to`` and the web API, and come back with their exact bytes; a
terminal line shows an undecodable byte as ``\\xNN``. The command line runs in this process with
the pixel family (:mod:`pixelcli`), its stdout as strict as a terminal's.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote_from_bytes

import pytest
from conftest import save_image
from pixelcli import MODEL, Ran, pixel_family, run

from cbir.core.names import from_text, shown

NAMES = [
    b"bad\xff.png",
    b"back\\slash.png",
    b"quote'\"%41.png",
    "caf\u00e9.png".encode(),  # NFC
    "cafe\u0301.png".encode(),  # NFD: another file
    b"x" * 251 + b".png",  # 255 bytes
    b"dir\xfe/in\\side.png",  # a folder that is not UTF-8
    b"plain.png",
    b"~last\\key\xff.png",  # sorts last: pymilvus pages with the last key, unescaped
]
DECODED = sorted(os.fsdecode(n) for n in NAMES)


def ok(ran: Ran) -> Ran:
    assert ran.code == 0, (ran.code, ran.out, ran.err)
    assert "Traceback" not in ran.err and "internal error" not in ran.err
    return ran


@pytest.fixture(params=["folder", "milvus-lite"])
def store(request, tmp_path) -> Iterator[tuple[str, ...]]:
    if request.param == "folder":
        yield ()
    else:
        pytest.importorskip("pymilvus", reason="the milvus extra is not installed")
        pytest.importorskip("milvus_lite", reason="the milvus extra is not installed")
        yield ("--store", f"milvus:{tmp_path / 'index.db'}")


@pytest.fixture
def data(tmp_path) -> Iterator[Path]:
    root = tmp_path / "data"
    for seed, name in enumerate(NAMES):
        path = Path(os.fsdecode(os.path.join(os.fsencode(root), name)))
        save_image(path, seed=seed)
    with pixel_family():
        yield root


def relative(root: Path, paths: list[str]) -> list[str]:
    return sorted(os.path.relpath(p, root) for p in paths)


def test_every_command_carries_every_name_losslessly(data, store, tmp_path):
    report = json.loads(ok(run("index", data, *MODEL, *store, "--json")).out)
    assert (report["added"], report["skipped"]) == (len(NAMES), [])
    assert "Traceback" not in ok(run("index", data, *MODEL, *store)).out  # the summary, printed

    bad = os.fsdecode(b"bad\xff.png")
    by_file = json.loads(ok(run("query", data, data / bad, *MODEL, *store, "--json", "-k", "20")).out)
    like = json.loads(ok(run("query", data, "--like", bad, *MODEL, *store, "--json", "-k", "20")).out)
    for answer in (by_file, like):
        (result,) = answer["results"]
        assert result["query"] == str(data / bad)
        assert relative(data, [m["path"] for m in result["matches"]]) == [n for n in DECODED if n != bad]

    for name in DECODED:  # --like each name, and --under its folder (Milvus: a filter expression)
        under = str(data / os.path.dirname(name)) if "/" in name else str(data)
        got = json.loads(
            ok(run("query", data, "--like", name, *MODEL, *store, "--json", "--under", under)).out
        )
        assert got["results"][0]["query"] == str(data / name)

    listing = ok(run("query", data, "--like", bad, *MODEL, *store, "--no-plot", "-k", "20")).out
    assert f"query: {data}/bad\\xff.png" in listing
    assert shown(str(data / os.fsdecode(b"dir\xfe/in\\side.png"))) in listing

    table = ok(run("query", data, "--like", bad, *MODEL, *store, "--csv", "-k", "20")).out
    rows = list(csv.DictReader(io.StringIO(table)))
    assert relative(data, [from_text(r["path"]) for r in rows]) == [n for n in DECODED if n != bad]

    dest = tmp_path / "links"
    ok(run("query", data, "--like", bad, *MODEL, *store, "--no-plot", "-k", "20", "--link-to", dest))
    made = sorted(os.listdir(dest))
    assert len(made) == len(NAMES) - 1 and all(len(os.fsencode(n)) <= 255 for n in made)
    assert sorted(os.path.relpath(os.readlink(dest / n), data) for n in made) == [
        n for n in DECODED if n != bad
    ]


def copy_of(name: bytes) -> bytes:
    """The name of a copy beside ``name``: ``c-`` before it, 255 bytes at most."""
    folder, base = os.path.split(name)
    return os.path.join(folder, (b"c-" + os.path.splitext(base)[0])[:251] + b".png")


def test_duplicates_find_groups_over_every_name(data, store, tmp_path):
    ok(run("index", data, *MODEL, *store))
    for name in NAMES:  # each file gets a byte copy beside it: one group per original
        with open(os.path.join(os.fsencode(data), name), "rb") as src:
            with open(os.path.join(os.fsencode(data), copy_of(name)), "wb") as dst:
                dst.write(src.read())
    ok(run("index", data, *MODEL, *store))
    report = json.loads(ok(run("duplicates", data, *store, "--json", "--verify", "none")).out)
    members = sorted(os.path.relpath(p, data) for g in report["groups"] for p in g["paths"])
    expected = sorted(DECODED + [os.fsdecode(copy_of(n)) for n in NAMES])
    assert members == expected
    table = ok(run("duplicates", data, *store, "--csv", "--verify", "none")).out
    assert (
        sorted(os.path.relpath(from_text(r["path"]), data) for r in csv.DictReader(io.StringIO(table)))
        == expected
    )
    assert "bad\\xff" in ok(run("duplicates", data, *store, "--verify", "none", "--no-plot")).out


def test_the_web_api_names_files_by_their_bytes(data, store, tmp_path):
    pytest.importorskip("fastapi", reason="cbir serve needs the web extra")
    from fastapi.testclient import TestClient

    from cbir.cli.options import build_parser
    from cbir.cli.store import store_from
    from cbir.web.app import create_app
    from cbir.web.collection import Collection
    from cbir.web.duplicates import DuplicateReview
    from cbir.web.model import ModelWorker
    from cbir.web.service import Service

    twin = os.fsdecode(b"dir\xfe/c-bad\xff.png")  # a byte copy: one group of two odd names
    (data / twin).write_bytes((data / os.fsdecode(b"bad\xff.png")).read_bytes())
    ok(run("index", data, *MODEL, *store))
    args = build_parser().parse_args(["duplicates", str(data), *store])
    collection = Collection(data, store_from(args))
    review = DuplicateReview(collection, tmp_path / "trash")
    service = Service(collection, ModelWorker(lambda: None), review=review)
    client = TestClient(create_app(service))
    top = client.get("/api/browse").json()
    assert sorted(i["path"] for i in top["images"]) == [n for n in DECODED if "/" not in n]
    (sub,) = top["folders"]
    assert sub["path"] == os.fsdecode(b"dir\xfe")
    inside = client.get("/api/browse?dir=" + quote_from_bytes(b"dir\xfe")).json()
    assert [i["path"] for i in inside["images"]] == sorted([twin, os.fsdecode(b"dir\xfe/in\\side.png")])
    for name in NAMES:
        url = quote_from_bytes(name)
        with open(os.path.join(os.fsencode(data), name), "rb") as f:
            assert client.get(f"/files/{url}").content == f.read(), name
        assert client.get(f"/thumbs/{url}").status_code == 200, name
        found = client.get(f"/api/search?like={quote_from_bytes(name, safe='')}&k=20").json()
        others = sorted({*DECODED, twin} - {os.fsdecode(name)})
        assert sorted(m["path"] for m in found["results"]) == others
    review.run_once()  # what its thread does; the groups are stored with the index, names and all
    groups = client.get("/api/duplicates").json()
    assert [sorted(g["paths"]) for g in groups["groups"]] == [sorted([os.fsdecode(b"bad\xff.png"), twin])]
    stored = DuplicateReview(collection, tmp_path / "trash", compute=lambda index, threshold: {})
    stored.run_once()
    assert stored.groups()["groups"] == groups["groups"]
    assert client.get("/files/bad%EF%BF%BD.png").status_code == 404  # U+FFFD is another name
