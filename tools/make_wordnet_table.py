"""Generate cbir/search/imagenet_wordnet.json: the ImageNet-1k classes with their WordNet names,
synonyms and hypernym chains, which search by words matches a query against.

Run at development time only (cbir never reads WordNet or timm at run time):

    apt-get install wordnet-base             # WordNet 3.0 in /usr/share/wordnet (Princeton licence)
    pip download --no-deps timm -d /tmp/timm  # timm/data/_info/imagenet_synsets.txt (Apache-2.0)
    python3 tools/make_wordnet_table.py --wordnet /usr/share/wordnet --synsets imagenet_synsets.txt

The ImageNet-1k class order is the sorted order of the 1000 WordNet ids (what every ImageNet
classifier's output follows, timm's file included). The licences of both sources are in
tools/LICENSES-wordnet.md; the generated file carries WordNet's copyright notice.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

HOLONYMS = ("#p", "#m", "#s")
"""A word whose own meanings have no ImageNet class at or below them matches the classes of what it
is a part, member or substance of (its WordNet holonyms): "beach" is part of a shore, so it finds
seashore and lakeside; "trunk" finds elephants. One step only, recorded apart from the direct matches."""

EXTRA_HYPERNYMS = {"n02924116": ["n03791235"]}
"""Where WordNet's hierarchy misses an everyday sense: a bus is a motor vehicle (WordNet files it under
"public transport" alone, though one of its own names is "passenger vehicle"), so "vehicle" finds buses."""

NOTICE = (
    "Generated from WordNet 3.0. WordNet 3.0 Copyright 2006 by Princeton University. All rights "
    "reserved. Used under the WordNet 3.0 licence (tools/LICENSES-wordnet.md). ImageNet-1k class ids "
    "from timm's imagenet_synsets.txt (Apache-2.0)."
)


def read_nouns(
    wordnet: Path,
) -> tuple[dict[str, list[str]], dict[str, list[str]], dict[str, list[str]]]:
    """Every noun synset's lemmas, direct hypernyms (``@`` and ``@i``) and holonyms, by WordNet id."""
    lemmas: dict[str, list[str]] = {}
    parents: dict[str, list[str]] = {}
    wholes: dict[str, list[str]] = {}
    with open(wordnet / "data.noun", encoding="latin-1") as f:
        for line in f:
            if line.startswith("  "):
                continue  # the licence header
            fields = line.split(" | ", 1)[0].split()
            offset, count = fields[0], int(fields[3], 16)
            words = [fields[4 + 2 * i] for i in range(count)]
            pos = 4 + 2 * count
            n_ptr = int(fields[pos])
            ups, whole = [], []
            for i in range(n_ptr):
                symbol, target, kind = (
                    fields[pos + 1 + 4 * i],
                    fields[pos + 2 + 4 * i],
                    fields[pos + 3 + 4 * i],
                )
                if symbol in ("@", "@i") and kind == "n":
                    ups.append("n" + target)
                elif symbol in HOLONYMS and kind == "n":
                    whole.append("n" + target)
            wnid = "n" + offset
            lemmas[wnid] = [re.sub(r"\([a-z]+\)$", "", w).replace("_", " ") for w in words]
            parents[wnid] = ups
            wholes[wnid] = whole
    return lemmas, parents, wholes


def read_index(wordnet: Path) -> dict[str, list[str]]:
    """Every noun lemma (lower case, spaces) and its synsets."""
    out: dict[str, list[str]] = {}
    with open(wordnet / "index.noun", encoding="latin-1") as f:
        for line in f:
            if line.startswith("  "):
                continue
            fields = line.split()
            lemma, n_synsets, n_ptr = fields[0], int(fields[2]), int(fields[3])
            offsets = fields[6 + n_ptr : 6 + n_ptr + n_synsets]
            out[lemma.replace("_", " ").lower()] = ["n" + o for o in offsets]
    return out


def read_exceptions(wordnet: Path) -> dict[str, str]:
    """Irregular plurals (``mice`` -> ``mouse``)."""
    out = {}
    with open(wordnet / "noun.exc", encoding="latin-1") as f:
        for line in f:
            words = line.split()
            if len(words) >= 2:
                out[words[0].replace("_", " ")] = words[1].replace("_", " ")
    return out


def ancestors(wnid: str, parents: dict[str, list[str]]) -> list[str]:
    """Every hypernym of ``wnid``, nearest first (breadth first; WordNet has several parents at times)."""
    seen: list[str] = []
    frontier = list(parents.get(wnid, []))
    while frontier:
        nxt = []
        for p in frontier:
            if p not in seen:
                seen.append(p)
                nxt.extend(parents.get(p, []))
        frontier = nxt
    return seen


def build(wordnet: Path, synsets_file: Path) -> dict[str, object]:
    wnids = [w.strip() for w in synsets_file.read_text().split() if w.strip()]
    if len(wnids) != 1000 or wnids != sorted(wnids):
        raise SystemExit("expected the 1000 ImageNet-1k WordNet ids in sorted order")
    lemmas, parents, wholes = read_nouns(wordnet)
    for wnid, extra in EXTRA_HYPERNYMS.items():
        parents[wnid] = parents[wnid] + extra
    index = read_index(wordnet)
    chains = {w: ancestors(w, parents) for w in wnids}
    below: dict[str, set[int]] = defaultdict(set)  # synset -> classes at or below it
    for i, w in enumerate(wnids):
        below[w].add(i)
        for a in chains[w]:
            below[a].add(i)
    used = sorted({a for w in wnids for a in chains[w]})
    direct: set[str] = set()
    for w in list(wnids) + used:
        direct.update(lemma.lower() for lemma in lemmas[w])
    part_of: dict[str, list[object]] = {}
    for word, senses in sorted(index.items()):
        if word in direct or any(s in below for s in senses):
            continue
        via: list[str] = []
        classes: set[int] = set()
        for s in senses:
            for whole in wholes.get(s, []):
                if whole in below:
                    via.append(lemmas[whole][0])
                    classes |= below[whole]
        if classes:
            part_of[word] = [sorted(set(via)), sorted(classes)]
    exceptions = {
        plural: base for plural, base in read_exceptions(wordnet).items() if base in direct or base in part_of
    }
    return {
        "format": "cbir-imagenet-wordnet",
        "version": 1,
        "notice": NOTICE,
        "classes": [[w, lemmas[w], chains[w]] for w in wnids],
        "synsets": {a: lemmas[a] for a in used},
        "part_of": part_of,
        "exceptions": dict(sorted(exceptions.items())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet"))
    parser.add_argument("--synsets", type=Path, required=True, help="timm's imagenet_synsets.txt")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "cbir/search/imagenet_wordnet.json"
    )
    args = parser.parse_args()
    table = build(args.wordnet, args.synsets)
    args.out.write_text(json.dumps(table, ensure_ascii=False, separators=(",", ":"), sort_keys=False) + "\n")
    print(
        f"{args.out}: {len(table['classes'])} classes, {len(table['synsets'])} hypernyms, "  # type: ignore[arg-type]
        f"{len(table['part_of'])} part-of words, {args.out.stat().st_size // 1024} KiB"
    )


if __name__ == "__main__":
    main()
