"""Rebuild the real instance benchmark: photos of the same grocery product taken separately.

Source: the Grocery Store Dataset (Klasson, Zhang, Kjellström, WACV 2019), MIT licence,
https://github.com/marcusklasson/GroceryStoreDataset at commit ``COMMIT``: 5125 smartphone photos
taken in several grocery stores, on different visits, by hand, each with its fine-grained label.
Its 31 *packaged* products (milk, juice, yoghurt, oat and soy cartons) are instances in the
UKBench sense: every carton of "Arla Standard Milk" is the same printed object, photographed
again from another angle, under other light, in another hand, before another shelf. The fruit
and vegetable photos (category, not instance: one Granny Smith is not another) are distractors.

The benchmark (rebuilt bit for bit; every file is checked against ``real_instance.sha256``):

- ``products/<product>/``: ``PER_PRODUCT`` photos of each of the 31 products, chosen evenly
  spaced through the product's photos in the dataset's own order (train, val, test; by name),
  so that shots taken one after the other at the same shelf are not picked together; 310 images.
  Every one is a query; its relevant images are the other 9 photos of its product (N-S-style
  top-4: 4 at best).
- ``distractors/<class>/``: every ``DISTRACTOR_STEP``-th fruit or vegetable photo (460).
- ``gt.json`` (read by ``cbir evaluate``), ``SOURCE`` (origin, licence, how the groups were
  checked) and ``manifest.sha256``.

    python3 benchmarks/make_real_instance.py /work/.mirror/marcusklasson+GroceryStoreDataset/repo \\
        --out /work/data/real-instance
    python3 benchmarks/make_real_instance.py \\
        https://github.com/marcusklasson/GroceryStoreDataset/archive/COMMIT.zip --out DIR

The source is the repository's git directory (a clone or a mirror holding ``COMMIT``), a folder
with the repository's files (an unpacked archive), or the URL of its zip archive.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

COMMIT = "fc80ba90f803d79d0383df52c5a4ac5de99ff6fc"
REPOSITORY = "https://github.com/marcusklasson/GroceryStoreDataset"
SPLITS = ("train", "val", "test")
PER_PRODUCT = 10
DISTRACTOR_STEP = 8
SAME_SHOT = 6
"""Bits of the 64-bit average hash within which two photos count as one shot taken twice."""
MANIFEST = Path(__file__).with_name("real_instance.sha256")

SOURCE_NOTE = f"""Real instance benchmark (cbir, benchmarks/make_real_instance.py)

Origin: Grocery Store Dataset, M. Klasson, C. Zhang, H. Kjellstrom, "A Hierarchical Grocery Store
Image Dataset with Visual and Semantic Labels", WACV 2019. {REPOSITORY}
commit {COMMIT}. Licence: MIT (Copyright (c) 2019 Marcus Klasson), which allows use, copying and
redistribution, benchmarks included, with the copyright notice kept (this file).

What: {{products}} photos of {{groups}} packaged products ({PER_PRODUCT} each, evenly spaced through
each product's photos in the dataset's order), every one a query whose relevant images are the
other photos of the same product; {{distractors}} fruit and vegetable photos (every
{DISTRACTOR_STEP}th) as distractors.
The photos were taken with a smartphone in several stores, each by hand: another angle, light,
hand and shelf for every photo of a product.

