"""The ``siglip`` family end to end with a joint model trained here, in seconds.

Keras Hub's SigLIP weights cannot be downloaded on the test machines, so a tiny model of the same
backbone class (``keras_hub.models.SigLIPBackbone``: a ViT image tower, a transformer text tower) is
trained with a contrastive (InfoNCE) loss on generated pictures of coloured shapes with captions,
and written as a Keras Hub preset folder with its SentencePiece vocabulary. From there everything is
the product's path: ``cbir index DATA --model DIR`` (both towers converted to LiteRT and cached),
``cbir query DATA --text ...`` (the tokenizer and the cached text tower: no TensorFlow), the service's
word search. Five colour-shape pairs are never shown in training and are queried by their captions
among pictures of every pair (distractors sharing the colour or the shape included): the test asserts
the issue's target, P@5 >= 0.9 for the pair (chance 0.05). The training pictures add colours and
shapes that are never queried, so that the towers learn colour and shape apart. The download of a
built-in preset is tested up to the network (Kaggle's ``model_download``, the one call mocked), and
its offline message.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("keras_hub")
sentencepiece = pytest.importorskip("sentencepiece")

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 210, 40),
    "purple": (150, 50, 190),
}
SHAPES = ("circle", "square", "triangle", "cross")
TRAINING_COLOURS = {
    "orange": (240, 140, 30),
    "pink": (240, 130, 180),
    "brown": (120, 70, 30),
    "black": (25, 25, 25),
    "cyan": (40, 200, 210),
}
TRAINING_SHAPES = ("diamond", "ring", "star")
"""Colours and shapes of the training pictures only (never queried, never in the indexed set), shown
with every colour and shape: each queried shape is seen in eight colours less its held-out ones, each
queried colour on seven shapes, so the towers learn colour and shape apart (without them the unseen
pairs' P@5 swung from 0.36 to 0.68 with the seed)."""
BACKGROUNDS = ("plain", "stripes")
HELD_OUT = {
    ("green", "triangle"),
    ("red", "square"),
    ("blue", "circle"),
    ("yellow", "cross"),
    ("purple", "triangle"),
}
"""Colour-shape pairs never seen together in training: queried by their captions."""
SIDE, LENGTH = 32, 8
RADIUS = (13.0, 16.0)
"""Large shapes: the 8 px patches of the tiny ViT see their edges (10-14 measured 0.52)."""
PAINT = {**COLOURS, **TRAINING_COLOURS}


def draw(rng: np.random.Generator, colour: str, shape: str, background: str) -> np.ndarray:
    """A SIDE x SIDE picture: one shape of a colour, somewhere, on a plain or striped background."""
    yy, xx = np.mgrid[0:SIDE, 0:SIDE] + 0.5
    ground = np.array([200, 200, 200]) + rng.integers(-30, 30, 3)
    img = np.empty((SIDE, SIDE, 3), np.float32)
    img[:] = ground
    if background == "stripes":
        img[(xx // 4) % 2 == 0] = ground * 0.45
    r = rng.uniform(*RADIUS)
    cx, cy = rng.uniform(r, SIDE - r, 2)
    dx, dy = abs(xx - cx), abs(yy - cy)
    if shape == "circle":
        mask = dx**2 + dy**2 <= r * r
    elif shape == "square":
        mask = (dx <= r * 0.85) & (dy <= r * 0.85)
    elif shape == "cross":
        mask = ((dx <= r * 0.3) & (dy <= r)) | ((dy <= r * 0.3) & (dx <= r))
    elif shape == "diamond":
        mask = dx + dy <= r
    elif shape == "ring":
        mask = (dx**2 + dy**2 <= r * r) & (dx**2 + dy**2 >= (0.55 * r) ** 2)
    elif shape == "star":
        mask = np.hypot(dx, dy) <= r * (0.6 + 0.4 * np.cos(5 * np.arctan2(yy - cy, xx - cx)))
    else:
        mask = (yy >= cy - r) & (yy <= cy + r) & (dx <= (yy - (cy - r)) / 2)
    img[mask] = np.array(PAINT[colour]) + rng.normal(0, 10, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def caption(colour: str, shape: str, background: str) -> str:
    return f"a {colour} {shape}" + (" on stripes" if background == "stripes" else "")


def train_tiny_siglip(folder: Path) -> Path:
    """Train a tiny SigLIPBackbone on the seen pairs and write it as a Keras Hub preset folder."""
    import keras
    import tensorflow as tf
    from keras_hub.models import SigLIPBackbone, SigLIPTextEncoder, SigLIPVisionEncoder

    from cbir.encoders.joint.tokenizer import Tokenizer
    from cbir.encoders.joint.towers import preprocess_images, save_preset

    shapes = SHAPES + TRAINING_SHAPES
    seen = [(c, s) for c in PAINT for s in shapes if (c, s) not in HELD_OUT]
    vocabulary = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter([caption(c, s, b) for c in PAINT for s in shapes for b in BACKGROUNDS]),
        model_writer=vocabulary,
        vocab_size=64,
        hard_vocab_limit=False,
        model_type="word",
        pad_id=0,
        bos_id=-1,
        eos_id=1,
        unk_id=2,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        minloglevel=2,
    )
    spm = folder.parent / "vocabulary.spm"
    spm.write_bytes(vocabulary.getvalue())
    tokenize = Tokenizer(spm, LENGTH)  # the product's tokenizer makes the training ids too

    rng = np.random.default_rng(1)
    images, texts = [], []
    for _ in range(BATCHES):  # each batch: BATCH different seen pairs (no false negatives in the loss)
        for j in rng.permutation(len(seen))[:BATCH]:
            background = BACKGROUNDS[rng.integers(2)]
            images.append(draw(rng, *seen[j], background))
            # Stripes are named half the time, so "a red circle" means any background: a caption
            # that always names them ties "a red circle" to plain ones (P@5 capped at 3 of 6).
            named = background if rng.random() < 0.5 else "plain"
            texts.append(caption(*seen[j], named))
    x = preprocess_images(np.stack(images))
    ids = tokenize(texts)

    keras.utils.set_random_seed(1)
    backbone = SigLIPBackbone(
        SigLIPVisionEncoder(
            patch_size=8,
            hidden_dim=32,
            num_layers=1,
            num_heads=2,
            intermediate_dim=64,
            image_shape=(SIDE, SIDE, 3),
        ),
        SigLIPTextEncoder(
            vocabulary_size=int(tokenize._sp.get_piece_size()),
            embedding_dim=32,
            hidden_dim=32,
            num_layers=1,
            num_heads=2,
            intermediate_dim=64,
            max_sequence_length=LENGTH,
        ),
    )
    optimizer = keras.optimizers.Adam(2e-3)

    @tf.function
    def step(im: tf.Tensor, tok: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            v = tf.math.l2_normalize(backbone.get_vision_embeddings(im), -1)
            t = tf.math.l2_normalize(backbone.get_text_embeddings(tok), -1)
            logits = 10.0 * tf.matmul(v, t, transpose_b=True)
            labels = tf.range(tf.shape(logits)[0])
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits
            loss = tf.reduce_mean(ce(labels, logits)) + tf.reduce_mean(ce(labels, tf.transpose(logits)))
        grads = tape.gradient(loss, backbone.trainable_variables)
        optimizer.apply_gradients(zip(grads, backbone.trainable_variables))
        return loss

    for _ in range(EPOCHS):
        for i in range(0, len(x), BATCH):
            step(x[i : i + BATCH], ids[i : i + BATCH])
    return save_preset(backbone, vocabulary.getvalue(), folder)


EPOCHS, BATCHES, BATCH = 5, 200, 48
"""1000 steps of 48 different seen pairs (of 51). With the added colours and shapes, the unseen
pairs' P@5 over seeds: 600 steps of 32 pairs 0.72-0.84, 1000 of 32 0.92-1.0, this 0.96-1.0."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The preset folder of the trained model, and a folder of unseen pictures (every pair, both
    backgrounds, six of each)."""
    base = tmp_path_factory.mktemp("siglip")
    preset = train_tiny_siglip(base / "tiny-siglip")
    data = base / "data"
    rng = np.random.default_rng(7)
    for colour in COLOURS:
        for shape in SHAPES:
            (data / f"{colour}-{shape}").mkdir(parents=True)
            for i in range(6):
                pixels = draw(rng, colour, shape, BACKGROUNDS[i % 2])
                Image.fromarray(pixels).save(data / f"{colour}-{shape}" / f"{i}.png")
    return preset, data, base


def cli(*argv: object, cache: Path) -> subprocess.CompletedProcess[str]:
    """``cbir`` in a fresh process, reporting on stderr whether TensorFlow was imported."""
    code = (
        "import sys; from cbir.cli.main import main; rc = main(sys.argv[1:]); "
        "print('tensorflow imported:', 'tensorflow' in sys.modules, file=sys.stderr); sys.exit(rc)"
    )
    env = {**os.environ, "CBIR_MODEL_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True, env=env, timeout=300
    )


def precision_at_5(paths: list[str], colour: str, shape: str | None = None) -> float:
    """The share of the first 5 that have the colour (and the shape, if given)."""
    folders = [Path(p).parent.name.split("-") for p in paths[:5]]
    return sum(c == colour and shape in (None, s) for c, s in folders) / 5


def test_a_trained_joint_model_finds_unseen_pairs_by_words_through_the_cli(trained):
    preset, data, base = trained
    cache, idx = base / "cache", base / "index"
    made = cli("index", data, "--model", preset, "--index", idx, cache=cache)
    assert made.returncode == 0, made.stderr
    assert len(list(cache.glob("litert-preset-tiny-siglip-*.tflite"))) == 1  # the image tower, converted

    first = cli(
        "query", data, "--index", idx, "--text", "A green triangle!", "-k", "5", "--json", cache=cache
    )
    assert first.returncode == 0, first.stderr
    assert "words searched with the text tower of" in first.stderr
    assert len(list(cache.glob("litert-preset-tiny-siglip-*.tflite"))) == 2  # and now the text tower
    again = cli("query", data, "--index", idx, "--text", "a green triangle", "-k", "5", "--json", cache=cache)
    assert again.returncode == 0, again.stderr
    assert "tensorflow imported: False" in again.stderr  # tokenizer and cached LiteRT tower only
    paths = [m["path"] for m in json.loads(again.stdout)["results"][0]["matches"]]

    from cbir.encoders.base import RuntimeOptions
    from cbir.service.query import SearchRequest, text_index
    from cbir.service.settings import resolve_settings
    from cbir.stores.folder.store import FolderStore

    store = FolderStore(data, idx)
    index = store.open()
    assert index.config.encoder == "siglip" and index.config.modalities == ("image", "text")
    settings = resolve_settings(data, store=store, runtime=RuntimeOptions(model_cache=cache), strict=True)
    captions = ["a green triangle"] + [f"a {c} {s}" for c, s in sorted(HELD_OUT)]
    results = text_index(index, settings, captions, SearchRequest(k=5))
    found = [[m.path for m in r.matches] for r in results]
    shown = [[Path(p).parent.name + "/" + Path(p).name for p in paths] for paths in [paths] + found]
    # the command and the service find the same pairs: which of a pair's six near-identical pictures
    # comes fifth may differ (the command re-ranks by default, the service's request does not)
    folders = [sorted(name.split("/")[0] for name in names) for names in shown[:2]]
    assert len(shown[0]) == 5 and folders[0] == folders[1]
    pairs = [precision_at_5(paths, *pair) for paths, pair in zip(found[1:], sorted(HELD_OUT))]
    colours = [precision_at_5(paths, pair[0]) for paths, pair in zip(found[1:], sorted(HELD_OUT))]
    print("held-out captions, P@5 of the pair / of the colour:", dict(zip(captions[1:], zip(pairs, colours))))
    assert np.mean(pairs) >= 0.9  # the target (chance 0.05: 6 of 120 images show each pair)

    # words blended into "more like this" (rclip's --text-weight), through the command line: a red
    # circle's neighbours are red circles; with most of the weight on "green", green pictures lead
    like = ["query", data, "--index", idx, "--like", data / "red-circle" / "0.png", "-k", "5", "--json"]
    alone = cli(*like, cache=cache)
    blended = cli(*like, "--text", "a green circle", "--text-weight", "0.8", cache=cache)
    assert alone.returncode == 0 and blended.returncode == 0, alone.stderr + blended.stderr
    assert "text tower" in blended.stderr and "text tower" not in alone.stderr

    def top(done: subprocess.CompletedProcess[str]) -> list[str]:
        return [m["path"] for m in json.loads(done.stdout)["results"][0]["matches"]]

    assert precision_at_5(top(alone), "red") >= 0.8 and precision_at_5(top(alone), "green") == 0
    assert precision_at_5(top(blended), "green") >= 0.6


def siglip_base(cache: Path):
    """The encoder ``--model siglip-base`` builds, with its files in ``cache``."""
    from cbir.encoders.base import RuntimeOptions
    from cbir.encoders.features import FeatureConfig
    from cbir.encoders.registry import EncoderRequest, open_encoder, resolve_config
    from cbir.encoders.weights import Weights

    config = resolve_config(FeatureConfig(model="siglip-base"), Weights.imagenet())
    assert (config.encoder, config.weights) == ("siglip", "keras-hub:siglip_base_patch16_224")
    return open_encoder(EncoderRequest(config, Weights.imagenet(), runtime=RuntimeOptions(model_cache=cache)))


def test_a_built_in_preset_is_fetched_through_keras_hub_into_the_model_cache(trained, tmp_path, monkeypatch):
    import kagglehub

    preset, _, _ = trained
    asked: list[tuple[str, str]] = []

    def model_download(handle: str, path: str | None = None, **_: object) -> str:
        asked.append((handle, str(path)))
        return str(preset / str(path))  # the bytes Kaggle would send: any preset's files will do

    monkeypatch.setattr(kagglehub, "model_download", model_download)
    encoder = siglip_base(tmp_path / "cache")
    folder = encoder.source.ensure()
    assert folder == tmp_path / "cache" / "keras-hub" / "siglip_base_patch16_224"
    handle = "keras/siglip/keras/siglip_base_patch16_224/1"
    assert asked == [
        (handle, "config.json"),
        (handle, "model.weights.h5"),
        (handle, "assets/tokenizer/vocabulary.spm"),
    ]
    for name in ("config.json", "model.weights.h5", "assets/tokenizer/vocabulary.spm"):
        assert (folder / name).read_bytes() == (preset / name).read_bytes()
    asked.clear()
    assert encoder.source.ensure() == folder and asked == []  # downloaded once


def test_offline_the_preset_names_the_files_and_the_folder_in_one_line(tmp_path, monkeypatch, capsys):
    import kagglehub

    from cbir.cli.main import main
    from cbir.core.errors import ModelError

    def offline(handle: str, path: str | None = None, **_: object) -> str:
        raise ConnectionError("Failed to resolve 'www.kaggle.com'")

    monkeypatch.setattr(kagglehub, "model_download", offline)
    folder = tmp_path / "cache" / "keras-hub" / "siglip_base_patch16_224"
    expected = (
        "cannot download the weights of siglip-base (Keras Hub preset siglip_base_patch16_224): put "
        "config.json, model.weights.h5, assets/tokenizer/vocabulary.spm from "
        f"https://www.kaggle.com/models/keras/siglip/keras/siglip_base_patch16_224 in {folder}/"
    )
    with pytest.raises(ModelError) as caught:
        siglip_base(tmp_path / "cache").embed_texts(["a dog"])
    assert str(caught.value) == expected
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(data / "a.png")
    code = main(["index", str(data), "--model", "siglip-base", "--model-cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err
    assert not folder.exists() or not any(folder.rglob("*.h5"))  # nothing half-placed


def test_words_blend_into_an_image_query_by_their_weight():
    from cbir.service.query import blend

    image = np.array([[3.0, 0.0, 0.0]], np.float32)
    text = np.array([0.0, 0.0, 2.0], np.float32)
    assert np.allclose(blend(image, text, 0.0), [[1, 0, 0]])
    assert np.allclose(blend(image, text, 1.0), [[0, 0, 1]])
    assert np.allclose(blend(image, text, 0.5), [[2**-0.5, 0, 2**-0.5]])
    assert np.allclose(blend(image, text, 0.25), np.array([[0.75, 0, 0.25]]) / np.hypot(0.75, 0.25))


def test_text_weight_without_a_picture_is_one_line(tmp_path, capsys):
    from cbir.cli.main import main

    code = main(["query", str(tmp_path), "--text", "a dog", "--text-weight", "0.3"])
    err = capsys.readouterr().err
    assert code == 2 and "--text-weight weighs --text against query images or --like: give both" in err


# the web app over a joint index ------------------------------------------------------------------


@pytest.fixture(scope="module")
def served_joint(trained, tmp_path_factory):
    """``cbir serve DATA --model PRESET``'s service (model worker, indexer), indexing the unseen
    pictures itself; the converted towers come from a copy of the model cache the CLI test filled
    (converted here when it has not run), so that test's cache is never written to."""
    pytest.importorskip("fastapi", reason="cbir serve needs the web extra")
    import dataclasses
    import shutil

    from cbir.cli.options import build_parser, index_options_from, settings_from
    from cbir.web.server import ServeOptions, running_service

    preset, data, base = trained
    here = tmp_path_factory.mktemp("serve-joint")
    cache = here / "cache"
    if (base / "cache").is_dir():
        shutil.copytree(base / "cache", cache)
    argv = ["serve", data, "--model", preset, "--index", here / "index", "--model-cache", cache]
    args = build_parser().parse_args(list(map(str, argv)))
    options = dataclasses.replace(index_options_from(args), progress=False)
    with running_service(settings_from(args), options, ServeOptions(update=False)) as service:
        report = service.updater.run_once()  # the server's first run, here in the test's thread
        assert report is not None and report.added == 120, service.updater.progress.to_dict()
        yield service


def test_the_web_search_box_on_a_joint_index_uses_the_text_tower_and_says_so(trained, served_joint):
    from fastapi.testclient import TestClient

    from cbir.web.app import create_app

    preset, data, _ = trained
    client = TestClient(create_app(served_joint))
    info = client.get("/api/info").json()
    assert info["features"]["encoder"] == "siglip" and info["features"]["modalities"] == ["image", "text"]
    got = client.get("/api/search", params={"text": "a red circle", "k": 5})
    assert got.status_code == 200, got.text
    doc = got.json()
    assert doc["query"] == {"text": "a red circle", "by": f"words searched with the text tower of {preset}"}
    paths = [r["path"] for r in doc["results"]]
    assert len(paths) == 5 and precision_at_5(paths, "red") >= 0.8  # a seen pair: red ones lead
    # "more like this" with words blended in (the API's like+text; the page offers no such search)
    blended = client.get("/api/search", params={"like": "red-circle/0.png", "text": "a green circle", "k": 5})
    assert blended.status_code == 200 and blended.json()["query"]["by"] == doc["query"]["by"]
    assert "red-circle/0.png" not in [r["path"] for r in blended.json()["results"]]
    too_long = client.get("/api/search", params={"text": "x" * 201})
    assert too_long.status_code == 400 and too_long.json()["error"]


def test_the_page_says_the_words_were_matched_by_the_text_image_model(trained, served_joint):
    """The search box in a real browser (Debian's chromium, as tests/test_serve_page.py): its hint
    offers free text, and the results say the text-image model matched the words."""
    import shutil
    import threading

    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    import uvicorn

    from cbir.web.app import create_app
    from cbir.web.security import Hosts
    from cbir.web.server import bind

    preset, _, _ = trained
    sock = bind("127.0.0.1", 0)
    host, port = sock.getsockname()[:2]
    app = create_app(served_joint, hosts=Hosts.of("127.0.0.1", host))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", log_config=None, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    errors: list[str] = []
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://{host}:{port}/")
            page.wait_for_function("() => document.querySelector('#text').placeholder.includes('a red bus')")
            assert str(preset) in (page.locator("#words").get_attribute("title") or "")
            page.fill("#text", "a red circle")
            page.press("#text", "Enter")
            page.wait_for_selector("#results:not([hidden]) #result-grid li.tile")
            assert page.locator("#query strong").inner_text() == "“a red circle”"
            by = page.locator("#query .by").inner_text()
            assert by == f"words searched with the text tower of {preset}"
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
    assert not errors, errors


def test_the_built_in_presets_are_keras_hubs_by_handle_and_parameters():
    """What ``cbir models`` says before a download (parameters, hence the download size) is Keras
    Hub's own preset metadata, and the handle fetched is Keras Hub's."""
    from keras_hub.src.models.siglip.siglip_presets import backbone_presets

    from cbir.encoders.joint.presets import PRESETS

    for preset in PRESETS.values():
        known = backbone_presets[preset.preset]
        assert (preset.handle, preset.params) == (known["kaggle_handle"], known["metadata"]["params"])


def test_offline_a_fresh_cbir_index_prints_only_the_one_line(tmp_path):
    """The user's first ``cbir index --model siglip-base`` without internet, in a fresh process:
    the download imports Keras Hub, hence TensorFlow, whose start-up chatter stays off the terminal,
    so stderr is the one line (no network needed: every connection goes to a closed local port)."""
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(data / "a.png")
    closed = "http://127.0.0.1:9"
    env = {
        **os.environ,
        "HTTPS_PROXY": closed,
        "HTTP_PROXY": closed,
        "https_proxy": closed,
        "http_proxy": closed,
    }
    env.pop("NO_PROXY", None), env.pop("no_proxy", None)
    cache = tmp_path / "cache"
    argv = ["index", data, "--model", "siglip-base", "--index", tmp_path / "index", "--model-cache", cache]
    done = subprocess.run(
        [sys.executable, "-m", "cbir", *map(str, argv)], capture_output=True, text=True, env=env, timeout=300
    )
    folder = cache / "keras-hub" / "siglip_base_patch16_224"
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "cbir: error: cannot download the weights of siglip-base (Keras Hub preset siglip_base_patch16_224): "
        "put config.json, model.weights.h5, assets/tokenizer/vocabulary.spm from "
        f"https://www.kaggle.com/models/keras/siglip/keras/siglip_base_patch16_224 in {folder}/"
    ]
