"""Regenerate the sample dataset from public-domain / CC0 images shipped with scikit-image.

One-off maintainer script (needs ``pip install scikit-image``); the images it writes are committed.
Each source photo yields five variants (resized, cropped, mirrored and brightened, rotated,
small greyscale), so a query returns its own group first: a visible check that retrieval works.
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps
from skimage import data

SOURCES = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "coins", "camera"]
OUT = Path(__file__).parent


def variants(img: Image.Image) -> dict[str, Image.Image]:
    w, h = img.size
    crop = img.crop((int(w * 0.15), int(h * 0.15), int(w * 0.85), int(h * 0.85)))
    rotated = img.rotate(12, resample=Image.Resampling.BICUBIC, expand=False).crop(
        (int(w * 0.1), int(h * 0.1), int(w * 0.9), int(h * 0.9))
    )
    return {
        "a": img,
        "b_crop": crop,
        "c_mirror": ImageEnhance.Brightness(ImageOps.mirror(img)).enhance(1.25),
        "d_rotated": rotated,
        "e_small_grey": ImageOps.grayscale(img).resize((w // 3, h // 3)).convert("RGB"),
    }


def main() -> None:
    for name in SOURCES:
        arr = np.asarray(getattr(data, name)())
        img = Image.fromarray(arr).convert("RGB")
        img.thumbnail((480, 480), Image.Resampling.LANCZOS)
        for suffix, v in variants(img).items():
            v.save(OUT / f"{name}_{suffix}.jpg", quality=85)


if __name__ == "__main__":
    main()
