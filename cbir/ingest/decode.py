"""Decoding image files into upright RGB arrays of the size a backbone wants.

Handles what real photo folders contain: EXIF orientation, palette/grey/alpha/CMYK/16-bit modes,
animated files (first frame), decompression bombs and oversized files, and broken files, which
raise :class:`~cbir.core.errors.BadImageError` with a short reason instead of crashing a long run (marked
``transient`` when the system could not give the file's bytes: :func:`is_passing_error`).
Large JPEGs are decoded at reduced scale (``Image.draft``) when the target size allows it.
"""

from __future__ import annotations

import io
import os
import re
import struct
import time
import warnings
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cbir.core.errors import BadImageError

warnings.simplefilter("ignore", Image.DecompressionBombWarning)

RESAMPLERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
GEOMETRY_MODES = ("squash", "crop", "short", "long")


@cache
def register_optional_plugins() -> tuple[str, ...]:
    """Register HEIC/AVIF openers when their Pillow plugins are installed; return the extra extensions."""
    extra: list[str] = []
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
        extra += [".heic", ".heif"]
    except ImportError:
        pass
    try:
        import pillow_avif  # noqa: F401

        extra.append(".avif")
    except ImportError:
        pass
    return tuple(extra)


@dataclass(frozen=True)
class LoadLimits:
    """Guards against files that would exhaust memory: a pixel count and a file size limit."""

    max_pixels: int = 250_000_000
    max_bytes: int = 512 * 1024 * 1024


@dataclass(frozen=True)
class Geometry:
    """How an image becomes the network input.

    ``squash``: resize to size x size ignoring the aspect ratio (the original script's way);
    ``crop``: shorter side to size, then a centred square crop; ``short``/``long``: shorter/longer
    side to size keeping the aspect ratio (the network is fully convolutional), sides rounded to a
    multiple of ``multiple`` so that batches share few shapes.
    """

    size: int = 224
    mode: str = "squash"
    resample: str = "nearest"
    multiple: int = 32

    def __post_init__(self) -> None:
        if self.mode not in GEOMETRY_MODES:
            raise ValueError(f"unknown geometry mode {self.mode!r}; choose from {', '.join(GEOMETRY_MODES)}")
        if self.resample not in RESAMPLERS:
            raise ValueError(f"unknown resampling {self.resample!r}; choose from {', '.join(RESAMPLERS)}")
        if self.size < 32:
            raise ValueError("input size must be at least 32")

    def output_size(self, width: int, height: int, scale: float = 1.0) -> tuple[int, int]:
        """The (width, height) of the network input for an upright image of this size."""
        s = max(32, int(round(self.size * scale)))
        if self.mode in ("squash", "crop"):
            return s, s
        ratio = s / (min(width, height) if self.mode == "short" else max(width, height))
        m = self.multiple

        def snap(v: float) -> int:
            return max(m, int(round(v / m)) * m)

        return snap(width * ratio), snap(height * ratio)

    def needed_size(self, width: int, height: int, scale: float = 1.0) -> tuple[int, int]:
        """The smallest decoded (width, height) that still gives full detail for ``output_size``."""
        if self.mode == "crop":
            s = max(32, int(round(self.size * scale)))
            r = s / min(width, height)
            return int(np.ceil(width * r)), int(np.ceil(height * r))
        return self.output_size(width, height, scale)


def is_passing_error(exc: BaseException) -> bool:
    """True when the system could not give the file's bytes (an ``OSError`` with an ``errno``: gone,
    ENOENT/ENOTDIR, a folder renamed away; permission, EACCES/EPERM; EIO, ESTALE, EBUSY, EMFILE...),
    as opposed to bytes that are not a usable image (Pillow's errors carry no ``errno``). Such a
    failure can pass without the file changing (the folder renamed back, a ``chmod``, the share
    back online), so it is retried on every run and never remembered as bad."""
    return isinstance(exc, _SYSTEM_ERRORS) or (isinstance(exc, OSError) and exc.errno is not None)


_SYSTEM_ERRORS = (PermissionError, FileNotFoundError, NotADirectoryError, IsADirectoryError, TimeoutError)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; transparency is composited on white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        peak = float(arr.max()) if arr.size else 0.0
        if peak > 255:
            arr = arr / (65535.0 if peak <= 65535 else peak) * 255.0
        grey = np.clip(arr, 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([grey] * 3, axis=-1), "RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def open_rgb(
    path: str | os.PathLike[str],
    limits: LoadLimits = LoadLimits(),
    draft_for: tuple[int, int] | None = None,
) -> Image.Image:
    """Open ``path`` as an upright RGB image (first frame of animations).

    ``draft_for`` is the minimum upright (width, height) needed; JPEGs are then decoded at the
    largest power-of-two reduction that still covers it. Raises BadImageError for unusable files.
    """
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise BadImageError(
            f"cannot read file ({exc.strerror or exc})", transient=is_passing_error(exc)
        ) from exc
    return _open_checked(path, size, limits, draft_for)


