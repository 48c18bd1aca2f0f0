"""Search by words through labels: the WordNet table, matching and suggestions, ranking, label
storage and incremental updates on both stores, and the refusals (an index without labels)."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from stores import PixelEmbedder, milvus_store

from cbir.core.errors import BadImageError, QueryError
from cbir.core.labels import N_CLASSES, labels_from_text, labels_to_text, top_labels
from cbir.encoders.classifier import ClassifierSource
from cbir.encoders.features import FeatureConfig
from cbir.encoders.weights import Weights
from cbir.indexing.indexer import IndexOptions, update_index
from cbir.search.labels import rank_by_labels
from cbir.search.words import Term, edit_distance, vocabulary
from cbir.service.query import SearchRequest, like_index, text_index, words_index
from cbir.stores.base import Store
from cbir.stores.folder.store import FolderStore


def cls(name: str) -> int:
    """The class index whose usual name is ``name``."""
    return next(i for i, c in enumerate(vocabulary().classes) if c.name == name)


def names(classes: frozenset[int]) -> set[str]:
    return {vocabulary().classes[i].name for i in classes}


# the WordNet table and matching ------------------------------------------------------------------


def test_the_table_has_the_1000_classes_in_the_sorted_wordnet_order():
    classes = vocabulary().classes
    assert len(classes) == N_CLASSES
    assert [c.wnid for c in classes] == sorted(c.wnid for c in classes)
    assert classes[0].wnid == "n01440764" and classes[0].name == "tench"
    assert classes[cls("school bus")].wnid == "n04146614"


def test_dog_matches_every_breed_and_nothing_else():
    (term,) = vocabulary().parse("dog")
    found = names(term.classes)
    assert {"Chihuahua", "beagle", "golden retriever", "Siberian husky", "pug"} <= found
    assert not {"tabby", "wolf", "red fox", "school bus"} & found
    assert 110 <= len(found) <= 125  # ImageNet-1k's dog breeds (118), give or take the WordNet senses


@pytest.mark.parametrize(
    ("word", "some", "none"),
    [
        ("vehicle", {"school bus", "trolleybus", "minibus", "sports car", "cab"}, {"tabby", "daisy"}),
        ("bus", {"school bus", "trolleybus", "minibus"}, {"sports car"}),
        ("bird", {"goldfinch", "ostrich", "bald eagle"}, {"tabby", "airliner"}),
        ("fruit", {"Granny Smith", "strawberry", "banana"}, {"pizza"}),
        ("vessel", {"schooner", "canoe", "beer bottle"}, {"tabby"}),
        ("elephant", {"African elephant", "Indian elephant"}, {"tusker", "sorrel"}),
        ("dinosaur", {"triceratops"}, set()),
        ("horses", {"sorrel"}, set()),
        ("school buses", {"school bus"}, {"trolleybus"}),
    ],
)
def test_a_word_matches_class_names_synonyms_and_broader_terms(word, some, none):
    (term,) = vocabulary().parse(word)
    found = names(term.classes)
    assert some <= found and not none & found


def test_a_synonym_and_an_irregular_plural_match():
    assert names(vocabulary().parse("Sea-coast")[0].classes) == {"seashore"}  # a synonym of seashore
    assert "mouse" in names(vocabulary().parse("mice")[0].classes)  # WordNet's exception list


def test_a_word_with_no_class_below_it_matches_what_it_is_part_of():
    (term,) = vocabulary().parse("beach")
    assert names(term.classes) == {"seashore", "lakeside"} and term.how == "part of shore"


def test_several_words_are_several_terms_and_a_phrase_is_one():
    terms = vocabulary().parse("African elephant, seashore")
    assert [t.words for t in terms] == ["african elephant", "seashore"]
    assert [t.words for t in vocabulary().parse("a dog on the beach")] == ["dog", "beach"]


def test_a_word_that_matches_nothing_says_so_with_the_nearest_names():
    with pytest.raises(QueryError) as err:
        vocabulary().parse("elefant")
    message = str(err.value)
    assert message.startswith('no ImageNet class matches "elefant"') and "\n" not in message
    assert 'nearest names: "elephant"' in message
    with pytest.raises(QueryError, match='"dgo".* "dog"'):
        vocabulary().parse("dog dgo")  # every word must match
    with pytest.raises(QueryError, match="give the words"):
        vocabulary().parse(" the ")


def test_edit_distance():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("dgo", "dog") == 1  # a swap
    assert edit_distance("", "abc") == 3 and edit_distance("same", "same") == 0


def test_the_generated_table_names_its_source_and_licence():
    table = json.loads((Path(__file__).parents[1] / "cbir/search/imagenet_wordnet.json").read_text())
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in table["notice"]
    licences = (Path(__file__).parents[1] / "tools/LICENSES-wordnet.md").read_text()
    assert "WordNet 3.0 license" in licences and "Apache License" in licences


# labels and ranking ------------------------------------------------------------------------------


def test_top_labels_keeps_the_top_five_above_the_floor_and_round_trips_as_text():
    p = np.zeros(N_CLASSES)
    p[[3, 7, 9, 11, 13, 15]] = [0.5, 0.2, 0.1, 0.1, 0.095, 0.005]
    labels = top_labels(p)
    assert labels == ((3, 0.5), (7, 0.2), (9, 0.1), (11, 0.1), (13, 0.095))
    assert labels_from_text(labels_to_text(labels)) == labels
    assert top_labels(np.full(N_CLASSES, 1 / N_CLASSES)) == ()  # nothing above the floor
    with pytest.raises(ValueError):
        labels_from_text("1000:0.5")
    with pytest.raises(ValueError):
        top_labels(np.zeros(10))


def test_ranking_is_the_matching_mass_every_term_must_match_ties_by_the_best_label():
    a, b, c = 1, 2, 3
    dog, beach = Term("dog", frozenset({a, b})), Term("beach", frozenset({c}))
    labels = [
        ((a, 0.4), (b, 0.4)),  # mass 0.8, best 0.4
        ((a, 0.8),),  # mass 0.8, best 0.8: first of the tie
        ((c, 0.9), (a, 0.05)),
        None,  # never labelled
        (),  # nothing above the floor
        ((a, 0.3), (c, 0.3)),
    ]
    rows, scores = rank_by_labels(labels, [dog], 10)
    assert rows.tolist() == [1, 0, 5, 2] and scores.tolist() == pytest.approx([0.8, 0.8, 0.3, 0.05])
    rows, scores = rank_by_labels(labels, [dog, beach], 10)
    assert rows.tolist() == [2, 5] and scores.tolist() == pytest.approx([0.95, 0.6])
    allowed = np.array([True, False, True, True, True, True])
    assert rank_by_labels(labels, [dog], 2, allowed)[0].tolist() == [0, 5]


# indexing with labels, both stores ---------------------------------------------------------------

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
KINDS = {  # what the stand-in classifier sees in each colour
    "red": {"school bus": 0.7, "trolleybus": 0.2, "seashore": 0.05, "tabby": 0.05},
    "green": {"African elephant": 0.8, "seashore": 0.15, "tabby": 0.05},
    "blue": {"seashore": 0.9, "lakeside": 0.05, "tabby": 0.05},
}


class ColourClassifier:
    """A stand-in ImageNet classifier: the dominant colour of the decoded image decides the classes."""

    def __init__(self, name: str = "colour-classifier") -> None:
        self.name = name
        self.seen: list[str] = []

    def probs(self, path: str | os.PathLike[str]) -> np.ndarray:
        with Image.open(path) as img:
            mean = np.asarray(img.convert("RGB"), dtype=np.float32).mean(axis=(0, 1))
        colour = min(COLOURS, key=lambda c: float(np.linalg.norm(mean - np.array(COLOURS[c]))))
        p = np.full(N_CLASSES, 0.0)
        for name, q in KINDS[colour].items():
            p[cls(name)] = q
        return p / p.sum()

    def classify_files(
        self, paths: Sequence[str | os.PathLike[str]], progress: bool | None = False, desc: str = ""
    ) -> Iterator[tuple[int, np.ndarray | BadImageError]]:
        for i, p in enumerate(paths):
            self.seen.append(Path(p).name)
            try:
                yield i, self.probs(p)
            except (OSError, ValueError) as exc:
                yield i, BadImageError(f"cannot decode: {exc}")


@dataclasses.dataclass
class Source:
    """An encoder source around the pixel embedder."""

    given: PixelEmbedder
    weights: Weights = dataclasses.field(default_factory=Weights.random)
    whitening: None = None

    @property
    def config(self) -> FeatureConfig:
        return self.given.config

    def embedder(self) -> PixelEmbedder:
        return self.given


def photos(root: Path, per: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        for i in range(per):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 20, (40, 56, 3)), 0, 255).astype(np.uint8)
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def make_store(kind: str, root: Path, tmp: Path) -> Store:
    return FolderStore(root, tmp / "index") if kind == "folder" else milvus_store(tmp / "index.db", root)


def index(root: Path, store: Store, source: Source, clf: ColourClassifier | None, labels: bool = False):
    classifier = None if clf is None else ClassifierSource(clf.name, build=lambda *_: clf)
    return update_index(
        root, source, options=IndexOptions(progress=False, labels=labels), store=store, classifier=classifier
    )


def folders(result) -> list[str]:
    return [Path(m.path).parent.name for m in result.matches]


@pytest.mark.parametrize("kind", ["folder", "milvus"])
def test_labels_are_stored_searched_and_kept_in_step_incrementally(tmp_path, kind):
    root = photos(tmp_path / "data")
    store = make_store(kind, root, tmp_path)
    source = Source(PixelEmbedder(FeatureConfig(model="pixels")))
    clf = ColourClassifier()
    report = index(root, store, source, clf, labels=True)
    assert report.labelled == 9 and report.labels == "colour-classifier"
    idx = store.open()
    assert idx.labeller == "colour-classifier"
    by_path = dict(zip(idx.paths, idx.labels()))
    assert by_path["red/0.png"][:2] == ((cls("school bus"), 0.7), (cls("trolleybus"), 0.2))

    (bus,) = words_index(idx, ["bus"], SearchRequest(k=10))
    assert folders(bus) == ["red"] * 3 and bus.matches[0].score == pytest.approx(0.9)
    (vehicle,) = text_index(idx, None, ["vehicle"], SearchRequest(k=10))  # the seam routes to labels
    assert folders(vehicle) == ["red"] * 3
    (shore,) = words_index(idx, ["beach"], SearchRequest(k=10))  # blue 0.95, green 0.15, red 0.05
    assert folders(shore) == ["blue"] * 3 + ["green"] * 3 + ["red"] * 3
    (both,) = words_index(idx, ["elephant seashore"], SearchRequest(k=10))
    assert folders(both) == ["green"] * 3
    assert words_index(idx, ["dog"], SearchRequest(k=10))[0].matches == []  # matches a class, no image

    # incremental: a new file is labelled, a removed one loses its labels, the rest are not redone
    clf.seen.clear()
    Image.open(root / "green/0.png").save(root / "green/new.png")
    (root / "red/2.png").unlink()
    report = index(root, store, source, clf)  # no --labels: remembered
    assert clf.seen == ["new.png"] and report.labelled == 1
    idx = store.open()
    assert len(idx.labels()) == len(idx.paths) == 9 and all(x is not None for x in idx.labels())
    (elephants,) = words_index(idx, ["elephants"], SearchRequest(k=10))
    assert sorted(Path(m.path).name for m in elephants.matches) == ["0.png", "1.png", "2.png", "new.png"]

    # a changed file is labelled again: now blue
    Image.open(root / "blue/0.png").save(root / "green/1.png")
    clf.seen.clear()
    index(root, store, source, clf)
    assert clf.seen == ["1.png"]
    idx = store.open()
    assert "green/1.png" not in [
        str(Path(m.path).relative_to(root)) for m in words_index(idx, ["elephant"])[0].matches
    ]


@pytest.mark.parametrize("kind", ["folder", "milvus"])
def test_an_index_without_labels_gets_them_without_reembedding(tmp_path, kind):
    root = photos(tmp_path / "data")
    store = make_store(kind, root, tmp_path)
    source = Source(PixelEmbedder(FeatureConfig(model="pixels")))
    index(root, store, source, None)
    before = np.asarray(store.open().feats).copy()
    idx = store.open()
    assert idx.labeller is None
    with pytest.raises(QueryError, match=r"no labels.*cbir index .* --labels") as err:
        text_index(idx, None, ["bus"])
    assert "\n" not in str(err.value)
    source.given.embedded.clear()
    clf = ColourClassifier()
    report = index(root, store, source, clf, labels=True)
    assert source.given.embedded == [] and report.embedded == 0 and report.labelled == 9
    idx = store.open()
    np.testing.assert_array_equal(np.asarray(idx.feats), before)
    assert folders(words_index(idx, ["bus"])[0]) == ["red"] * 3
    # another classifier labels everything again
    other = ColourClassifier("other-classifier")
    report = index(root, store, source, other, labels=True)
    assert report.labelled == 9 and store.open().labeller == "other-classifier"


@pytest.mark.parametrize("kind", ["folder", "milvus"])
def test_words_with_a_picture_keep_only_the_neighbours_the_words_match(tmp_path, kind):
    root = photos(tmp_path / "data")
    store = make_store(kind, root, tmp_path)
    source = Source(PixelEmbedder(FeatureConfig(model="pixels")))
    index(root, store, source, ColourClassifier(), labels=True)
    idx = store.open()
    plain = like_index(idx, ["green/0.png"], SearchRequest(k=8))[0]
    assert "green" in folders(plain)
    (only,) = like_index(idx, ["green/0.png"], SearchRequest(k=8, words="bus"))
    assert folders(only) == ["red"] * 3
    ranked = [m.path for m in plain.matches if Path(m.path).parent.name == "red"]
    assert [m.path for m in only.matches] == ranked  # the picture's order, filtered
    (under,) = words_index(
        idx,
        ["seashore"],
        SearchRequest(k=10, where=dataclasses.replace(SearchRequest().where, under=("blue",))),
    )
    assert folders(under) == ["blue"] * 3


# the command line and the web API ----------------------------------------------------------------


@pytest.fixture
def labelled(tmp_path) -> tuple[Path, Path]:
    """A dataset of 9 images and its labelled index (folder store, outside the dataset)."""
    root = photos(tmp_path / "data")
    store = FolderStore(root, tmp_path / "index")
    index(root, store, Source(PixelEmbedder(FeatureConfig(model="pixels"))), ColourClassifier(), labels=True)
    return root, tmp_path / "index"


def run_cli(capsys, *argv: object) -> tuple[int, str, str]:
    from cbir.cli.main import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_query_text_answers_in_the_usual_shapes_without_a_model(labelled, capsys, tmp_path):
    root, idx = labelled
    code, out, err = run_cli(capsys, "query", root, "--index", idx, "--text", "buses", "--json", "-k", "5")
    assert code == 0 and err == ""
    doc = json.loads(out)
    (result,) = doc["results"]
    assert result["query"] == "buses" and set(doc) == {"results"}  # as --like: no index run
    assert [Path(m["path"]).parent.name for m in result["matches"]] == ["red"] * 3
    assert result["matches"][0]["score"] == pytest.approx(0.9)
    code, out, _ = run_cli(
        capsys, "query", root, "--index", idx, "--text", "beach", "--csv", "--under", "green"
    )
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0] == "query,rank,path,score" and len(lines) == 4
    assert all(",green/" in line or "/green/" in line for line in lines[1:])
    links, plot = tmp_path / "links", tmp_path / "words.png"
    code, out, _ = run_cli(
        capsys, "query", root, "--index", idx, "--text", "elephant", "--link-to", links, "--out", plot
    )
    assert code == 0 and "elephant" in out
    assert sorted(p.name for p in links.iterdir()) == ["01_0.png", "02_1.png", "03_2.png"]
    assert Image.open(plot).size[0] > 0
    code, out, _ = run_cli(
        capsys, "query", root, "--index", idx, "--like", "green/0.png", "--text", "bus", "--json"
    )
    assert code == 0
    assert [Path(m["path"]).parent.name for m in json.loads(out)["results"][0]["matches"]] == ["red"] * 3


def test_query_text_errors_are_one_line_exit_2(labelled, capsys, tmp_path):
    root, idx = labelled
    code, out, err = run_cli(capsys, "query", root, "--index", idx, "--text", "elefant")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert 'no ImageNet class matches "elefant"' in err and '"elephant"' in err
    bare = photos(tmp_path / "bare")
    index(
        bare,
        FolderStore(bare, tmp_path / "bare-index"),
        Source(PixelEmbedder(FeatureConfig(model="pixels"))),
        None,
    )
    code, out, err = run_cli(capsys, "query", bare, "--index", tmp_path / "bare-index", "--text", "bus")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--labels" in err


def test_the_api_searches_by_words(labelled):
    pytest.importorskip("fastapi", reason="cbir serve needs the web extra")
    from fastapi.testclient import TestClient

    from cbir.web.app import create_app
    from cbir.web.collection import Collection
    from cbir.web.model import ModelWorker
    from cbir.web.service import Service

    root, idx = labelled
    never = ModelWorker(lambda: pytest.fail("search by words loads no model"), max_batch=1)
    client = TestClient(create_app(Service(Collection(root, FolderStore(root, idx)), never)))
    got = client.get("/api/search", params={"text": "school bus", "k": 2})
    assert got.status_code == 200
    doc = got.json()
    by = "words searched through the index's labels (ImageNet classes)"  # the page shows it
    assert doc["query"] == {"text": "school bus", "by": by} and doc["k"] == 2
    assert [r["path"] for r in doc["results"]] == ["red/0.png", "red/1.png"]
    got = client.get("/api/search", params={"text": "bus", "like": "green/0.png", "k": 9})
    assert got.status_code == 200 and {r["path"].split("/")[0] for r in got.json()["results"]} == {"red"}
    got = client.get("/api/search", params={"text": "elefant"})
    assert got.status_code == 400 and "elephant" in got.json()["error"]
    assert client.get("/api/search", params={"text": "x" * 201}).status_code == 400
    neither = client.get("/api/search", params={"k": 2})
    assert neither.status_code == 400 and neither.json() == {
        "error": "give like=PATH (an indexed image) or text=WORDS"
    }
    # i21's filters hold for words too: folder, dates
    assert client.get("/api/search", params={"text": "bus", "under": "nowhere"}).status_code == 404
    assert client.get("/api/search", params={"text": "bus", "since": "2020-13-01"}).status_code == 400
    got = client.get("/api/search", params={"text": "beach", "under": "green", "since": "1990-01-01"})
    assert got.status_code == 200 and got.json()["under"] == "green" and got.json()["since"] == "1990-01-01"


# one decode, two networks ------------------------------------------------------------------------


class MeanColourNetwork:
    """A stand-in backbone network (no TensorFlow): each image's mean colour, 3-d."""

    name = "fake"
    dim = 3

    def run(self, x: np.ndarray, eager: bool = False) -> np.ndarray:
        return x.mean(axis=(1, 2)) + 2.0


