"""Filters and export of query results: ``--under``, ``--csv``, ``--link-to`` / ``--copy-to`` (issue 11)."""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import save_image
from helpers import TINY_MODEL, cli, run_index

from cbir.cli.text import format_csv
from cbir.core.errors import CbirError, QueryError
from cbir.core.results import Match, QueryResult
from cbir.search.exact import ExactSearcher, top_k
from cbir.search.filters import FilteredSearcher, ResultFilter, folder_prefix, rows_taken, rows_under
from cbir.service.export import export_plan, export_results
from cbir.service.query import SearchRequest, like_index
from cbir.stores.folder.snapshot import open_index

PATHS = ["a.jpg", "2024/b.jpg", "2024/summer/c.jpg", "2024-old/d.jpg", "2025/e.jpg"]


def test_folders_as_path_prefixes(tmp_path):
    assert folder_prefix(tmp_path, "2024/") == "2024"
    assert folder_prefix(tmp_path, tmp_path / "2024" / "summer") == "2024/summer"
    assert folder_prefix(tmp_path, ".") == ""
    for outside in ("../elsewhere", tmp_path.parent):
        with pytest.raises(QueryError, match="not a folder of the dataset"):
            folder_prefix(tmp_path, outside)
    mask = rows_under(tmp_path, PATHS, ["2024"])
    assert [p for p, ok in zip(PATHS, mask) if ok] == ["2024/b.jpg", "2024/summer/c.jpg"]  # not 2024-old
    mask = rows_under(tmp_path, PATHS, ["2024/summer", "2025"])
    assert [p for p, ok in zip(PATHS, mask) if ok] == ["2024/summer/c.jpg", "2025/e.jpg"]
    with pytest.raises(QueryError, match="no indexed image under 1999"):
        rows_under(tmp_path, PATHS, ["1999"])


@pytest.mark.parametrize("k", [1, 3, 10, 200])
def test_filtered_search_is_the_search_of_the_allowed_rows(k):
    rng = np.random.default_rng(4)
    feats = rng.standard_normal((400, 16)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    allowed = rng.random(400) < 0.1  # a small folder: the wrapped searcher is asked again, for more
    q = rng.standard_normal((6, 16)).astype(np.float32)
    exclude = [[int(np.flatnonzero(allowed)[0])], [], [5], [], [], []]
    rows, scores = FilteredSearcher(ExactSearcher(feats), allowed).search(q, k, exclude)
    keep = np.flatnonzero(allowed)
    sub_exclude = [[int(np.searchsorted(keep, r))] if r in keep else [] for ex in exclude for r in ex or [-1]]
    sub_rows, sub_scores = top_k(feats[keep], q, k, [e for e in sub_exclude])
    k_eff = min(k, len(keep) - 1)  # one query excludes an allowed row
    np.testing.assert_array_equal(rows, keep[sub_rows][:, :k_eff])
    np.testing.assert_allclose(scores, sub_scores[:, :k_eff], rtol=1e-6)
    assert allowed[rows].all()


def results() -> list[QueryResult]:
    return [
        QueryResult("/d/q1.jpg", [Match("/d/x/a.jpg", 0.9), Match('/d/b, "c".jpg', 0.5)]),
        QueryResult("/d/q2.jpg", [Match("/d/x/a.jpg", 0.25)]),
    ]


def test_csv_rows():
    text = format_csv(results())
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["query", "rank", "path", "score"]
    assert rows[1:] == [
        ["/d/q1.jpg", "1", "/d/x/a.jpg", "0.900000"],
        ["/d/q1.jpg", "2", '/d/b, "c".jpg', "0.500000"],
        ["/d/q2.jpg", "1", "/d/x/a.jpg", "0.250000"],
    ]


def test_export_links_or_copies_by_rank_and_never_overwrites(tmp_path):
    src = tmp_path / "src"
    found = [
        QueryResult(
            str(src / "q.jpg"),
            [Match(str(save_image(src / n, seed=i)), 1.0 - i / 10) for i, n in enumerate(["b.jpg", "a.jpg"])],
        )
    ]
    assert [t.name for _, t in export_plan(found, tmp_path / "out")] == ["01_b.jpg", "02_a.jpg"]
    assert export_results(found, tmp_path / "out") == 2
    link = tmp_path / "out" / "01_b.jpg"
    assert link.is_symlink() and os.readlink(link) == str(src / "b.jpg")
    with pytest.raises(CbirError, match="exists already; choose an empty folder"):
        export_results(found, tmp_path / "out", copy=True)
    assert link.is_symlink()  # untouched
    two = found + [QueryResult(str(src / "r.jpg"), found[0].matches[:1])]
    assert export_results(two, tmp_path / "copies", copy=True) == 3
    copied = sorted(
        p.relative_to(tmp_path / "copies").as_posix() for p in (tmp_path / "copies").rglob("*.jpg")
    )
    assert copied == ["01_q/01_b.jpg", "01_q/02_a.jpg", "02_r/01_b.jpg"]
    assert not (tmp_path / "copies" / "01_q" / "01_b.jpg").is_symlink()
    assert (tmp_path / "copies" / "01_q" / "01_b.jpg").read_bytes() == (src / "b.jpg").read_bytes()


def test_like_under_a_folder(tmp_path, tiny_config, tiny_embedder):
    root = tmp_path / "photos"
    for i in range(4):
        save_image(root / "2024" / f"{i}.jpg", seed=i)
        save_image(root / "2025" / f"{i}.jpg", seed=10 + i)
    run_index(root, tiny_config, tiny_embedder)
    index = open_index(root)
    (res,) = like_index(index, ["2024/0.jpg"], SearchRequest(k=9, where=ResultFilter(under=("2025",))))
    assert len(res.matches) == 4 and all("/2025/" in m.path for m in res.matches)
    (everything,) = like_index(index, ["2024/0.jpg"], SearchRequest(k=9))
    assert [m for m in everything.matches if "/2025/" in m.path] == res.matches  # same order and scores


@pytest.mark.slow
def test_command_line_filters_and_exports(tmp_path):
    data = tmp_path / "data"
    for i in range(3):
        save_image(data / "a" / f"{i}.jpg", seed=i)
        save_image(data / "b" / f"{i}.jpg", seed=20 + i)
    assert (
        cli(
            "index",
            data,
            *TINY_MODEL,
            cwd=tmp_path,
            script=None,
        ).returncode
        == 0
    )
    proc = cli(
        "query",
        data,
        "--like",
        "a/0.jpg",
        "--under",
        "b",
        "--csv",
        "--link-to",
        tmp_path / "out",
        cwd=tmp_path,
        script=None,
    )
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.reader(io.StringIO(proc.stdout)))
    assert rows[0] == ["query", "rank", "path", "score"] and len(rows) == 4
    assert all(Path(r[2]).parent == data / "b" for r in rows[1:])
    assert "3 match(es) linked into" in proc.stderr and not (tmp_path / "cbir_results.png").exists()
    assert sorted(p.name[:3] for p in (tmp_path / "out").iterdir()) == ["01_", "02_", "03_"]
    again = cli(
        "query",
        data,
        "--like",
        "a/0.jpg",
        "--under",
        "b",
        "--link-to",
        tmp_path / "out",
        cwd=tmp_path,
        script=None,
    )
    assert again.returncode == 2 and "exists already" in again.stderr
    both = cli("query", data, "--like", "a/0.jpg", "--json", "--csv", cwd=tmp_path, script=None)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def save_taken(path: Path, when: str, seed: int) -> Path:
    """A JPEG whose EXIF says it was taken at ``when`` (``YYYY:MM:DD HH:MM:SS``)."""
    from conftest import smooth_image
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = when
    Image.fromarray(smooth_image(seed)).save(path, exif=exif)
    return path


