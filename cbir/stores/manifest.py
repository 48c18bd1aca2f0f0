"""The manifest of an index folder: typed records, their JSON form, and the reader of older versions.

``manifest.json`` is the commit point of an index: it names every file the index consists of, and
those names are never given new content (a new matrix, checkpoint or approximate index gets a new
name), so a reader holding one manifest always finds the files it names unchanged, or gone.
Version 1 (the first release) is read and converted; it is written back as version 2 by the next
indexing run. Nothing is unpickled and no path can escape the dataset root or the index folder.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field

from cbir.core.names import json_text
from cbir.core.records import CONTROL, Entry, Skipped
from cbir.core.types import JSONDict
from cbir.encoders.features import FeatureConfig
from cbir.ingest.files import safe_join

FORMAT = "cbir-index"
VERSION = 2
READABLE_VERSIONS = (1, 2)
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_TAKEN = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$")


@dataclass(frozen=True)
class Segment:
    """A matrix file holding ``rows`` consecutive rows of the index."""

    file: str
    rows: int


@dataclass(frozen=True)
class AnnRecord:
    """The approximate index file of an index and what it was built from (see cbir.stores.folder.ann)."""

    file: str
    kind: str
    params: dict[str, float]
    generation: str
    rows: int
    dim: int
    dtype: str
    seconds: float
    built: float

    def to_dict(self) -> JSONDict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class LabelsRecord:
    """The labels of an index (``cbir index --labels``): the file holding them (path -> top classes)
    and the classifier that made them."""

    file: str
    classifier: str

    def to_dict(self) -> JSONDict:
        return {"file": self.file, "classifier": self.classifier}


@dataclass
class Manifest:
    """The commit record of an index (see the module docstring).

    ``generation`` changes whenever the feature rows are rewritten, so an approximate index built
    from older rows is recognised as stale. ``entries[i]`` is None for a dropped row that is still
    in a matrix file until the end of the run compacts the matrix.
    """

    config: FeatureConfig
    dim: int
    dtype: str = "float32"
    entries: list[Entry | None] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    weights_path: str | None = None
    root: str | None = None
    whitening: str | None = None
    ann: AnnRecord | None = None
    labels: LabelsRecord | None = None
    generation: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)

    def files(self) -> set[str]:
        """Every file of the index folder this manifest needs."""
        names = {s.file for s in self.segments}
        if self.whitening:
            names.add(self.whitening)
        if self.ann is not None:
            names.add(self.ann.file)
        if self.labels is not None:
            names.add(self.labels.file)
        return names

    def live_rows(self) -> list[int]:
        return [i for i, e in enumerate(self.entries) if e is not None]

    def to_json(self) -> str:
        return json_text(
            {
                "format": FORMAT,
                "version": VERSION,
                "config": self.config.to_dict(),
                "dim": self.dim,
                "dtype": self.dtype,
                "generation": self.generation,
                "created": self.created,
                "updated": self.updated,
                "root": self.root,
                "weights_path": self.weights_path,
                "whitening": self.whitening,
                "ann": None if self.ann is None else self.ann.to_dict(),
                **({} if self.labels is None else {"labels": self.labels.to_dict()}),
                "segments": [[s.file, s.rows] for s in self.segments],
                "entries": [
                    None if e is None else [e.path, e.size, e.mtime_ns, *([e.taken] if e.taken else [])]
                    for e in self.entries
                ],
                "skipped": [[s.path, s.size, s.mtime_ns, s.reason, s.transient] for s in self.skipped],
            },
            separators=(",", ":"),
            allow_nan=False,
        )

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse and validate a manifest of any readable version; ValueError (or a subclass) if bad."""
        d = json.loads(text)
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError("not a cbir index manifest")
        version = d.get("version")
        if version not in READABLE_VERSIONS:
            raise ValueError(f"index format version {version} (this cbir reads versions 1 and 2)")
        if version == 1:
            d = _from_version_1(d)
        entries = [None if e is None else _entry(e) for e in d["entries"]]
        skipped = [
            Skipped(_rel_path(s[0]), int(s[1]), int(s[2]), str(s[3]), bool(s[4]) if len(s) > 4 else False)
            for s in d.get("skipped", [])
        ]
        segments = [Segment(_file_name(s[0]), int(s[1])) for s in d["segments"]]
        if sum(s.rows for s in segments) != len(entries):
            raise ValueError("segment rows do not match the entries")
        ann = d.get("ann")
        labels = d.get("labels")
        whitening = d.get("whitening")
        return cls(
            config=FeatureConfig.from_dict(d["config"]),
            dim=int(d["dim"]),
            dtype=_dtype(d.get("dtype", "float32")),
            entries=entries,
            segments=segments,
            skipped=skipped,
            weights_path=d.get("weights_path"),
            root=d.get("root"),
            whitening=None if whitening is None else _file_name(whitening),
            ann=None if ann is None else _ann_record(ann),
            labels=None
            if labels is None
            else LabelsRecord(_file_name(labels["file"]), str(labels["classifier"])),
            generation=str(d["generation"]),
            created=float(d["created"]),
            updated=float(d["updated"]),
        )


def _from_version_1(d: JSONDict) -> JSONDict:
    """Convert a version-1 manifest: fixed-name ``feats.npy`` segments, ``extra`` side channel."""
    if any(seg.get("staged") for seg in d["segments"]):
        raise ValueError("a version-1 index interrupted in the middle of a rename")
    extra = d.get("extra") or {}
    whitening = [f for f in extra.get("files", []) if str(f).startswith("whitening-")]
    ann = extra.get("ann")
    if isinstance(ann, dict):
        ann = {**ann, "file": ann.get("file", "ann.faiss")}
    return {
        **d,
        "segments": [[seg["file"], seg["rows"]] for seg in d["segments"]],
        "whitening": whitening[0] if whitening else None,
        "ann": ann if isinstance(ann, dict) else None,
    }


def _entry(item: list[object]) -> Entry:
    """An entry: ``[path, size, mtime_ns]`` plus the capture time when it was read."""
    taken = item[3] if len(item) > 3 else None
    if taken is not None and (not isinstance(taken, str) or not _TAKEN.match(taken)):
        raise ValueError(f"bad capture time {taken!r}")
    return Entry(_rel_path(item[0]), int(item[1]), int(item[2]), taken)  # type: ignore[call-overload]


def _rel_path(value: object) -> str:
    """A manifest path: a string, no control characters, relative and inside the dataset root."""
    if not isinstance(value, str) or CONTROL.search(value):
        raise ValueError(f"unsafe path in index: {value!r}")
    safe_join(".", value)
    return value


def _file_name(value: object) -> str:
    """A file of the index folder: a plain name, no folders, no hidden or odd characters."""
    if not isinstance(value, str) or not _FILE_NAME.match(value) or value in ("manifest.json", "lock"):
        raise ValueError(f"bad index file name {value!r}")
    return value


def _dtype(value: object) -> str:
    if value not in ("float32", "float16"):
        raise ValueError(f"bad matrix type {value!r}")
    return str(value)


def _ann_record(d: JSONDict) -> AnnRecord:
    params = {str(k): float(v) for k, v in dict(d.get("params", {})).items()}
    return AnnRecord(
        file=_file_name(d["file"]),
        kind=str(d["kind"]),
        params=params,
        generation=str(d["generation"]),
        rows=int(d["rows"]),
        dim=int(d["dim"]),
        dtype=str(d.get("dtype", "float32")),
        seconds=float(d.get("seconds", 0.0)),
        built=float(d.get("built", 0.0)),
    )
