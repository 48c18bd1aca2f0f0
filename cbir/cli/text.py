"""Listings printed by the command line: query results, duplicate groups, models, summaries.

Each function returns the text without a final newline, to be written with ``print``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

from cbir.core.names import shown, to_text
from cbir.core.results import QueryResult
from cbir.duplicates.moves import MoveReport, UndoReport
from cbir.encoders.base import TEXT
from cbir.encoders.registry import ModelInfo
from cbir.indexing.indexer import IndexReport
from cbir.service.duplicates import DuplicateReport

MODELS_NOTE = "(mobilenet/mobilenetv2 dimensions are for width 1.0; weights files set their own width)"


def format_results(results: Sequence[QueryResult]) -> str:
    """Each query, then its matches ranked from 1 with score and path (or ``(no matches)``)."""
    lines: list[str] = []
    for r in results:
        lines.append(f"query: {shown(r.query)}")
        if not r.matches:
            lines.append("  (no matches)")
        lines.extend(f"  {rank:3d}. {m.score:.4f}  {shown(m.path)}" for rank, m in enumerate(r.matches, 1))
    return "\n".join(lines)


def format_models(models: Iterable[ModelInfo], cache: Path) -> str:
    """The ``cbir models`` tables: the image models (name, feature dimension, input size and
    preprocessing of each), then the text-image ones, which are downloaded on first use (about how
    much, and whether they already are, in ``cache``)."""
    images: list[ModelInfo] = []
    joint: list[ModelInfo] = []
    for m in models:
        (joint if TEXT in m.modalities else images).append(m)
    lines = [f"{'model':<20}{'dim':>6}{'input':>7}  preprocessing"]
    lines.extend(f"{m.name:<20}{m.dim:>6}{m.input_size:>7}  {m.preprocess}" for m in images)
    lines.append(MODELS_NOTE)
    if joint:
        lines.append("")
        lines.append(
            "text-image models, for search by free text (cbir query --text); downloaded on first use "
            f"into {shown(str(cache / 'keras-hub'))}"
        )
        lines.append(f"{'model':<20}{'dim':>6}{'input':>7}  {'architecture':<13}{'download':>9}  cached")
        lines.extend(
            f"{m.name:<20}{m.dim:>6}{m.input_size:>7}  {m.architecture or '':<13}"
            f"{_gigabytes(m.download_bytes):>9}  {'yes' if m.cached else 'no'}"
            for m in joint
        )
    return "\n".join(lines)


def _gigabytes(size: int | None) -> str:
    return "?" if size is None else f"~{size / 1e9:.1f} GB"


KNOWN_BAD_SHOWN = 10
"""How many remembered failures the text summary names (``--json`` has them all)."""


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
    if report.labels:
        line += f", labels by {report.labels} ({report.labelled} labelled)"
    line += f" -> {report.index_dir}"
    if report.skipped:
        line += f"\nskipped {len(report.skipped)} file(s):" + "".join(
            f"\n  {shown(s['path'])}: {shown(s['reason'])}" for s in report.skipped
        )
    if report.known_bad_files:
        known = report.known_bad_files
        line += f"\nstill skipped, unchanged since they failed: {len(known)} file(s):" + "".join(
            f"\n  {shown(s['path'])}: {shown(s['reason'])}" for s in known[:KNOWN_BAD_SHOWN]
        )
        if len(known) > KNOWN_BAD_SHOWN:
            line += f"\n  ... and {len(known) - KNOWN_BAD_SHOWN} more (--json lists them all)"
    return line


def format_csv(results: Sequence[QueryResult]) -> str:
    """The ranked matches as CSV (``query,rank,path,score``, one row per match), for spreadsheets;
    names in :func:`~cbir.core.names.to_text` form (a backslash doubled, an undecodable byte `\\xNN`)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["query", "rank", "path", "score"])
    for r in results:
        for rank, m in enumerate(r.matches, 1):
            writer.writerow([to_text(r.query), rank, to_text(m.path), f"{m.score:.6f}"])
    return buffer.getvalue().rstrip("\n")


def format_duplicates(report: DuplicateReport) -> str:
    """A summary line, then each group: the image kept, and each member with its similarity to it."""
    o = report.options
    lines = [
        f"{len(report.groups)} group(s) of near-duplicates among {report.images} images "
        f"(threshold {o.floor:g}, verify {o.verify}, grouping {o.grouping}, keep {o.keep}): "
        f"{report.redundant} image(s) besides the kept ones"
    ]
    for number, group in enumerate(report.groups, 1):
        lines.append(f"group {number}: keep {shown(group.representative)}")
        lines.extend(f"  {m.score:.4f}  {shown(m.path)}" for m in group.members)
    return "\n".join(lines)


def format_duplicates_csv(report: DuplicateReport) -> str:
    """The groups as CSV (``group,role,path,score``: the ``keep`` row first, then each ``member``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["group", "role", "path", "score"])
    for number, group in enumerate(report.groups, 1):
        writer.writerow([number, "keep", to_text(group.representative), ""])
        for m in group.members:
            writer.writerow([number, "member", to_text(m.path), f"{m.score:.6f}"])
    return buffer.getvalue().rstrip("\n")


def format_moves(report: MoveReport) -> str:
    log = shown(str(report.log))
    skipped = (
        f"; {len(report.skipped)} left where they are (changed since indexing)" if report.skipped else ""
    )
    return (
        f"moved {report.moved} file(s){skipped}; the log is {log} (undo: cbir duplicates --undo {log}); "
        "the next `cbir index` drops them from the index"
    )


def format_undo(report: UndoReport) -> str:
    """What ``--undo`` put back, then one line per file it left alone."""
    line = f"put back {report.restored} file(s)"
    if report.not_moved:
        line += f"; {report.not_moved} were never moved (or are back already)"
    return "\n".join([line, *(f"  not restored: {shown(p)}" for p in report.problems)])
