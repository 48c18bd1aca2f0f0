"""The command line: ``cbir index|query|models`` and the original ``run_cbir.py`` flags.

Only parses arguments, calls the library and prints; every user error becomes one line on stderr
and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cbir.errors import CbirError

DEFAULT_OUT = "cbir_results.png"
log = logging.getLogger("cbir")


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def _import_tensorflow_quietly(verbose: int) -> None:
    """Import TensorFlow with its C++ start-up chatter (absl logs, CUDA probing) sent to /dev/null."""
    if verbose or "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_physical_devices()
        import keras  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else (logging.INFO if verbose == 1 else logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("cbir: %(levelname)s: %(message)s"))
    root = logging.getLogger("cbir")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _scales(text: str) -> tuple[float, ...]:
    try:
        values = tuple(_scale_value(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad scales {text!r}: use numbers like 1,0.707,1.414") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("scales must be positive")
    return values


def _scale_value(token: str) -> float:
    """Parse one scale: a number, or ``sqrt2`` / ``1/sqrt2`` for convenience."""
    token = token.strip().lower()
    named = {"sqrt2": 2**0.5, "1/sqrt2": 2**-0.5}
    return named[token] if token in named else float(token)


def _add_feature_options(p: argparse.ArgumentParser) -> None:
    from cbir.embedding.features import POOLINGS
    from cbir.ingest.decode import GEOMETRY_MODES, RESAMPLERS

    g = p.add_argument_group("features (an existing index decides these for queries)")
    g.add_argument("--model", help="backbone (default resnet50; see `cbir models`)")
    g.add_argument(
        "--weights",
        help="local weights file instead of the ImageNet download "
        "('random' for untrained weights, for tests)",
    )
    g.add_argument("--pooling", choices=POOLINGS, help="global pooling of the last feature map")
    g.add_argument("--gem-p", type=float, help="GeM exponent (default 3)")
    g.add_argument("--size", type=int, help="input size (default: the backbone's)")
    g.add_argument("--geometry", choices=GEOMETRY_MODES, help="how images are fitted to the input size")
    g.add_argument("--resample", choices=list(RESAMPLERS), help="resampling filter for resizing")
    g.add_argument("--scales", type=_scales, help="multi-scale factors, e.g. 1,1/sqrt2,sqrt2")
    g.add_argument(
        "--original",
        action="store_true",
        help="the original script's features: max pooling, 224x224 squash, nearest resampling",
    )
    r = p.add_argument_group("running")
    r.add_argument("--batch-size", type=int, default=32, help="images per model call (default 32)")
    r.add_argument("--workers", type=int, help="decoding threads (default: one per core, at most 8)")


def _add_index_options(p: argparse.ArgumentParser) -> None:
    from cbir.index.ann import AUTO_MIN_ROWS, MODES

    g = p.add_argument_group("index")
    g.add_argument("--index", metavar="DIR", help="index folder (default: DATASET/.cbir)")
    g.add_argument("--rebuild", action="store_true", help="rebuild the index from scratch")
    g.add_argument(
        "--dtype", choices=["float32", "float16"], default="float32", help="storage type of feats.npy"
    )
    g.add_argument(
        "--ann",
        choices=MODES,
        default="auto",
        help=f"approximate index for fast search: auto (from {AUTO_MIN_ROWS} images), none, or a kind "
        "(default auto)",
    )
    g.add_argument("--no-recursive", dest="recursive", action="store_false", help="only the top folder")
    g.add_argument("--include-hidden", action="store_true", help="also index hidden files and folders")
    g.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="glob of paths or names to skip (repeatable)",
    )
    g.add_argument("--max-pixels", type=int, help="skip images with more pixels (default 250M)")
    g.add_argument("--max-file-mb", type=float, help="skip files larger than this (default 512 MiB)")
    g.add_argument(
        "--checkpoint-every",
        type=int,
        default=500,
        metavar="N",
        help="commit progress every N images (and every 2 minutes; default 500)",
    )
    g.add_argument(
        "--whiten-on",
        metavar="DIR",
        help="learn a PCA-whitening on the images of DIR and store it with the index",
    )
    g.add_argument("--whiten-dim", type=int, help="dimensions kept by the whitening (default: all)")
    g.add_argument(
        "--whiten-power",
        type=float,
        default=0.5,
        help="eigenvalue exponent: 0.5 classic PCA-whitening, 0.25 softened (default 0.5)",
    )


def _add_rerank_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("re-ranking")
    g.add_argument("--qe", type=int, default=0, metavar="N", help="alpha query expansion with the top N")
    g.add_argument(
        "--dba",
        type=int,
        default=0,
        metavar="N",
        help="database-side augmentation with the top N (in memory; up to ~100k images)",
    )
    g.add_argument("--alpha", type=float, default=3.0, help="similarity exponent for --qe/--dba (default 3)")


def _add_output_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("-k", "--top", type=int, default=9, help="number of matches per query (default 9)")
    g.add_argument("--out", help=f"PNG file for the plot (default {DEFAULT_OUT}; with --json only if given)")
    g.add_argument("--no-plot", action="store_true", help="do not draw the plot")
    g.add_argument("--show", action="store_true", help="also open the plot in a window")
    g.add_argument("--json", action="store_true", help="print results as JSON on stdout")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cbir", description="Content-based image retrieval: index a folder, query by example."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("index", help="build or update the index of a folder")
    p.add_argument("dataset")
    _add_feature_options(p)
    _add_index_options(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_common(p)
    p = sub.add_parser("query", help="find the images of a folder most similar to example images")
    p.add_argument("dataset")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--update", action="store_true", help="bring the index up to date with the folder first")
    p.add_argument("--exact", action="store_true", help="exact search even if an approximate index exists")
    _add_feature_options(p)
    _add_index_options(p)
    _add_rerank_options(p)
    _add_output_options(p)
    _add_common(p)
    p = sub.add_parser("evaluate", help="measure retrieval quality (mAP, P@k, R@k) on a benchmark folder")
    p.add_argument("dataset")
    p.add_argument(
        "--gt",
        metavar="FILE",
        help="labels.csv or gt.json (default: found in DATASET, or INRIA Holidays / UKBench file naming)",
    )
    _add_feature_options(p)
    _add_index_options(p)
    _add_rerank_options(p)
    p.add_argument("--per-query", action="store_true", help="include every query's AP in --json output")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_common(p)
    p = sub.add_parser("models", help="list the available backbones")
    p.add_argument("--json", action="store_true")
    _add_common(p)
    return parser


def build_legacy_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_cbir.py",
        description="Index DATASET (reusing its index) and show the images most similar to IMG_QUERY.",
    )
    parser.add_argument("-dataset", "--dataset", required=True, help="folder of images")
    parser.add_argument(
        "-img_query", "--img-query", dest="img_query", nargs="+", required=True, help="query image(s)"
    )
    _add_feature_options(parser)
    _add_index_options(parser)
    _add_rerank_options(parser)
    _add_output_options(parser)
    _add_common(parser)
    return parser


def _feature_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from cbir.embedding.features import ORIGINAL

    over: dict[str, Any] = {}
    if args.original:
        over.update(pooling=ORIGINAL.pooling, geometry=ORIGINAL.geometry, resample=ORIGINAL.resample)
    names = {
        "model": "model",
        "pooling": "pooling",
        "gem_p": "gem_p",
        "size": "size",
        "geometry": "geometry",
        "resample": "resample",
        "scales": "scales",
    }
    for arg, key in names.items():
        value = getattr(args, arg, None)
        if value is not None:
            over[key] = value
    return over


def _embedder_factory(
    config: Any, weights: str | None, args: argparse.Namespace, whitening: Any = None
) -> Any:
    from cbir.embedding.embedder import Embedder
    from cbir.ingest.decode import LoadLimits

    config = config.replace(whitening=None)

    cache: dict[str, Any] = {}
    limit_args = {}
    if getattr(args, "max_pixels", None):
        limit_args["max_pixels"] = args.max_pixels
    if getattr(args, "max_file_mb", None):
        limit_args["max_bytes"] = int(args.max_file_mb * 2**20)
    limits = LoadLimits(**limit_args)

    def make() -> Embedder:
        if "e" not in cache:
            _import_tensorflow_quietly(args.verbose)
            cache["e"] = Embedder(
                config,
                weights,
                batch_size=args.batch_size,
                workers=args.workers,
                limits=limits,
                whitening=whitening,
            )
        return cache["e"]

    make.whitening = whitening  # type: ignore[attr-defined]
    return make


def _existing_manifest(args: argparse.Namespace) -> Any:
    """The committed manifest of the dataset's index, or None (absent, unreadable, or --rebuild)."""
    from cbir.errors import IndexFolderError
    from cbir.index.snapshot import default_index_dir
    from cbir.index.store import read_manifest

    if args.rebuild or not os.path.isdir(args.dataset):
        return None
    try:
        return read_manifest(Path(args.index or default_index_dir(args.dataset)))
    except IndexFolderError:
        return None