def decode_bytes(
    data: bytes,
    limits: LoadLimits = LoadLimits(),
    geometry: Geometry | None = None,
    scales: tuple[float, ...] = (1.0,),
    reduce: bool = False,
) -> Image.Image:
    """An upright RGB image from the bytes of an image file (an upload), under the same guards as
    files: size and pixel limits (the decompression-bomb guard); BadImageError when unusable.

    With ``geometry``, a large JPEG is decoded at reduced scale exactly as indexing decodes the same
    file, so an upload of an indexed photo gets the vector the index holds. With ``reduce`` too,
    another format is shrunk by a whole factor (``Image.reduce``) right after decoding, before its
    orientation and colour conversions copy it (less memory; close to, not exactly, the indexed
    vector)."""
    draft_for = _draft_for(io.BytesIO(data), geometry, scales) if geometry is not None else None
    return _open_checked(io.BytesIO(data), len(data), limits, draft_for, reduce)


def screen_bytes(data: bytes, limits: LoadLimits = LoadLimits()) -> tuple[int, int]:
    """The (width, height) an image file's bytes declare, from the header only: BadImageError when
    they are over the size or pixel limits or not an image. Cheap (no pixel is decoded), so an
    upload that would be refused is refused before it waits for a decode slot."""
    if not data:
        raise BadImageError("empty file")
    if len(data) > limits.max_bytes:
        raise BadImageError(f"file larger than the {limits.max_bytes // 2**20} MiB limit")
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
    except UnidentifiedImageError as exc:
        raise BadImageError("not a recognised image") from exc
    except Image.DecompressionBombError as exc:
        raise BadImageError("image exceeds the pixel limit (decompression bomb guard)") from exc
    except (OSError, ValueError, SyntaxError, struct.error, EOFError) as exc:
        raise BadImageError(f"truncated or corrupt image ({exc})") from exc
    if w * h > limits.max_pixels:
        raise BadImageError(f"{w}x{h} pixels exceeds the limit of {limits.max_pixels}")
    return w, h


def decode_views(
    data: bytes,
    geometry: Geometry,
    scales: tuple[float, ...] = (1.0,),
    limits: LoadLimits = LoadLimits(),
    reduce: bool = False,
) -> list[np.ndarray]:
    """The network inputs of an image file's bytes (an upload), one uint8 HxWx3 array per scale,
    decoded and resized as :func:`load_views` treats the same file when indexing (exactly so
    unless ``reduce``: see :func:`decode_bytes`)."""
    img = decode_bytes(data, limits, geometry, scales, reduce)
    try:
        return [resize(img, geometry, s) for s in scales]
    finally:
        img.close()


def _draft_for(
    source: str | os.PathLike[str] | io.BytesIO, geometry: Geometry, scales: tuple[float, ...]
) -> tuple[int, int] | None:
    """The smallest upright size that gives every view full detail (None when the header is unreadable)."""
    try:
        w0, h0 = upright_size(source)
    except Exception:  # the full open reports the real problem (and whether it is transient)
        return None
    if not (w0 and h0):
        return None
    needs = [geometry.needed_size(w0, h0, s) for s in scales]
    return max(n[0] for n in needs), max(n[1] for n in needs)


def _open_checked(
    source: str | os.PathLike[str] | io.BytesIO,
    size: int,
    limits: LoadLimits,
    draft_for: tuple[int, int] | None,
    reduce: bool = False,
) -> Image.Image:
    if size == 0:
        raise BadImageError("empty file")
    if size > limits.max_bytes:
        raise BadImageError(f"file larger than the {limits.max_bytes // 2**20} MiB limit")
    # Pillow's own guard refuses images above 2 x Image.MAX_IMAGE_PIXELS (179M by default) at open;
    # raise it to our limit so that limits.max_pixels decides (checked below, before decoding)
    if Image.MAX_IMAGE_PIXELS is not None and 2 * Image.MAX_IMAGE_PIXELS < limits.max_pixels:
        Image.MAX_IMAGE_PIXELS = limits.max_pixels // 2 + 1
    try:
        img = Image.open(source)
    except UnidentifiedImageError as exc:
        raise BadImageError("not a recognised image") from exc
    except Image.DecompressionBombError as exc:
        raise BadImageError("image exceeds the pixel limit (decompression bomb guard)") from exc
    except OSError as exc:
        raise BadImageError(f"cannot open ({exc})", transient=is_passing_error(exc)) from exc
    try:
        w, h = img.size
        if w * h > limits.max_pixels:
            raise BadImageError(f"{w}x{h} pixels exceeds the limit of {limits.max_pixels}")
        if draft_for is not None and img.format == "JPEG":
            orientation = img.getexif().get(0x0112, 1)
            need = draft_for if orientation not in (5, 6, 7, 8) else (draft_for[1], draft_for[0])
            img.draft("RGB", need)
        img.load()
        decoded: Image.Image = img
        if reduce and draft_for is not None and img.format != "JPEG":
            decoded = _reduced(img, draft_for)
        return to_rgb(ImageOps.exif_transpose(decoded))
    except BadImageError:
        img.close()
        raise
    except Image.DecompressionBombError as exc:
        img.close()
        raise BadImageError("image exceeds the pixel limit (decompression bomb guard)") from exc
    except (OSError, ValueError, SyntaxError, struct.error, EOFError) as exc:
        img.close()
        if is_passing_error(exc):
            raise BadImageError(f"cannot read file ({exc})", transient=True) from exc
        raise BadImageError(f"truncated or corrupt image ({exc})") from exc


