"""An image's labels: its most probable ImageNet-1k classes with their probabilities, as an index
stores them (``cbir index --labels``) and search by words ranks them.

:data:`Labels` is ``((class, probability), ...)``, most probable first; ``class`` is the position in
the ImageNet-1k class order (the sorted WordNet ids). An image whose classes all fall under the
floor has the empty tuple; an image that was never labelled has no entry at all. The text form
(``"207:0.8123 208:0.0541"``) is what a database column holds.
"""

from __future__ import annotations

import math
import re

import numpy as np

Labels = tuple[tuple[int, float], ...]
"""``((class, probability), ...)``, most probable first."""

TOP = 5
"""Classes kept per image."""

FLOOR = 0.01
"""Least probability kept: below it a class is noise (1000 classes share the mass)."""

N_CLASSES = 1000
"""ImageNet-1k."""

_ITEM = re.compile(r"^(\d{1,4}):([01](?:\.\d{1,6})?)$")


def top_labels(probs: np.ndarray, top: int = TOP, floor: float = FLOOR) -> Labels:
    """The ``top`` most probable classes of one image above ``floor``, probabilities to 4 places;
    ties to the lower class (a stable sort), so the same probabilities always give the same labels."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if len(p) != N_CLASSES:
        raise ValueError(f"{len(p)} probabilities, not one per ImageNet-1k class ({N_CLASSES})")
    order = np.argsort(-p, kind="stable")[:top]
    return tuple((int(c), round(float(p[c]), 4)) for c in order if p[c] >= floor and math.isfinite(p[c]))


def labels_to_text(labels: Labels) -> str:
    """The text form: ``"class:probability"`` items separated by spaces ("" for none)."""
    return " ".join(f"{c}:{p:.4f}" for c, p in labels)


def labels_from_text(text: str) -> Labels:
    """Read the text form; ValueError when it is not one."""
    out = []
    for item in text.split():
        m = _ITEM.match(item)
        if m is None:
            raise ValueError(f"bad label {item!r}")
        out.append(checked((int(m.group(1)), float(m.group(2)))))
    return tuple(out)


def labels_from_json(value: object) -> Labels:
    """Read the JSON form ``[[class, probability], ...]``; ValueError when it is not one."""
    if not isinstance(value, list):
        raise ValueError(f"bad labels {value!r}")
    out = []
    for item in value:
        if not isinstance(item, list) or len(item) != 2:
            raise ValueError(f"bad label {item!r}")
        out.append(checked((int(item[0]), float(item[1]))))
    return tuple(out)


def checked(label: tuple[int, float]) -> tuple[int, float]:
    """One label, its class in range and its probability a number in [0, 1]."""
    c, p = label
    if not 0 <= c < N_CLASSES or not (math.isfinite(p) and 0.0 <= p <= 1.0):
        raise ValueError(f"bad label {c}:{p}")
    return c, p