def test_capture_time_from_exif_else_the_file_time(tmp_path):
    from cbir.ingest.decode import capture_time

    assert capture_time(save_taken(tmp_path / "a.jpg", "2019:07:14 18:30:05", 1)) == "2019-07-14T18:30:05"
    plain = save_image(tmp_path / "b.png", seed=2)
    os.utime(plain, (0, 86400 * 365 * 30 + 43200))
    when = capture_time(plain)
    assert when is not None and when.startswith("1999-12-2")  # the file's time (local time zone)
    assert capture_time(tmp_path / "missing.jpg") is None


def test_rows_taken_bounds_are_inclusive():
    taken = ["2019-01-01T00:00:00", "2019-12-31T23:59:59", "2020-01-01T00:00:00", "2021-06-01T12:00:00"]
    assert rows_taken(taken, "2019-01-01", "2019-12-31").tolist() == [True, True, False, False]
    assert rows_taken(taken, "2020-01-01", None).tolist() == [False, False, True, True]
    assert rows_taken(taken, None, "2021-06-01T11:59:59").tolist() == [True, True, True, False]
    with pytest.raises(QueryError, match="no indexed image taken between"):
        rows_taken(taken, "2030-01-01", None)
    with pytest.raises(QueryError, match="no capture times yet"):
        rows_taken([None, "2019-01-01T00:00:00"], "2019-01-01", None)


def test_capture_times_are_indexed_and_added_to_older_indexes(tmp_path, tiny_config, tiny_embedder):
    from helpers import never

    from cbir.stores.folder.writer import FolderWriter, read_manifest

    root = tmp_path / "photos"
    for year in (2018, 2019, 2020):
        save_taken(root / f"{year}.jpg", f"{year}:05:01 10:00:00", year)
    run_index(root, tiny_config, tiny_embedder)
    assert open_index(root).taken() == ["2018-05-01T10:00:00", "2019-05-01T10:00:00", "2020-05-01T10:00:00"]
    idir = root / ".cbir"
    with FolderWriter(idir, read_manifest(idir).config) as w:  # as an earlier release left it
        w.manifest.entries = [dataclasses.replace(e, taken=None) for e in w.manifest.entries]
        w.commit()
    assert open_index(root).taken() == [None, None, None]
    report = run_index(root, tiny_config, never)  # no re-embedding: the headers are read
    assert report.unchanged == 3 and open_index(root).taken()[1] == "2019-05-01T10:00:00"
    index = open_index(root)
    (res,) = like_index(index, ["2019.jpg"], SearchRequest(k=5, where=ResultFilter(since="2020-01-01")))
    assert [Path(m.path).name for m in res.matches] == ["2020.jpg"]
    (res,) = like_index(index, ["2019.jpg"], SearchRequest(k=5, where=ResultFilter(until="2018-05-01")))
    assert [Path(m.path).name for m in res.matches] == ["2018.jpg"]


@pytest.mark.parametrize("bad", ["2024-13-01", "yesterday", "2024/01/01", "2024-01-01T25:00"])
def test_dates_are_checked_when_parsed(tmp_path, bad):
    proc = cli("query", tmp_path, "--like", "a.jpg", "--since", bad, cwd=tmp_path, script=None)
    assert proc.returncode == 2 and "--since" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
