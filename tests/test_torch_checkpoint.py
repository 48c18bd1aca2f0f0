"""Reading PyTorch state dicts without PyTorch (cbir.encoders.torch_checkpoint): the real files the
EfficientNet-Lite packages ship, a zip-format file PyTorch 2 wrote, and hostile or damaged files,
which are refused before anything they name is built."""

from __future__ import annotations

import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cbir.core.errors import ModelError
from cbir.encoders import efficientnet_lite
from cbir.encoders.torch_checkpoint import (
    LEGACY_MAGIC,
    LEGACY_PROTOCOL,
    UnsafeCheckpointError,
    read_state_dict,
)

ZIP_FILE = Path(__file__).parent / "data" / "torch-zip-state-dict.pth"
"""Written by ``torch.save`` (PyTorch 2.14, zip format): see test_a_zip_checkpoint_of_pytorch_2."""


def lite_checkpoint(name: str) -> Path:
    try:
        return efficientnet_lite.checkpoint_path(name)
    except ModelError as exc:
        pytest.skip(str(exc))


# A hand-written pickle, opcode by opcode (protocol 2), as PyTorch writes a state dict: a dict of
# names to torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks),
# each storage a persistent id ('storage', torch.FloatStorage, key, 'cpu', numel, None).


def _str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def _ints(values: tuple[int, ...]) -> bytes:
    return b"(" + b"".join(_int(v) for v in values) + b"t"


def _tensor(key: str, numel: int, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]) -> bytes:
    storage = b"(" + _str("storage") + b"ctorch\nFloatStorage\n" + _str(key) + _str("cpu") + _int(numel)
    storage += b"NtQ"  # view_metadata None, the tuple, BINPERSID
    hooks = b"ccollections\nOrderedDict\n)R"
    args = b"(" + storage + _int(offset) + _ints(shape) + _ints(stride) + b"\x89" + hooks + b"t"
    return b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"R"


def legacy_file(path: Path, entries: dict[str, bytes], storages: dict[str, np.ndarray]) -> Path:
    """A legacy-format checkpoint: the header pickles, the state dict's pickle (``entries``: name ->
    the opcodes of its value), the storage keys, then each storage's element count and bytes."""
    body = b"\x80\x02}" + b"".join(b"(" + _str(k) + v + b"u" for k, v in entries.items()) + b"."
    with open(path, "wb") as f:
        for header in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True, "protocol_version": 1001}):
            f.write(pickle.dumps(header, protocol=2))
        f.write(body)
        f.write(pickle.dumps(list(storages), protocol=2))
        for data in storages.values():
            f.write(struct.pack("<q", data.size) + data.astype("<f4").tobytes())
    return path


def test_a_hand_written_legacy_checkpoint_is_read(tmp_path):
    data = np.arange(10, dtype=np.float32)
    path = legacy_file(
        tmp_path / "w.pth",
        {"t": _tensor("0", 10, 4, (3, 2), (1, 3)), "s": _tensor("0", 10, 0, (), ())},
        {"0": data},
    )
    state = read_state_dict(path)
    np.testing.assert_array_equal(state["t"], data[4:].reshape(2, 3).T)  # offset 4, strides (1, 3)
    assert state["s"].shape == () and state["s"] == 0.0
    assert state["t"].flags.c_contiguous and state["t"].flags.writeable


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"weight": Evil(marker)}, protocol=2)
    legacy = tmp_path / "evil.pth"
    with open(legacy, "wb") as f:
        for header in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}):
            f.write(pickle.dumps(header, protocol=2))
        f.write(payload)
    archive = tmp_path / "evil-zip.pth"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("evil-zip/data.pkl", payload)
    for path in (legacy, archive):
        with pytest.raises(UnsafeCheckpointError, match=r"refused: the checkpoint names (posix|nt)\.system"):
            read_state_dict(path)
    assert not marker.exists()
    pickle.loads(payload)  # the same bytes, unpickled plainly, do run the command: the test can fail
    assert marker.exists()