Groups checked by eye: contact sheets of the {PER_PRODUCT} chosen photos of every product were
viewed: every row shows the same carton (the dataset's labels hold for all 31 products; a few
photos show a later print of the same product's carton, e.g. a changed organic badge), and no
two chosen photos of a product are one shot taken twice (average-hash check in the script).
Every file matches the SHA-256 in manifest.sha256 (benchmarks/real_instance.sha256).
"""


class SourceError(Exception):
    """The source cannot be read or does not hold the expected files."""


class Source:
    """Reads the dataset's files from a git directory (at ``COMMIT``) or from a plain folder."""

    def __init__(self, where: str) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if where.startswith(("http://", "https://")):
            self.root = self._download(where)
            self.git = False
        else:
            self.root = Path(where)
            if not self.root.exists():
                raise SourceError(f"source not found: {where}")
            self.git = (self.root / "HEAD").is_file() or (self.root / ".git").exists()
        if self.git:
            if self._run("cat-file", "-t", COMMIT).strip() != b"commit":
                raise SourceError(f"{where} does not hold commit {COMMIT} of {REPOSITORY}")
            listing = self._run("ls-tree", "-r", "--name-only", COMMIT, "dataset").decode()
            self.files = [p for p in listing.splitlines() if p]
        else:
            top = self.root if (self.root / "dataset").is_dir() else _single_child(self.root)
            self.root = top
            self.files = sorted(
                p.relative_to(top).as_posix() for p in (top / "dataset").rglob("*") if p.is_file()
            )

    def _download(self, url: str) -> Path:
        self._tmp = tempfile.TemporaryDirectory(prefix="grocery-")
        try:
            with urllib.request.urlopen(url, timeout=120) as response:
                data = response.read()
        except OSError as exc:
            raise SourceError(f"cannot download {url}: {exc}") from exc
        try:
            zipfile.ZipFile(io.BytesIO(data)).extractall(self._tmp.name)
        except zipfile.BadZipFile as exc:
            raise SourceError(f"{url} is not a zip archive: {exc}") from exc
        return Path(self._tmp.name)

    def _run(self, *args: str) -> bytes:
        git_dir = self.root / ".git" if (self.root / ".git").exists() else self.root
        try:
            return subprocess.run(
                ["git", f"--git-dir={git_dir}", *args], check=True, capture_output=True
            ).stdout
        except (OSError, subprocess.CalledProcessError) as exc:
            raise SourceError(f"git cannot read {self.root}: {exc}") from exc

    def read(self, path: str) -> bytes:
        if self.git:
            return self._run("show", f"{COMMIT}:{path}")
        return (self.root / path).read_bytes()


def _single_child(folder: Path) -> Path:
    children = [c for c in folder.iterdir() if c.is_dir()]
    if len(children) != 1 or not (children[0] / "dataset").is_dir():
        raise SourceError(f"{folder}: no dataset/ folder of the Grocery Store Dataset in it")
    return children[0]


def choose(files: list[str], fingerprint: Callable[[str], int]) -> tuple[dict[str, list[str]], list[str]]:
    """The photos of each packaged product and the distractors.

    PER_PRODUCT photos per product, evenly spaced through its photos; a photo whose ``fingerprint``
    is within SAME_SHOT bits of one already chosen (the same moment shot twice) is passed over
    for its nearest neighbour in the list.
    """
    by_class: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in files:
        parts = path.split("/")
        if len(parts) < 5 or parts[1] not in SPLITS or not path.lower().endswith(".jpg"):
            continue
        by_class[(parts[2], parts[-2])].append(path)
    order = {s: i for i, s in enumerate(SPLITS)}
    products: dict[str, list[str]] = {}
    distractors: list[str] = []
    for (kind, name), paths in sorted(by_class.items()):
        paths.sort(key=lambda p: (order[p.split("/")[1]], p.rsplit("/", 1)[1]))
        if kind != "Packages":
            distractors.extend(paths)
            continue
        n = len(paths)
        chosen: list[int] = []
        prints: list[int] = []
        for i in range(PER_PRODUCT):
            base = (2 * i + 1) * n // (2 * PER_PRODUCT)
            for step in range(n):
                j = base + (step + 1) // 2 * (1 if step % 2 else -1)
                if not 0 <= j < n or j in chosen:
                    continue
                f = fingerprint(paths[j])
                if all(bin(f ^ g).count("1") > SAME_SHOT for g in prints):
                    chosen.append(j)
                    prints.append(f)
                    break
            else:
                raise SourceError(f"{name}: fewer than {PER_PRODUCT} distinct photos")
        products[name] = [paths[j] for j in sorted(chosen)]
    distractors.sort(key=lambda p: (p.split("/")[-2], order[p.split("/")[1]], p.rsplit("/", 1)[1]))
    return products, distractors[::DISTRACTOR_STEP]


def destination(path: str, folder: str) -> str:
    """``dataset/test/Packages/Milk/X/X_001.jpg`` -> ``<folder>/X/test-X_001.jpg``."""
    parts = path.split("/")
    return f"{folder}/{parts[-2]}/{parts[1]}-{parts[-1]}"


def read_manifest(manifest: Path) -> dict[str, str]:
    """``{benchmark path: sha256}`` from a ``sha256sum``-style file."""
    lines = manifest.read_text(encoding="utf-8").splitlines()
    return {name: digest for digest, name in (line.split(None, 1) for line in lines if line.strip())}


def average_hash(data: bytes) -> int:
    """64-bit average hash of an 8x8 grey thumbnail (finds the same shot saved twice)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        small = im.convert("L").resize((8, 8), Image.Resampling.BILINEAR)
        pixels = list(small.tobytes())
    mean = sum(pixels) / 64
    return sum(1 << i for i, p in enumerate(pixels) if p > mean)


def build(
    source: Source, out: Path, manifest: Path = MANIFEST, write_manifest: bool = False
) -> dict[str, list[str]]:
    """Copy the chosen files into ``out`` after checking each against ``manifest`` (or, with
    ``write_manifest``, trust them and write ``manifest``); return the ground truth. ``out`` appears
    whole or not at all."""
    products, distractors = choose(source.files, lambda path: average_hash(source.read(path)))
    if out.exists() and any(out.iterdir()):
        raise SourceError(f"{out} is not empty; give a new folder")
    expected = {} if write_manifest else read_manifest(manifest)
    wanted = [(p, destination(p, "products")) for paths in products.values() for p in paths]
    wanted += [(p, destination(p, "distractors")) for p in distractors]
    if not write_manifest and sorted(d for _, d in wanted) != sorted(expected):
        raise SourceError(f"the chosen files differ from {manifest.name}: not the pinned source")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".real-instance-", dir=out.parent))
    try:
        digests: dict[str, str] = {}
        for src, dest in wanted:
            data = source.read(src)
            digest = hashlib.sha256(data).hexdigest()
            if not write_manifest and expected[dest] != digest:
                raise SourceError(f"checksum mismatch for {src}: {digest} != {expected[dest]}")
            digests[dest] = digest
            target = staging / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        gt = {}
        for paths in products.values():
            dests = [destination(p, "products") for p in paths]
            for q in dests:
                gt[q] = [r for r in dests if r != q]
        (staging / "gt.json").write_text(json.dumps(gt, indent=1) + "\n", encoding="utf-8")
        note = SOURCE_NOTE.format(products=len(gt), groups=len(products), distractors=len(distractors))
        (staging / "SOURCE").write_text(note, encoding="utf-8")
        listing = "".join(f"{digests[d]}  {d}\n" for d in sorted(digests))
        (staging / "manifest.sha256").write_text(listing, encoding="utf-8")
        if write_manifest:
            manifest.write_text(listing, encoding="utf-8")
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return gt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", help="git directory, folder or zip URL of the Grocery Store Dataset")
    ap.add_argument("--out", required=True, help="new folder for the benchmark, outside the project")
    ap.add_argument(
        "--write-manifest",
        action="store_true",
        help="maintainers: trust the source and rewrite benchmarks/real_instance.sha256 from it",
    )
    args = ap.parse_args()
    try:
        gt = build(Source(args.source), Path(args.out), write_manifest=args.write_manifest)
    except SourceError as exc:
        print(f"make_real_instance: {exc}", file=sys.stderr)
        sys.exit(2)
    print(
        f"{args.out}: {len(gt)} queries ({PER_PRODUCT - 1} relevant each), gt.json, SOURCE, manifest.sha256"
    )


if __name__ == "__main__":
    main()
