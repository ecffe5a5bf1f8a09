"""Bad input, end to end: one bulk run over a folder of every kind of awkward file, each kind
checked for the right outcome and a named reason; and fuzzing of the image reader and the mask
loader (arbitrary bytes raise only their documented error types)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from jaxcloak.cli.main import main
from jaxcloak.io import ImageReadError, read_image
from jaxcloak.methods.facecloak.masks import MaskFileError, load_mask, save_mask

CHEAP = ["--steps", "1", "--views", "1", "--allow-unprotected", "--identity", "per-file"]


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (its pixel data is a stub)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def _jpeg(rgb: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=92, **kw)
    return buf.getvalue()


def _sideways() -> np.ndarray:
    from test_photo import _sideways_portrait

    return _sideways_portrait()[1]


#: name -> (bytes maker or None, expected status or "skipped", words the reason must contain)
def _kinds(astro: np.ndarray) -> dict:
    small = np.asarray(Image.fromarray(astro).resize((256, 256)))
    rgba = np.dstack([small, np.full(small.shape[:2], 128, np.uint8)])
    frames = [Image.fromarray(small), Image.fromarray(255 - small)]

    def save(img, fmt, **kw):
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        return buf.getvalue()

    return {
        "good.png": (lambda: save(Image.fromarray(small), "PNG"), "protected", ""),
        "upper.JPG": (lambda: _jpeg(small), "protected", ""),
        "grey.png": (lambda: save(Image.fromarray(small).convert("L"), "PNG"), "protected", ""),
        "palette.png": (lambda: save(Image.fromarray(small).convert("P"), "PNG"), "protected", ""),
        "cmyk.jpg": (lambda: save(Image.fromarray(small).convert("CMYK"), "JPEG"), "protected", ""),
        "deep16.png": (
            lambda: save(Image.fromarray(small[..., 0].astype(np.uint16) * 257), "PNG"),
            "protected",
            "",
        ),
        "alpha.png": (lambda: save(Image.fromarray(rgba, "RGBA"), "PNG"), "protected", ""),
        "exif-rotated.jpg": (
            lambda: _jpeg(np.ascontiguousarray(np.rot90(small, 1)), exif=_exif_orientation(8)),
            "protected",
            "",
        ),
        "sideways.png": (lambda: save(Image.fromarray(_sideways()), "PNG"), "protected", "turned"),
        "spaces and ü [1].png": (lambda: save(Image.fromarray(small), "PNG"), "protected", ""),
        "n" * 240 + ".png": (lambda: save(Image.fromarray(small), "PNG"), "protected", ""),
        "corrupt.jpg": (lambda: os.urandom(3000), "failed", "not a recognised image file"),
        "text.png": (lambda: b"hello, not a photo", "failed", "not a recognised image file"),
        "empty.jpg": (lambda: b"", "failed", "empty"),
        "truncated.jpg": (lambda: _jpeg(small)[:1500], "failed", "truncated or corrupt"),
        "huge.png": (lambda: _png_header(12000, 12000), "failed", "above the limit"),
        "zero.png": (lambda: _png_header(0, 10), "failed", ""),
        "animated.png": (
            lambda: save(frames[0], "PNG", save_all=True, append_images=frames[1:]),
            "failed",
            "has 2 frames",
        ),
        "pages.tif": (
            lambda: save(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
            "failed",
            "has 2 frames",
        ),
        "transparent-named.jpg": (
            lambda: save(Image.fromarray(rgba, "RGBA"), "PNG"),
            "failed",
            "transparency, which JPEG cannot keep",
        ),
        "blank.png": (
            lambda: save(Image.fromarray(np.full((200, 200, 3), 128, np.uint8)), "PNG"),
            "no-face",
            "no face found",
        ),
        "tiny-face.png": (
            lambda: save(
                Image.fromarray(np.asarray(Image.fromarray(astro).resize((64, 64)))), "PNG"
            ),
            "no-face",
            "no face found",
        ),
        "anim.gif": (lambda: save(frames[0], "GIF"), "skipped", ".gif photos are not supported"),
        "photo.heic": (lambda: b"\0\0\0\x18ftypheic", "skipped", ".heic photos are not supported"),
        "broken-link.jpg": (None, "skipped", "broken symbolic link"),
        "fifo.png": (None, "skipped", "not a regular file"),
    }


def _exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory):
    astro = skimage.data.astronaut()
    src = tmp_path_factory.mktemp("bad_in")
    kinds = _kinds(astro)
    for name, (make, _, _) in kinds.items():
        if name == "broken-link.jpg":
            os.symlink(src / "missing.jpg", src / name)
        elif name == "fifo.png":
            os.mkfifo(src / name)
        else:
            (src / name).write_bytes(make())
    before = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in src.iterdir()
        if p.is_file() and not p.is_symlink() and p.name != "fifo.png"
    }
    out = tmp_path_factory.mktemp("bad_out") / "out"
    import contextlib

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["protect", str(src), "-o", str(out), *CHEAP])
    after = {name: hashlib.sha256((src / name).read_bytes()).hexdigest() for name in before}
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        "kinds": kinds,
        "code": code,
        "stderr": err.getvalue(),
        "records": {Path(p["input"]).name: p for p in manifest["photos"]},
        "inputs_unchanged": before == after,
        "out": out,
    }


def test_the_run_ends_with_a_summary_not_a_traceback(bad_run):
    assert bad_run["code"] == 1  # some photos failed, and the status says so
    assert "Traceback" not in bad_run["stderr"]
    assert bad_run["inputs_unchanged"]
    # No partial outputs: every file in OUTDIR is a finished output, a mask or the manifest.
    leftovers = [p.name for p in bad_run["out"].rglob("*.tmp")]
    assert leftovers == []


@pytest.mark.parametrize("name", list(_kinds(np.zeros((512, 512, 3), np.uint8))))  # names only
def test_each_kind_of_input_ends_as_expected(bad_run, name):
    _, want, words = bad_run["kinds"][name]
    if want == "skipped":
        lines = [ln for ln in bad_run["stderr"].splitlines() if name in ln]
        assert name not in bad_run["records"]
        assert len(lines) == 1 and words in lines[0], lines  # named once, with its reason
        return
    rec = bad_run["records"][name]
    assert rec["status"] == want, rec
    if want == "protected":
        out = Path(rec["output"])
        assert out.is_file() and read_image(out).rgb.shape == read_image(rec["input"]).rgb.shape
        assert not words or any(words in n for n in rec["notes"])
    else:
        assert words in (rec["error"] or ""), rec["error"]
        assert rec["error"].count(rec["input"]) == 1  # the input path once, then the reason


# -- fuzzing ----------------------------------------------------------------------------------

_SEEDS = [
    _jpeg(np.zeros((16, 16, 3), np.uint8)),
    _png_header(16, 16),
]


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int) -> bytes:
    b = bytearray(data)
    for pos, val in edits:
        if b:
            b[pos % len(b)] = val
    return bytes(b[: max(cut, 0)] if cut < len(b) else b)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.sampled_from(range(len(_SEEDS) + 1)),
    raw=st.binary(max_size=512),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
    cut=st.integers(0, 4000),
)
def test_image_reader_raises_only_image_read_error(tmp_path, seed, raw, edits, cut):
    data = raw if seed == len(_SEEDS) else _mutate(_SEEDS[seed], edits, cut)
    img = _load_or_named_error(read_image, tmp_path / "fuzz.img", data, ImageReadError)
    if img is not None:
        assert img.rgb.dtype == np.uint8 and img.rgb.ndim == 3 and img.rgb.shape[2] == 3


def _load_or_named_error(load, path: Path, data: bytes, error: type[Exception]):
    """``load(path)`` of ``data``; None when it raised ``error`` naming the file (any other
    exception fails the test)."""
    path.write_bytes(data)
    try:
        return load(path)
    except error as e:
        assert path.name in str(e)
        return None


def _valid_mask_bytes(tmp: Path) -> bytes:
    p = save_mask(
        tmp / "seed.mask", np.ones((112, 112, 3), np.float32), {"eps": 8 / 255}, overwrite=True
    )
    return p.read_bytes()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    raw=st.binary(max_size=512),
    use_seed=st.booleans(),
    edits=st.lists(st.tuples(st.integers(0, 100_000), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, 200_000),
)
def test_mask_loader_raises_only_mask_file_error(tmp_path, raw, use_seed, edits, cut):
    data = _mutate(_valid_mask_bytes(tmp_path), edits, cut) if use_seed else raw
    mask = _load_or_named_error(load_mask, tmp_path / "fuzz.mask", data, MaskFileError)
    if mask is not None:
        assert mask.delta.shape[2] == 3 and np.isfinite(mask.delta).all()


def test_an_unusable_reference_stops_the_run_before_anything_is_written(tmp_path):
    photos = tmp_path / "in"
    photos.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(photos / "a.png")
    out = tmp_path / "out"
    for ref, why in [(tmp_path / "missing.jpg", "file not found"), (photos / "a.png", "no face")]:
        with pytest.raises(SystemExit, match=rf"error: --reference .*{why}"):
            main(["protect", str(photos), "-o", str(out), "--reference", str(ref)])
        assert not out.exists()
    # with --no-face whole-image a face-less reference is what the user asked for: accepted
    from jaxcloak.cli.commands.protect import _check_reference
    from jaxcloak.cli.main import build_parser

    ref = ["--reference", str(photos / "a.png"), "--no-face", "whole-image"]
    args = build_parser().parse_args(["protect", str(photos), "-o", str(out), *ref])
    _check_reference(args)


def test_a_corrupt_manifest_log_is_one_error_line(tmp_path):
    photos = tmp_path / "in"
    photos.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(photos / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.jsonl").write_text('not json\n{"photo": {}}\n')
    argv = ["protect", str(photos), "-o", str(out), "--identity", "per-file", "--steps", "1"]
    with pytest.raises(SystemExit, match=r"manifest\.jsonl:1: corrupt manifest line.*--no-resume"):
        main([*argv, "--views", "1", "--allow-unprotected"])
