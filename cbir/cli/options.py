"""The command line's parsers, with every numeric option checked at parse time, and their values
turned into the library's option values (settings, index options, duplicates options); the
re-ranking options are in :mod:`cbir.cli.rerank`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from cbir.cli.arguments import (
    KINDS,
    PORT,
    TEXT_WEIGHT,
    Parser,
    moment,
    number,
    path,
    similarity,
    whole,
    words,
)
from cbir.cli.rerank import add_rerank_options
from cbir.cli.store import add_spread_options, add_store_option, shard_from, store_from
from cbir.duplicates.grouping import GROUPINGS
from cbir.duplicates.keep import KEEP_RULES
from cbir.encoders.base import RuntimeOptions
from cbir.encoders.features import FEATURE_SETTINGS, FeatureSetting
from cbir.encoders.model_cache import ENV as MODEL_CACHE_ENV
from cbir.encoders.network import import_tensorflow
from cbir.encoders.runtimes import RUNTIMES
from cbir.indexing.indexer import IndexOptions
from cbir.ingest.decode import LoadLimits
from cbir.search.filters import ResultFilter
from cbir.search.rerank import Reranking
from cbir.service.duplicates import DEFAULT_VERIFY, VERIFICATIONS, DuplicateOptions
from cbir.service.settings import FeatureChoice, Settings, WhitenRequest, resolve_settings
from cbir.stores.folder.ann import AUTO_MIN_ROWS

DEFAULT_OUT = "cbir_results.png"
DEFAULT_DUPLICATES_OUT = "cbir_duplicates.png"
CLI_ANN_MODES = ("auto", "none", "hnsw")  # the IVF kinds stay for the benchmark and the library
MAX_TOP = 10_000  # matches per query: a listing, not an export of the index


def add_feature_setting(g: argparse._ActionsContainer, setting: FeatureSetting) -> None:
    """The option of a declared feature setting (its flag, parse-time check, choices, metavar, help)."""
    choices = None if setting.choices is None else list(setting.choices())
    g.add_argument(
        setting.flag, type=KINDS[setting.kind], choices=choices, metavar=setting.metavar, help=setting.help
    )


def add_feature_options(p: argparse.ArgumentParser) -> None:
    """The declared feature settings' options, ``--weights`` after ``--model``, then ``--original``."""
    g = p.add_argument_group("features (an existing index decides these for queries)")
    for setting in FEATURE_SETTINGS:
        add_feature_setting(g, setting)
        if setting.name == "model":
            g.add_argument(
                "--weights",
                type=path,
                help="local weights file instead of the ImageNet download ('random': untrained, for tests)",
            )
    g.add_argument(
        "--original",
        action="store_true",
        help="the original script's features: max pooling, 224x224 squash, nearest resampling",
    )
    r = p.add_argument_group("running")
    r.add_argument(
        "--batch-size", type=whole(1, 1024), default=32, help="images per model call, 1 to 1024 (default 32)"
    )
    r.add_argument(
        "--workers", type=whole(1, 256), help="decoding threads, 1 to 256 (default: one per core, at most 8)"
    )
    r.add_argument(
        "--runtime",
        choices=list(RUNTIMES),
        default="auto",
        help="what runs the network: litert (converted once, cached), keras, or auto (default: litert "
        "when ai-edge-litert is installed and the weights are real)",
    )
    r.add_argument(
        "--model-cache",
        type=path,
        metavar="DIR",
        help=f"folder of converted models (default ${MODEL_CACHE_ENV}, else the user's cache folder)",
    )


