"""The labels file of an index folder (``labels-*.json``): each labelled image's top ImageNet classes.

Named in the manifest (:class:`~cbir.stores.manifest.LabelsRecord`) beside the classifier that made
the labels, written whole under a new name at a commit whose labels changed, like every file of the
folder. Keyed by path, so compacting the matrix never touches it; ASCII JSON, so any file name
(even one that is not UTF-8) survives it as it is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from cbir.core.errors import IndexFolderError
from cbir.core.labels import Labels, labels_from_json
from cbir.stores.folder.files import write_bytes

FORMAT = "cbir-labels"


def write_labels(path: Path, classifier: str, labels: Mapping[str, Labels]) -> None:
    """Atomically write ``labels`` (sorted by path) as made by ``classifier``."""
    doc = {
        "format": FORMAT,
        "classifier": classifier,
        "labels": [[p, [[c, q] for c, q in labels[p]]] for p in sorted(labels)],
    }
    write_bytes(path, json.dumps(doc, ensure_ascii=True, separators=(",", ":")).encode("ascii"))


def read_labels(path: Path) -> dict[str, Labels]:
    """The labels in ``path`` by image path; FileNotFoundError passes, damage is one IndexFolderError."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        doc = json.loads(data.decode("ascii"))
        if doc.get("format") != FORMAT:
            raise ValueError("not a labels file")
        return {str(p): labels_from_json(items) for p, items in doc["labels"]}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IndexFolderError(
            f"the labels file {path} is damaged ({exc}); run cbir index --labels --rebuild"
        ) from exc
