"""The ``cbir serve`` command: the web app over a collection (FastAPI, imported only here)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from cbir.cli.options import index_options_from, settings_from
from cbir.cli.rerank import reranking_from
from cbir.core.errors import CbirError
from cbir.core.names import json_text, shown


def cmd_serve(args: argparse.Namespace, load_tensorflow: Callable[[], None]) -> int:
    """Serve the collection in the browser (the page answers at once; model and index catch up)."""
    try:
        from cbir.web.activity import Activity
        from cbir.web.server import ServeOptions, is_loopback, serve  # FastAPI: only when serving
    except ImportError as exc:
        raise CbirError(f"cbir serve needs the web extra ({exc}): pip install 'cbir[web]'") from None
    if not is_loopback(args.host):
        print(
            f"cbir: warning: listening on {args.host}: anyone who can reach this machine can see the "
            + ("collection (the token is required)" if args.token else "collection; consider --token"),
            file=sys.stderr,
        )
    settings = settings_from(args, load_tensorflow)
    options = ServeOptions(
        args.host,
        args.port,
        args.token,
        args.max_upload_mb,
        args.max_upload_mp,
        tuple(args.allow_host),
        args.watch,
        reranking=reranking_from(args),
        trash=args.trash,
    )
    activity = Activity(_line, json=args.json)

    def listening(url: str) -> None:
        if args.json:
            _line(json_text({"event": "listening", "url": url, "dataset": str(settings.dataset)}))
        else:
            _line(f"serving {shown(str(settings.dataset))} at {url}")

    serve(settings, index_options_from(args), options, listening, activity)
    return 0


def _line(text: str) -> None:
    print(text, flush=True)
