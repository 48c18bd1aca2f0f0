"""Per-backbone input normalisation in NumPy, identical to ``keras.applications.*.preprocess_input``.

Done in NumPy so that the decoding threads can prepare whole batches without touching Keras.
"""

from __future__ import annotations

import numpy as np

CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
TORCH_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
TORCH_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
PREPROCESS_MODES = ("caffe", "tf", "lite", "torch", "none")


def preprocess(batch: np.ndarray, mode: str) -> np.ndarray:
    """Turn uint8/float RGB arrays (..., H, W, 3) into the float32 input a backbone expects.

    ``caffe``: RGB->BGR and ImageNet mean subtracted (ResNet, VGG); ``tf``: scaled to [-1, 1]
    (Xception, Inception, MobileNet); ``lite``: ``(x - 127) / 128``, as EfficientNet-Lite was trained
    (its reference's ``MEAN_RGB``/``STDDEV_RGB``); ``torch``: scaled to [0, 1] then standardised (DenseNet);
    ``none``: the model normalises internally (EfficientNet, ConvNeXt, MobileNetV3).
    """
    x = np.asarray(batch, dtype=np.float32)
    if mode == "caffe":
        return x[..., ::-1] - CAFFE_MEAN_BGR
    if mode == "tf":
        return x / np.float32(127.5) - np.float32(1.0)
    if mode == "lite":
        return (x - np.float32(127.0)) / np.float32(128.0)
    if mode == "torch":
        return (x / np.float32(255.0) - TORCH_MEAN) / TORCH_STD
    if mode == "none":
        return x
    raise ValueError(f"unknown preprocessing mode {mode!r}")
