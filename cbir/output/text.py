"""Human-readable listings printed by the command line: query results and the model table.

Each function returns the text without a final newline, to be written with ``print``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence

from cbir.embedding.backbones import Backbone
from cbir.index.indexer import IndexReport
from cbir.output.results import QueryResult

MODELS_NOTE = "(mobilenet/mobilenetv2 dimensions are for width 1.0; weights files set their own width)"


def format_results(results: Sequence[QueryResult]) -> str:
    """Each query, then its matches ranked from 1 with score and path (or ``(no matches)``)."""
    lines: list[str] = []
    for r in results:
        lines.append(f"query: {r.query}")
        if not r.matches:
            lines.append("  (no matches)")
        lines.extend(f"  {rank:3d}. {m.score:.4f}  {m.path}" for rank, m in enumerate(r.matches, 1))
    return "\n".join(lines)


def format_models(backbones: Iterable[Backbone]) -> str:
    """The ``cbir models`` table: name, feature dimension, input size and preprocessing of each."""
    lines = [f"{'model':<20}{'dim':>6}{'input':>7}  preprocessing"]
    lines.extend(f"{b.name:<20}{b.dim:>6}{b.input_size:>7}  {b.preprocess}" for b in backbones)
    lines.append(MODELS_NOTE)
    return "\n".join(lines)


def format_index_summary(report: IndexReport) -> str:
    """The one-line summary of an indexing run, then the files it skipped, one per line."""
    line = (
        f"index: {report.total} images ({report.added} added, {report.updated} updated, {report.removed} "
        f"removed, {report.unchanged} unchanged, {len(report.skipped) + report.known_bad} skipped) in "
        f"{report.seconds:.1f}s"
    )
    if report.embedded:
        line += f" ({report.images_per_second:.1f} img/s)"
    if report.rebuilt:
        line += f", rebuilt ({report.rebuilt})"
    if report.ann not in (None, "none"):
        line += f", approximate index: {report.ann}"
    line += f" -> {report.index_dir}"
    if report.skipped:
        line += f"\nskipped {len(report.skipped)} file(s):" + "".join(
            f"\n  {s['path']}: {s['reason']}" for s in report.skipped
        )
    return line


def format_csv(results: Sequence[QueryResult]) -> str:
    """The ranked matches as CSV (``query,rank,path,score``, one row per match), for spreadsheets."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["query", "rank", "path", "score"])
    for r in results:
        for rank, m in enumerate(r.matches, 1):
            writer.writerow([r.query, rank, m.path, f"{m.score:.6f}"])
    return buffer.getvalue().rstrip("\n")