def add_index_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("index")
    g.add_argument("--index", type=path, metavar="DIR", help="index folder (default: DATASET/.cbir)")
    add_store_option(g)
    g.add_argument("--rebuild", action="store_true", help="rebuild the index from scratch")
    g.add_argument(
        "--labels",
        action="store_true",
        help="also store each image's top ImageNet classes, for search by words (--text); the index "
        "remembers it",
    )
    g.add_argument(
        "--dtype", choices=["float32", "float16"], default="float32", help="storage type of the matrix"
    )
    g.add_argument(
        "--ann",
        choices=CLI_ANN_MODES,
        default="auto",
        help=f"approximate index for fast search: auto (from {AUTO_MIN_ROWS} images), none or hnsw",
    )
    g.add_argument("--no-recursive", dest="recursive", action="store_false", help="only the top folder")
    g.add_argument("--include-hidden", action="store_true", help="also index hidden files and folders")
    g.add_argument(
        "--follow-links",
        action="store_true",
        help="also index symbolic links leaving the dataset (cbir serve then serves them)",
    )
    g.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="glob of paths or names to skip (repeatable)",
    )
    g.add_argument("--max-pixels", type=whole(1, 10**12), help="skip images with more pixels (default 250M)")
    g.add_argument(
        "--max-file-mb",
        type=number(0, 2**20, inclusive=False),
        help="skip files larger than this (default 512 MiB)",
    )
    g.add_argument(
        "--checkpoint-every",
        type=whole(1, 10**9),
        default=500,
        metavar="N",
        help="commit progress every N images (and every 2 minutes; default 500)",
    )
    g.add_argument(
        "--whiten-on",
        type=path,
        metavar="DIR",
        help="learn a PCA-whitening on the images of DIR and store it",
    )
    g.add_argument(
        "--whiten-dim", type=whole(1, 65536), help="dimensions kept by the whitening (default: all)"
    )
    g.add_argument(
        "--whiten-power",
        type=number(0, 1, inclusive=False),
        default=0.5,
        help="eigenvalue exponent, above 0 and at most 1: 0.5 classic PCA-whitening, 0.25 softened "
        "(default 0.5)",
    )


def add_output_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument(
        "-k",
        "--top",
        type=whole(1, MAX_TOP),
        default=9,
        help=f"matches per query, 1 to {MAX_TOP} (default 9)",
    )
    g.add_argument(
        "--out", type=path, help=f"PNG file for the plot (default {DEFAULT_OUT}; with --json only if given)"
    )
    g.add_argument("--no-plot", action="store_true", help="do not draw the plot")
    g.add_argument("--show", action="store_true", help="also open the plot in a window")
    fmt = g.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print results as JSON on stdout")
    fmt.add_argument(
        "--csv", action="store_true", help="print results as CSV on stdout (query,rank,path,score)"
    )
    add_filter_options(g)
    put = g.add_mutually_exclusive_group()
    put.add_argument(
        "--link-to", type=path, metavar="DIR", help="also link the matches into DIR, named by rank"
    )
    put.add_argument(
        "--copy-to", type=path, metavar="DIR", help="also copy the matches into DIR, named by rank"
    )


def add_filter_options(g: argparse._ActionsContainer, what: str = "results") -> None:
    g.add_argument(
        "--under",
        action="append",
        default=[],
        metavar="DIR",
        help=f"only {what} inside this folder of the dataset (repeatable)",
    )
    g.add_argument(
        "--since", type=moment, metavar="DATE", help="only photos taken on or after DATE (YYYY-MM-DD)"
    )
    g.add_argument(
        "--until", type=moment, metavar="DATE", help="only photos taken on or before DATE (YYYY-MM-DD)"
    )