def _prepare(args: argparse.Namespace, manifest: Any = None) -> tuple[Any, str, Any]:
    """Feature config, weights and embedder factory.

    An existing index's settings (and weights file) are the starting point, so a re-run without
    options never silently rebuilds with the defaults; options given change just those settings
    (which rebuilds the index when indexing, and is refused when querying). ``--whiten-on`` learns
    a whitening first; an index's own whitening is kept only while nothing else changes.
    """
    from cbir.embedding.features import FeatureConfig
    from cbir.embedding.whiten import load_for_index
    from cbir.errors import IndexFolderError
    from cbir.index.snapshot import default_index_dir

    over = _feature_overrides(args)
    whiten_on = getattr(args, "whiten_on", None)
    whitening = None
    if manifest is None:
        config = FeatureConfig().replace(**over)
        weights = args.weights or "imagenet"
    else:
        base = FeatureConfig.from_dict(manifest.config)
        config = base.replace(**over)
        weights = base.weights
        if weights.startswith("file:"):
            weights = manifest.weights_path
        if args.weights or config.model != base.model:
            weights = args.weights or "imagenet"
            config = config.replace(alpha=None)
        elif base.weights.startswith("file:") and (not weights or not os.path.isfile(weights)):
            name = base.weights.split(":")[1]
            raise IndexFolderError(f"the index was built with the weights file {name}; pass --weights FILE")
        if (
            config.replace(whitening=None) == base.replace(whitening=None)
            and not whiten_on
            and not args.weights
        ):
            whitening = load_for_index(args.index or default_index_dir(args.dataset), base.whitening)
        config = config.replace(whitening=None)
    make = _embedder_factory(config, weights, args, whitening)
    if whiten_on:
        from cbir.embedding.whiten import learn_from_folder

        embedder = make()
        embedder.set_whitening(
            learn_from_folder(embedder, whiten_on, args.whiten_dim, power=args.whiten_power)
        )
        make.whitening = embedder.whitening
    return config, weights, make


