"""Shared fixtures: generated images, a small random-weights Embedder, the real test weights, Corel.

Everything runs offline. The read-only test data lives beside the repository in ``../shared``
(``/work/shared`` here; in CI the clone sits beside a copy of it); tests that need it are skipped with
a clear reason when it is absent. Nothing is ever written there: images are copied into tmp dirs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Property-based tests (Hypothesis): in CI a fixed seed and a modest number of examples; more on demand
# with CBIR_HYPOTHESIS=deep (a random seed each run) and CBIR_HYPOTHESIS_EXAMPLES=N.
_EXAMPLES = os.environ.get("CBIR_HYPOTHESIS_EXAMPLES")
_UNCHECKED = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large]
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=int(_EXAMPLES or 25),
    suppress_health_check=_UNCHECKED,
    print_blob=True,
)
settings.register_profile(
    "deep",
    deadline=None,
    max_examples=int(_EXAMPLES or 1000),
    suppress_health_check=_UNCHECKED,
    print_blob=True,
)
settings.load_profile(os.environ.get("CBIR_HYPOTHESIS", "ci"))


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory) -> Path:
    """Converted models go to a folder of this test session (also for the CLI subprocesses)."""
    folder = tmp_path_factory.mktemp("model-cache")
    os.environ["CBIR_MODEL_CACHE"] = str(folder)
    return folder


REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
WEIGHTS_DIR = SHARED / "weights"
MOBILENET_025 = WEIGHTS_DIR / "mobilenet_2_5_224_tf_no_top.h5"
MOBILENETV2_035 = WEIGHTS_DIR / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
COREL_IMAGES = SHARED / "datasets" / "corel1k" / "images"
COREL_SUBSET = [c * 100 + i for c in range(6) for i in range(10)]  # six classes, class = number // 100


def smooth_image(seed: int, width: int = 96, height: int = 72) -> np.ndarray:
    """A reproducible uint8 RGB image with large smooth structures (survives JPEG and resizing)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(coarse, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8).copy()


def save_image(path: Path, seed: int = 0, width: int = 96, height: int = 72, **save_kwargs) -> Path:
    """Write a :func:`smooth_image` to ``path`` (format from the extension); return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(smooth_image(seed, width, height), "RGB").save(path, **save_kwargs)
    return path


def require(path: Path) -> Path:
    """Skip the calling test when a file of the shared test data is missing."""
    if not path.exists():
        pytest.skip(f"shared test data not found: {path} (expected beside the repository in ../shared)")
    return path


@pytest.fixture
def make_image() -> Callable[..., Path]:
    """``make_image(path, seed=0, width=96, height=72, **save_kwargs)`` writes a generated image."""
    return save_image


@pytest.fixture
def image_array() -> Callable[..., np.ndarray]:
    """``image_array(seed, width=96, height=72)``: the pixels :func:`make_image` would write."""
    return smooth_image


@pytest.fixture(scope="session")
def tiny_config():
    """Features of a small random-weights backbone, fast on a CPU.

    MobileNetV2 0.35 with average pooling: random-weights MobileNet v1 has dead (all-zero) final
    activations, which makes every image embed to the same vector and would hide bugs.
    """
    from cbir.encoders.features import FeatureConfig

    return FeatureConfig(
        model="mobilenetv2", width_multiplier=0.35, pooling="avg", size=64, geometry="squash"
    )


@pytest.fixture(scope="session")
def tiny_embedder(tiny_config):
    """One random-weights Embedder for the session (seeded, so other processes can rebuild it)."""
    return build_tiny_embedder(tiny_config)


@pytest.fixture(scope="session")
def build_embedder():
    """``build_embedder(config, seed=1234, **kwargs)``: a fresh seeded random-weights Embedder."""
    return build_tiny_embedder


def build_tiny_embedder(config, seed: int = 1234, **kwargs):
    """A random-weights Embedder of ``config`` (resolved here, as every caller of Embedder does)."""
    import keras

    from cbir.encoders.embedder import Embedder
    from cbir.encoders.registry import resolve_config
    from cbir.encoders.weights import Weights

    keras.utils.set_random_seed(seed)
    weights = Weights.random()
    return Embedder(resolve_config(config, weights), weights, workers=2, **kwargs)


@pytest.fixture(scope="session")
def mobilenet_weights() -> Path:
    """The real ImageNet MobileNet 0.25 weights (256-d features)."""
    return require(MOBILENET_025)


@pytest.fixture(scope="session")
def mobilenetv2_weights() -> Path:
    return require(MOBILENETV2_035)


def copy_corel_subset(dest: Path) -> Path:
    """Copy the 60 Corel-1k images of :data:`COREL_SUBSET` into ``dest`` (skip if shared is absent)."""
    require(COREL_IMAGES)
    dest.mkdir(parents=True)
    for n in COREL_SUBSET:
        shutil.copy2(require(COREL_IMAGES / f"{n}.jpg"), dest / f"{n}.jpg")
    return dest


@pytest.fixture
def corel_subset(tmp_path) -> Path:
    """60 Corel-1k images (files 0-9, 100-109, ..., 500-509: six classes, class = number // 100)."""
    return copy_corel_subset(tmp_path / "corel")


@pytest.fixture(scope="module")
def corel_subset_module(tmp_path_factory) -> Path:
    """The same 60 images, shared by the tests of one module (for tests that build on each other)."""
    return copy_corel_subset(tmp_path_factory.mktemp("corel") / "corel")


@pytest.fixture
def image_folder(tmp_path) -> Callable[..., Path]:
    """``image_folder(n, name="data")``: a folder of ``n`` distinct generated JPEGs img00.jpg..."""

    def make(n: int, name: str = "data", start_seed: int = 0) -> Path:
        root = tmp_path / name
        root.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            save_image(root / f"img{i:02d}.jpg", seed=start_seed + i, quality=92)
        return root

    return make


STUB = "raise ImportError('{name} must not be imported by this command')\n"


@pytest.fixture
def no_ml_packages(tmp_path) -> Path:
    """A folder of stub packages that fail on import: TensorFlow, Keras, LiteRT (put it first)."""
    stubs = tmp_path / "stubs"
    for name in ("tensorflow", "keras", "ai_edge_litert", "tflite_runtime"):
        (stubs / name).mkdir(parents=True)
        (stubs / name / "__init__.py").write_text(STUB.format(name=name))
    return stubs


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """A real Milvus standalone server (PyPI's ``milvus`` package) on free ports of 127.0.0.1, started
    once per session and always stopped; skipped with the reason where it cannot be started."""
    from milvus_server import MilvusServer, why_not

    reason = why_not()
    if reason is not None:
        pytest.skip(reason)
    server = MilvusServer(tmp_path_factory.mktemp("milvus-server"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ray_cluster():
    """A real two-node Ray cluster on 127.0.0.1 (``ray start --head`` and ``ray start --address``, one
    CPU and a resource of its own each), started once per session and always stopped (only its own
    processes); skipped with the reason where Ray cannot start."""
    from ray_cluster import RayCluster, why_not

    reason = why_not()
    if reason is not None:
        pytest.skip(reason)
    cluster = RayCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