@pytest.mark.parametrize(
    "module,name", [("builtins", "eval"), ("builtins", "getattr"), ("torch", "load"), ("numpy", "load")]
)
def test_any_other_global_is_refused(tmp_path, module, name):
    entry = f"c{module}\n{name}\n".encode() + b"(" + _str("1") + b"tR"
    path = legacy_file(tmp_path / "w.pth", {"x": entry}, {})
    with pytest.raises(UnsafeCheckpointError, match=f"names {module}.{name}"):
        read_state_dict(path)


@pytest.mark.parametrize(
    "tensor,stored,why",
    [
        (_tensor("0", 4, 2, (3,), (1,)), 4, "reaches past its storage"),  # offset 2 + 3 elements > 4
        (_tensor("0", 4, 0, (2, 2), (3, 1)), 4, "reaches past its storage"),  # last element at 4
        (_tensor("0", 4, 0, (1000000, 1000000), (0, 0)), 4, "reaches past its storage"),  # a bomb
        (_tensor("0", 4, 0, (3,), (1,)), 3, "wrong length"),  # the pickle says 4, the file holds 3
        (_tensor("0", 5, 0, (3,), (1,)), 4, "two different types or sizes"),
        (_str("not a tensor"), 4, "is not a tensor"),
    ],
    ids=["offset", "stride", "bomb", "short storage", "two sizes", "not a tensor"],
)
def test_a_tensor_that_does_not_fit_its_storage_is_refused(tmp_path, tensor, stored, why):
    fits = _tensor("0", 4, 0, (4,), (1,))
    path = legacy_file(tmp_path / "w.pth", {"fits": fits, "w": tensor}, {"0": np.zeros(stored, np.float32)})
    with pytest.raises(UnsafeCheckpointError, match=why):
        read_state_dict(path)


def test_damaged_files_are_one_line_errors(tmp_path):
    real = lite_checkpoint("efficientnet-lite0")
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(real.read_bytes()[:100_000])
    not_torch = tmp_path / "x.pth"
    not_torch.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    for path in (truncated, not_torch, tmp_path / "missing.pth"):
        with pytest.raises(ModelError) as info:
            read_state_dict(path)
        assert "\n" not in str(info.value) and str(path.name) in str(info.value)


def test_a_zip_checkpoint_of_pytorch_2():
    state = read_state_dict(ZIP_FILE)
    assert set(state) == {"weight", "steps", "half", "empty", "tail"}
    np.testing.assert_array_equal(state["weight"], np.arange(12, dtype=np.float32).reshape(3, 4).T)
    assert state["steps"].dtype == np.int64 and state["steps"] == 7
    assert state["half"].dtype == np.float16 and state["half"].tolist() == [0.5, -2.0]
    assert state["empty"].shape == (0, 3)
    np.testing.assert_array_equal(state["tail"], np.arange(4, 10, dtype=np.float32))


@pytest.mark.parametrize("name", list(efficientnet_lite.VARIANTS))
def test_the_shipped_checkpoints_fit_the_architecture(name):
    """Every tensor of the real checkpoint has the shape the variant's blocks give it (no Keras)."""
    state = read_state_dict(lite_checkpoint(name))
    variant = efficientnet_lite.VARIANTS[name]
    blocks = efficientnet_lite.blocks(variant)
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_conv_head.weight"].shape == (1280, blocks[-1].filters_out, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280) and state["_fc.bias"].shape == (1000,)
    for i, b in enumerate(blocks):
        hidden = b.filters_in * b.expand
        assert state[f"_blocks.{i}._depthwise_conv.weight"].shape == (hidden, 1, b.kernel, b.kernel)
        assert state[f"_blocks.{i}._project_conv.weight"].shape == (b.filters_out, hidden, 1, 1)
        assert (f"_blocks.{i}._expand_conv.weight" in state) == (b.expand != 1)
    assert f"_blocks.{len(blocks)}._bn1.weight" not in state
    assert all(v.dtype == np.float32 for k, v in state.items() if not k.endswith("num_batches_tracked"))