def _index(args: argparse.Namespace, config: Any, weights: str | None, make: Any) -> Any:
    from cbir.index.indexer import update_index

    return update_index(
        args.dataset,
        config,
        weights=weights,
        index_dir=args.index,
        embedder=make,
        rebuild=args.rebuild,
        dtype=args.dtype,
        recursive=args.recursive,
        include_hidden=args.include_hidden,
        exclude=args.exclude,
        progress=None,
        whitening=make.whitening,
        checkpoint_every=args.checkpoint_every,
        ann=args.ann,
    )


def _summary(report: Any) -> str:
    line = (
        f"index: {report.total} images ({report.added} added, {report.updated} updated, {report.removed} "
        f"removed, {report.unchanged} unchanged, {len(report.skipped) + report.known_bad} skipped) in "
        f"{report.seconds:.1f}s"
    )
    if report.embedded:
        line += f" ({report.images_per_second:.1f} img/s)"
    if report.rebuilt:
        line += f", rebuilt ({report.rebuilt})"
    if getattr(report, "ann", None) not in (None, "none"):
        line += f", approximate index: {report.ann}"
    line += f" -> {report.index_dir}"
    if report.skipped:
        line += f"\nskipped {len(report.skipped)} file(s):" + "".join(
            f"\n  {s['path']}: {s['reason']}" for s in report.skipped
        )
    return line


def cmd_index(args: argparse.Namespace) -> int:
    report = _index(args, *_prepare(args, _existing_manifest(args)))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(_summary(report))
    return 0


