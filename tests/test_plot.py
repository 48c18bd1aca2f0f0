"""The saved result sheet (cbir.cli.plot): composed with Pillow, laid out as documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.cli.plot import CELL, MISSING, PAD, TITLE, cell_box, plot_results
from cbir.core.results import Match, QueryResult

COLORS = [(220, 30, 30), (30, 180, 40), (40, 60, 210), (240, 200, 20), (150, 40, 170), (20, 190, 200)]


@pytest.fixture
def pictures(tmp_path):
    """Six flat-coloured PNGs (landscape, 120x80), each recognisable by its colour."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = []
    for i, color in enumerate(COLORS):
        Image.new("RGB", (120, 80), color).save(folder / f"p{i}.png")
        paths.append(str(folder / f"p{i}.png"))
    return paths


def load(path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB"))


def expected_size(rows: int, cols: int) -> tuple[int, int]:
    """(height, width) of a sheet of ``rows`` x ``cols`` cells, as numpy shapes it."""
    return PAD + rows * (TITLE + CELL + PAD), PAD + cols * (CELL + PAD)


def thumb_center(sheet: np.ndarray, row: int, col: int) -> tuple[int, ...]:
    """The pixel in the middle of a 120x80 thumbnail drawn in cell (row, col)."""
    left, top, right, _ = cell_box(row, col)
    return tuple(int(v) for v in sheet[top + CELL * 80 // 120 // 2, (left + right) // 2])


def title_band(sheet: np.ndarray, row: int, col: int) -> np.ndarray:
    left, top, right, _ = cell_box(row, col)
    return sheet[top - TITLE : top, left:right]


def is_blank(pixels: np.ndarray) -> bool:
    return bool((pixels == 255).all())


def test_one_query_fills_a_grid_row_by_row(tmp_path, pictures):
    matches = [Match(pictures[1 + i % 5], 0.9 - i / 20) for i in range(9)]
    sheet = load(plot_results([QueryResult(pictures[0], matches)], tmp_path / "grid.png"))
    assert sheet.shape[:2] == expected_size(2, 5)  # ten cells: two rows of five
    assert thumb_center(sheet, 0, 0) == COLORS[0]  # the query first
    for i in range(9):
        row, col = divmod(i + 1, 5)
        assert thumb_center(sheet, row, col) == COLORS[1 + i % 5], (row, col)
        assert not is_blank(title_band(sheet, row, col))


def test_fewer_matches_than_columns_shrink_the_row(tmp_path, pictures):
    result = QueryResult(pictures[0], [Match(p, 0.9 - i / 10) for i, p in enumerate(pictures[1:4])])
    out = plot_results([result], tmp_path / "few.png")
    assert out == tmp_path / "few.png"
    sheet = load(out)
    assert sheet.shape == (*expected_size(1, 4), 3)
    assert [thumb_center(sheet, 0, c) for c in range(4)] == COLORS[:4]


def test_several_queries_get_a_row_each_and_blank_cells(tmp_path, pictures):
    results = [
        QueryResult(pictures[0], [Match(pictures[1], 0.8), Match(pictures[2], 0.7)]),
        QueryResult(pictures[3], [Match(pictures[4], 0.6)]),
        QueryResult(pictures[5], []),
    ]
    sheet = load(plot_results(results, tmp_path / "nested" / "dir" / "many.png"))
    assert sheet.shape[:2] == expected_size(3, 3)
    assert [thumb_center(sheet, 0, c) for c in range(3)] == COLORS[:3]
    assert [thumb_center(sheet, 1, c) for c in range(2)] == COLORS[3:5]
    assert thumb_center(sheet, 2, 0) == COLORS[5]
    for row, col in [(1, 2), (2, 1), (2, 2)]:  # no match there: no thumbnail, no title
        left, top, right, bottom = cell_box(row, col)
        assert is_blank(sheet[top - TITLE : bottom, left:right]), (row, col)


def test_titles_name_the_file_the_score_and_the_label(tmp_path, pictures):
    """A title is drawn text: it changes with the name, the score and the row's label."""

    def titles(result: QueryResult, label: str = "query") -> list[np.ndarray]:
        sheet = load(plot_results([result], tmp_path / "t.png", label=label))
        return [title_band(sheet, 0, c) for c in range(1 + len(result.matches))]

    base = titles(QueryResult(pictures[0], [Match(pictures[1], 0.5)]))
    assert all(not is_blank(t) and (t < 128).any() for t in base)  # dark or blue ink on white
    assert not np.array_equal(base[1], titles(QueryResult(pictures[0], [Match(pictures[1], 0.25)]))[1])
    assert not np.array_equal(base[1], titles(QueryResult(pictures[0], [Match(pictures[2], 0.5)]))[1])
    keep = titles(QueryResult(pictures[0], [Match(pictures[1], 0.5)]), label="keep")
    assert not np.array_equal(base[0], keep[0]) and np.array_equal(base[1], keep[1])
    blue = base[0].reshape(-1, 3)
    assert (blue[:, 2] > blue[:, 0] + 60).any()  # the label cell is titled in blue


def test_unreadable_and_missing_files_are_grey_squares(tmp_path, pictures):
    (tmp_path / "text.jpg").write_text("not an image")
    result = QueryResult(
        str(tmp_path / "text.jpg"), [Match(str(tmp_path / "gone.jpg"), 0.1), Match(pictures[1], 0.05)]
    )
    sheet = load(plot_results([result], tmp_path / "broken.png"))
    for col in (0, 1):
        left, top, right, bottom = cell_box(0, col)
        assert (sheet[top:bottom, left:right] == MISSING).all()  # the whole square, grey
        assert not is_blank(title_band(sheet, 0, col))  # still titled with its name
    assert thumb_center(sheet, 0, 2) == COLORS[1]


def test_zero_matches_and_no_output_file(tmp_path, pictures):
    sheet = load(plot_results([QueryResult(pictures[0], [])], tmp_path / "none.png"))
    assert sheet.shape[:2] == expected_size(1, 1)
    assert plot_results([QueryResult(pictures[0], [Match(pictures[1], 0.5)])], None) is None
    assert list(tmp_path.glob("*.png")) == [tmp_path / "none.png"]


def test_saving_does_not_import_matplotlib(tmp_path, pictures):
    script = (
        "import sys\n"
        "from cbir.cli.plot import plot_results\n"
        "from cbir.core.results import Match, QueryResult\n"
        f"result = QueryResult({pictures[0]!r}, [Match({pictures[1]!r}, 0.5)])\n"
        f"plot_results([result], {str(tmp_path / 's.png')!r})\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))\n"
    )
    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=root, timeout=120
    )
    assert proc.stdout.strip() == "[]"
    assert (tmp_path / "s.png").stat().st_size > 0


def test_show_opens_the_sheet_with_matplotlib(tmp_path, pictures, monkeypatch):
    """--show still draws in a matplotlib window; here the headless Agg backend stands in for one."""
    matplotlib = pytest.importorskip("matplotlib")
    monkeypatch.delenv("DISPLAY", raising=False)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = []
    monkeypatch.setattr(plt, "show", lambda: shown.append(plt.gcf().axes[0].images[0].get_array().shape))
    assert plot_results([QueryResult(pictures[0], [Match(pictures[1], 0.5)])], None, show=True) is None
    assert shown == [(*expected_size(1, 2), 3)]
