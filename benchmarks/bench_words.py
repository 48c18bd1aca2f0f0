"""Search by words on Corel-1k: how well a class's natural word finds it, and what labelling costs.

For each Corel-1k class whose content ImageNet-1k covers, the class's natural word is queried
through the labels (``cbir query --text WORD``'s ranking) and P@10, P@50 and AP are measured
against the class (100 relevant images; an image the word does not match is never retrieved).
The two classes ImageNet does not cover (Africa: people; monuments: buildings of many kinds) are
shown too, outside the means. Cost, in the same run, with the same backbone and decoding threads:
indexing without labels, indexing with labels (the classifier run beside the backbone on the same
decoded views, or the backbone's own head), and labelling an existing index (the classifier alone).

    flock /work/heavy.lock python3 benchmarks/bench_words.py [--model xception --weights FILE]
        [--dataset ../shared/datasets/corel1k] [--work DIR]

Targets (issue 24): mean P@10 >= 0.85, mean P@50 >= 0.7 over the covered classes; labels add at
most 25% to indexing time with a ResNet50/Xception backbone.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from machine import SHARED, describe  # noqa: E402

from cbir.encoders.base import RuntimeOptions  # noqa: E402
from cbir.encoders.classifier import DEFAULT_CLASSIFIER, ClassifierSource, NetworkClassifier  # noqa: E402
from cbir.indexing.indexer import IndexOptions, update_index  # noqa: E402
from cbir.search.labels import matches_all  # noqa: E402
from cbir.search.words import vocabulary  # noqa: E402
from cbir.service.query import SearchRequest, words_index  # noqa: E402
from cbir.service.settings import FeatureChoice, resolve_settings  # noqa: E402
from cbir.stores.folder.store import FolderStore  # noqa: E402

COVERED = {  # Corel-1k class -> its natural word, and why ImageNet-1k covers it
    "beach": ("beach", "seashore, lakeside and sandbar are classes; 'beach' is part of a shore"),
    "buses": ("bus", "school bus, trolleybus, minibus"),
    "dinosaurs": ("dinosaur", "triceratops is a class (Corel's are models and drawings)"),
    "elephants": ("elephant", "African and Indian elephant, tusker"),
    "flowers": ("flower", "daisy and yellow lady's slipper are flowers (most Corel flowers are other kinds)"),
    "horses": ("horse", "sorrel is a horse"),
    "mountains": ("mountain", "alp and volcano are mountains (valley and cliff are not)"),
    "food": ("food", "48 classes of dishes, bread, fruit and vegetables are food"),
    "monuments": ("building", "Wang's 'buildings': church, palace, monastery, mosque, library are buildings"),
}
NOT_COVERED = {
    "africa": ("person", "people are not ImageNet classes (person: scuba diver, groom, ballplayer)"),
}
CLASS_NAMES = {  # Corel-1k's label_name -> the names above
    "africa": "africa",
    "beach": "beach",
    "monuments": "monuments",
    "buses": "buses",
    "dinosaurs": "dinosaurs",
    "elephants": "elephants",
    "flowers": "flowers",
    "horses": "horses",
    "mountains": "mountains",
    "food": "food",
}


def read_classes(dataset: Path) -> dict[str, list[str]]:
    """Corel-1k's classes: label name -> image paths (relative to ``images/``)."""
    out: dict[str, list[str]] = {}
    with open(dataset / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["label_name"], []).append(row["file"])
    return out


