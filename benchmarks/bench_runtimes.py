"""Ways to run the same network: Keras predict_on_batch, tf.function, XLA, LiteRT, ONNX Runtime.

For each, on the same batch of real images (the sample dataset, resized to 224x224): images/s and
the lowest cosine similarity of its features to plain Keras ``predict_on_batch`` (must be >= 0.999).
LiteRT (the project's second runtime, ``--runtime litert``) is the model converted by
``cbir.encoders.convert`` and run by ``ai-edge-litert`` with 1 thread and with every core; the
conversion time is reported. ONNX Runtime is measured only when ``tf2onnx`` and ``onnxruntime``
are importable (they are not project dependencies: see docs/speed.md); the export time is
reported too.

    python3 benchmarks/bench_runtimes.py [--model resnet50] [--batch-size 32] [--no-xla]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from machine import describe  # noqa: E402

from cbir.encoders.preprocess import preprocess  # noqa: E402
from cbir.ingest.decode import Geometry, load_views  # noqa: E402


def rate(fn, x: np.ndarray, repeats: int) -> tuple[float, np.ndarray]:
    out = np.asarray(fn(x))
    t = time.perf_counter()
    for _ in range(repeats):
        fn(x)
    return len(x) * repeats / (time.perf_counter() - t), out


def cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(len(a), -1)
    b = b.reshape(len(b), -1)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def litert_rows(model, x: np.ndarray, ref: np.ndarray, repeats: int) -> list[tuple[str, float, float, str]]:
    """LiteRT with 1 thread and with every core, on the model converted as ``--runtime litert`` does."""
    try:
        from cbir.encoders.convert import to_litert
        from cbir.encoders.keras_net import KerasNetwork
        from cbir.encoders.litert_net import LiteRTNetwork
    except ImportError as exc:
        return [("LiteRT", float("nan"), float("nan"), f"not importable: {exc}")]
    t0 = time.perf_counter()
    data = to_litert(KerasNetwork(model))
    convert_s = time.perf_counter() - t0
    rows = []
    for threads in (1, os.cpu_count() or 1):
        net = LiteRTNetwork(data, threads=threads)
        r, out = rate(net.run, x, repeats)
        label = f"LiteRT, XNNPACK ({threads} thread{'s' if threads > 1 else ''})"
        note = f"convert {convert_s:.0f}s, {len(data) / 2**20:.0f} MiB"
        rows.append((label, r, cosine_min(out, ref), note))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-xla", action="store_true", help="skip XLA (its compilation takes minutes)")
    args = ap.parse_args()
    print(describe())
    import keras
    import tensorflow as tf

    from cbir.encoders.backbones import get_backbone

    backbone = get_backbone(args.model)
    images = sorted((ROOT / "dataset").glob("*.jpg"))
    geo = Geometry(backbone.input_size, "squash", "bilinear")
    batch = np.stack([load_views(p, geo)[0] for p in (images * 4)[: args.batch_size]])
    x = preprocess(batch, backbone.preprocess)
    model = keras.Model(
        *(lambda m: (m.input, keras.layers.GlobalAveragePooling2D()(m.output)))(backbone.build(None))
    )
    rows = []
    ref_rate, ref = rate(model.predict_on_batch, x, args.repeats)
    rows.append(("keras predict_on_batch", ref_rate, 1.0, ""))
    plain = tf.function(lambda t: model(t, training=False), reduce_retracing=True)
    r, out = rate(lambda a: plain(tf.constant(a)).numpy(), x, args.repeats)
    rows.append(("tf.function (ours)", r, cosine_min(out, ref), ""))
    if not args.no_xla:
        xla = tf.function(lambda t: model(t, training=False), jit_compile=True)
        t0 = time.perf_counter()
        xla(tf.constant(x))
        compile_s = time.perf_counter() - t0
        r, out = rate(lambda a: xla(tf.constant(a)).numpy(), x, args.repeats)
        rows.append(("tf.function + XLA (jit_compile)", r, cosine_min(out, ref), f"compile {compile_s:.0f}s"))
    rows += litert_rows(model, x, ref, args.repeats)
    try:
        import onnxruntime as ort
        import tf2onnx
    except ImportError:
        rows.append(("ONNX Runtime", float("nan"), float("nan"), "tf2onnx/onnxruntime not installed"))
    else:
        spec = (tf.TensorSpec((None, None, None, 3), tf.float32, name="x"),)
        fn = tf.function(lambda t: model(t, training=False), input_signature=spec)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.onnx")
            t0 = time.perf_counter()
            tf2onnx.convert.from_function(fn, input_signature=spec, opset=17, output_path=path)
            export_s = time.perf_counter() - t0
            for threads in (0, 1):
                so = ort.SessionOptions()
                so.intra_op_num_threads = threads
                sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
                name = sess.get_inputs()[0].name
                r, out = rate(lambda a, s=sess, n=name: s.run(None, {n: a})[0], x, args.repeats)
                label = f"ONNX Runtime ({'default threads' if threads == 0 else '1 thread'})"
                rows.append((label, r, cosine_min(out, ref), f"export {export_s:.0f}s"))
    print(
        f"\n{args.model}, batch {args.batch_size} at {backbone.input_size}x{backbone.input_size}, "
        f"{args.repeats} timed batches each"
    )
    print("| runtime | images/s | vs predict_on_batch | min cosine to Keras | notes |")
    print("|---|---|---|---|---|")
    for name, r, cos, note in rows:
        print(f"| {name} | {r:.1f} | {r / ref_rate:.2f}x | {cos:.6f} | {note} |")


if __name__ == "__main__":
    main()
