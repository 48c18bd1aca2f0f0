"""Drawing queries and their matches in one matplotlib figure, saved as PNG (headless-safe)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageOps

from cbir.ingest.decode import LoadLimits, open_rgb
from cbir.output.results import Match, QueryResult

if TYPE_CHECKING:  # matplotlib is imported only when a plot is drawn
    from matplotlib.figure import Figure

CELL_INCHES = 2.4


def _thumb(path: str, size: int = 256) -> Image.Image:
    """The picture at ``path`` fitted into ``size`` pixels, or a grey square if it cannot be shown."""
    try:
        img = open_rgb(path, LoadLimits(), draft_for=(size, size))
    except Exception:  # a result file may have changed or vanished since indexing: never fail the plot
        return Image.new("RGB", (size, size), (200, 200, 200))
    return ImageOps.contain(img, (size, size))


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
    if len(results) == 1:
        n_cells = 1 + len(results[0].matches)
        cols = min(columns, n_cells)
        rows = math.ceil(n_cells / cols)
        layout: list[list[str | Match]] = [[results[0].query, *results[0].matches]]
    else:
        cols = 1 + max((len(r.matches) for r in results), default=0)
        rows = len(results)
        layout = [[r.query, *r.matches] for r in results]
    fig = _figure((CELL_INCHES * cols, CELL_INCHES * rows + 0.3), show)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    flat = axes.flat if len(results) == 1 else None
    for r, cells in enumerate(layout):
        for c, cell in enumerate(cells):
            ax = next(flat) if flat is not None else axes[r][c]
            if isinstance(cell, str):
                ax.imshow(_thumb(cell))
                ax.set_title(f"{label}\n{_short(os.path.basename(cell))}", fontsize=9, color="tab:blue")
            else:
                ax.imshow(_thumb(cell.path))
                ax.set_title(f"{_short(os.path.basename(cell.path))}\n{cell.score:.3f}", fontsize=9)
    fig.tight_layout()
    saved = None
    if out is not None:
        saved = Path(out)
        if saved.parent and not saved.parent.exists():
            saved.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(saved, dpi=80, format="png")
    if show:
        import matplotlib.pyplot as plt

        plt.show()
        plt.close(fig)
    return saved


def _figure(size: tuple[float, float], show: bool) -> Figure:
    """A figure of ``size`` inches: pyplot's for a window, else a bare Agg one (pyplot's import and
    backend selection cost about 0.4 s more, see docs/speed.md)."""
    if show:
        import matplotlib.pyplot as plt

        return plt.figure(figsize=size)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def _short(name: str, width: int = 24) -> str:
    """``name`` cut to ``width`` characters with an ellipsis, to fit under a thumbnail."""
    return name if len(name) <= width else name[: width - 3] + "..."
