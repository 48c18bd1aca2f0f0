"""File names as POSIX has them: any bytes but NUL and ``/``, not necessarily UTF-8.

In memory a name is a ``str`` in :func:`os.fsdecode`'s form: bytes that are not UTF-8 are carried as
lone surrogates (``surrogateescape``), so ``os.fsencode(name)`` gives back the exact bytes and every
``open``/``stat`` works. Such a ``str`` cannot be encoded as UTF-8, so each place that leaves memory
picks one of the forms below instead of failing on the first odd name:

- JSON (``--json``, the manifest, the move log): ``json.dumps`` with its default ``ensure_ascii``
  writes a surrogate as ``\\udcNN`` and ``json.loads`` reads it back: lossless as it is.
  :func:`json_text` does the same for the surrogates only, leaving valid non-ASCII text readable.
- Text that must be valid Unicode (Milvus ``VARCHAR``, CSV): :func:`to_text` / :func:`from_text`, a
  reversible backslash escape (``\\xNN`` for an undecodable byte, ``\\\\`` for a backslash).
- Database keys (Milvus ``VARCHAR`` fields): :func:`to_key` / :func:`from_key`, a reversible
  ``%XX`` escape with neither backslash nor double quote, so that a key is safe even in the filter
  expressions a client library writes without escaping (pymilvus' query iterator pages with
  ``path > "LAST KEY"``).
- People (terminal lines, the page's labels): :func:`shown`, undecodable bytes as ``\\xNN``; not
  reversible, for reading only.
"""

from __future__ import annotations

import json
import os
import re

from cbir.core.types import JSONDict, Param

_SURROGATE = re.compile("[\udc80-\udcff]")
_ESCAPED = re.compile(r"\\(\\|x[0-9a-f]{2})")
_KEY_SPECIAL = re.compile('[%\\\\"\udc80-\udcff]')
_KEY_ESCAPED = re.compile("%([0-9A-F]{2})")


def is_text(name: str) -> bool:
    """Whether ``name`` is valid Unicode (no undecodable bytes carried as surrogates)."""
    return _SURROGATE.search(name) is None


def shown(name: str) -> str:
    """``name`` for people to read: undecodable bytes as ``\\xNN``, everything else as it is."""
    if is_text(name):
        return name
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def to_text(name: str) -> str:
    """A reversible form of ``name`` that is valid Unicode: ``\\`` becomes ``\\\\`` and an
    undecodable byte ``\\xNN``. :func:`from_text` undoes it."""
    escaped = name.replace("\\", "\\\\")
    return _SURROGATE.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", escaped)


def from_text(text: str) -> str:
    """The in-memory name that :func:`to_text` made ``text`` from.

    ValueError when ``text`` holds a backslash that :func:`to_text` cannot have written."""

    def back(m: re.Match[str]) -> str:
        code = m.group(1)
        return "\\" if code == "\\" else chr(0xDC00 + int(code[1:], 16))

    name = _ESCAPED.sub(back, text)
    if to_text(name) != text:
        raise ValueError(f"not an escaped file name: {text!r}")
    return name


def to_key(name: str) -> str:
    """A reversible form of ``name`` that is valid Unicode and holds no backslash or double quote:
    ``%``, ``\\``, ``"`` and each undecodable byte become ``%XX``. :func:`from_key` undoes it."""

    def escape(m: re.Match[str]) -> str:
        code = ord(m.group())
        return f"%{code - 0xDC00 if code >= 0xDC80 else code:02X}"

    return _KEY_SPECIAL.sub(escape, name)


def from_key(key: str) -> str:
    """The in-memory name that :func:`to_key` made ``key`` from; ValueError for a key it cannot
    have made (a row written by a release that stored names as they were)."""

    def back(m: re.Match[str]) -> str:
        code = int(m.group(1), 16)
        return chr(code if code < 0x80 else 0xDC00 + code)

    name = _KEY_ESCAPED.sub(back, key)
    if to_key(name) != key:
        raise ValueError(f"not a key form of a file name: {key!r}")
    return name


def json_text(doc: JSONDict | list[JSONDict], **options: Param) -> str:
    """``json.dumps(doc)`` with readable non-ASCII text, each undecodable byte as its ``\\udcNN`` escape
    (which ``json.loads`` reads back as the same surrogate): valid UTF-8 whatever the names' bytes."""
    text = json.dumps(doc, ensure_ascii=False, **options)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
