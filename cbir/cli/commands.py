"""The commands: ``cbir index|query|serve|evaluate|duplicates|models`` and the original
``run_cbir.py`` flags, imported by :mod:`cbir.cli.main` once it guards against Ctrl-C.

Parses the arguments (:mod:`cbir.cli.options`), calls the library, prints. Every user error becomes
one line on stderr and exit status 2; Ctrl-C (raised here, caught by :mod:`cbir.cli.main`) exits
with 130 and keeps the finished work.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import NoReturn

from cbir.cli import show, text
from cbir.cli.arguments import one_line
from cbir.cli.duplicates import cmd_duplicates
from cbir.cli.options import (
    DEFAULT_OUT,
    build_legacy_parser,
    build_parser,
    index_options_from,
    result_filter_from,
    settings_from,
)
from cbir.cli.rerank import reranking_from
from cbir.cli.serve import cmd_serve
from cbir.cli.store import source_from, store_from
from cbir.core.errors import CbirError, ModelError, QueryError
from cbir.core.names import shown
from cbir.core.quiet import native_stderr_silenced, route_logs
from cbir.core.results import QueryResult, results_to_dict
from cbir.encoders.model_cache import default_cache_dir
from cbir.encoders.registry import describe_models
from cbir.indexing.indexer import IndexOptions, IndexReport, update_index
from cbir.indexing.watch import FolderWatcher
from cbir.service.evaluate import evaluate_index
from cbir.service.export import export_results
from cbir.service.query import (
    DEFAULT_TEXT_WEIGHT,
    SearchRequest,
    check_query_files,
    embeds_text,
    like_index,
    query_index,
    text_index,
    words_route,
)
from cbir.service.settings import Settings, classifier_for
from cbir.stores.base import IndexReader


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def _tensorflow_importer(verbose: int) -> Callable[[], None]:
    """Import TensorFlow before the first model is built, its C++ start-up chatter sent to /dev/null."""

    def load() -> None:
        if verbose or "tensorflow" in sys.modules:
            return
        try:
            with native_stderr_silenced():
                import keras  # noqa: F401
                import tensorflow as tf

                tf.config.list_physical_devices()
        except ImportError as exc:
            raise ModelError(f"this needs TensorFlow and Keras, which cannot be imported ({exc})") from exc

    return load


def _index(args: argparse.Namespace, settings: Settings, options: IndexOptions | None = None) -> IndexReport:
    return update_index(
        settings.dataset,
        source_from(args, settings),
        options=options or index_options_from(args),
        store=settings.home,
        classifier=classifier_for(settings),
    )


def cmd_index(args: argparse.Namespace) -> int:
    settings = settings_from(args, _tensorflow_importer(args.verbose), bulk=True)
    options = replace(index_options_from(args), rebuild=False)

    def report(done: IndexReport) -> None:
        _print_report(args, done)
        if watcher is not None:  # files that could not be read this time: look again later
            watcher.retry(done.transient > 0)

    # the watcher looks at the folder before the first run: nothing copied in meanwhile is missed
    watcher = (
        FolderWatcher(
            settings.dataset,
            lambda: report(_index(args, settings, options)),
            skip=settings.home.own_folders,
            options=options,
        )
        if args.watch
        else None
    )
    report(_index(args, settings))
    if watcher is not None:
        print(f"watching {settings.dataset} for new and changed images (Ctrl-C to stop)", file=sys.stderr)
        watcher.run()
    return 0


def _print_report(args: argparse.Namespace, report: IndexReport) -> None:
    if args.json:
        show.print_json(report.to_dict())
    else:
        print(text.format_index_summary(report))
    sys.stdout.flush()  # with --watch, each run's summary is read as it comes


def cmd_query(args: argparse.Namespace, update: bool) -> int:
    """Index (or reuse the index of) DATASET, then answer the queries with the same model.

    ``--like`` or ``--text`` alone (no update) opens the index and nothing else: no settings, no
    model. ``--text`` with images or ``--like`` keeps only their neighbours whose labels match.
    """
    like: list[str] = getattr(args, "like", [])
    words: str | None = getattr(args, "text", None)
    weight: float | None = getattr(args, "text_weight", None)
    if not args.img_query and not like and words is None:
        raise QueryError("give query images, --like PATH for images of the index, or --text WORDS")
    check_query_files(args.img_query)
    exact = getattr(args, "exact", False) or args.ann == "none"
    pictures = bool(args.img_query or like)
    if weight is not None and not (words is not None and pictures):
        raise QueryError("--text-weight weighs --text against query images or --like: give both")
    request = SearchRequest(
        args.top,
        reranking=reranking_from(args),
        exact=exact,
        where=result_filter_from(args),
        words=words if pictures else None,
        text_weight=DEFAULT_TEXT_WEIGHT if weight is None else weight,
    )
    if not args.img_query and not update:
        index = store_from(args).open()
        if words is not None:
            _say_route(args, index, weight)
        if words is None or not embeds_text(index):  # no model: stored vectors, or labels
            if like:
                return _answer(args, like_index(index, like, request), None)
            return _answer(args, text_index(index, None, [words or ""], request), None, "words")
    settings = settings_from(args, _tensorflow_importer(args.verbose), strict=not update)
    report: IndexReport | None = None
    if settings.existing and not update:
        index = settings.home.open()
        index.check_compatible(settings.config)
    else:
        report = _index(args, settings)
        index = settings.home.open()
        if words is not None:
            _say_route(args, index, weight)
    # run_cbir.py (update) answers an indexed, unchanged query image from its stored vector
    if words is not None and not pictures:
        return _answer(args, text_index(index, settings, [words], request), report, "words")
    results = query_index(index, settings, args.img_query, request, reuse_stored=update)
    if like:
        results += like_index(index, like, request, settings)
    return _answer(args, results, report)


def _say_route(args: argparse.Namespace, index: IndexReader, weight: float | None) -> None:
    """One line on stderr when the words go through the model's text tower (not the labels)."""
    if weight is not None and not embeds_text(index):
        raise QueryError(
            f"--text-weight needs an index made by a text-image model; {index.config.model}'s is searched "
            "by words through its labels, which filter the neighbours instead"
        )
    if embeds_text(index):  # labels: as before, nothing (an error stays one line)
        print(f"cbir: {words_route(index)}", file=sys.stderr)


