"""cbir's Keras EfficientNet-Lite against the PyTorch reference it was ported from.

For each variant, on Corel-1k photos (elephants, buses, horses, dinosaurs) at the variant's input
size and at two other, non-square sizes: the cosine similarity of the last feature maps and the
largest difference of the class probabilities, cbir's Keras model (weights read by cbir's own
unpickler) against ``efficientnet_lite_pytorch`` (the reference implementation of the checkpoints'
publisher, with dynamic TensorFlow-"same" padding) loading the same checkpoint with ``torch.load``;
then whether the top ImageNet class is the expected one. Needs PyTorch and the reference, which cbir
does not depend on:

    pip install torch efficientnet-lite-pytorch
    python3 benchmarks/check_efficientnet_lite.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from machine import SHARED, describe  # noqa: E402
from PIL import Image  # noqa: E402

from cbir.encoders import efficientnet_lite  # noqa: E402
from cbir.encoders.preprocess import preprocess  # noqa: E402
from cbir.encoders.weights import Weights  # noqa: E402

COREL = SHARED / "datasets" / "corel1k" / "images"
# Corel-1k file numbers and the ImageNet classes that count as right for them
PHOTOS = {
    "elephant": ([500, 510, 520], {386: "African elephant", 101: "tusker", 385: "Indian elephant"}),
    "bus": ([300, 310, 320], {874: "trolleybus", 779: "school bus", 654: "minibus"}),
    "horse": ([700, 710], {339: "sorrel"}),
    "dinosaur": ([400, 410], {51: "triceratops"}),
}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.min((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def main() -> None:
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    print(describe())
    print(f"torch {torch.__version__}")
    numbers = [n for ids, _ in PHOTOS.values() for n in ids]
    for name, variant in efficientnet_lite.VARIANTS.items():
        path = efficientnet_lite.checkpoint_path(name)
        reference = EfficientNet.from_pretrained(name, weights_path=str(path), image_size=None).eval()
        ours = efficientnet_lite.build(name, Weights.imagenet())
        size = variant.input_size
        for h, w in ((size, size), (333, 250), (129, 97)):
            images = [
                Image.open(COREL / f"{n}.jpg").convert("RGB").resize((w, h), Image.BILINEAR) for n in numbers
            ]
            x = preprocess(np.stack([np.asarray(i) for i in images]), "lite")
            maps, probabilities = (np.asarray(t) for t in ours(x, training=False))
            with torch.no_grad():
                t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
                ref_maps = reference.extract_features(t).numpy().transpose(0, 2, 3, 1)
                ref_probabilities = torch.softmax(reference(t), 1).numpy()
            print(
                f"{name} at {h}x{w}: feature-map cosine {cosine(maps, ref_maps):.6f}, "
                f"probabilities max |diff| {np.abs(probabilities - ref_probabilities).max():.1e}"
            )
            if (h, w) == (size, size):
                k = 0
                for kind, (ids, right) in PHOTOS.items():
                    for n in ids:
                        top = int(np.argmax(probabilities[k]))
                        verdict = right.get(top, "WRONG")
                        print(f"    {kind} {n}.jpg: class {top} ({verdict}) p={probabilities[k, top]:.2f}")
                        k += 1


if __name__ == "__main__":
    main()
