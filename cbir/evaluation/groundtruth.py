"""Ground truth of a retrieval benchmark: which indexed images are queries, and what each should find.

Detected in a dataset folder, in this order: ``labels.csv`` (every labelled image is a query,
relevant = same label), ``gt.json`` (explicit ``{query: [relevant, ...]}``), INRIA Holidays names
(``100000.jpg``: group = first 4 digits, query = the ``xxxx00`` image) and UKBench names
(``ukbench00000.jpg``: groups of 4 consecutive numbers, every image a query). Paths in the files
are matched to the indexed paths (POSIX, relative to the dataset root) exactly, relative to the
ground-truth file's folder, or by a unique trailing part (``0.jpg`` -> ``images/0.jpg``).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import posixpath
import re
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cbir.core.errors import DatasetError

log = logging.getLogger(__name__)

LABELS_FILE = "labels.csv"
GT_FILE = "gt.json"
GROUND_TRUTH_KINDS = ("labels", "gt.json", "holidays", "ukbench")

_HOLIDAYS = re.compile(r"^(\d{4})(\d{2})$")
_UKBENCH = re.compile(r"^ukbench(\d+)$", re.IGNORECASE)


class LabelRelevance(Mapping[str, set[str]]):
    """``query -> relevant paths`` where relevant means "same label, not the query itself".

    Built on demand, so a labelled set of 100k images does not hold 100k sets of its class
    members; :func:`cbir.service.evaluate.evaluate` compares label ids directly instead of reading it.
    """

    def __init__(self, labels: Mapping[str, str], queries: list[str]) -> None:
        self.labels = dict(labels)
        self._queries = list(queries)
        self._query_set = set(queries)
        members: dict[str, list[str]] = defaultdict(list)
        for path, label in self.labels.items():
            members[label].append(path)
        self.members = {label: frozenset(paths) for label, paths in members.items()}

    def __getitem__(self, query: str) -> set[str]:
        if query not in self._query_set:
            raise KeyError(query)
        return set(self.members[self.labels[query]] - {query})

    def __iter__(self) -> Iterator[str]:
        return iter(self._queries)

    def __len__(self) -> int:
        return len(self._queries)


@dataclass
class GroundTruth:
    """Queries (indexed relative paths) and their relevant images (never the query itself).

    ``labels`` maps images to a class or group id for per-class breakdowns (None for gt.json);
    ``class_names`` optionally gives a readable name per label (labels.csv ``label_name`` column).
    ``ukbench`` asks for the UKBench N-S score, whose protocol counts the query in its own top 4.
    """

    queries: list[str]
    relevant: Mapping[str, set[str]]
    labels: dict[str, str] | None
    kind: str
    ukbench: bool = False
    class_names: dict[str, str] = field(default_factory=dict)


class _Resolver:
    """Maps a path written in a ground-truth file to one of the indexed relative paths."""

    def __init__(self, root: Path, files: list[str], source: Path | None) -> None:
        self.root = root
        self.exact = set(files)
        self.by_suffix: dict[str, list[str]] = defaultdict(list)
        for f in files:
            parts = f.split("/")
            for i in range(1, len(parts)):
                self.by_suffix["/".join(parts[i:])].append(f)
        self.source = source
        self.name = str(source) if source is not None else "ground truth"
        self.missing: list[str] = []

    def warn_missing(self) -> None:
        """Log (once) the ground-truth images that are not in the index, e.g. skipped bad files."""
        if self.missing:
            log.warning(
                "%s: %d listed image(s) are not in the index and are left out (first: %s)",
                self.name,
                len(self.missing),
                self.missing[0],
            )

    def __call__(self, entry: str) -> str | None:
        key = str(entry).strip().replace("\\", "/")
        while key.startswith("./"):
            key = key[2:]
        if key in self.exact:
            return key
        if self.source is not None:
            # Relative to the ground-truth file's own folder (e.g. a labels.csv above the root).
            full = os.path.normpath(os.path.join(os.path.abspath(self.source.parent), key))
            try:
                rel = Path(os.path.relpath(full, os.path.abspath(self.root))).as_posix()
            except ValueError:  # another drive (Windows)
                rel = ""
            if rel in self.exact:
                return rel
        candidates = self.by_suffix.get(key, [])
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            raise DatasetError(
                f"{self.name}: {entry!r} matches {len(candidates)} indexed images "
                f"({candidates[0]}, {candidates[1]}, ...); write its path relative to the dataset folder"
            )
        self.missing.append(str(entry))
        return None


def _by_label(
    labels: dict[str, str],
    queries: list[str],
    kind: str,
    ukbench: bool = False,
    class_names: dict[str, str] | None = None,
) -> GroundTruth:
    return GroundTruth(
        queries=queries,
        relevant=LabelRelevance(labels, queries),
        labels=labels,
        kind=kind,
        ukbench=ukbench,
        class_names=class_names or {},
    )


def _read_labels(root: Path, files: list[str], path: Path) -> GroundTruth:
    resolve = _Resolver(root, files, path)
    labels: dict[str, str] = {}
    names: dict[str, set[str]] = defaultdict(set)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [(h or "").strip().lower() for h in (reader.fieldnames or [])]
            if "file" not in header or "label" not in header:
                raise DatasetError(f"{path}: header must name columns 'file' and 'label' (found {header})")
            reader.fieldnames = header
            for line, row in enumerate(reader, start=2):
                entry, label = (row.get("file") or "").strip(), (row.get("label") or "").strip()
                if not entry and not label:
                    continue
                if not entry or not label:
                    raise DatasetError(f"{path}:{line}: every row needs a file and a label")
                rel = resolve(entry)
                if rel is None:
                    continue
                if labels.get(rel, label) != label:
                    raise DatasetError(f"{path}:{line}: {rel} is listed with two labels")
                labels[rel] = label
                name = (row.get("label_name") or row.get("name") or "").strip()
                if name:
                    names[label].add(name)
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not a readable CSV file: {exc}") from exc
    resolve.warn_missing()
    if not labels:
        raise DatasetError(f"{path}: no labelled images among the indexed images of {root}")
    # Readable names only when each label has exactly one, and no two labels share it.
    class_names = {label: next(iter(n)) for label, n in names.items() if len(n) == 1}
    if len(set(class_names.values())) != len(class_names):
        class_names = {}
    return _by_label(labels, list(labels), "labels", class_names=class_names)


def _read_json(root: Path, files: list[str], path: Path) -> GroundTruth:
    resolve = _Resolver(root, files, path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not all(
        isinstance(v, list) and all(isinstance(x, str) for x in v) for v in doc.values()
    ):
        raise DatasetError(f"{path}: expected an object {{query: [relevant image, ...]}}")
    if not doc:
        raise DatasetError(f"{path}: no queries")
    relevant: dict[str, set[str]] = {}
    for entry, rel_entries in doc.items():
        query = resolve(entry)
        if query is None:
            continue
        if query in relevant:
            raise DatasetError(f"{path}: query {query} is listed twice")
        relevant[query] = {r for r in map(resolve, rel_entries) if r is not None} - {query}
    resolve.warn_missing()
    if not relevant:
        raise DatasetError(f"{path}: none of its queries is among the indexed images of {root}")
    return GroundTruth(queries=list(relevant), relevant=relevant, labels=None, kind="gt.json")


def _stems(files: list[str]) -> list[str]:
    return [posixpath.splitext(posixpath.basename(f))[0] for f in files]


def _all_match(pattern: re.Pattern[str], stems: list[str]) -> list[re.Match[str]] | None:
    """The match of every stem, or None if one does not match."""
    matches = [pattern.match(s) for s in stems]
    return [m for m in matches if m is not None] if all(matches) else None


def _holidays(files: list[str]) -> GroundTruth | None:
    stems = _stems(files)
    matches = _all_match(_HOLIDAYS, stems)
    if matches is None:
        return None
    if len(set(stems)) != len(stems):
        raise DatasetError("INRIA Holidays names (100000.jpg) must be unique across folders")
    labels = {f: m.group(1) for f, m in zip(files, matches)}
    queries = sorted((f for f, m in zip(files, matches) if m.group(2) == "00"), key=lambda f: labels[f])
    missing = set(labels.values()) - {labels[q] for q in queries}
    if missing:
        log.warning(
            "%d INRIA Holidays groups have no xxxx00 query image; they only act as distractors", len(missing)
        )
    if not queries:
        raise DatasetError("INRIA Holidays names found, but no query image (xxxx00)")
    return _by_label(labels, queries, "holidays")


def _ukbench(files: list[str]) -> GroundTruth | None:
    matches = _all_match(_UKBENCH, _stems(files))
    if matches is None:
        return None
    numbers = [int(m.group(1)) for m in matches]
    if len(set(numbers)) != len(numbers):
        raise DatasetError("UKBench names (ukbench00000.jpg) must be unique across folders")
    labels = {f: f"{n // 4:05d}" for f, n in zip(files, numbers)}
    sizes: dict[str, int] = defaultdict(int)
    for label in labels.values():
        sizes[label] += 1
    partial = sum(1 for s in sizes.values() if s != 4)
    if partial:
        log.warning("%d UKBench groups do not hold 4 images; the N-S score stays out of 4", partial)
    queries = [f for _, f in sorted(zip(numbers, files))]
    return _by_label(labels, queries, "ukbench", ukbench=True)


def load_ground_truth(
    root: str | os.PathLike[str], files: list[str], path: str | os.PathLike[str] | None = None
) -> GroundTruth:
    """Find the ground truth of the dataset at ``root`` whose indexed images are ``files``.

    ``files`` are POSIX paths relative to ``root`` (as in the index). ``path`` names a labels.csv
    or gt.json kept elsewhere (chosen by its extension) instead of detecting one. Raises
    :class:`DatasetError` when none is found or a file it lists is not indexed.
    """
    root = Path(root)
    files = list(files)
    if not files:
        raise DatasetError(f"no indexed images in {root} to evaluate")
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise DatasetError(f"ground truth file not found: {path}")
        suffix = path.suffix.lower()
        if suffix == ".csv":
            return _read_labels(root, files, path)
        if suffix == ".json":
            return _read_json(root, files, path)
        raise DatasetError(f"unknown ground truth format {path.name}: give a labels .csv or a gt .json")
    if (root / LABELS_FILE).is_file():
        return _read_labels(root, files, root / LABELS_FILE)
    if (root / GT_FILE).is_file():
        return _read_json(root, files, root / GT_FILE)
    gt = _holidays(files) or _ukbench(files)
    if gt is None:
        raise DatasetError(
            f"no ground truth in {root}: expected {LABELS_FILE}, {GT_FILE}, INRIA Holidays names "
            "(100000.jpg) or UKBench names (ukbench00000.jpg)"
        )
    log.info("ground truth: %s naming, %d queries", gt.kind, len(gt.queries))
    return gt
