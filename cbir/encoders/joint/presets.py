"""Where a joint text-image model's weights come from: a Keras Hub SigLIP preset (downloaded once
into the model cache) or a preset folder of the same backbone class given as ``--model DIR``.

A preset folder holds Keras Hub's files: ``config.json`` (the backbone's config), ``model.weights.h5``
and ``assets/tokenizer/vocabulary.spm`` (the SentencePiece model of the text tower). A built-in
model (``siglip-base``, ...) lives in ``MODEL_CACHE/keras-hub/PRESET/``; it is fetched on first use
through Keras Hub (Kaggle), and where that is impossible (no internet) the error says which files to
put where. Nothing here imports TensorFlow: the download imports Keras Hub only when it must run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from cbir.core.errors import ModelError
from cbir.core.types import JSONDict
from cbir.encoders.weights import file_digest

log = logging.getLogger(__name__)

INSTALL_KERAS_HUB = "pip install 'cbir[text]' && pip install --no-deps keras-hub==0.32.0"
"""How to install what a joint model needs: keras-hub without its dependencies (its tensorflow-text
would pin TensorFlow's version; the rest is the ``text`` extra: docs/decisions.md)."""

CONFIG, WEIGHTS, VOCABULARY = "config.json", "model.weights.h5", "assets/tokenizer/vocabulary.spm"
FILES = (CONFIG, WEIGHTS, VOCABULARY)
"""The files of a preset folder that cbir reads (Keras Hub's names)."""


@dataclass(frozen=True)
class Preset:
    """A built-in model: the name ``--model`` takes, the Keras Hub preset it stands for, and what
    ``cbir models`` says of it before it is downloaded: its ``architecture``, embedding ``dim``,
    input ``image_size`` and ``params`` (Keras Hub's preset metadata,
    ``keras_hub/src/models/siglip/siglip_presets.py``)."""

    name: str
    preset: str
    architecture: str
    dim: int
    image_size: int
    params: int

    @property
    def download_bytes(self) -> int:
        """About what the first use downloads: float32 weights, 4 bytes a parameter (the size
        published for siglip-large's ``model.weights.h5``, 2.61 GB, agrees)."""
        return 4 * self.params

    @property
    def handle(self) -> str:
        """Keras Hub's Kaggle handle of the preset (version 1)."""
        return f"kaggle://keras/siglip/keras/{self.preset}/1"

    @property
    def page(self) -> str:
        """Where a person can download the files by hand."""
        return f"https://www.kaggle.com/models/keras/siglip/keras/{self.preset}"


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("siglip-base", "siglip_base_patch16_224", "ViT-B/16", 768, 224, 203_156_230),
        Preset("siglip-base-384", "siglip_base_patch16_384", "ViT-B/16", 768, 384, 203_448_450),
        Preset("siglip-large", "siglip_large_patch16_256", "ViT-L/16", 1024, 256, 652_151_106),
        Preset("siglip-so400m", "siglip_so400m_patch14_224", "So400m/14", 1152, 224, 877_360_578),
    )
}
"""The built-in joint models, by the name ``--model`` takes."""


def is_preset_folder(model: str) -> bool:
    """Whether ``model`` names a folder with a Keras Hub config (``--model DIR``)."""
    return os.path.isfile(os.path.join(model, CONFIG))


