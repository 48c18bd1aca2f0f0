"""Where a command's answer goes, the same for every command: ``--json`` or ``--csv`` (stdout holds
only that; notes go to stderr) or the human listing (notes to stdout), and the plot (``--out`` or
``--show``; by default a PNG unless the output is for programs)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from cbir.core.names import json_text, shown
from cbir.core.results import QueryResult
from cbir.core.types import JSONDict


def print_json(doc: JSONDict | list[JSONDict]) -> None:
    """One JSON document on stdout (strict: no NaN or Infinity; names lossless, :func:`json_text`)."""
    print(json_text(doc, indent=2, allow_nan=False))


def for_programs(args: argparse.Namespace) -> bool:
    """Whether stdout is for a program (``--json``, ``--csv``): it then holds the answer alone."""
    return bool(getattr(args, "json", False) or getattr(args, "csv", False))


def notes(args: argparse.Namespace) -> TextIO:
    """Where lines for people go beside the answer: stderr when stdout is for programs."""
    return sys.stderr if for_programs(args) else sys.stdout


def print_answer(
    args: argparse.Namespace, doc: Callable[[], JSONDict], csv: Callable[[], str], human: Callable[[], str]
) -> None:
    """The answer on stdout, as ``--json``, ``--csv`` or the human listing asks."""
    if args.json:
        print_json(doc())
    else:
        print(csv() if args.csv else human())


def plot_if_asked(
    args: argparse.Namespace, results: Sequence[QueryResult], default_out: str, label: str = "query"
) -> None:
    """Draw ``results`` into ``--out`` (default ``default_out`` unless the output is for programs) or
    on screen with ``--show``; says where the plot was saved."""
    out = args.out or (None if for_programs(args) else default_out)
    if not results or args.no_plot or not (out or args.show):
        return
    from cbir.cli.plot import plot_results  # matplotlib: only when a plot is drawn

    saved = plot_results(list(results), out, show=args.show, label=label)
    if saved is not None:
        print(f"plot saved to {shown(str(saved))}", file=notes(args))
