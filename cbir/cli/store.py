"""The command line's options for where the index lives and how indexing is spread: ``--store URI``
(every command that reads or writes an index), ``--ray [ADDRESS]`` and ``--shard I/N`` (``cbir
index``), and their translation into a :class:`~cbir.stores.base.Store` and an embedder source."""

from __future__ import annotations

import argparse
from urllib.parse import urlsplit

from cbir.core.errors import StoreError
from cbir.encoders.base import EncoderSource
from cbir.indexing.ray_runner import RaySource
from cbir.indexing.shard import Shard
from cbir.service.settings import Settings
from cbir.stores.base import Store
from cbir.stores.milvus.client import TOKEN_ENV
from cbir.stores.uri import SCHEMES, store_for


def store_uri(text: str) -> str:
    """An argparse type: a ``--store`` URI of a known scheme whose address, when it has one
    (``SCHEME://HOST:PORT/...``), names a host and a port from 1 to 65535. What each store asks of
    the rest (a ``.db`` name, a collection name) it checks itself, with the dataset known."""
    scheme = text.split(":", 1)[0] if ":" in text else ""
    if scheme not in SCHEMES:
        known = ", ".join(f"{s}:" for s in SCHEMES)
        raise argparse.ArgumentTypeError(f"{text!r}: unknown kind of store (known: {known})")
    if "://" in text:
        try:
            address = urlsplit(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a URI") from None
        try:
            port = address.port
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: the port must be a number from 1 to 65535") from None
        if not address.hostname:
            raise argparse.ArgumentTypeError(f"{text!r}: give HOST:PORT")
        if port == 0:
            raise argparse.ArgumentTypeError(f"{text!r}: the port must be a number from 1 to 65535")
    return text


def add_store_option(g: argparse._ActionsContainer) -> None:
    g.add_argument(
        "--store",
        type=store_uri,
        metavar="URI",
        help="keep the index in a vector database instead of a folder: milvus:PATH.db (Milvus Lite) or "
        f"milvus://HOST:PORT[/COLLECTION] (a Milvus server; token in ${TOKEN_ENV})",
    )


def shard(text: str) -> Shard:
    """An argparse type: ``I/N`` with 0 <= I < N."""
    try:
        return Shard.parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not I/N with 0 <= I < N (e.g. 0/4)") from None


def add_spread_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("spreading the work (docs/scale.md)")
    one = g.add_mutually_exclusive_group()
    one.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="embed on a Ray cluster, one model per CPU (the ray extra); without ADDRESS: $RAY_ADDRESS, "
        "else a local Ray",
    )
    one.add_argument(
        "--shard",
        type=shard,
        metavar="I/N",
        help="index only slice I of N of the files, so N processes can fill one --store together",
    )


def store_from(args: argparse.Namespace) -> Store:
    """The store the options name (``--store``, else the folder store of ``--index``)."""
    return store_for(getattr(args, "store", None), args.dataset, args.index)


def shard_from(args: argparse.Namespace) -> Shard:
    chosen: Shard | None = getattr(args, "shard", None)
    if chosen is not None and getattr(args, "rebuild", False):
        raise StoreError("--rebuild with --shard would let every shard rebuild; rebuild once without it")
    return chosen if chosen is not None else Shard()


def source_from(args: argparse.Namespace, settings: Settings) -> EncoderSource:
    """What embeds the files: the settings' own embedder, or Ray actors with ``--ray``."""
    address: str | None = getattr(args, "ray", None)
    return settings if address is None else RaySource(settings, address or None)
