"""The near-duplicates review of `cbir serve` through FastAPI's TestClient: groups made in the
background (``computing`` until then) and stored with the index; moves through the ``--move-to``
code and log, undo (from the page or the CLI) byte-identical; CSRF and origin refusals; a file
changed since indexing is not moved."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import save_image
from helpers import TINY_MODEL
from PIL import Image

pytest.importorskip("fastapi", reason="cbir serve needs the web extra (pip install 'cbir[web]')")

from fastapi.testclient import TestClient  # noqa: E402

from cbir.cli.main import main  # noqa: E402
from cbir.cli.options import build_parser, index_options_from, settings_from  # noqa: E402
from cbir.core.errors import CbirError  # noqa: E402
from cbir.duplicates.moves import read_move_log  # noqa: E402
from cbir.web.app import create_app  # noqa: E402
from cbir.web.duplicates import STORED, DuplicateReview, check_trash, duplicate_groups_of  # noqa: E402
from cbir.web.server import ServeOptions, running_service  # noqa: E402
from cbir.web.service import Service  # noqa: E402


@dataclasses.dataclass
class Served:
    ds: Path
    trash: Path
    service: Service
    client: TestClient
    csrf: dict[str, str]


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    """Six photos, one of them with a byte copy and a re-encoded copy (one group of three), indexed
    by the server itself; moves go to a trash folder beside the dataset."""
    base = tmp_path_factory.mktemp("review")
    ds = base / "photos"
    for i in range(6):
        save_image(ds / f"p{i}.jpg", seed=i, width=192, height=144)
    (ds / "copies").mkdir()
    shutil.copyfile(ds / "p1.jpg", ds / "copies" / "p1-copy.jpg")
    Image.open(ds / "p1.jpg").save(ds / "copies" / "p1-small.jpg", quality=60)
    args = build_parser().parse_args(["serve", str(ds), *TINY_MODEL])
    options = dataclasses.replace(index_options_from(args), progress=False)
    serving = ServeOptions(trash=base / "trash")
    with running_service(settings_from(args), options, serving) as service:
        assert service.review is not None and service.review.wait_newer("", timeout=300)  # indexed, grouped
        client = TestClient(create_app(service))
        csrf = {"X-CSRF-Token": client.get("/api/csrf").json()["csrf"]}
        yield Served(ds, base / "trash", service, client, csrf)


def ready(s: Served, newer_than: str | None = None) -> dict:
    """The groups once made (of a version other than ``newer_than``: after a re-indexing run)."""
    review = s.service.review
    assert review is not None
    if newer_than is not None:
        assert review.wait_newer(newer_than, timeout=120), "no new version was grouped"
    answer = s.client.get("/api/duplicates").json()
    if answer["state"] == "computing":
        assert review.wait(answer["version"], timeout=120)
        answer = s.client.get("/api/duplicates").json()
    assert answer["state"] == "ready", answer
    return answer


def test_groups_are_made_in_the_background_and_stored_with_the_index(served, tmp_path):
    release, threads = threading.Event(), []

    def gated(index, threshold):
        threads.append(threading.current_thread().name)
        assert release.wait(60)
        return duplicate_groups_of(index, threshold)

    collection = served.service.collection
    review = DuplicateReview(collection, tmp_path / "trash", compute=gated)
    for stored in collection.cache_dir.glob(STORED.format("*")):
        stored.unlink()
    client = TestClient(create_app(dataclasses.replace(served.service, review=review)))
    review.start()
    try:
        first = client.get("/api/duplicates").json()
        assert first["state"] == "computing" and client.get("/api/info").json()["duplicates"] == {
            "state": "computing",
            "version": first["version"],
        }
        release.set()
        assert review.wait(first["version"], timeout=60)
        answer = client.get("/api/duplicates").json()
    finally:
        review.stop()
    assert threads == ["cbir-duplicates"]  # never on the request's thread
    assert answer["state"] == "ready" and answer["version"] == first["version"]
    (group,) = answer["groups"]
    assert sorted(group["paths"]) == ["copies/p1-copy.jpg", "copies/p1-small.jpg", "p1.jpg"]
    assert group["keep"] == group["representative"] == "copies/p1-copy.jpg"  # largest file, then path
    assert group["sizes"] == [(served.ds / p).stat().st_size for p in group["paths"]]
    assert answer["verify"] == "orb" and answer["threshold"] == 0.55  # the CLI's defaults
    stored = collection.cache_dir / STORED.format(answer["version"])
    assert json.loads(stored.read_text())["groups"] == answer["groups"]

    def never(index, threshold):
        raise AssertionError("the stored groups were made again")

    again = DuplicateReview(collection, tmp_path / "trash", compute=never)
    again.run_once()  # a restart reads them back
    assert again.groups()["groups"] == answer["groups"]


def test_the_trash_may_not_be_inside_the_dataset(served, tmp_path):
    with pytest.raises(CbirError, match="is inside the dataset"):
        check_trash(served.ds / "trash", served.ds)
    os.symlink(served.ds, tmp_path / "link")
    with pytest.raises(CbirError, match="is inside the dataset"):
        check_trash(tmp_path / "link" / "x", served.ds)


def test_a_move_without_the_csrf_header_or_from_another_origin_moves_nothing(served):
    groups = ready(served)
    (group,) = groups["groups"]
    body = {"version": groups["version"], "groups": [{"keep": group["keep"], "remove": group["paths"][1:]}]}
    before = sorted(p.relative_to(served.ds) for p in served.ds.rglob("*.jpg"))
    for headers in ({}, {"X-CSRF-Token": "wrong"}, {**served.csrf, "Origin": "http://evil.example"}):
        for url in ("/api/duplicates/move", "/api/duplicates/undo"):
            answer = served.client.post(url, json=body, headers=headers)
            assert answer.status_code == 403, answer.text
    assert sorted(p.relative_to(served.ds) for p in served.ds.rglob("*.jpg")) == before
    assert not served.trash.exists()


def test_a_move_of_another_version_or_outside_the_group_is_refused(served):
    groups = ready(served)
    (group,) = groups["groups"]
    post = lambda body: served.client.post("/api/duplicates/move", json=body, headers=served.csrf)  # noqa: E731
    keep, others = group["paths"][0], group["paths"][1:]
    assert post({"version": "old", "groups": [{"keep": keep, "remove": others}]}).status_code == 409
    assert (
        post({"version": groups["version"], "groups": [{"keep": keep, "remove": ["p2.jpg"]}]}).status_code
        == 409
    )
    assert (
        post({"version": groups["version"], "groups": [{"keep": keep, "remove": [keep]}]}).status_code == 409
    )
    assert post({"version": groups["version"], "groups": "all"}).status_code == 400
    assert (
        served.client.post(
            "/api/duplicates/undo", json={"log": "../x.jsonl"}, headers=served.csrf
        ).status_code
        == 400
    )
    assert not served.trash.exists()


def test_a_file_changed_since_indexing_is_not_moved(served):
    groups = ready(served)
    (group,) = groups["groups"]
    victim = served.ds / "copies" / "p1-small.jpg"
    stat = victim.stat()
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # changed after indexing
    try:
        body = {
            "version": groups["version"],
            "groups": [{"keep": group["keep"], "remove": ["copies/p1-small.jpg"]}],
        }
        answer = served.client.post("/api/duplicates/move", json=body, headers=served.csrf).json()
    finally:
        os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert answer["moved"] == 0 and "changed since it was indexed" in answer["skipped"][0]
    assert victim.exists() and not list(served.trash.rglob("*.jpg"))


def test_move_then_undo_from_the_page_and_from_the_cli(served, capsys, monkeypatch):
    groups = ready(served)
    (group,) = groups["groups"]
    keep = "p1.jpg"  # not the rule's choice: the user's
    remove = [p for p in group["paths"] if p != keep]
    saved = {p: (served.ds / p).read_bytes() for p in group["paths"]}
    body = {"version": groups["version"], "groups": [{"keep": keep, "remove": remove}]}
    moved = served.client.post("/api/duplicates/move", json=body, headers=served.csrf).json()
    assert moved["moved"] == 2 and moved["skipped"] == []
    folder = Path(moved["folder"])
    assert folder.parent == served.trash and (served.trash / moved["log"]).is_file()
    for p in remove:
        assert not (served.ds / p).exists() and (folder / p).read_bytes() == saved[p]
    assert (served.ds / keep).read_bytes() == saved[keep]
    log = read_move_log(served.trash / moved["log"])  # the --move-to log, version 2
    assert sorted(o.relative_to(served.ds.resolve()).as_posix() for o, _ in log.moves) == sorted(remove)
    after = ready(served, newer_than=groups["version"])  # re-indexed without them: no group left
    assert after["groups"] == [] and served.client.get("/api/info").json()["images"] == 6
    assert after["moves"][0]["log"] == moved["log"]

    undone = served.client.post(
        "/api/duplicates/undo", json={"log": moved["log"]}, headers=served.csrf
    ).json()
    assert undone == {"restored": 2, "not_moved": 0, "problems": []}
    assert {p: (served.ds / p).read_bytes() for p in group["paths"]} == saved
    back = ready(served, newer_than=after["version"])
    assert [sorted(g["paths"]) for g in back["groups"]] == [sorted(group["paths"])]
    assert back["moves"] == []

    again = ready(served)  # the same log undone by `cbir duplicates --undo`
    (group,) = again["groups"]
    body = {"version": again["version"], "groups": [{"keep": keep, "remove": remove}]}
    moved = served.client.post("/api/duplicates/move", json=body, headers=served.csrf).json()
    assert moved["moved"] == 2
    monkeypatch.chdir(served.trash.parent)  # any folder
    capsys.readouterr()
    assert main(["duplicates", "--undo", str(served.trash / moved["log"])]) == 0
    assert capsys.readouterr().out.startswith("put back 2 file(s)")
    assert {p: (served.ds / p).read_bytes() for p in group["paths"]} == saved