def _answer(
    args: argparse.Namespace, results: list[QueryResult], report: IndexReport | None, label: str = "query"
) -> int:
    if report is not None and not args.json:
        print(text.format_index_summary(report), file=sys.stderr)
    show.print_answer(
        args,
        lambda: results_to_dict(results, report.to_dict() if report else None),
        lambda: text.format_csv(results),
        lambda: text.format_results(results),
    )
    dest = args.link_to or args.copy_to
    if dest:
        made = export_results(results, dest, copy=bool(args.copy_to))
        print(
            f"{made} match(es) {'copied' if args.copy_to else 'linked'} into {shown(dest)}",
            file=show.notes(args),
        )
    show.plot_if_asked(args, results, DEFAULT_OUT, label)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    settings = settings_from(args, _tensorflow_importer(args.verbose), bulk=True)
    report = _index(args, settings)
    index = settings.home.open()
    result = evaluate_index(index, args.gt, reranking=reranking_from(args))
    if args.json:
        doc = result.to_dict()
        if not args.per_query:
            doc.pop("per_query_ap", None)
        doc["index"] = report.to_dict()
        show.print_json(doc)
    else:
        print(text.format_index_summary(report), file=sys.stderr)
        print(result.format_table())
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """The models of every encoder family; for those downloaded on first use, whether they are."""
    cache = default_cache_dir(args.model_cache)
    models = describe_models(cache)
    if args.json:
        show.print_json([m.to_dict() for m in models])
    else:
        print(text.format_models(models, cache))
    return 0


def _interrupt(*_: object) -> NoReturn:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace, legacy: bool) -> int:
    if legacy:
        return cmd_query(args, update=True)
    if args.command == "query":
        args.img_query = args.images
        return cmd_query(args, update=args.update)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "index": cmd_index,
        "serve": lambda a: cmd_serve(a, _tensorflow_importer(a.verbose)),
        "evaluate": cmd_evaluate,
        "duplicates": cmd_duplicates,
        "models": cmd_models,
    }
    return commands[args.command](args)


def dispatch(argv: Sequence[str] | None, legacy: bool) -> int:
    """Parse ``argv`` (``legacy``: ``run_cbir.py``'s flags), run the command, and turn its errors into
    one line and an exit status; KeyboardInterrupt and SystemExit go to the caller."""
    _quiet_tensorflow()
    parser = build_legacy_parser() if legacy else build_parser()
    args = parser.parse_args(argv)
    route_logs(args.verbose)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run(args, legacy)
    except CbirError as exc:
        print(f"cbir: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except MemoryError:
        print("cbir: error: out of memory; try a smaller --batch-size", file=sys.stderr)
        return 1
    except Exception as exc:
        if args.verbose:
            raise
        print(
            f"cbir: internal error: {type(exc).__name__}: {one_line(str(exc))} (run with -v for details)",
            file=sys.stderr,
        )
        return 1
