"""The project's only explicit ``Any``: each alias says why its values cannot be typed more closely.

tests/test_style.py fails on an ``Any`` anywhere else in the package, so a new one needs a reason here.
"""

from __future__ import annotations

from typing import Any, TypeAlias

JSONDict: TypeAlias = dict[str, Any]
"""A JSON document (``--json`` output, manifest records): its values are any JSON type."""

FaissIndex: TypeAlias = Any
"""A ``faiss.Index``: faiss publishes no type information."""

KerasModel: TypeAlias = Any
"""A ``keras.Model`` or layer: Keras publishes no type information."""

Tensor: TypeAlias = Any
"""A TensorFlow tensor (a Keras model's output): TensorFlow publishes no type information."""

ProgressBar: TypeAlias = Any
"""A ``tqdm`` progress bar: tqdm's types are not installed."""

LazyAttribute: TypeAlias = Any
"""An attribute of ``cbir`` resolved lazily by name: any of the exported objects."""

Param: TypeAlias = Any
"""A keyword argument passed through to a constructor (dataclass ``replace``, faiss parameters)."""