def add_duplicates_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser("duplicates", help="group the near-duplicate images of an indexed folder")
    p.add_argument("dataset", nargs="?", help="an indexed folder (not needed with --undo)")
    p.add_argument("--index", type=path, metavar="DIR", help="index folder (default: DATASET/.cbir)")
    add_store_option(p)
    p.add_argument(
        "--threshold",
        type=similarity,
        metavar="T",
        help="least cosine similarity of candidate pairs (default "
        + ", ".join(f"{v.threshold:g} with --verify {k}" for k, v in VERIFICATIONS.items())
        + ")",
    )
    p.add_argument(
        "--verify",
        choices=list(VERIFICATIONS),
        default=DEFAULT_VERIFY,
        help="orb: a candidate must match the image geometrically (keypoints + RANSAC; default); "
        "none: the similarity alone decides",
    )
    p.add_argument(
        "--grouping",
        choices=list(GROUPINGS),
        default="star",
        help="star: every member matches the kept image (default); connected: chains too",
    )
    p.add_argument(
        "--keep",
        choices=list(KEEP_RULES),
        default="largest",
        help="the image each group keeps: most pixels (default), oldest or newest photo",
    )
    p.add_argument("--exact", action="store_true", help="exact search even if an approximate index exists")
    g = p.add_argument_group("output")
    g.add_argument("--out", type=path, help=f"PNG file for the plot (default {DEFAULT_DUPLICATES_OUT})")
    g.add_argument("--no-plot", action="store_true", help="do not draw the plot")
    g.add_argument("--show", action="store_true", help="also open the plot in a window")
    g.add_argument(
        "--plot-groups",
        type=whole(1, 1000),
        default=10,
        metavar="N",
        help="groups drawn, 1 to 1000 (default 10)",
    )
    fmt = g.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the groups as JSON on stdout")
    fmt.add_argument(
        "--csv", action="store_true", help="print the groups as CSV on stdout (group,role,path,score)"
    )
    add_filter_options(g, "images")
    act = p.add_argument_group("acting on the groups (nothing is ever deleted)")
    one = act.add_mutually_exclusive_group()
    one.add_argument(
        "--link-to", type=path, metavar="DIR", help="link each group into a folder of DIR, for review"
    )
    one.add_argument(
        "--move-to",
        type=path,
        metavar="DIR",
        help="move the members (not the kept images) into DIR, keeping their paths; logged",
    )
    one.add_argument("--undo", type=path, metavar="LOG", help="put back the files a --move-to log lists")
    add_verbose(p)


def add_watch(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--watch",
        action="store_true",
        help="keep watching the folder and index new or changed images once they settle (Ctrl-C stops)",
    )


def add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")


def build_parser() -> argparse.ArgumentParser:
    """The ``cbir`` command and its subcommands."""
    parser = Parser(
        prog="cbir", description="Content-based image retrieval: index a folder, query by example."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("index", help="build or update the index of a folder")
    p.add_argument("dataset")
    add_feature_options(p)
    add_index_options(p)
    add_spread_options(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_watch(p)
    add_verbose(p)
    p = sub.add_parser("query", help="find the images of a folder most similar to example images")
    p.add_argument("dataset")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="query image files")
    p.add_argument(
        "--like",
        nargs="+",
        default=[],
        metavar="PATH",
        help="more like these indexed images (as indexed, or their path): answered from the stored "
        "vectors, without loading a model",
    )
    p.add_argument(
        "--text",
        type=words,
        metavar="WORDS",
        help="search by words (at most 200 characters): with the text tower of an index made by a "
        "text-image model (--model siglip-base), else through its labels (an index made with --labels); "
        "with --like or images: blended into their query (text-image model), else only their neighbours "
        "that match",
    )
    p.add_argument(
        "--text-weight",
        type=TEXT_WEIGHT,
        metavar="W",
        help="with --text and images or --like on a text-image model's index: the words' share of the "
        "combined query, 0 to 1 (default 0.5)",
    )
    p.add_argument("--update", action="store_true", help="bring the index up to date with the folder first")
    p.add_argument("--exact", action="store_true", help="exact search even if an approximate index exists")
    add_feature_options(p)
    add_index_options(p)
    add_rerank_options(p)
    add_output_options(p)
    add_verbose(p)
    p = sub.add_parser("evaluate", help="measure retrieval quality (mAP, P@k, R@k) on a benchmark folder")
    p.add_argument("dataset")
    p.add_argument(
        "--gt",
        type=path,
        metavar="FILE",
        help="labels.csv or gt.json (default: found in DATASET, or INRIA Holidays / UKBench file naming)",
    )
    add_feature_options(p)
    add_index_options(p)
    add_rerank_options(p)
    p.add_argument("--per-query", action="store_true", help="include every query's AP in --json output")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_verbose(p)
    add_duplicates_parser(sub)
    p = sub.add_parser("serve", help="browse and search the collection in a web browser")
    p.add_argument("dataset")
    g = p.add_argument_group("server")
    g.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)"
    )
    g.add_argument("--port", type=PORT, default=8000, help="port, 0 to 65535 (default 8000; 0: any free one)")
    g.add_argument(
        "--token", help="secret every request must carry (give one when listening beyond loopback)"
    )
    g.add_argument(
        "--max-upload-mb",
        type=number(0, 1024, inclusive=False),
        default=32.0,
        help="largest image upload accepted, at most 1024 (default 32; held in memory)",
    )
    g.add_argument(
        "--max-upload-mp",
        type=number(0, 250, inclusive=False),
        default=40.0,
        help="largest upload in megapixels, at most 250; larger ones refused before decoding (default 40)",
    )
    g.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests for this host name, e.g. a reverse proxy's (repeatable)",
    )
    g.add_argument(
        "--trash",
        type=Path,
        metavar="DIR",
        help="where the page's near-duplicates review moves files, outside the dataset "
        "(default: the user's data folder, ~/.local/share/cbir/trash/NAME-DIGEST on Linux)",
    )
    add_watch(p)
    p.add_argument(
        "--json",
        action="store_true",
        help="print the URL, each indexing run, batch of changes and retry as one JSON object per line",
    )
    add_feature_options(p)
    add_index_options(p)
    add_rerank_options(p, Reranking(), dba=False)  # speed first: docs/decisions.md
    add_verbose(p)
    p = sub.add_parser("models", help="list the models (and whether text-image ones are downloaded)")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.add_argument(
        "--model-cache",
        type=path,
        metavar="DIR",
        help=f"the model cache to look in (default ${MODEL_CACHE_ENV}, else the user's cache folder)",
    )
    add_verbose(p)
    return parser