class ColourSide:
    """A stand-in classifier network on uint8 batches of any size (as EfficientNet-Lite0 is run)."""

    name = "colour-side"
    input_size = 32

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        self.shapes.append(batch.shape[1:3])
        out = np.zeros((len(batch), N_CLASSES))
        for row, image in enumerate(batch):
            mean = image.reshape(-1, 3).mean(axis=0)
            colour = min(COLOURS, key=lambda c: float(np.linalg.norm(mean - np.array(COLOURS[c]))))
            for name, q in KINDS[colour].items():
                out[row, cls(name)] = q
        return out


def test_a_classifier_network_runs_beside_the_backbone_on_one_decode(tmp_path, monkeypatch):
    import cbir.ingest.pipeline as pipeline
    from cbir.encoders import runtimes
    from cbir.encoders.classifier import NetworkClassifier
    from cbir.encoders.embedder import Embedder

    monkeypatch.setitem(runtimes.RUNTIMES, "fake", lambda request: MeanColourNetwork())
    decoded: list[str] = []
    real = pipeline.load_views
    monkeypatch.setattr(
        pipeline, "load_views", lambda path, *a: decoded.append(Path(path).name) or real(path, *a)
    )
    root = photos(tmp_path / "data")
    config = FeatureConfig(model="mobilenet", weights="random", size=48, width_multiplier=1.0)
    embedder = Embedder(config, Weights.random(), runtime="fake", workers=1, batch_size=4)
    side = ColourSide()
    source = ClassifierSource("colour-side", build=lambda *_: NetworkClassifier(side))
    store = FolderStore(root, tmp_path / "index")
    report = update_index(
        root, embedder, options=IndexOptions(progress=False, labels=True), store=store, classifier=source
    )
    assert report.embedded == 9 and report.labelled == 9
    assert sorted(decoded) == sorted(f"{i}.png" for i in range(3) for _ in COLOURS)  # each file once
    assert set(side.shapes) == {(48, 48)}  # the backbone's own views
    assert folders(words_index(store.open(), ["bus"])[0]) == ["red"] * 3

    # labelling an index made without labels: the classifier decodes the files at its own size
    bare = FolderStore(root, tmp_path / "bare")
    update_index(root, embedder, options=IndexOptions(progress=False), store=bare)
    side.shapes.clear()
    report = update_index(
        root, embedder, options=IndexOptions(progress=False, labels=True), store=bare, classifier=source
    )
    assert report.embedded == 0 and report.labelled == 9 and set(side.shapes) == {(32, 32)}
    assert dict(zip(bare.open().paths, bare.open().labels())) == dict(
        zip(store.open().paths, store.open().labels())
    )


