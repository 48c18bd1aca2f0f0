"""Property-based tests (Hypothesis) where hand-picked cases keep missing things (issue 27).

1. Random file names, as bytes (not UTF-8, backslashes, quotes, ``%``, control characters, up to 255
   bytes, in folders with such names), through index -> query by file -> ``--like`` -> duplicates
   -> ``--csv`` -> ``--link-to``, on both stores.
2. Random interleavings of file changes (add, remove, touch, rename, rewrite, break) with index
   runs, on both stores: the index must equal a clean rebuild of the folder as it is at the end.

The property of every run: exit 0, or exit 2 with one line; never a traceback or exit 1; nothing
lost (every image is indexed or reported). The command line runs in this process with the pixel
family (:mod:`pixelcli`), so an example takes milliseconds. Seeded and small in CI (the ``ci``
profile of ``tests/conftest.py``); more with ``CBIR_HYPOTHESIS=deep`` (and
``CBIR_HYPOTHESIS_EXAMPLES=N``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pixelcli import MODEL, Ran, pixel_family, run

from cbir.core.names import from_text
from cbir.core.records import CONTROL
from cbir.stores.base import Store
from cbir.stores.folder.store import FolderStore

hypothesis = pytest.importorskip("hypothesis", reason="the property tests need hypothesis (dev extra)")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

STORES = ["folder", "milvus-lite"]


def milvus_available() -> bool:
    try:
        import milvus_lite  # noqa: F401
        import pymilvus  # noqa: F401
    except ImportError:
        return False
    return True


def settled(ran: Ran) -> Ran:
    """The property of every run: exit 0, or exit 2 with one line; never a traceback or exit 1."""
    assert "Traceback" not in ran.err and "internal error" not in ran.err, ran.err
    assert ran.code in (0, 2), (ran.code, ran.err)
    if ran.code == 2:
        lines = ran.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cbir: error: "), ran.err
    return ran


def store_args(kind: str, root: Path, db: Path) -> tuple[str, ...]:
    """The ``--store`` of ``kind``: the folder store in ``root/.cbir``; Milvus Lite in one database
    for the whole test (a collection per dataset folder, named after it)."""
    return () if kind == "folder" else ("--store", f"milvus:{db}")


@pytest.fixture(scope="module")
def shared_db(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("properties") / "all.db"


@pytest.fixture(scope="module", autouse=True)
def family() -> Iterator[None]:
    with pixel_family():
        yield


def image(path: bytes, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(path, format="PNG")


# ------------------------------------------------------------------------------ 1. names as bytes

NAME_BYTES = st.binary(min_size=1, max_size=24).filter(lambda b: b"/" not in b and b"\0" not in b)
SPECIAL = st.sampled_from(
    [
        b"bad\xff",
        b"back\\slash",
        b"q'\"%41%",
        "caf\u00e9".encode(),
        "cafe\u0301".encode(),
        b"x" * 251,
        b"\\x41",
    ]
)
STEMS = st.one_of(SPECIAL, NAME_BYTES).filter(lambda b: not b.startswith(b"."))
FILES = st.lists(
    st.tuples(st.one_of(st.none(), STEMS.filter(lambda b: len(b) <= 64)), STEMS),
    min_size=2,
    max_size=6,
    unique_by=lambda t: ((t[0] or b"").lower(), t[1].lower()),  # case-folding file systems too
)


def layout(root: bytes, files: list[tuple[bytes | None, bytes]]) -> list[str]:
    """Write the images; their names relative to ``root``, as in memory."""
    names = []
    for seed, (folder, stem) in enumerate(files):
        name = (folder + b"/" if folder else b"") + stem[: 255 - 4] + b".png"
        os.makedirs(os.path.join(root, os.path.dirname(name)), exist_ok=True)
        image(os.path.join(root, name), seed)
        names.append(os.fsdecode(name))
    return names


@pytest.mark.parametrize("kind", STORES)
@given(files=FILES)
def test_random_names_go_through_every_command(kind, files, shared_db):
    if kind != "folder" and not milvus_available():
        pytest.skip("the milvus extra is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        names = layout(os.fsencode(root), files)
        store = store_args(kind, root, shared_db)
        report = json.loads(settled(run("index", root, *MODEL, *store, "--json")).out)
        skipped = {s["path"] for s in report["skipped"]}
        refused = {n for n in names if CONTROL.search(n)}
        indexed = sorted(set(names) - refused)
        assert report["total"] == len(indexed) and len(skipped) == len(refused)  # nothing lost
        if not indexed:
            return
        first = indexed[0]
        like = settled(run("query", root, "--like", first, *MODEL, *store, "--json", "-k", "50"))
        by_file = settled(run("query", root, root / first, *MODEL, *store, "--json", "-k", "50"))
        for ran in (like, by_file):
            (result,) = json.loads(ran.out)["results"]
            found = sorted(os.path.relpath(m["path"], root) for m in result["matches"])
            assert found == [n for n in indexed if n != first]
        table = settled(run("query", root, "--like", first, *MODEL, *store, "--csv", "-k", "50")).out
        assert len(list(csv.DictReader(io.StringIO(table)))) == len(indexed) - 1
        for row in csv.DictReader(io.StringIO(table)):
            assert os.path.relpath(from_text(row["path"]), root) in indexed
        dups = json.loads(settled(run("duplicates", root, *store, "--json", "--verify", "none")).out)
        for group in dups["groups"]:
            assert {os.path.relpath(p, root) for p in group["paths"]} <= set(indexed)
        settled(run("duplicates", root, *store, "--verify", "none", "--no-plot"))
        dest = Path(tmp) / "links"
        settled(
            run("query", root, "--like", first, *MODEL, *store, "--no-plot", "-k", "50", "--link-to", dest)
        )
        made = os.listdir(dest) if dest.exists() else []  # no folder when there is nothing to link
        linked = sorted(os.path.relpath(os.readlink(dest / n), root) for n in made)
        assert linked == [n for n in indexed if n != first]


# ---------------------------------------------------------------------- 2. changes and index runs

OPS = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove", "touch", "rename", "rewrite", "break", "index"]), st.integers(0, 7)
    ),
    min_size=1,
    max_size=14,
)


class Folder:
    """A dataset folder changed one operation at a time; mtimes come from a counter, not the clock."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.clock = 1_700_000_000 * 10**9
        self.seed = 100
        (root / "sub").mkdir(parents=True)

    def files(self) -> list[str]:
        return sorted(
            str(p.relative_to(self.root)) for p in self.root.rglob("*.png") if ".cbir" not in p.parts
        )

    def stamp(self, path: Path) -> None:
        self.clock += 10**9
        os.utime(path, ns=(self.clock, self.clock))

    def apply(self, op: str, k: int) -> None:
        files = self.files()
        target = self.root / files[k % len(files)] if files else None
        if op == "add" or target is None:
            path = self.root / ("sub" if k % 2 else "") / f"f{self.seed}.png"
            image(os.fsencode(path), self.seed)
        elif op == "remove":
            target.unlink()
            return
        elif op == "rename":
            path = self.root / ("" if target.parent.name == "sub" else "sub") / f"r{self.seed}.png"
            target.rename(path)  # keeps size and mtime, as mv does
            self.seed += 1
            return
        elif op == "touch":
            path = target
        elif op == "rewrite":
            path = target
            image(os.fsencode(path), self.seed)
        else:  # break: a file that is not an image any more
            path = target
            path.write_bytes(b"\x89PNG not really" + bytes([k]))
        self.seed += 1
        self.stamp(path)


