"""The re-ranking options of ``query``, ``evaluate``, ``serve`` and ``run_cbir.py`` and the
library's :class:`~cbir.search.rerank.Reranking` they make."""

from __future__ import annotations

import argparse

from cbir.cli.arguments import number, similarity, whole
from cbir.search.rerank import DEFAULT_RERANKING, Reranking

MAX_NEIGHBOURS = 1000  # neighbours averaged or checked: well past where re-ranking helps (docs/quality.md)
MAX_ALPHA = 32  # similarities below 1 raised to more vanish: every neighbour's weight is 0
NEIGHBOURS = whole(0, MAX_NEIGHBOURS)


def add_rerank_options(
    p: argparse.ArgumentParser, d: Reranking = DEFAULT_RERANKING, dba: bool = True
) -> None:
    """The options, defaulting to ``d``; ``dba=False`` leaves out ``--dba``, which augments the
    whole index per search (fine for one command, not for a server answering many)."""
    title = (
        f"re-ranking (default: adaptive query expansion, --qe {d.qe} --mutual {d.mutual})"
        if d.active
        else "re-ranking (default: none; the command line's is "
        f"--qe {DEFAULT_RERANKING.qe} --mutual {DEFAULT_RERANKING.mutual})"
    )
    g = p.add_argument_group(title)
    g.add_argument(
        "--qe",
        type=NEIGHBOURS,
        default=d.qe,
        metavar="N",
        help=f"query expansion, up to N, at most {MAX_NEIGHBOURS} (0: off)",
    )
    if dba:
        g.add_argument(
            "--dba",
            type=NEIGHBOURS,
            default=d.dba,
            metavar="N",
            help=f"database-side augmentation, up to N, at most {MAX_NEIGHBOURS} "
            "(in memory; up to ~100k images)",
        )
    g.add_argument(
        "--alpha",
        type=number(0, MAX_ALPHA),
        default=d.alpha,
        help=f"similarity exponent for --qe/--dba, 0 to {MAX_ALPHA} (default 3)",
    )
    g.add_argument(
        "--mutual",
        type=NEIGHBOURS,
        default=d.mutual,
        metavar="K",
        help=f"only neighbours that have the query among their K nearest (default {d.mutual}; 0: the top N)",
    )
    g.add_argument(
        "--rerank-threshold", type=similarity, metavar="T", help="only neighbours at least T similar"
    )


def reranking_from(args: argparse.Namespace) -> Reranking:
    return Reranking(args.qe, getattr(args, "dba", 0), args.alpha, args.rerank_threshold, args.mutual)
