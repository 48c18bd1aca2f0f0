"""Free-text search with a joint text-image model (the ``siglip`` family): what it costs, beside the
labels search (issue 24) on the same photos in the same run.

The real SigLIP presets cannot be downloaded here, so the model is the tiny SigLIP backbone of
``tests/test_siglip.py``, trained by that module's own recipe (imported, so both always use the
same one) and saved as a Keras Hub preset folder: the product's path (``--model DIR``, both towers
converted to LiteRT and cached, the SentencePiece tokenizer) with a model far smaller than any
preset. Measured, on Corel-1k (the photos only matter for indexing; the tiny model knows shapes
and colours, so its rankings are not judged here):

- cold ``cbir query DATASET --text WORDS`` in a fresh process (the text tower already converted
  and cached, as on every query after the first), against ``cbir query --text WORD`` on an index
  with labels (no model at all): the baseline; and that the text query imports no TensorFlow;
- the first text query ever (it converts the text tower, once);
- warm text queries in one process (p50, p90), against warm labels queries;
- the tokenizer alone (per text);
- the indexing rate of the tiny image tower beside MobileNet's (ImageNet weights, LiteRT), both
  on a warm model cache (a ``--rebuild`` after a first run that converted the network).

    flock /work/heavy.lock python3 benchmarks/bench_text.py [--dataset ../shared/datasets/corel1k]
        [--work DIR] [--repeat 5]

What this does not measure: the real presets' speed or quality (their towers are ~100 to 400
times the tiny one's parameters; docs/decisions.md quotes their published quality).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from machine import SHARED, describe  # noqa: E402

CAPTIONS = [
    "a red circle",
    "a blue square on stripes",
    "a green triangle",
    "a yellow cross",
    "a purple cross",
]
WORD = "bus"  # the labels baseline's word (Corel-1k's buses)
MOBILENET = SHARED / "weights" / "mobilenet_1_0_224_tf_no_top.h5"
PROBE = (
    "import sys; from cbir.cli.main import main; rc = main(sys.argv[1:]); "
    "print('tensorflow imported:', 'tensorflow' in sys.modules, file=sys.stderr); sys.exit(rc)"
)


def cbir(*argv: object, cache: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    """``cbir ARGV`` in a fresh Python (as a user runs it): its wall time and outcome."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "CBIR_MODEL_CACHE": str(cache)}
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, argv)], capture_output=True, text=True, env=env, check=False
    )
    took = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"cbir {' '.join(map(str, argv))} failed:\n{done.stderr}")
    return took, done


def index_rate(dataset: Path, index: Path, cache: Path, *model: object) -> tuple[float, float, float]:
    """Index ``dataset`` twice (the first run converts the network into the cache; the second, a
    ``--rebuild``, is the measured one): first run's wall s, second's wall s and its images/s."""
    first, _ = cbir("index", dataset, "--index", index, *model, "--json", cache=cache)
    took, done = cbir("index", dataset, "--index", index, *model, "--rebuild", "--json", cache=cache)
    report = json.loads(done.stdout)
    return first, took, float(report["images_per_second"])


