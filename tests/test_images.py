"""Decoding real-world image files into upright RGB arrays (cbir.ingest.decode)."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from PIL import Image, ImageFile, features

from cbir.core.errors import BadImageError
from cbir.ingest import decode as decode_module
from cbir.ingest.decode import (
    Geometry,
    LoadLimits,
    is_passing_error,
    load_views,
    open_rgb,
    resize,
    upright_size,
)


def decode(path, **kwargs) -> np.ndarray:
    img = open_rgb(path, **kwargs)
    assert img.mode == "RGB"
    arr = np.asarray(img)
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    return arr


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


FORMATS = [
    ("jpg", {"quality": 95}, 6.0),
    ("png", {}, 0.0),
    ("bmp", {}, 0.0),
    ("gif", {}, None),  # palette quantisation: only the shape and rough colours are kept
    pytest.param(
        "webp",
        {"lossless": True},
        0.0,
        marks=pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP"),
    ),
    ("tif", {}, 0.0),
]


@pytest.mark.parametrize("ext,kwargs,tolerance", FORMATS)
def test_formats_decode_to_rgb(tmp_path, make_image, image_array, ext, kwargs, tolerance):
    path = make_image(tmp_path / f"x.{ext}", seed=1, width=64, height=48, **kwargs)
    arr = decode(path)
    assert arr.shape == (48, 64, 3)
    expected = image_array(1, 64, 48)
    if tolerance is None:
        assert mean_abs_diff(arr, expected) < 20
    else:
        assert mean_abs_diff(arr, expected) <= tolerance


def test_palette_mode(tmp_path):
    img = Image.new("P", (8, 4))
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    img.putdata([0] * 16 + [1] * 16)
    img.save(tmp_path / "p.png")
    arr = decode(tmp_path / "p.png")
    assert arr[0, 0].tolist() == [255, 0, 0]
    assert arr[3, 7].tolist() == [0, 255, 0]


@pytest.mark.parametrize("ext", ["png", "gif"])
def test_palette_with_transparency_composited_on_white(tmp_path, ext):
    img = Image.new("P", (8, 4))
    img.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    img.putdata([0] * 16 + [1] * 16)  # top half index 0 (black, made transparent), bottom blue
    img.save(tmp_path / f"t.{ext}", transparency=0)
    assert Image.open(tmp_path / f"t.{ext}").mode == "P"
    arr = decode(tmp_path / f"t.{ext}")
    assert arr[0, 0].tolist() == [255, 255, 255]
    assert arr[3, 0].tolist() == [0, 0, 255]


def test_greyscale_mode(tmp_path):
    grey = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (10, 1))
    Image.fromarray(grey, "L").save(tmp_path / "l.png")
    arr = decode(tmp_path / "l.png")
    for c in range(3):
        np.testing.assert_array_equal(arr[..., c], grey)


def test_la_mode_composited_on_white(tmp_path):
    grey = np.full((4, 4), 40, np.uint8)
    alpha = np.zeros((4, 4), np.uint8)
    alpha[2:] = 255
    Image.fromarray(np.stack([grey, alpha], -1), "LA").save(tmp_path / "la.png")
    assert Image.open(tmp_path / "la.png").mode == "LA"
    arr = decode(tmp_path / "la.png")
    assert arr[0, 0].tolist() == [255, 255, 255]  # transparent -> white
    assert arr[3, 3].tolist() == [40, 40, 40]  # opaque -> its own grey


def test_rgba_composited_on_white(tmp_path):
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[0] = (255, 0, 0, 0)  # fully transparent red
    rgba[1] = (0, 0, 255, 255)  # opaque blue
    rgba[2] = (0, 0, 0, 128)  # half-transparent black
    rgba[3] = (0, 200, 0, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    arr = decode(tmp_path / "a.png")
    assert arr[0, 0].tolist() == [255, 255, 255]
    assert arr[1, 0].tolist() == [0, 0, 255]
    assert all(abs(int(v) - 127) <= 2 for v in arr[2, 0])
    assert arr[3, 5].tolist() == [0, 200, 0]


@pytest.mark.parametrize("ext", ["jpg", "tif"])
def test_cmyk(tmp_path, ext):
    Image.new("CMYK", (10, 8), (0, 255, 0, 0)).save(tmp_path / f"c.{ext}")
    assert Image.open(tmp_path / f"c.{ext}").mode == "CMYK"
    arr = decode(tmp_path / f"c.{ext}")
    r, g, b = (int(v) for v in arr[4, 4])
    assert r > 230 and g < 25 and b > 230  # magenta


def test_16_bit_png(tmp_path):
    values = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    arr = decode(tmp_path / "deep.png")
    expected = values.astype(np.float64) / 65535 * 255
    assert np.abs(arr[..., 0] - expected).max() <= 1.0
    np.testing.assert_array_equal(arr[..., 0], arr[..., 2])
    assert arr.max() >= 254 and arr.min() == 0


def test_1_bit(tmp_path):
    bits = np.zeros((8, 8), bool)
    bits[:, 4:] = True
    Image.fromarray(bits).convert("1").save(tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").mode == "1"
    arr = decode(tmp_path / "b.png")
    assert arr[0, 0].tolist() == [0, 0, 0]
    assert arr[0, 7].tolist() == [255, 255, 255]


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert getattr(Image.open(tmp_path / "anim.gif"), "n_frames", 1) == 3
    arr = decode(tmp_path / "anim.gif")
    r, g, b = (int(v) for v in arr[8, 8])
    assert r > 240 and g < 15 and b < 15


ROTATIONS = {
    # EXIF orientation -> how the stored pixels relate to the upright picture
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,  # viewers turn it 90 degrees clockwise
    8: Image.Transpose.ROTATE_270,
}


def save_exif_rotated(path, upright: Image.Image, orientation: int, **kwargs) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    upright.transpose(ROTATIONS[orientation]).save(path, exif=exif, quality=95, **kwargs)


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_rotated_jpeg_matches_upright_twin(tmp_path, image_array, orientation):
    upright = Image.fromarray(image_array(7, 120, 80))
    upright.save(tmp_path / "upright.jpg", quality=95)
    save_exif_rotated(tmp_path / "rotated.jpg", upright, orientation)
    a = decode(tmp_path / "upright.jpg")
    b = decode(tmp_path / "rotated.jpg")
    assert a.shape == b.shape == (80, 120, 3)
    assert mean_abs_diff(a, b) < 4
    # the raw stored pixels are really different: ignoring the tag would fail the test above
    undo = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_270, 8: Image.Transpose.ROTATE_90}
    raw = np.asarray(Image.open(tmp_path / "rotated.jpg").convert("RGB").transpose(undo[orientation]))
    raw_wrong = np.asarray(Image.open(tmp_path / "rotated.jpg").convert("RGB").resize((120, 80)))
    assert mean_abs_diff(a, raw) < 4 and mean_abs_diff(a, raw_wrong) > 20
    assert upright_size(tmp_path / "rotated.jpg") == (120, 80)


def test_exif_rotated_large_jpeg_with_draft(tmp_path, image_array):
    upright = Image.fromarray(image_array(8, 1600, 1200))
    upright.save(tmp_path / "upright.jpg", quality=92)
    save_exif_rotated(tmp_path / "rotated.jpg", upright, 6)
    geometry = Geometry(224, "short", "bilinear")
    (a,) = load_views(tmp_path / "upright.jpg", geometry)
    (b,) = load_views(tmp_path / "rotated.jpg", geometry)
    (c,) = load_views(tmp_path / "rotated.jpg", geometry, draft=False)
    assert a.shape == b.shape == c.shape == (224, 288, 3)
    assert mean_abs_diff(a, b) < 4 and mean_abs_diff(b, c) < 4


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(BadImageError, match="empty"):
        open_rgb(tmp_path / "empty.jpg")


def test_truncated_jpeg(tmp_path, make_image):
    path = make_image(tmp_path / "full.jpg", seed=2, width=400, height=300, quality=95)
    data = path.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError, match="truncated"):
        open_rgb(tmp_path / "cut.jpg")
    with pytest.raises(BadImageError):
        load_views(tmp_path / "cut.jpg", Geometry(64))


def test_text_file_with_jpg_extension(tmp_path):
    (tmp_path / "notes.jpg").write_text("this is not an image\n")
    with pytest.raises(BadImageError, match="not a recognised image"):
        open_rgb(tmp_path / "notes.jpg")
    with pytest.raises(BadImageError):
        load_views(tmp_path / "notes.jpg", Geometry(64))


def test_missing_file(tmp_path):
    with pytest.raises(BadImageError, match="cannot read"):
        open_rgb(tmp_path / "gone.jpg")


def test_pixel_limit(tmp_path, make_image):
    path = make_image(tmp_path / "x.png", width=80, height=60)
    with pytest.raises(BadImageError, match="exceeds the limit"):
        open_rgb(path, LoadLimits(max_pixels=80 * 60 - 1))
    assert decode(path, limits=LoadLimits(max_pixels=80 * 60)).shape == (60, 80, 3)


def test_pixel_limit_is_ours_not_pillows(tmp_path, make_image, monkeypatch):
    # Pillow refuses images above 2 x Image.MAX_IMAGE_PIXELS (179M by default) before our check runs;
    # a limit above that must still be honoured (scaled-down here to keep the test small).
    path = make_image(tmp_path / "x.png", width=80, height=60)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert decode(path, limits=LoadLimits(max_pixels=10_000)).shape == (60, 80, 3)
    with pytest.raises(BadImageError):
        open_rgb(path, LoadLimits(max_pixels=4000))


def test_byte_limit(tmp_path, make_image):
    path = make_image(tmp_path / "x.png", width=80, height=60)
    size = path.stat().st_size
    with pytest.raises(BadImageError, match="larger than"):
        open_rgb(path, LoadLimits(max_bytes=size - 1))
    assert decode(path, limits=LoadLimits(max_bytes=size)).shape == (60, 80, 3)


@pytest.mark.parametrize(
    "mode,w,h,expected",
    [
        ("squash", 640, 480, (224, 224)),
        ("squash", 100, 3000, (224, 224)),
        ("crop", 640, 480, (224, 224)),
        ("short", 640, 480, (288, 224)),  # 298.7 snapped to a multiple of 32
        ("short", 480, 640, (224, 288)),
        ("long", 640, 480, (224, 160)),  # 168 snapped to 160
        ("long", 480, 640, (160, 224)),
        ("long", 224, 224, (224, 224)),
        ("long", 3000, 20, (224, 32)),  # never below one multiple
    ],
)
def test_geometry_output_size(mode, w, h, expected):
    assert Geometry(224, mode).output_size(w, h) == expected


def test_geometry_scales_and_multiple():
    assert Geometry(224, "squash").output_size(640, 480, scale=0.5) == (112, 112)
    assert Geometry(224, "long").output_size(640, 400, scale=2.0) == (448, 288)  # 280 -> 288
    assert Geometry(224, "long", multiple=8).output_size(640, 480) == (224, 168)
    assert Geometry(64, "squash").output_size(10, 10, scale=0.1) == (32, 32)


@pytest.mark.parametrize("mode", ["squash", "crop", "short", "long"])
def test_resize_matches_output_size(image_array, mode):
    img = Image.fromarray(image_array(3, 300, 200))
    geometry = Geometry(96, mode, "bilinear")
    arr = resize(img, geometry)
    assert arr.dtype == np.uint8
    assert (arr.shape[1], arr.shape[0]) == geometry.output_size(300, 200)
    need_w, need_h = geometry.needed_size(300, 200)
    assert need_w >= arr.shape[1] and need_h >= arr.shape[0]


def test_crop_is_centred():
    pixels = np.zeros((100, 300, 3), np.uint8)
    pixels[:, 100:200] = 255  # white centre third, black sides
    arr = resize(Image.fromarray(pixels), Geometry(50, "crop", "nearest"))
    assert arr.shape == (50, 50, 3)
    assert arr.min() == 255


def test_geometry_validation():
    with pytest.raises(ValueError, match="geometry mode"):
        Geometry(224, "stretch")
    with pytest.raises(ValueError, match="resampling"):
        Geometry(224, "squash", "cubic")
    with pytest.raises(ValueError, match="at least 32"):
        Geometry(16)


@pytest.mark.parametrize("mode", ["squash", "crop", "long"])
def test_draft_decoding_of_large_jpeg(tmp_path, image_array, mode):
    rng = np.random.default_rng(0)
    pixels = image_array(5, 2400, 1600).astype(np.int16) + rng.integers(-12, 13, (1600, 2400, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(tmp_path / "big.jpg", quality=90)
    geometry = Geometry(224, mode, "bilinear")
    (fast,) = load_views(tmp_path / "big.jpg", geometry, draft=True)
    (full,) = load_views(tmp_path / "big.jpg", geometry, draft=False)
    assert fast.shape == full.shape
    assert mean_abs_diff(fast, full) < 3
    # and draft really decoded at a reduced scale, still covering what the geometry needs
    need = geometry.needed_size(2400, 1600)
    reduced = open_rgb(tmp_path / "big.jpg", draft_for=need)
    assert reduced.size[0] < 2400 and reduced.size[0] >= need[0] and reduced.size[1] >= need[1]


def test_multi_scale_views(tmp_path, make_image):
    path = make_image(tmp_path / "x.jpg", width=400, height=300)
    views = load_views(path, Geometry(64, "squash"), scales=(1.0, 0.5, 2.0))
    assert [v.shape for v in views] == [(64, 64, 3), (32, 32, 3), (128, 128, 3)]


# --- transient failures: permission problems may be fixed without the file changing ------------------


def test_unreadable_file_is_a_transient_failure(tmp_path, make_image):
    path = make_image(tmp_path / "locked.jpg")
    os.chmod(path, 0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("this user reads files whatever their mode (root)")
        with pytest.raises(BadImageError, match="Permission denied") as info:
            open_rgb(path)
        assert info.value.transient
        with pytest.raises(BadImageError) as info:
            load_views(path, Geometry(64))
        assert info.value.transient
    finally:
        os.chmod(path, 0o644)
    assert load_views(path, Geometry(64))[0].shape == (64, 64, 3)  # fixed: usable again


def test_unreadable_folder_is_a_transient_failure(tmp_path, make_image):
    path = make_image(tmp_path / "locked" / "a.png")
    os.chmod(path.parent, 0)
    try:
        if os.access(path.parent, os.X_OK):
            pytest.skip("this user opens folders whatever their mode (root)")
        with pytest.raises(BadImageError, match="cannot read file") as info:
            load_views(path, Geometry(64))
        assert info.value.transient
    finally:
        os.chmod(path.parent, 0o755)


@pytest.mark.parametrize(
    "exc",
    [
        PermissionError(errno.EACCES, "Permission denied"),
        OSError(errno.EPERM, "Operation not permitted"),
        OSError(errno.EACCES, "Permission denied"),
    ],
)
@pytest.mark.parametrize("where", ["stat", "open", "read"])
def test_access_errors_are_transient_wherever_they_happen(tmp_path, make_image, monkeypatch, exc, where):
    # the same as a chmod, for users (root) the kernel never refuses
    path = make_image(tmp_path / "x.jpg")

    def fail(*args, **kwargs):
        raise exc

    if where == "stat":
        monkeypatch.setattr(decode_module.os.path, "getsize", fail)
    elif where == "open":
        monkeypatch.setattr(decode_module.Image, "open", fail)
    else:
        monkeypatch.setattr(ImageFile.ImageFile, "load", fail)
    with pytest.raises(BadImageError) as info:
        open_rgb(path)
    assert info.value.transient and "corrupt" not in str(info.value), str(info.value)
    with pytest.raises(BadImageError) as info:
        load_views(path, Geometry(64))
    assert info.value.transient


def test_other_failures_are_not_transient(tmp_path, make_image):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    path = make_image(tmp_path / "full.jpg", width=400, height=300)
    (tmp_path / "cut.jpg").write_bytes(path.read_bytes()[:2000])
    for name in ("empty.jpg", "text.jpg", "cut.jpg"):
        with pytest.raises(BadImageError) as info:
            load_views(tmp_path / name, Geometry(64))
        assert not info.value.transient, name
    with pytest.raises(BadImageError) as info:
        open_rgb(path, LoadLimits(max_pixels=10))
    assert not info.value.transient
    assert BadImageError("x").transient is False and str(BadImageError("x", transient=True)) == "x"


def test_is_passing_error():
    assert is_passing_error(PermissionError("no"))
    assert is_passing_error(OSError(errno.EPERM, "no"))
    assert is_passing_error(OSError(errno.ENOENT, "gone"))
    assert is_passing_error(FileNotFoundError(errno.ENOENT, "gone"))
    assert is_passing_error(OSError(errno.EIO, "Input/output error"))
    assert not is_passing_error(OSError("image file is truncated"))  # Pillow's: no errno, the content's
    assert not is_passing_error(ValueError("bad"))
