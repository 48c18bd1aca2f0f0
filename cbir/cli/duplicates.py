"""The ``cbir duplicates`` command: the face of :mod:`cbir.service.duplicates` and
:mod:`cbir.duplicates.moves` (it prints)."""

from __future__ import annotations

import argparse

from cbir.cli import show, text
from cbir.cli.options import DEFAULT_DUPLICATES_OUT, duplicate_options_from
from cbir.cli.store import store_from
from cbir.core.errors import CbirError, QueryError
from cbir.core.names import shown
from cbir.core.results import Match, QueryResult
from cbir.duplicates.moves import undo_moves
from cbir.service.duplicates import find_duplicates, move_duplicates
from cbir.service.export import export_results


def cmd_duplicates(args: argparse.Namespace) -> int:
    """Group the near-duplicates of an index (no model is built), then list, link or move them."""
    if args.undo:
        undone = undo_moves(args.undo)
        print(text.format_undo(undone))
        if undone.problems:
            raise CbirError(f"{len(undone.problems)} file(s) could not be put back (listed above)")
        return 0
    if not args.dataset:
        raise QueryError("give the indexed folder (or --undo LOG)")
    index = store_from(args).open()
    report = find_duplicates(index, duplicate_options_from(args))
    show.print_answer(
        args,
        report.to_dict,
        lambda: text.format_duplicates_csv(report),
        lambda: text.format_duplicates(report),
    )
    groups = [
        QueryResult(g.representative, [Match(g.representative, 1.0), *g.members]) for g in report.groups
    ]
    if args.link_to:
        made = export_results(groups, args.link_to, subfolders=True)
        print(
            f"{made} link(s) made in {len(groups)} folder(s) of {shown(args.link_to)}", file=show.notes(args)
        )
    if args.move_to:
        moved = move_duplicates(index, report, args.move_to)
        print(text.format_moves(moved), file=show.notes(args))
    plotted = [QueryResult(r.query, r.matches[1:]) for r in groups[: args.plot_groups]]
    show.plot_if_asked(args, plotted, DEFAULT_DUPLICATES_OUT, label="keep")
    return 0