def _run_queries(args: argparse.Namespace, index: Any, make: Any, report: Any = None) -> int:
    from cbir.output.results import results_to_dict
    from cbir.search.query import query_index

    exact = getattr(args, "exact", False) or args.ann == "none"
    results = query_index(
        index, make(), args.img_query, k=args.top, exact=exact, qe=args.qe, dba=args.dba, alpha=args.alpha
    )
    if args.json:
        print(
            json.dumps(
                results_to_dict(results, report.to_dict() if report else None), indent=2, ensure_ascii=False
            )
        )
    else:
        if report is not None:
            print(_summary(report), file=sys.stderr)
        for r in results:
            print(f"query: {r.query}")
            if not r.matches:
                print("  (no matches)")
            for rank, m in enumerate(r.matches, 1):
                print(f"  {rank:3d}. {m.score:.4f}  {m.path}")
    out = args.out or (None if args.json else DEFAULT_OUT)
    if not args.no_plot and (out or args.show):
        from cbir.output.plot import plot_results

        saved = plot_results(results, out, show=args.show)
        if saved is not None:
            print(f"plot saved to {saved}", file=sys.stderr if args.json else sys.stdout)
    return 0


def cmd_search(args: argparse.Namespace, update: bool) -> int:
    """Index (or reuse the index of) DATASET, then answer the queries with the same model."""
    from cbir.embedding.embedder import resolve_config
    from cbir.index.snapshot import default_index_dir, open_index
    from cbir.search.query import check_query_files

    check_query_files(args.img_query)
    idir = args.index or default_index_dir(args.dataset)
    manifest = _existing_manifest(args)
    config, weights, make = _prepare(args, manifest)
    if manifest is not None and not update:
        index = open_index(args.dataset, idir)
        digest = make.whitening.digest if make.whitening is not None else None
        wanted = resolve_config(config, weights).replace(whitening=digest)
        index.check_compatible(wanted)
        return _run_queries(args, index, make)
    report = _index(args, config, weights, make)
    return _run_queries(args, open_index(args.dataset, idir), make, report)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cbir.evaluation.evaluate import evaluate_index
    from cbir.index.snapshot import open_index

    report = _index(args, *_prepare(args, _existing_manifest(args)))
    index = open_index(args.dataset, args.index)
    result = evaluate_index(index, args.gt, qe=args.qe, dba=args.dba, alpha=args.alpha)
    if args.json:
        doc = result.to_dict()
        if not args.per_query:
            doc.pop("per_query_ap", None)
        doc["index"] = report.to_dict()
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        print(_summary(report), file=sys.stderr)
        print(result.format_table())
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from cbir.embedding.backbones import REGISTRY

    if args.json:
        print(
            json.dumps(
                [
                    {"name": b.name, "dim": b.dim, "input_size": b.input_size, "preprocess": b.preprocess}
                    for b in REGISTRY.values()
                ],
                indent=2,
            )
        )
        return 0
    print(f"{'model':<20}{'dim':>6}{'input':>7}  preprocessing")
    for b in REGISTRY.values():
        print(f"{b.name:<20}{b.dim:>6}{b.input_size:>7}  {b.preprocess}")
    print("(mobilenet/mobilenetv2 dimensions are for width 1.0; weights files set their own width)")
    return 0


def _dispatch(argv: Sequence[str] | None, legacy: bool) -> int:
    _quiet_tensorflow()
    parser = build_legacy_parser() if legacy else build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        if legacy:
            return cmd_search(args, update=True)
        if args.command == "index":
            return cmd_index(args)
        if args.command == "query":
            args.img_query = args.images
            return cmd_search(args, update=args.update)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        if args.command == "models":
            return cmd_models(args)
        parser.error(f"unknown command {args.command}")
    except CbirError as exc:
        print(f"cbir: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("cbir: interrupted; finished work is saved in the index", file=sys.stderr)
        return 130
    except MemoryError:
        print("cbir: error: out of memory; try a smaller --batch-size", file=sys.stderr)
        return 1
    except Exception as exc:
        if args.verbose:
            raise
        print(f"cbir: internal error: {type(exc).__name__}: {exc} (run with -v for details)", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cbir`` command."""
    return _dispatch(argv, legacy=False)


def legacy_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``run_cbir.py``: the original flags, index-then-query in one run."""
    return _dispatch(argv, legacy=True)
