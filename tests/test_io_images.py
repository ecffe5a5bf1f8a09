"""jaxcloak.io.images on a hand-made corpus of good and bad files built in a temp directory."""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageCms, ImageFile, JpegImagePlugin

from jaxcloak.io import (
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    ImageWriteError,
    LoadedImage,
    read_image,
    read_images,
    write_image,
)

HUGE_W, HUGE_H = 12000, 9000
VALUES16 = np.array([[0, 257, 65535, 32768, 1000, 65280]], dtype=np.uint16)
# round(v * 255 / 65535) for VALUES16
EXPECTED8 = np.array([[0, 1, 255, 128, 4, 254]], dtype=np.uint8)
BAD = ("empty.jpg", "text.jpg", "truncated.jpg", "huge.png", "zero_width.png", "missing.png")
GOOD = (
    "one_pixel.png",
    "grey16.png",
    "rgb16.png",
    "cmyk.jpg",
    "rgba.png",
    "palette.png",
    "palette_transparent.png",
    "rotated6.jpg",
    "icc.jpg",
    "icc.png",
    "astronaut.jpg",
)


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(tag + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def _bilevel_png(width: int, height: int) -> bytes:
    """A black 1-bit PNG built row by row, so a 108 MP file never exists in memory."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    comp = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte 0 + packed zero bits
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


# Built once: each createProfile() call stamps the current time into the header.
SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()[::4, ::4].copy()  # 128x128 keeps the file fast


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray):
    """Build every test input once; fail the module if any input file changed afterwards."""
    d = tmp_path_factory.mktemp("corpus")
    src = Image.fromarray(astronaut)

    (d / "empty.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("this is not a JPEG, just text with a .jpg name\n")
    src.save(d / "astronaut.jpg", quality=95, subsampling=0)
    full = (d / "astronaut.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (d / "huge.png").write_bytes(_bilevel_png(HUGE_W, HUGE_H))
    (d / "zero_width.png").write_bytes(_bilevel_png(0, 5))

    Image.new("RGB", (1, 1), (10, 20, 30)).save(d / "one_pixel.png")
    Image.fromarray(VALUES16).save(d / "grey16.png")  # mode I;16
    # 16-bit RGB PNG: Pillow's writer cannot make one, so hand-build it (colour type 2, depth 16).
    rgb16 = np.stack([VALUES16, VALUES16[:, ::-1], np.full_like(VALUES16, 65535)], axis=-1)
    raw = b"".join(b"\x00" + r.astype(">u2").tobytes() for r in rgb16)
    ihdr = struct.pack(">IIBBBBB", rgb16.shape[1], rgb16.shape[0], 16, 2, 0, 0, 0)
    (d / "rgb16.png").write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )

    src.convert("CMYK").save(d / "cmyk.jpg", quality=95, subsampling=0)

    alpha = np.tile(np.linspace(0, 255, astronaut.shape[1]).astype(np.uint8), (128, 1))
    rgba = np.dstack([astronaut, alpha])
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")

    pal = src.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    pal.save(d / "palette.png")
    pal.save(d / "palette_transparent.png", transparency=0)

    # Stored landscape 128x64 with orientation 6: displays as portrait 64x128.
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "jaxcloak-test-camera"  # Make: proves other tags survive
    Image.fromarray(astronaut[:64]).save(d / "rotated6.jpg", quality=95, subsampling=0, exif=exif)

    src.save(d / "icc.jpg", quality=95, subsampling=0, icc_profile=SRGB_ICC)
    src.save(d / "icc.png", icc_profile=SRGB_ICC)

    files = sorted(p for p in d.iterdir())
    before = {p.name: _sha(p) for p in files}
    yield d
    after = {p.name: _sha(d / p.name) for p in files}
    assert after == before, "an input file was modified"


# ---------------------------------------------------------------------------- refusals


def test_truncated_loading_stays_strict() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("missing.png", "not found"),
        ("empty.jpg", "empty"),
        ("text.jpg", "not a recognised image"),
        ("truncated.jpg", "truncated"),
        ("zero_width.png", "image"),  # Pillow refuses a 0-wide PNG header outright
    ],
)
def test_bad_files_refused_naming_file(corpus: Path, name: str, reason: str) -> None:
    with pytest.raises(ImageReadError, match=reason) as info:
        read_image(corpus / name)
    assert name in str(info.value)
    assert isinstance(info.value, ValueError)


def test_huge_image_refused_from_header(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded = []
    real_load = ImageFile.ImageFile.load

    def spy_load(self):  # records any attempt to decode pixels
        decoded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)
    with pytest.raises(ImageReadError) as info:
        read_image(corpus / "huge.png")
    msg = str(info.value)
    assert "huge.png" in msg
    assert "108,000,000 pixels" in msg and f"{HUGE_W}x{HUGE_H}" in msg
    assert f"{DEFAULT_MAX_PIXELS:,}" in msg
    assert decoded == []  # refused before any pixel was allocated


def test_max_pixels_configurable(corpus: Path) -> None:
    with pytest.raises(ImageReadError, match="above the limit"):
        read_image(corpus / "astronaut.jpg", max_pixels=128 * 128 - 1)
    assert read_image(corpus / "astronaut.jpg", max_pixels=128 * 128).rgb.shape == (128, 128, 3)
    with pytest.raises(ValueError, match="max_pixels"):
        read_image(corpus / "astronaut.jpg", max_pixels=0)


@pytest.mark.slow
def test_huge_image_decoded_without_cap(corpus: Path) -> None:
    img = read_image(corpus / "huge.png", max_pixels=None)
    assert img.rgb.shape == (HUGE_H, HUGE_W, 3)
    assert img.rgb[::1000, ::1000].max() == 0


def test_pillow_decompression_bomb_caught(tmp_path: Path) -> None:
    # Above Pillow's own hard limit (2 * MAX_IMAGE_PIXELS) even with our cap disabled.
    side = int((2 * Image.MAX_IMAGE_PIXELS) ** 0.5) + 2
    path = tmp_path / "bomb.png"
    path.write_bytes(_bilevel_png(side, side))
    with pytest.raises(ImageReadError, match="decompression bomb") as info:
        read_image(path, max_pixels=None)
    assert "bomb.png" in str(info.value)


# ---------------------------------------------------------------------------- conversions


def test_plain_jpeg(corpus: Path, astronaut: np.ndarray) -> None:
    img = read_image(corpus / "astronaut.jpg")
    assert isinstance(img, LoadedImage)
    assert img.rgb.dtype == np.uint8 and img.rgb.shape == (128, 128, 3)
    assert img.format == "JPEG" and img.original_mode == "RGB"
    assert img.alpha is None and img.exif is None and img.icc_profile is None
    assert img.sha256 == _sha(corpus / "astronaut.jpg")
    assert img.path.is_absolute() and img.size == (128, 128)
    assert np.abs(img.rgb.astype(int) - astronaut).mean() < 3
    with pytest.raises(ValueError):  # read-only: LoadedImage is immutable
        img.rgb[0, 0, 0] = 1


def test_one_pixel(corpus: Path) -> None:
    img = read_image(corpus / "one_pixel.png")
    assert img.rgb.shape == (1, 1, 3)
    assert img.rgb[0, 0].tolist() == [10, 20, 30]


def test_grey_16bit_values(corpus: Path) -> None:
    img = read_image(corpus / "grey16.png")
    assert img.original_mode.startswith("I")
    assert img.rgb.dtype == np.uint8 and img.rgb.shape == (1, 6, 3)
    for c in range(3):
        np.testing.assert_array_equal(img.rgb[..., c], EXPECTED8)


def test_rgb_16bit_values(corpus: Path) -> None:
    img = read_image(corpus / "rgb16.png")
    assert img.rgb.shape == (1, 6, 3)
    # Pillow keeps the high byte of 16-bit RGB: within 1 of exact rounding.
    assert np.abs(img.rgb[..., 0].astype(int) - EXPECTED8).max() <= 1
    assert np.abs(img.rgb[..., 1].astype(int) - EXPECTED8[:, ::-1]).max() <= 1
    assert (img.rgb[..., 2] == 255).all()


@pytest.mark.parametrize(
    ("mode", "suffix", "pixels", "expected"),
    [
        ("L", ".png", np.array([[0, 7, 255]], np.uint8), [0, 7, 255]),
        ("1", ".png", np.array([[False, True, True]]), [0, 255, 255]),
        ("F", ".tif", np.array([[0.0, 0.5, 1.0]], np.float32), [0, 128, 255]),
        ("I", ".tif", np.array([[0, 257, 65535]], np.int32), [0, 1, 255]),
    ],
)
def test_grey_modes(
    tmp_path: Path, mode: str, suffix: str, pixels: np.ndarray, expected: list[int]
) -> None:
    path = tmp_path / f"grey{suffix}"
    Image.fromarray(pixels).save(path)
    img = read_image(path)
    assert img.original_mode == mode
    assert img.rgb.shape == (1, 3, 3)
    for c in range(3):
        assert img.rgb[0, :, c].tolist() == expected


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "GIF"])
def test_multi_frame_images_are_refused_not_cut_to_one_frame(tmp_path: Path, fmt: str) -> None:
    frames = [Image.fromarray(np.full((16, 16, 3), v, np.uint8)) for v in (10, 200)]
    path = tmp_path / f"anim.{fmt.lower()}"
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:])
    with pytest.raises(ImageReadError, match=r"anim\..*: has 2 frames"):
        read_image(path)


def test_grey_alpha(tmp_path: Path) -> None:
    la = np.array([[[10, 0], [20, 128], [30, 255]]], np.uint8)
    path = tmp_path / "la.png"
    Image.fromarray(la, "LA").save(path)
    img = read_image(path)
    assert img.original_mode == "LA"
    assert img.rgb[0, :, 1].tolist() == [10, 20, 30]
    assert img.alpha is not None and img.alpha[0].tolist() == [0, 128, 255]


def test_cmyk_jpeg(corpus: Path, astronaut: np.ndarray) -> None:
    img = read_image(corpus / "cmyk.jpg")
    assert img.original_mode == "CMYK"
    assert img.rgb.shape == (128, 128, 3) and img.rgb.dtype == np.uint8
    assert np.abs(img.rgb.astype(int) - astronaut).mean() < 6


def test_rgba_alpha_kept_and_restored(corpus: Path, astronaut: np.ndarray, tmp_path: Path):
    img = read_image(corpus / "rgba.png")
    assert img.original_mode == "RGBA"
    np.testing.assert_array_equal(img.rgb, astronaut)
    assert img.alpha is not None and img.alpha.shape == (128, 128)
    assert img.alpha[0, 0] == 0 and img.alpha[0, -1] == 255

    out = write_image(tmp_path / "out.png", img.rgb, like=img)
    with Image.open(out) as back:
        assert back.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(back)[..., 3], img.alpha)
        np.testing.assert_array_equal(np.asarray(back)[..., :3], astronaut)

    webp = write_image(tmp_path / "out.webp", img.rgb, like=img, alpha=img.alpha)
    with Image.open(webp) as back:
        assert back.mode == "RGBA"

    with pytest.raises(ImageWriteError, match="transparency, which JPEG cannot keep"):
        write_image(tmp_path / "out.jpg", img.rgb, like=img)  # JPEG has no alpha
    assert not (tmp_path / "out.jpg").exists()
    jpg = write_image(tmp_path / "out.jpg", img.rgb, like=img, drop_alpha=True)
    with Image.open(jpg) as back:
        assert back.mode == "RGB"

    with pytest.raises(ValueError, match="alpha"):
        write_image(tmp_path / "bad.png", img.rgb, alpha=np.zeros((2, 2), np.uint8))


def test_palette(corpus: Path) -> None:
    img = read_image(corpus / "palette.png")
    assert img.original_mode == "P" and img.alpha is None
    with Image.open(corpus / "palette.png") as ref:
        np.testing.assert_array_equal(img.rgb, np.asarray(ref.convert("RGB")))

    img_t = read_image(corpus / "palette_transparent.png")
    with Image.open(corpus / "palette_transparent.png") as ref:
        transparent = np.asarray(ref) == 0
    assert img_t.alpha is not None and transparent.any()
    assert (img_t.alpha[transparent] == 0).all() and (img_t.alpha[~transparent] == 255).all()


def test_exif_rotation(corpus: Path, astronaut: np.ndarray, tmp_path: Path) -> None:
    img = read_image(corpus / "rotated6.jpg")
    # Stored 64 high x 128 wide; orientation 6 means "rotate 90 degrees clockwise to display".
    assert img.rgb.shape == (128, 64, 3)
    expected = np.rot90(astronaut[:64], k=-1)
    assert np.abs(img.rgb.astype(int) - expected).mean() < 3
    assert img.exif is not None

    out = write_image(tmp_path / "out.jpg", img.rgb, like=img)
    with Image.open(out) as back:
        exif = back.getexif()
        assert exif[0x0112] == 1
        assert exif[0x010F] == "jaxcloak-test-camera"
        assert back.size == (64, 128)
    kept = Image.Exif()
    kept.load(img.exif)
    assert kept[0x0112] == 1
    assert read_image(out).rgb.shape == (128, 64, 3)  # not rotated a second time


@pytest.mark.parametrize("source", ["icc.jpg", "icc.png"])
@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
def test_icc_profile_round_trip(corpus: Path, tmp_path: Path, source: str, suffix: str) -> None:
    icc = SRGB_ICC
    img = read_image(corpus / source)
    assert img.icc_profile == icc
    out = write_image(tmp_path / f"out{suffix}", img.rgb, like=img)
    with Image.open(out) as back:
        assert back.info.get("icc_profile") == icc
    assert read_image(out).icc_profile == icc


# ---------------------------------------------------------------------------- writing


def test_jpeg_quality_and_subsampling(corpus: Path, tmp_path: Path) -> None:
    img = read_image(corpus / "astronaut.jpg")
    low = write_image(tmp_path / "low.jpg", img.rgb, quality=30)
    high = write_image(tmp_path / "high.jpg", img.rgb)  # default 95
    assert low.stat().st_size < high.stat().st_size
    with Image.open(high) as h, Image.open(low) as lo:
        assert JpegImagePlugin.get_sampling(h) == 0  # 4:4:4
        assert JpegImagePlugin.get_sampling(lo) == 2  # 4:2:0
    with pytest.raises(ValueError, match="quality"):
        write_image(tmp_path / "q.jpg", img.rgb, quality=0)


def test_format_resolution(corpus: Path, tmp_path: Path) -> None:
    img = read_image(corpus / "astronaut.jpg")
    out = write_image(tmp_path / "noext", img.rgb, like=img)  # falls back to like.format
    with Image.open(out) as back:
        assert back.format == "JPEG"
    out = write_image(tmp_path / "forced.jpg", img.rgb, format="png")  # explicit wins
    with Image.open(out) as back:
        assert back.format == "PNG"
    with pytest.raises(ValueError, match="format"):
        write_image(tmp_path / "unknown", img.rgb)
    with pytest.raises(ValueError, match="uint8"):
        write_image(tmp_path / "f.png", img.rgb.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        write_image(tmp_path / "g.png", img.rgb[..., 0])


def test_atomic_write_leaves_no_temp_files(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    img = read_image(corpus / "astronaut.jpg")
    write_image(tmp_path / "a.jpg", img.rgb, like=img)
    write_image(tmp_path / "b.png", img.rgb, like=img)
    write_image(tmp_path / "a.jpg", img.rgb, like=img, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "b.png"]
    assert (tmp_path / "a.jpg").stat().st_mode & 0o777 != 0o600  # not mkstemp's private mode

    def failing_save(self, *args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_image(tmp_path / "c.jpg", img.rgb)
    good = (tmp_path / "a.jpg").read_bytes()
    with pytest.raises(OSError, match="disk full"):
        write_image(tmp_path / "a.jpg", img.rgb, overwrite=True)
    assert (tmp_path / "a.jpg").read_bytes() == good  # old file intact after a failed replace
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "b.png"]


def test_existing_target_needs_overwrite(corpus: Path, tmp_path: Path) -> None:
    img = read_image(corpus / "astronaut.jpg")
    target = tmp_path / "t.png"
    target.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match=r"t\.png"):
        write_image(target, img.rgb)
    assert target.read_bytes() == b"keep me"
    write_image(target, img.rgb, overwrite=True)
    assert read_image(target).rgb.shape == (128, 128, 3)


def test_never_overwrites_input(corpus: Path, tmp_path: Path) -> None:
    img = read_image(corpus / "astronaut.jpg")
    before = _sha(corpus / "astronaut.jpg")
    spellings = [
        img.path,
        corpus / "." / "astronaut.jpg",
        corpus / ".." / corpus.name / img.path.name,
    ]
    link = tmp_path / "link.jpg"
    link.symlink_to(img.path)
    spellings.append(link)
    for target in spellings:
        with pytest.raises(ImageWriteError, match="input"):
            write_image(target, img.rgb, like=img, overwrite=True)
    assert _sha(corpus / "astronaut.jpg") == before
    assert not list(corpus.glob(".*.tmp"))


def test_read_images_keeps_going(corpus: Path) -> None:
    paths = [corpus / n for n in BAD + GOOD]
    loaded, errors = read_images(paths)
    assert [im.path.name for im in loaded] == list(GOOD)
    assert [p.name for p, _ in errors] == list(BAD)
    for path, message in errors:
        assert path.name in message


def test_inputs_unchanged(corpus: Path) -> None:
    # The corpus fixture re-hashes every input at teardown; this also checks no stray temp files.
    names = {p.name for p in corpus.iterdir()}
    assert names == (set(BAD) - {"missing.png"}) | set(GOOD)