@dataclass(frozen=True)
class PresetSource:
    """The files of one joint model: ``folder`` (complete once :meth:`ensure` returned), its ``label``
    (file-name safe, for the model cache) and, for a built-in model, the ``preset`` to fetch;
    ``load_tensorflow`` runs before a download (Keras Hub imports TensorFlow: the command line's
    quiets its start-up, as before any other model is built)."""

    model: str
    folder: Path
    label: str
    preset: Preset | None = None
    load_tensorflow: Callable[[], None] = field(default=lambda: None, repr=False, compare=False)

    def complete(self) -> bool:
        return all((self.folder / name).is_file() for name in FILES)

    def ensure(self) -> Path:
        """The folder with every file; a built-in model is downloaded on first use (ModelError,
        one line, naming the files and the folder, when that is impossible)."""
        if self.complete():
            return self.folder
        if self.preset is None:
            missing = [name for name in FILES if not (self.folder / name).is_file()]
            raise ModelError(f"the preset folder {self.folder} lacks {', '.join(missing)}")
        self.load_tensorflow()
        download(self.preset, self.folder)
        return self.folder

    @cached_property
    def config(self) -> JSONDict:
        """The backbone's config (``config.json``'s ``config``)."""
        path = self.ensure() / CONFIG
        try:
            doc = json.loads(path.read_text())
            config = doc["config"]
            config["vision_encoder"]["config"]["image_shape"]
            config["text_encoder"]["config"]["max_sequence_length"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{path} is not the config of a Keras Hub SigLIP backbone ({exc})") from exc
        if doc.get("class_name") != "SigLIPBackbone":
            raise ModelError(f"{path} describes a {doc.get('class_name')}, not a SigLIPBackbone")
        return dict(config)

    @property
    def image_size(self) -> int:
        return int(self.config["vision_encoder"]["config"]["image_shape"][0])

    @property
    def sequence_length(self) -> int:
        return int(self.config["text_encoder"]["config"]["max_sequence_length"])

    @property
    def dim(self) -> int:
        """The dimension of both towers' embeddings (the vision encoder's width)."""
        return int(self.config["vision_encoder"]["config"]["hidden_dim"])

    @property
    def identity(self) -> str:
        """What the index records as the weights: the preset's name, or a folder's name and the
        digest of its files (a retrained folder is another model)."""
        if self.preset is not None:
            return f"keras-hub:{self.preset.preset}"
        h = hashlib.sha256()
        for name in FILES:
            h.update(file_digest(self.folder / name, length=64).encode())
        return f"preset:{self.folder.name}:{h.hexdigest()[:16]}"


def preset_source(
    model: str, cache_root: Path, load_tensorflow: Callable[[], None] = lambda: None
) -> PresetSource:
    """The source of ``model``: a built-in name (files in ``cache_root/keras-hub/PRESET``) or a
    preset folder; ModelError when it is neither."""
    preset = PRESETS.get(model.lower())
    if preset is not None:
        folder = cache_root / "keras-hub" / preset.preset
        return PresetSource(preset.name, folder, preset.name, preset, load_tensorflow)
    if not is_preset_folder(model):
        raise ModelError(f"{model} is neither a SigLIP model ({', '.join(PRESETS)}) nor a preset folder")
    folder = Path(os.path.abspath(model))
    label = "preset-" + re.sub(r"[^A-Za-z0-9_.-]", "_", folder.name)[:40]
    return PresetSource(str(folder), folder, label)


def offline_message(preset: Preset, folder: Path) -> str:
    """The one line that says what to download by hand and where to put it."""
    return (
        f"cannot download the weights of {preset.name} (Keras Hub preset {preset.preset}): "
        f"put {', '.join(FILES)} from {preset.page} in {folder}/"
    )


def download(preset: Preset, folder: Path) -> None:
    """Fetch the files of ``preset`` through Keras Hub (Kaggle) and place them in ``folder``, each
    whole (a hard link to Keras Hub's download where possible, else a copy, renamed into place)."""
    try:
        from keras_hub.src.utils.preset_utils import get_file
    except ImportError as exc:
        raise ModelError(f"--model {preset.name} needs keras-hub: {INSTALL_KERAS_HUB}") from exc
    log.info("downloading %s (Keras Hub preset %s) into %s", preset.name, preset.preset, folder)
    fetched: dict[str, str] = {}
    for name in FILES:
        try:
            fetched[name] = str(get_file(preset.handle, name))
        except Exception as exc:  # any failure to fetch means: offline, or the source is gone
            log.debug("fetching %s of %s failed: %s", name, preset.preset, exc)
            raise ModelError(offline_message(preset, folder)) from exc
    for name, path in fetched.items():
        place(Path(path), folder / name)


def place(source: Path, target: Path) -> None:
    """Put ``source`` at ``target`` whole: linked (or copied) under a temporary name, then renamed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"cannot write {target}: {exc.strerror or exc}") from exc
