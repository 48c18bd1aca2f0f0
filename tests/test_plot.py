"""Drawing results to a PNG with the headless Agg backend (cbir.plot)."""

from __future__ import annotations

import pytest
from PIL import Image

from cbir.output.plot import plot_results
from cbir.output.results import Match, QueryResult

pytest.importorskip("matplotlib")


@pytest.fixture(autouse=True)
def agg_backend(monkeypatch):
    import matplotlib

    monkeypatch.delenv("DISPLAY", raising=False)
    matplotlib.use("Agg")


@pytest.fixture
def pictures(tmp_path, make_image):
    return [str(make_image(tmp_path / "imgs" / f"p{i}.jpg", seed=i, width=120, height=80)) for i in range(6)]


def check_png(path, min_size=(50, 50)) -> tuple[int, int]:
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.load()
        assert img.size[0] >= min_size[0] and img.size[1] >= min_size[1]
        return img.size


def test_fewer_matches_than_cells(tmp_path, pictures):
    result = QueryResult(pictures[0], [Match(p, 0.9 - i / 10) for i, p in enumerate(pictures[1:4])])
    out = plot_results([result], tmp_path / "few.png")
    assert out == tmp_path / "few.png"
    w, h = check_png(out)
    assert w > h  # 4 cells fit on one row


def test_full_grid_is_taller(tmp_path, pictures):
    matches = [Match(pictures[1 + i % 5], 0.5) for i in range(9)]
    few = check_png(plot_results([QueryResult(pictures[0], matches[:3])], tmp_path / "few.png"))
    grid = check_png(plot_results([QueryResult(pictures[0], matches)], tmp_path / "grid.png"))
    assert grid[1] > few[1]  # 10 cells: two rows of five


def test_zero_matches(tmp_path, pictures):
    out = plot_results([QueryResult(pictures[0], [])], tmp_path / "none.png")
    check_png(out)


def test_several_queries(tmp_path, pictures):
    results = [
        QueryResult(pictures[0], [Match(pictures[1], 0.8), Match(pictures[2], 0.7)]),
        QueryResult(pictures[3], [Match(pictures[4], 0.6)]),
        QueryResult(pictures[5], []),
    ]
    out = plot_results(results, tmp_path / "nested" / "dir" / "many.png")
    w, h = check_png(out)
    single = check_png(plot_results(results[:1], tmp_path / "one.png"))
    assert h > single[1]  # a row per query


def test_several_queries_without_matches(tmp_path, pictures):
    out = plot_results([QueryResult(pictures[0], []), QueryResult(pictures[1], [])], tmp_path / "x.png")
    check_png(out)


def test_unreadable_images_are_drawn_as_placeholders(tmp_path, pictures):
    (tmp_path / "text.jpg").write_text("not an image")
    result = QueryResult(
        str(tmp_path / "text.jpg"), [Match(str(tmp_path / "gone.jpg"), 0.1), Match(pictures[1], 0.05)]
    )
    check_png(plot_results([result], tmp_path / "broken.png"))


def test_no_output_file(tmp_path, pictures):
    assert plot_results([QueryResult(pictures[0], [Match(pictures[1], 0.5)])], None) is None
    assert list(tmp_path.glob("*.png")) == []