def contents(store: Store) -> dict[str, tuple[int, int, bytes]]:
    """Each indexed file's stat and vector (rounded bytes), by name."""
    index = store.open()
    out = {}
    for row, entry in enumerate(index.entries):
        vector = np.round(np.asarray(index.searcher(exact=True).vectors(np.array([row])))[0], 5)
        out[entry.path] = (entry.size, entry.mtime_ns, vector.tobytes())
    return out


@pytest.mark.parametrize("kind", STORES)
@given(ops=OPS)
def test_any_interleaving_of_changes_and_runs_equals_a_clean_rebuild(kind, ops, shared_db):
    if kind != "folder" and not milvus_available():
        pytest.skip("the milvus extra is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Folder(Path(tmp) / "data")
        for k in range(3):
            folder.apply("add", k)
        store = store_args(kind, folder.root, shared_db)
        for op, k in [*ops, ("index", 0)]:
            if op == "index":
                ran = settled(run("index", folder.root, *MODEL, *store, "--json"))
                if ran.code == 0:
                    report = json.loads(ran.out)
                    assert report["total"] + report["known_bad"] + len(report["skipped"]) == len(
                        folder.files()
                    )
            else:
                folder.apply(op, k)
        if not folder.files():  # everything removed: refused in one line, as a clean rebuild is
            assert "no images found" in ran.err
            return
        assert ran.code == 0, ran.err
        clean = Path(tmp) / "clean"
        settled(run("index", folder.root, *MODEL, "--index", clean, "--rebuild"))
        reference = FolderStore(folder.root, clean)
        if kind == "folder":
            got: Store = FolderStore(folder.root)
        else:
            from cbir.stores.milvus.store import MilvusStore

            got = MilvusStore.from_uri(f"milvus:{shared_db}", folder.root)
        assert contents(got) == contents(reference)
