"""Words -> ImageNet classes: what a text query means to search by labels (``--text``).

The table (``imagenet_wordnet.json``, package data made by ``tools/make_wordnet_table.py`` from
WordNet 3.0) gives each of the 1000 ImageNet-1k classes its names and synonyms and its hypernym
chain. A word or phrase matches a class when it is one of the class's names, or one of the names
of a broader term above it: "dog" matches every dog breed, "vehicle" buses and cars, "fruit" the
fruit classes. A word whose meanings have no class below them matches the classes it is a part
or member of (WordNet's holonyms: "beach" is part of a shore, so seashore and lakeside). Plurals
are read as their singular (WordNet's rules and exceptions). A word that matches nothing is a
one-line :class:`~cbir.core.errors.QueryError` naming the nearest class names by edit distance.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

from cbir.core.errors import QueryError

TABLE = "imagenet_wordnet.json"
LONGEST_PHRASE = 5
SUGGESTIONS = 5
MAX_TEXT = 200  # characters of a word query (the command line's --text and the web API's text=)
STOP_WORDS = frozenset({"a", "an", "the", "of", "with", "and", "in", "on", "at", "by", "some", "my"})
"""Words skipped between terms ("elephant in water"), unless they start a phrase that is a name."""

# WordNet's detachment rules for nouns (morphy): plural ending -> singular ending
_SUFFIXES = (
    ("ses", "s"),
    ("xes", "x"),
    ("zes", "z"),
    ("ches", "ch"),
    ("shes", "sh"),
    ("men", "man"),
    ("ies", "y"),
    ("s", ""),
)
_SPLIT = re.compile(r"[\s,;/]+")


@dataclass(frozen=True)
class ImageNetClass:
    """One ImageNet-1k class: its WordNet id, names (first is the usual one) and broader terms."""

    wnid: str
    names: tuple[str, ...]
    hypernyms: tuple[tuple[str, ...], ...]  # the names of each broader term, nearest first

    @property
    def name(self) -> str:
        return self.names[0]


@dataclass(frozen=True)
class Term:
    """One part of a query: the ``words`` as typed, the classes they match, and how (``how``:
    ``""`` for a name or broader term, else ``"part of X"``)."""

    words: str
    classes: frozenset[int]
    how: str = ""


class Vocabulary:
    """The ImageNet-1k classes and every name a query may use for them (module docstring)."""

    def __init__(self, table: dict[str, object]) -> None:
        if table.get("format") != "cbir-imagenet-wordnet":
            raise ValueError("not a cbir ImageNet-WordNet table")
        synsets: dict[str, list[str]] = table["synsets"]  # type: ignore[assignment]
        raw: list[list[object]] = table["classes"]  # type: ignore[assignment]
        self.classes = [
            ImageNetClass(str(w), tuple(n), tuple(tuple(synsets[a]) for a in ancestors))  # type: ignore[arg-type, attr-defined]
            for w, n, ancestors in raw
        ]
        index: dict[str, set[int]] = {}
        for i, c in enumerate(self.classes):
            for name in c.names + tuple(n for names in c.hypernyms for n in names):
                index.setdefault(_norm(name), set()).add(i)
        self._index = {k: frozenset(v) for k, v in index.items()}
        part_of: dict[str, list[object]] = table["part_of"]  # type: ignore[assignment]
        self._part_of = {
            _norm(w): (", ".join(via), frozenset(classes))  # type: ignore[arg-type, call-overload]
            for w, (via, classes) in part_of.items()
        }
        self._exceptions: dict[str, str] = table["exceptions"]  # type: ignore[assignment]
        self.names = sorted(self._index)  # every name a query may use, for suggestions

    def lookup(self, phrase: str) -> Term | None:
        """The classes ``phrase`` names (as is, or its singular), None when it names none."""
        for form in _forms(_norm(phrase), self._exceptions):
            if form in self._index:
                return Term(phrase, self._index[form])
            if form in self._part_of:
                via, classes = self._part_of[form]
                return Term(phrase, classes, f"part of {via}")
        return None

    def parse(self, text: str) -> list[Term]:
        """The terms of a query, longest names first ("school bus" is one term, "elephant water"
        two); QueryError for a word that matches nothing, naming the nearest class names."""
        words = [w for w in _SPLIT.split(text.strip().lower()) if w]
        terms: list[Term] = []
        i = 0
        while i < len(words):
            for j in range(min(len(words), i + LONGEST_PHRASE), i, -1):
                term = self.lookup(" ".join(words[i:j]))
                if term is not None:
                    terms.append(term)
                    i = j
                    break
            else:
                if words[i] not in STOP_WORDS:
                    raise QueryError(self.no_match(words[i]))
                i += 1
        if not terms:
            raise QueryError("give the words to search for")
        return terms

    def no_match(self, word: str) -> str:
        """The one line for a word that matches no class."""
        near = ", ".join(f'"{n}"' for n in self.nearest(word))
        return f'no ImageNet class matches "{word}" (nor a broader term of one); nearest names: {near}'

    def nearest(self, word: str, n: int = SUGGESTIONS) -> list[str]:
        """The ``n`` names (of classes or broader terms) nearest to ``word`` by edit distance (ties
        alphabetical)."""
        w = _norm(word)
        scored = sorted((edit_distance(w, name), name) for name in self.names if abs(len(name) - len(w)) <= 3)
        if len(scored) < n:
            scored = sorted((edit_distance(w, name), name) for name in self.names)
        return [name for _, name in scored[:n]]


def _norm(text: str) -> str:
    return " ".join(text.lower().replace("_", " ").split())


def _forms(word: str, exceptions: dict[str, str]) -> list[str]:
    """``word``, then its singular by WordNet's exceptions and detachment rules (last word only)."""
    head, _, last = word.rpartition(" ")
    out = [word]
    if last in exceptions:
        out.append(f"{head} {exceptions[last]}".strip())
    for plural, single in _SUFFIXES:
        if last.endswith(plural) and len(last) > len(plural) + 1:
            out.append(f"{head} {last[: -len(plural)] + single}".strip())
    return out


def edit_distance(a: str, b: str) -> int:
    """Edit distance: insertions, deletions, substitutions and swaps of neighbours ("dgo" is 1 from
    "dog"; optimal string alignment)."""
    rows = [list(range(len(b) + 1))]
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(rows[i - 1][j] + 1, row[j - 1] + 1, rows[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], rows[i - 2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


@cache
def vocabulary() -> Vocabulary:
    """The table shipped with cbir, read once."""
    text = resources.files("cbir.search").joinpath(TABLE).read_text(encoding="utf-8")
    return Vocabulary(json.loads(text))