def build_legacy_parser() -> argparse.ArgumentParser:
    """``run_cbir.py``: the original flags plus the options of ``cbir query``."""
    parser = Parser(
        prog="run_cbir.py",
        description="Index DATASET (reusing its index) and show the images most similar to IMG_QUERY.",
    )
    parser.add_argument("-dataset", "--dataset", required=True, help="folder of images")
    parser.add_argument(
        "-img_query", "--img-query", dest="img_query", nargs="+", required=True, help="query image(s)"
    )
    add_feature_options(parser)
    add_index_options(parser)
    add_rerank_options(parser)
    add_output_options(parser)
    add_verbose(parser)
    return parser


def feature_choice_from(args: argparse.Namespace) -> FeatureChoice:
    """The declared feature settings the options gave, and ``--original``."""
    return FeatureChoice(original=args.original, **{s.name: getattr(args, s.name) for s in FEATURE_SETTINGS})


def settings_from(
    args: argparse.Namespace,
    load_tensorflow: Callable[[], None] = import_tensorflow,
    strict: bool = False,
    bulk: bool = False,
) -> Settings:
    """Resolve the settings the parsed options ask for (``bulk``: for indexing)."""
    limits = LoadLimits(
        **({"max_pixels": args.max_pixels} if args.max_pixels else {}),
        **({"max_bytes": int(args.max_file_mb * 2**20)} if args.max_file_mb else {}),
    )
    return resolve_settings(
        args.dataset,
        index_dir=args.index,
        features=feature_choice_from(args),
        weights=args.weights,
        rebuild=args.rebuild,
        whiten=WhitenRequest(Path(args.whiten_on), args.whiten_dim, args.whiten_power)
        if args.whiten_on
        else None,
        runtime=RuntimeOptions(
            batch_size=args.batch_size,
            workers=args.workers,
            limits=limits,
            runtime=args.runtime,
            model_cache=Path(args.model_cache) if args.model_cache else None,
            bulk=bulk,
        ),
        load_tensorflow=load_tensorflow,
        strict=strict,
        store=store_from(args),
    )


def index_options_from(args: argparse.Namespace) -> IndexOptions:
    return IndexOptions(
        rebuild=args.rebuild,
        dtype=args.dtype,
        recursive=args.recursive,
        include_hidden=args.include_hidden,
        exclude=tuple(args.exclude),
        follow_links=args.follow_links,
        checkpoint_every=args.checkpoint_every,
        ann=args.ann,
        shard=shard_from(args),
        labels=args.labels,
    )


def result_filter_from(args: argparse.Namespace) -> ResultFilter:
    return ResultFilter(under=tuple(args.under), since=args.since, until=args.until)


def duplicate_options_from(args: argparse.Namespace) -> DuplicateOptions:
    return DuplicateOptions(
        threshold=args.threshold,
        grouping=args.grouping,
        keep=args.keep,
        where=result_filter_from(args),
        exact=args.exact,
        verify=args.verify,
    )
