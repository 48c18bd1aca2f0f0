"""``--store URI``: which :class:`~cbir.stores.base.Store` a URI names, by its scheme.

A registry, so another store is one more entry: :data:`SCHEMES` maps a URI scheme to the function
that makes the store of a dataset. No ``--store`` means the folder store (``--index DIR`` or
``DATASET/.cbir``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from cbir.core.errors import StoreError
from cbir.stores.base import Store
from cbir.stores.folder.store import FolderStore
from cbir.stores.milvus.store import MilvusStore

StoreMaker = Callable[[str, Path], Store]

SCHEMES: dict[str, StoreMaker] = {
    "milvus": MilvusStore.from_uri,  # milvus:PATH.db, milvus://HOST:PORT[/COLLECTION]
    "milvus+https": MilvusStore.from_uri,  # milvus+https://HOST[:PORT][/COLLECTION]
}


def store_for(
    uri: str | None, dataset: str | os.PathLike[str], index_dir: str | os.PathLike[str] | None = None
) -> Store:
    """The store ``uri`` names for ``dataset``; without one, the folder store in ``index_dir``."""
    if uri is None:
        return FolderStore(dataset, index_dir)
    if index_dir is not None:
        raise StoreError("give --store or --index, not both: they name two different homes of the index")
    scheme = uri.split(":", 1)[0] if ":" in uri else ""
    make = SCHEMES.get(scheme)
    if make is None:
        known = ", ".join(f"{s}:" for s in SCHEMES)
        raise StoreError(f"--store {uri}: unknown kind of store (known: {known})")
    return make(uri, Path(dataset))
