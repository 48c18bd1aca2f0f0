"""Drawing queries and their matches as one contact sheet, composed with Pillow and saved as PNG.

The saved sheet needs no matplotlib (its import alone costs 0.4-0.9 s, more than the rest of a
cold LiteRT query, see docs/speed.md); matplotlib is imported only to open a window (``show``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from cbir.core.errors import CbirError
from cbir.core.names import shown
from cbir.core.results import Match, QueryResult
from cbir.ingest.decode import LoadLimits, open_rgb

CELL = 192  # thumbnail box, pixels (the former 2.4-inch cells at 80 dpi)
TITLE = 34  # two title lines above each thumbnail
PAD = 8  # margin around and between cells
FONT_SIZE = 13
BACKGROUND = (255, 255, 255)
MISSING = (200, 200, 200)  # a file that cannot be shown
TEXT = (0, 0, 0)
LABEL = (31, 119, 180)  # the first cell of a row (matplotlib's tab:blue, as before)


@dataclass(frozen=True)
class Grid:
    """Where the cells go: ``cells[i]`` is drawn at row ``i // cols`` (one query) or per row."""

    rows: int
    cols: int
    cells: list[tuple[int, int, str | Match]]  # (row, column, query path or match)

    @property
    def size(self) -> tuple[int, int]:
        """The sheet's (width, height) in pixels."""
        return PAD + self.cols * (CELL + PAD), PAD + self.rows * (TITLE + CELL + PAD)

    @staticmethod
    def of(results: list[QueryResult], columns: int) -> Grid:
        """One query fills a grid of ``columns`` cells; several queries get a row each."""
        if len(results) == 1:
            flat: list[str | Match] = [results[0].query, *results[0].matches]
            cols = max(1, min(columns, len(flat)))
            cells = [(i // cols, i % cols, x) for i, x in enumerate(flat)]
            return Grid(math.ceil(len(flat) / cols), cols, cells)
        cols = 1 + max((len(r.matches) for r in results), default=0)
        rows: list[list[str | Match]] = [[res.query, *res.matches] for res in results]
        cells = [(r, c, x) for r, row in enumerate(rows) for c, x in enumerate(row)]
        return Grid(len(results), cols, cells)


def cell_box(row: int, col: int) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) of a cell's thumbnail box (centred at its top; title above)."""
    left = PAD + col * (CELL + PAD)
    top = PAD + row * (TITLE + CELL + PAD) + TITLE
    return left, top, left + CELL, top + CELL


def plot_results(
    results: list[QueryResult],
    out: str | os.PathLike[str] | None = None,
    show: bool = False,
    columns: int = 5,
    label: str = "query",
) -> Path | None:
    """Draw each query followed by its matches; one query fills a grid, several get a row each.

    Each match is titled with its file name and score; missing cells stay blank, so fewer matches
    than cells is fine. Saves to ``out`` (PNG) when given and opens a window only when ``show``.
    ``label`` titles the first image of each row (duplicate groups show the image kept there).
    """
    sheet = draw_sheet(results, columns, label)
    saved = None
    if out is not None:
        saved = Path(out)
        try:
            saved.parent.mkdir(parents=True, exist_ok=True)
            sheet.save(saved, format="PNG")
        except OSError as exc:
            raise CbirError(f"cannot write the plot to {shown(str(saved))}: {exc.strerror or exc}") from None
    if show:
        _show(sheet)
    return saved


def draw_sheet(results: list[QueryResult], columns: int = 5, label: str = "query") -> Image.Image:
    """The contact sheet of ``results`` as an RGB image (see :func:`plot_results`)."""
    grid = Grid.of(results, columns)
    sheet = Image.new("RGB", grid.size, BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=FONT_SIZE)
    for row, col, cell in grid.cells:
        left, top, right, bottom = cell_box(row, col)
        if isinstance(cell, str):
            path, lines, color = cell, (label, _short(os.path.basename(cell))), LABEL
        else:
            path, lines, color = cell.path, (_short(os.path.basename(cell.path)), f"{cell.score:.3f}"), TEXT
        thumb = _thumb(path)
        sheet.paste(thumb, (left + (CELL - thumb.width) // 2, top))  # just under its title
        draw.multiline_text(
            ((left + right) // 2, top - TITLE + 1),
            "\n".join(lines),
            fill=color,
            font=font,
            anchor="ma",
            align="center",
        )
    return sheet


def _thumb(path: str, size: int = CELL) -> Image.Image:
    """The picture at ``path`` fitted into ``size`` pixels, or a grey square if it cannot be shown."""
    try:
        img = open_rgb(path, LoadLimits(), draft_for=(size, size))
    except Exception:  # a result file may have changed or vanished since indexing: never fail the plot
        return Image.new("RGB", (size, size), MISSING)
    return ImageOps.contain(img, (size, size))


def _show(sheet: Image.Image) -> None:
    """Open ``sheet`` in a matplotlib window (imported here: only ``--show`` pays for it)."""
    import matplotlib.pyplot as plt

    width, height = sheet.size
    fig = plt.figure(figsize=(width / 80, height / 80), dpi=80)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(sheet)
    ax.axis("off")
    plt.show()
    plt.close(fig)


def _short(name: str, width: int = 24) -> str:
    """``name`` as shown to people, cut to ``width`` characters with an ellipsis, to fit under a thumbnail."""
    name = shown(name)
    return name if len(name) <= width else name[: width - 3] + "..."