def _reduced(img: Image.Image, need: tuple[int, int]) -> Image.Image:
    """``img`` shrunk by the largest whole factor that keeps it at least ``need`` (either
    orientation) in its own mode; itself when no factor of 2 or more fits or the mode has none."""
    factor = min(img.size[0] // max(need), img.size[1] // max(need))
    if factor < 2:
        return img
    orientation = img.getexif().get(0x0112)  # from EXIF bytes or TIFF tags: kept for exif_transpose
    try:
        small = img.reduce(factor)
    except ValueError:  # a mode without reduction (palette, 1-bit): converted whole, as before
        return img
    small.info = dict(img.info)
    if orientation:
        small.getexif()[0x0112] = orientation
    img.close()
    return small


def upright_size(path: str | os.PathLike[str] | io.BytesIO) -> tuple[int, int]:
    """The (width, height) of an image after EXIF orientation, read from the header only."""
    with Image.open(path) as img:
        w, h = img.size
        if img.format == "PNG" and "exif" not in img.info:
            return w, h  # none before the pixels; Pillow would decode them all to look after them
        if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):
            return h, w
        return w, h


def load_views(
    path: str | os.PathLike[str],
    geometry: Geometry,
    scales: tuple[float, ...] = (1.0,),
    limits: LoadLimits = LoadLimits(),
    draft: bool = True,
) -> list[np.ndarray]:
    """Decode ``path`` and return one uint8 HxWx3 array per scale, resized as ``geometry`` says.

    ``draft`` decodes large JPEGs at reduced scale (off only to compare with a full decode). Raises
    BadImageError (``transient`` for permission problems) for unusable files.
    """
    img = open_rgb(path, limits, _draft_for(path, geometry, scales) if draft else None)
    try:
        return [resize(img, geometry, s) for s in scales]
    finally:
        img.close()


def resize(img: Image.Image, geometry: Geometry, scale: float = 1.0) -> np.ndarray:
    """Resize an RGB image as ``geometry`` says and return it as a uint8 HxWx3 array."""
    resample = RESAMPLERS[geometry.resample]
    w, h = img.size
    if geometry.mode == "crop":
        s = max(32, int(round(geometry.size * scale)))
        r = s / min(w, h)
        nw, nh = max(s, round(w * r)), max(s, round(h * r))
        out = img.resize((nw, nh), resample)
        left, top = (nw - s) // 2, (nh - s) // 2
        out = out.crop((left, top, left + s, top + s))
    else:
        out = img.resize(geometry.output_size(w, h, scale), resample)
    return np.asarray(out, dtype=np.uint8)


_EXIF_TIME = re.compile(r"^(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})")


def capture_time(path: str | os.PathLike[str]) -> str | None:
    """When a photo was taken, ``YYYY-MM-DDTHH:MM:SS`` local time: EXIF DateTimeOriginal, else EXIF
    DateTime, else the file's modification time; None if the file cannot be read at all.

    Reads the header only (no decoding).
    """
    try:
        with Image.open(path) as img:
            exif = img.getexif()
            for value in (exif.get_ifd(0x8769).get(0x9003), exif.get(0x0132)):
                if isinstance(value, bytes):
                    value = value.decode("ascii", errors="ignore")
                match = _EXIF_TIME.match(value.strip()) if isinstance(value, str) else None
                if match and match.group(1) != "0000":
                    y, mo, d, h, mi, s = match.groups()
                    return f"{y}-{mo}-{d}T{h}:{mi}:{s}"
    except Exception:  # an unreadable header: the file's time is the best there is
        pass
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(os.stat(path).st_mtime))
    except OSError:
        return None