def percentiles(seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    return f"p50 {statistics.median(ms):.2f} ms, p90 {ms[int(0.9 * (len(ms) - 1))]:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, default=SHARED / "datasets" / "corel1k")
    parser.add_argument(
        "--work", type=Path, help="where the model, caches and indexes go (default: temporary)"
    )
    parser.add_argument("--repeat", type=int, default=5, help="fresh-process queries of each kind")
    parser.add_argument("--warm", type=int, default=200, help="warm queries of each kind")
    args = parser.parse_args()
    images = args.dataset / "images" if (args.dataset / "images").is_dir() else args.dataset
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-text-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"

    sys.path.insert(0, str(REPO / "tests"))
    from test_siglip import LENGTH, train_tiny_siglip  # the test's recipe, not a copy

    t0 = time.perf_counter()
    preset = train_tiny_siglip(work / "tiny-siglip")
    trained = time.perf_counter() - t0

    joint, labels, plain = work / "joint", work / "labels", work / "mobilenet"
    joint_first, joint_took, joint_rate = index_rate(images, joint, cache, "--model", preset)
    mobile_first, mobile_took, mobile_rate = index_rate(
        images, plain, cache, "--model", "mobilenet", "--weights", MOBILENET
    )
    cbir(
        "index",
        images,
        "--index",
        labels,
        "--model",
        "mobilenet",
        "--weights",
        MOBILENET,
        "--labels",
        cache=cache,
    )

    query = ["query", images, "-k", "10", "--json"]
    first_text, done = cbir(*query, "--index", joint, "--text", CAPTIONS[0], cache=cache)
    assert "text tower" in done.stderr, done.stderr
    texts, words = [], []
    for i in range(args.repeat):  # alternate, so that both see the same machine load
        took, done = cbir(*query, "--index", joint, "--text", CAPTIONS[i % len(CAPTIONS)], cache=cache)
        assert "tensorflow imported: False" in done.stderr, done.stderr
        texts.append(took)
        took, done = cbir(*query, "--index", labels, "--text", WORD, cache=cache)
        assert "tensorflow imported: False" in done.stderr, done.stderr
        words.append(took)

    from cbir.encoders.base import RuntimeOptions
    from cbir.encoders.joint.tokenizer import Tokenizer
    from cbir.service.query import SearchRequest, text_index
    from cbir.service.settings import resolve_settings
    from cbir.stores.folder.store import FolderStore

    def warm(index_dir: Path, text: str) -> list[float]:
        store = FolderStore(images, index_dir)
        index = store.open()
        settings = resolve_settings(
            images, store=store, runtime=RuntimeOptions(model_cache=cache), strict=True
        )
        text_index(index, settings, [text], SearchRequest(k=10))  # the model built, the tower loaded
        out = []
        for _ in range(args.warm):
            t = time.perf_counter()
            text_index(index, settings, [text], SearchRequest(k=10))
            out.append(time.perf_counter() - t)
        return out

    warm_text = warm(joint, CAPTIONS[1])
    warm_words = warm(labels, WORD)
    tokenize = Tokenizer(preset / "assets" / "tokenizer" / "vocabulary.spm", LENGTH)
    t = time.perf_counter()
    for i in range(2000):
        tokenize([CAPTIONS[i % len(CAPTIONS)]])
    per_text = (time.perf_counter() - t) / 2000

    import ai_edge_litert
    import keras_hub
    import sentencepiece

    n = len(FolderStore(images, joint).open())
    print(describe())
    print(
        f"keras-hub {keras_hub.__version__}, ai-edge-litert {getattr(ai_edge_litert, '__version__', '?')}, "
        f"sentencepiece {sentencepiece.__version__}"
    )
    print(f"dataset: {images} ({n} images); tiny SigLIP preset trained in {trained:.1f} s -> {preset}")
    print()
    print("cold query in a fresh process (median of", args.repeat, "each; towers cached):")
    t_med, w_med = statistics.median(texts), statistics.median(words)
    print(f"  text tower, --text '...'       {t_med:6.2f} s   (all: {', '.join(f'{x:.2f}' for x in texts)})")
    print(
        f"  labels (baseline), --text {WORD}  {w_med:6.2f} s   (all: {', '.join(f'{x:.2f}' for x in words)})"
    )
    print(f"  ratio text / labels            {t_med / w_med:6.2f}x; TensorFlow imported by neither")
    print(f"  first text query ever (converts the text tower): {first_text:.2f} s")
    print(f"warm queries in one process ({args.warm} each, k=10):")
    print(f"  text tower: {percentiles(warm_text)}")
    print(f"  labels:     {percentiles(warm_words)}")
    print(f"  ratio of p50s: {statistics.median(warm_text) / statistics.median(warm_words):.2f}x")
    print(f"tokenizer alone: {per_text * 1e6:.1f} us per text (SentencePiece; the tiny preset's 64 pieces)")
    print("indexing (fresh process; --rebuild on a warm model cache):")
    for name, rate, took, first in (
        ("tiny SigLIP image tower", joint_rate, joint_took, joint_first),
        ("mobilenet (ImageNet)", mobile_rate, mobile_took, mobile_first),
    ):
        print(f"  {name:<24} {rate:7.1f} images/s ({took:.1f} s; the first run, converting: {first:.1f} s)")
    print(f"  ratio tiny / mobilenet:  {joint_rate / mobile_rate:.2f}x")


if __name__ == "__main__":
    main()
