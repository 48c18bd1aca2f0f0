"""Readers never miss unchanged images while a writer commits (issue 27, item 5), on both stores.

The fault suite saw ``cbir serve --store milvus:X.db --watch`` answer 404 "not an indexed image" for
images nobody touched, and once leave one out of a top 10, while files changed. This is that
reader loop made deterministic and bounded: a writer adds, removes, touches and rewrites other
images and indexes them, committing after every file; at every step of its work (each file, each
delete, each batch written, each commit stamp, the final flush) the test runs the readers a
server runs: a fresh open, the long-lived reader refreshed, and a like-query on every untouched
image, which must be found, found first by its own vector, and answered only with indexed images.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from conftest import save_image
from stores import PixelEmbedder, milvus_store

from cbir.core.errors import BadImageError
from cbir.encoders.features import FeatureConfig
from cbir.encoders.registry import resolve_config
from cbir.encoders.weights import Weights
from cbir.indexing.indexer import IndexOptions, update_index
from cbir.service.query import SearchRequest, like_index
from cbir.stores.base import IndexReader, Store
from cbir.stores.folder.store import FolderStore

WEIGHTS = Weights.random()
CONFIG = resolve_config(FeatureConfig(model="mobilenetv2", width_multiplier=0.35), WEIGHTS)
UNTOUCHED = [f"keep{i:02d}.png" for i in range(8)]


class Stepping(PixelEmbedder):
    """The pixel embedder calling ``step()`` before each file."""

    def __init__(self, step: Callable[[], None]) -> None:
        super().__init__(CONFIG)
        self.step = step

    def embed_files(
        self, paths: Sequence[str | os.PathLike[str]], progress: bool | None = False, desc: str = ""
    ) -> Iterator[tuple[int, np.ndarray | BadImageError]]:
        for i, p in enumerate(paths):
            self.step()
            yield from ((i, r) for _, r in super().embed_files([p]))


class Source:
    def __init__(self, embedder: PixelEmbedder) -> None:
        self.given, self.config, self.weights, self.whitening = embedder, CONFIG, WEIGHTS, None

    def embedder(self) -> PixelEmbedder:
        return self.given


class Readers:
    """What a server does between two requests, checked at every step of the writer."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.held: IndexReader = store.open()
        self.checks = 0

    def __call__(self) -> None:
        fresh = self.store.open()
        self.held = self.held.refresh()
        for reader in (fresh, self.held):
            missing = sorted(set(UNTOUCHED) - set(reader.paths))
            assert not missing, f"a reader lost unchanged images: {missing}"
            names = set(reader.paths)
            for image in UNTOUCHED:
                (result,) = like_index(reader, [image], SearchRequest(k=5))
                found = [os.path.relpath(m.path, reader.root) for m in result.matches]
                assert set(found) <= names and image not in found
                own = reader.searcher().search(
                    reader.searcher().vectors(np.array([reader.indexed_row(image)])), 1
                )
                assert reader.paths[int(own[0][0][0])] == image
        self.checks += 1


@pytest.fixture(params=["folder", "milvus-lite"])
def store_of(request, tmp_path) -> Callable[[Path], Store]:
    if request.param == "folder":
        return lambda root: FolderStore(root, tmp_path / "index")
    return lambda root: milvus_store(tmp_path / "index.db", root)


def hook_milvus_writes(monkeypatch, check: Callable[[], None]) -> None:
    """Run ``check`` before each delete, each batch written (new rows and retired ones), each
    commit stamp, each collection of dead rows and each flush."""
    from cbir.stores.milvus import client, writer

    def before(owner: object, name: str) -> None:
        original = getattr(owner, name)

        def hooked(*args: object, **kwargs: object) -> object:
            check()
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, hooked)

    before(client.MilvusCollection, "delete_where")
    before(client.MilvusCollection, "set_commit")
    before(client.MilvusCollection, "set_properties")
    before(writer, "upsert")
    before(writer.MilvusWriter, "finish")


def test_readers_find_every_unchanged_image_at_every_step_of_a_writer(tmp_path, store_of, monkeypatch):
    root = tmp_path / "data"
    for i, name in enumerate(UNTOUCHED):
        save_image(root / name, seed=i)
    for i in range(6):
        save_image(root / "other" / f"o{i}.png", seed=50 + i)
    store = store_of(root)
    options = IndexOptions(progress=False, checkpoint_every=1)
    update_index(root, Source(PixelEmbedder(CONFIG)), options=options, store=store)
    readers = Readers(store)
    if "Milvus" in type(store).__name__:
        hook_milvus_writes(monkeypatch, readers)
    clock = 1_800_000_000 * 10**9
    for round_ in range(3):  # each round: adds, removes, touches and rewrites, then one run
        save_image(root / "other" / f"new{round_}a.png", seed=100 + round_)
        save_image(root / "other" / f"new{round_}b.png", seed=200 + round_)
        (root / "other" / f"o{round_}.png").unlink()
        clock += 10**9
        os.utime(root / "other" / f"o{round_ + 3}.png", ns=(clock, clock))
        save_image(root / "other" / f"o{(round_ + 4) % 6 if round_ < 2 else 5}.png", seed=300 + round_)
        update_index(root, Source(Stepping(readers)), options=options, store=store)
        readers()
    assert readers.checks >= 12  # bounded: every step of three runs was looked at
    assert set(UNTOUCHED) <= set(store.open().paths)