def test_the_index_summary_says_who_labelled_how_many(tmp_path):
    from cbir.cli.text import format_index_summary

    root = photos(tmp_path / "data")
    store = FolderStore(root, tmp_path / "index")
    report = index(
        root, store, Source(PixelEmbedder(FeatureConfig(model="pixels"))), ColourClassifier(), True
    )
    assert ", labels by colour-classifier (9 labelled) -> " in format_index_summary(report)
    assert report.to_dict()["labels"] == "colour-classifier" and report.to_dict()["labelled"] == 9
    bare = index(
        root, FolderStore(root, tmp_path / "bare"), Source(PixelEmbedder(FeatureConfig(model="p"))), None
    )
    assert "labels" not in format_index_summary(bare)


# names that are not text, through --labels and --text ----------------------------------------------

ODD = {  # file name (bytes) -> colour
    b"bad\xff.png": "red",
    b"back\\slash.png": "red",
    b'dir\xfe/in\\side"q.png': "blue",
    b"plain.png": "green",
}


@pytest.mark.parametrize("kind", ["folder", "milvus"])
def test_odd_names_are_labelled_and_found_by_words_on_both_stores(tmp_path, monkeypatch, kind):
    """A name with an invalid UTF-8 byte, a backslash or a quote is labelled (``--labels``), found by
    ``--text`` with its exact bytes, and its labels follow it when it is removed, on both stores
    (Milvus keys the labels collection's ``path`` in ``to_key`` form, as the main collection)."""
    from pixelcli import MODEL, pixel_family, run

    from cbir.encoders import classifier as classifiers

    root = tmp_path / "data"
    rng = np.random.default_rng(1)
    for raw, colour in ODD.items():
        path = Path(os.fsdecode(os.path.join(os.fsencode(root), raw)))
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(np.array(COLOURS[colour]) + rng.normal(0, 20, (40, 56, 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(path, format="PNG")
    clf = ColourClassifier(classifiers.DEFAULT_CLASSIFIER)
    monkeypatch.setitem(classifiers.CLASSIFIERS, classifiers.DEFAULT_CLASSIFIER, lambda *_: clf)
    store: tuple[str, ...] = ()
    if kind == "milvus":
        pytest.importorskip("pymilvus", reason="the milvus extra is not installed")
        pytest.importorskip("milvus_lite", reason="the milvus extra is not installed")
        store = ("--store", f"milvus:{tmp_path / 'index.db'}")

    def found(*args: object) -> list[str]:
        ran = run("query", root, *store, *args, "--json", "-k", "10")
        assert ran.code == 0 and "Traceback" not in ran.err, (ran.code, ran.err)
        (result,) = json.loads(ran.out)["results"]
        return sorted(os.fsencode(os.path.relpath(m["path"], root)) for m in result["matches"])

    with pixel_family():
        ran = run("index", root, *MODEL, *store, "--labels", "--json")
        assert ran.code == 0 and json.loads(ran.out)["labelled"] == len(ODD), (ran.code, ran.err)
        assert found("--text", "bus") == [b"back\\slash.png", b"bad\xff.png"]
        assert found("--text", "beach") == sorted(ODD)  # every colour has some seashore
        assert found("--text", "lakeside") == [b'dir\xfe/in\\side"q.png']
        bad = os.fsdecode(b"bad\xff.png")
        assert found("--like", bad, "--text", "school bus", *MODEL) == [b"back\\slash.png"]
        csv_out = run("query", root, *store, "--text", "bus", "--csv").out.splitlines()
        assert len(csv_out) == 3 and "Traceback" not in csv_out[0]
        # removed: its labels go with it; the others keep theirs (nothing labelled again)
        os.unlink(os.path.join(os.fsencode(root), b"back\\slash.png"))
        clf.seen.clear()
        ran = run("index", root, *MODEL, *store, "--json")
        assert ran.code == 0 and json.loads(ran.out)["labelled"] == 0 and clf.seen == []
        assert found("--text", "bus") == [b"bad\xff.png"]
        assert found("--text", "lakeside") == [b'dir\xfe/in\\side"q.png']