def timed(label: str, run) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    report = run()
    seconds = time.perf_counter() - t0
    print(f"  {label}: {seconds:.1f} s", file=sys.stderr)
    return seconds, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=SHARED / "datasets" / "corel1k")
    parser.add_argument("--model", default="xception")
    parser.add_argument(
        "--weights",
        default=str(SHARED / "weights" / "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        help="the backbone's weights ('random' for a ResNet50 timing run)",
    )
    parser.add_argument("--classifier", default=DEFAULT_CLASSIFIER)
    parser.add_argument("--work", type=Path, help="where the indexes go (default: a temporary folder)")
    parser.add_argument("--runtime", default="auto")
    args = parser.parse_args()

    images = args.dataset / "images"
    classes = read_classes(args.dataset)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_words-"))
    for name in ("plain", "joint"):
        shutil.rmtree(work / name, ignore_errors=True)
    runtime = RuntimeOptions(runtime=args.runtime, bulk=True)

    def settings(index: str):  # type: ignore[no-untyped-def]
        return resolve_settings(
            images,
            index_dir=work / index,
            features=FeatureChoice(model=args.model),
            weights=args.weights,
            runtime=runtime,
        )

    plain, joint = settings("plain"), settings("joint")
    classifier = ClassifierSource(args.classifier, runtime)
    print("building and warming up the models (not timed)", file=sys.stderr)
    warm = plain.embedder()
    object.__setattr__(joint, "_built", [warm])  # the same built encoder for both runs
    built = classifier.classifier()
    sample = [images / p for p in sorted(classes["beach"])[:64]]
    list(warm.embed_files(sample))  # traced graphs, converted models: made before the clock starts
    list(built.classify_files(sample))
    if isinstance(built, NetworkClassifier) and (beside := built.beside(warm)) is not None:
        list(beside.embed_and_classify_files(sample))

    for path in images.iterdir():  # every file read once before the clock starts: no cold first run
        path.read_bytes()
    print(
        "timing: without labels, with labels, without labels again (the mean of the two is the baseline)",
        file=sys.stderr,
    )
    quiet = IndexOptions(progress=False)
    t_plain, _ = timed(
        "index, no labels",
        lambda: update_index(images, plain, options=quiet, store=FolderStore(images, work / "plain")),
    )
    t_joint, report = timed(
        "index with labels",
        lambda: update_index(
            images,
            joint,
            options=IndexOptions(progress=False, labels=True),
            store=FolderStore(images, work / "joint"),
            classifier=classifier,
        ),
    )
    t_label, labelled = timed(
        "label the index made without",
        lambda: update_index(
            images,
            plain,
            options=IndexOptions(progress=False, labels=True),
            store=FolderStore(images, work / "plain"),
            classifier=classifier,
        ),
    )
    shutil.rmtree(work / "plain")
    t_again, _ = timed(
        "index, no labels, again",
        lambda: update_index(images, plain, options=quiet, store=FolderStore(images, work / "plain")),
    )
    runs = (t_plain, t_again)
    t_plain = (t_plain + t_again) / 2
    n = sum(len(v) for v in classes.values())

    index = FolderStore(images, work / "joint").open()
    labels = dict(zip(index.paths, index.labels()))
    vocab = vocabulary()

    print(describe())
    print(
        f"dataset: Corel-1k ({n} images), backbone {args.model} ({args.weights}), classifier {index.labeller}"
    )
    print(
        f"labels: top 5 above 0.01; {sum(1 for v in labels.values() if v)} of {len(labels)} images have some"
    )
    print()
    print(f"{'class':<10} {'word':<9} {'P@10':>5} {'P@50':>5} {'AP':>6} {'matched':>8} {'in class':>8}  why")
    rows = []
    for corel, table in ((COVERED, True), (NOT_COVERED, False)):
        for name, (word, why) in corel.items():
            relevant = set(classes[CLASS_NAMES[name]])
            (result,) = words_index(index, [word], SearchRequest(k=len(index)))
            found = [str(Path(m.path).relative_to(images)) for m in result.matches]
            hits = np.array([p in relevant for p in found], dtype=float)
            p10 = hits[:10].sum() / 10
            p50 = hits[:50].sum() / 50
            ap = (
                float((np.cumsum(hits) / np.arange(1, len(hits) + 1) * hits).sum() / len(relevant))
                if len(hits)
                else 0.0
            )
            terms = vocab.parse(word)
            in_class = sum(matches_all(labels.get(p), terms) for p in relevant)
            rows.append((name, word, p10, p50, ap, found, relevant, table))
            mark = "" if table else "  (not covered)"
            print(
                f"{name:<10} {word:<9} {p10:5.2f} {p50:5.2f} {ap:6.3f} {len(found):8d} {in_class:8d}"
                f"  {why}{mark}"
            )
    covered = [r for r in rows if r[7]]
    mean10 = float(np.mean([r[2] for r in covered]))
    mean50 = float(np.mean([r[3] for r in covered]))
    mean_ap = float(np.mean([r[4] for r in covered]))
    print(f"{'mean':<10} {'(covered)':<9} {mean10:5.2f} {mean50:5.2f} {mean_ap:6.3f}")
    print()
    speed = lambda t: n / t  # noqa: E731
    added = t_joint / t_plain - 1
    worst = t_joint / min(runs) - 1
    print(
        f"cost: index without labels {speed(t_plain):.1f} img/s (runs of {runs[0]:.1f} s and "
        f"{runs[1]:.1f} s); with labels {speed(t_joint):.1f} img/s ({t_joint:.1f} s: {added:+.0%} against "
        f"the mean, {worst:+.0%} against the faster run); labelling an existing index "
        f"{speed(t_label):.1f} img/s ({t_label:.1f} s, "
        f"{t_label / min(runs):.0%} of the faster run without labels)"
    )
    print()
    print("worst queries (lowest AP), with the commonest top labels in the class and in the top 10:")
    for name, word, p10, _p50, ap, found, relevant, _ in sorted(covered, key=lambda r: r[4])[:3]:
        tops = Counter(vocab.classes[labels[p][0][0]].name for p in relevant if labels.get(p))
        wrong = Counter(
            vocab.classes[labels[p][0][0]].name for p in found[:10] if p not in relevant and labels.get(p)
        )
        print(
            f"  {word!r} for {name} (AP {ap:.3f}, P@10 {p10:.2f}): class's top-1 labels {tops.most_common(5)}"
        )
        if wrong:
            print(f"      wrong in the top 10: {wrong.most_common(5)}")
    print()
    verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    print(
        f"targets: mean P@10 {mean10:.2f} >= 0.85 {verdict(mean10 >= 0.85)}; mean P@50 {mean50:.2f} >= 0.70 "
        f"{verdict(mean50 >= 0.7)}; labels add {max(added, worst):.0%} <= 25% (the worse of the two) "
        f"{verdict(max(added, worst) <= 0.25)}"
    )


if __name__ == "__main__":
    main()
