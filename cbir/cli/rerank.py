"""The re-ranking options of ``query``, ``evaluate``, ``serve`` and ``run_cbir.py`` and the
library's :class:`~cbir.search.rerank.Reranking` they make."""

from __future__ import annotations

import argparse

from cbir.cli.arguments import NON_NEGATIVE, NON_NEGATIVE_INT, similarity
from cbir.search.rerank import DEFAULT_RERANKING, Reranking


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
        "--qe", type=NON_NEGATIVE_INT, default=d.qe, metavar="N", help="query expansion, up to N (0: off)"
    )
    if dba:
        g.add_argument(
            "--dba",
            type=NON_NEGATIVE_INT,
            default=d.dba,
            metavar="N",
            help="database-side augmentation, up to N (in memory; up to ~100k images)",
        )
    g.add_argument(
        "--alpha", type=NON_NEGATIVE, default=d.alpha, help="similarity exponent for --qe/--dba (default 3)"
    )
    g.add_argument(
        "--mutual",
        type=NON_NEGATIVE_INT,
        default=d.mutual,
        metavar="K",
        help=f"only neighbours that have the query among their K nearest (default {d.mutual}; 0: the top N)",
    )
    g.add_argument(
        "--rerank-threshold", type=similarity, metavar="T", help="only neighbours at least T similar"
    )


def reranking_from(args: argparse.Namespace) -> Reranking:
    return Reranking(args.qe, getattr(args, "dba", 0), args.alpha, args.rerank_threshold, args.mutual)
