"""Safe image reading and writing for the cloaking pipeline.

Reading normalises every input to RGB uint8 ``(H, W, 3)`` and keeps what is needed to write a
faithful result: the alpha channel, the EXIF block (orientation reset to 1, because the pixels
are already rotated), the ICC profile and the source format. Anything that is not a decodable
image within the pixel cap is refused with an :class:`ImageReadError` that names the file.

Writing is atomic (:func:`jaxcloak.io.atomic.atomic_write`: temp file in the target directory,
fsync, rename) and refuses to replace the image it was read from, so a crash or a typo can never
destroy a user's original photo.

Truncated files are detected because Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left at its
default ``False``; code that sets it process-wide disables that check.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps

from .atomic import atomic_write

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "ImageWriteError",
    "LoadedImage",
    "read_image",
    "read_images",
    "write_image",
]

#: Default pixel cap (100 megapixels): far above any camera photo we expect, far below what
#: would exhaust memory once converted to float arrays for the attack.
DEFAULT_MAX_PIXELS = 100_000_000

#: File suffixes read as photos when a folder is searched.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

_ORIENTATION_TAG = 0x0112
_HIGH_DEPTH_GREY = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
# Formats whose Pillow writers take an RGBA image; the others get the alpha dropped.
_ALPHA_FORMATS = frozenset({"PNG", "WEBP", "TIFF"})
_EXIF_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "TIFF"})
_ICC_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "TIFF"})
_FORMAT_ALIASES = {"JPG": "JPEG", "JPE": "JPEG", "MPO": "JPEG", "TIF": "TIFF"}


class ImageReadError(ValueError):
    """A file could not be read as an image; the message names the file and the reason."""


class ImageWriteError(ValueError):
    """A write was refused (e.g. it would replace the input image)."""


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """An image normalised for processing, plus what is needed to write it back faithfully.

    ``eq=False`` because comparing numpy arrays with ``==`` is ambiguous; the arrays are marked
    read-only so the frozen dataclass really is immutable (copy before editing in place).
    """

    path: Path | str  # a str only for a URI (decode_image)
    rgb: np.ndarray  # (H, W, 3) uint8, EXIF orientation already applied
    alpha: np.ndarray | None  # (H, W) uint8, or None when the source had no transparency
    format: str | None  # Pillow format name of the source: "JPEG", "PNG", "WEBP", ...
    exif: bytes | None  # EXIF block ("Exif\0\0" + TIFF), orientation reset to 1
    icc_profile: bytes | None  # RGB ICC profile matching ``rgb``, or None
    original_mode: str  # Pillow mode of the source before conversion ("P", "CMYK", "I;16", ...)
    sha256: str  # hex digest of the file bytes, to prove the input was never modified

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the returned pixels."""
        return int(self.rgb.shape[1]), int(self.rgb.shape[0])


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_image(
    path: str | os.PathLike[str], *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> LoadedImage:
    """Read an image file as RGB uint8, honouring its EXIF orientation.

    Args:
        path: the image file.
        max_pixels: refuse images with more pixels than this, checked from the header before
            any pixel is decoded; ``None`` disables the cap. Pillow's own hard limit
            (``2 * PIL.Image.MAX_IMAGE_PIXELS``, about 179 MP) still applies as a last guard.

    Returns:
        A :class:`LoadedImage`.

    Raises:
        ImageReadError: missing, empty, unreadable, not an image, truncated, zero-size, above
            ``max_pixels`` or a decompression bomb. The message names the file.
    """
    p = Path(path)
    return decode_image(_read_bytes(p), p, max_pixels=max_pixels)


def decode_image(
    data: bytes,
    name: str | os.PathLike[str],
    *,
    path: str | os.PathLike[str] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> LoadedImage:
    """:func:`read_image` on a file's bytes fetched elsewhere (another process, object
    storage): ``name`` (a path or URI) is what read errors name, ``path`` (default ``name``)
    what ``LoadedImage.path`` holds (a URI stays a string: it is never a local file)."""
    if max_pixels is not None and max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive or None, got {max_pixels}")
    where = path if path is not None else name
    p = name if isinstance(name, str) and "://" in name else Path(name)
    if not data:
        raise ImageReadError(f"{p}: file is empty")
    digest = hashlib.sha256(data).hexdigest()

    try:
        # Our cap replaces Pillow's soft warning (89 MP); the hard error is still caught below.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"{p}: refused as a decompression bomb ({e})") from e
    except Image.UnidentifiedImageError as e:
        raise ImageReadError(f"{p}: not a recognised image file") from e
    except Exception as e:  # Pillow raises many types for broken headers
        raise ImageReadError(f"{p}: cannot read image header ({type(e).__name__}: {e})") from e

    with img:
        width, height = img.size
        if width <= 0 or height <= 0:
            raise ImageReadError(f"{p}: image has zero size ({width}x{height})")
        n_pixels = width * height
        if max_pixels is not None and n_pixels > max_pixels:
            # Checked before load() so the pixels are never allocated.
            raise ImageReadError(
                f"{p}: image is {width}x{height} = {n_pixels:,} pixels, above the limit of "
                f"{max_pixels:,} pixels (pass a larger max_pixels to read it)"
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                # Force a full decode now: truncated or corrupt data fails here, not later.
                img.load()
        except Image.DecompressionBombError as e:
            raise ImageReadError(f"{p}: refused as a decompression bomb ({e})") from e
        except Exception as e:
            reason = "truncated or corrupt image data"
            raise ImageReadError(f"{p}: {reason} ({type(e).__name__}: {e})") from e

        frames = getattr(img, "n_frames", 1)
        if frames > 1:
            raise ImageReadError(
                f"{p}: has {frames} frames (animation or pages); only single-frame photos are "
                "protected, so it is left as it is"
            )
        try:
            return _normalise(img, p if path is None else where, digest)
        except ImageReadError:
            raise
        except Exception as e:
            raise ImageReadError(
                f"{p}: cannot convert mode {img.mode!r} to RGB ({type(e).__name__}: {e})"
            ) from e


def read_images(
    paths: Iterable[str | os.PathLike[str]], *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> tuple[list[LoadedImage], list[tuple[Path, str]]]:
    """Read many images, carrying on past bad ones.

    Returns:
        ``(images, errors)``: the images that loaded, in input order, and one
        ``(path, message)`` per file that did not.
    """
    images: list[LoadedImage] = []
    errors: list[tuple[Path, str]] = []
    for path in paths:
        try:
            images.append(read_image(path, max_pixels=max_pixels))
        except ImageReadError as e:
            errors.append((Path(path), str(e)))
    return images, errors


def _read_bytes(p: Path) -> bytes:
    try:
        data = p.read_bytes()
    except FileNotFoundError as e:
        raise ImageReadError(f"{p}: file not found") from e
    except IsADirectoryError as e:
        raise ImageReadError(f"{p}: is a directory, not an image file") from e
    except OSError as e:
        raise ImageReadError(f"{p}: cannot read file ({e.strerror or e})") from e
    if not data:
        raise ImageReadError(f"{p}: file is empty")
    return data


def _normalise(img: Image.Image, p: str | os.PathLike[str], digest: str) -> LoadedImage:
    original_mode = img.mode
    fmt = _FORMAT_ALIASES.get(img.format or "", img.format)
    icc = img.info.get("icc_profile") or None
    orientation = img.getexif().get(_ORIENTATION_TAG, 1)
    exif = _exif_with_orientation_reset(img.info.get("exif"), orientation)
    if orientation in range(2, 9):
        img = ImageOps.exif_transpose(img)

    alpha: np.ndarray | None = None
    if img.mode in _HIGH_DEPTH_GREY or img.mode == "F":
        rgb = _high_depth_grey_to_rgb(img)
    elif img.mode == "CMYK":
        rgb, icc = _cmyk_to_rgb(img, icc)
    elif "A" in img.getbands() or "a" in img.getbands() or "transparency" in img.info:
        # Palette/grey/RGB transparency keys and premultiplied modes all unpack to RGBA.
        rgba = np.asarray(img.convert("RGBA"))
        rgb, alpha = rgba[..., :3].copy(), rgba[..., 3].copy()
    elif img.mode == "RGB":
        # np.array(img.convert("RGB")) would copy an RGB image twice (~70 ms per 9 MP photo).
        rgb = np.array(img)
    else:
        rgb = np.array(img.convert("RGB"))

    # A grey or CMYK profile describes different data than our RGB array; attaching it on write
    # would make viewers mis-render (or reject) the file.
    if icc is not None and not _is_rgb_icc(icc):
        icc = None

    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    rgb.setflags(write=False)
    if alpha is not None:
        alpha.setflags(write=False)
    return LoadedImage(
        path=p if isinstance(p, str) and "://" in p else Path(p).absolute(),
        rgb=rgb,
        alpha=alpha,
        format=fmt,
        exif=exif,
        icc_profile=icc,
        original_mode=original_mode,
        sha256=digest,
    )


def _exif_with_orientation_reset(raw: bytes | None, orientation: int) -> bytes | None:
    if not raw:
        return None
    if orientation == 1:
        return raw  # untouched bytes: no risk of losing tags Pillow cannot re-serialise
    # A fresh Exif, not img.getexif(): editing Pillow's cached copy would change what
    # exif_transpose sees.
    exif = Image.Exif()
    exif.load(raw)
    exif[_ORIENTATION_TAG] = 1
    return exif.tobytes()


def _high_depth_grey_to_rgb(img: Image.Image) -> np.ndarray:
    arr = np.asarray(img)
    if img.mode == "F":
        # Float images have no standard range; [0, 1] is the common convention, else 8-bit.
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        scale = 255.0 if arr.size and arr.max() <= 1.0 else 1.0
        grey = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
    else:
        # 16-bit data (mode "I" is how older Pillow and some TIFFs widen it): exact rounding
        # of v * 255 / 65535, so 65535 -> 255 and 257*k -> k.
        v = np.clip(arr.astype(np.int64), 0, 65535)
        grey = ((v * 255 + 32767) // 65535).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def _cmyk_to_rgb(img: Image.Image, icc: bytes | None) -> tuple[np.ndarray, bytes | None]:
    if icc is not None:
        # An embedded CMYK profile gives far better colours than Pillow's naive formula.
        try:
            srgb = ImageCms.createProfile("sRGB")
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            out = ImageCms.profileToProfile(img, src, srgb, outputMode="RGB")
            if out is not None:
                return np.array(out), ImageCms.ImageCmsProfile(srgb).tobytes()
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # broken profile: fall back to the naive conversion below
    return np.array(img.convert("RGB")), None


def _is_rgb_icc(icc: bytes) -> bool:
    # ICC header: the data colour space signature lives at bytes 16..19.
    return len(icc) >= 20 and icc[16:20] == b"RGB "


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def write_image(
    path: str | os.PathLike[str],
    rgb: np.ndarray,
    *,
    like: LoadedImage | None = None,
    format: str | None = None,
    quality: int = 95,
    alpha: np.ndarray | None = None,
    overwrite: bool = False,
    drop_alpha: bool = False,
) -> Path:
    """Write an RGB uint8 image atomically, keeping the metadata of the image it came from.

    Args:
        path: target file; its directory must exist.
        rgb: ``(H, W, 3)`` uint8 pixels.
        like: the :class:`LoadedImage` the pixels came from; its EXIF and ICC profile are
            kept, its alpha is restored when ``alpha`` is not given and the shapes match, and
            its format is the last fallback. Its file is never overwritten.
        format: Pillow format name ("JPEG", "PNG", "WEBP", ...). Default: from the target's
            suffix, else ``like.format``.
        quality: JPEG/WEBP quality 1..100; at 90 and above JPEG uses 4:4:4 chroma subsampling
            so the (perturbed) colour detail survives.
        alpha: ``(H, W)`` uint8 alpha to restore; written for PNG/WEBP/TIFF.
        overwrite: replace an existing target (never the input image itself).
        drop_alpha: allow a format without alpha (JPEG) to lose real transparency; by default
            that is refused (a fully opaque alpha is dropped either way: nothing is lost).

    Returns:
        The path written.

    Raises:
        ImageWriteError: the target is the input image ``like.path``, or the format cannot
            keep the image's transparency and ``drop_alpha`` is False.
        FileExistsError: the target exists and ``overwrite`` is False.
        ValueError: bad array shape/dtype, quality or unknown format.
    """
    target = Path(path)
    arr = _check_rgb(rgb)
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    fmt = _resolve_format(target, format, like)
    alpha_arr = _resolve_alpha(arr, alpha, like)

    # Refuse to replace the input even with overwrite=True: it is the user's original.
    if like is not None and _same_file(target, like.path):
        raise ImageWriteError(f"{target}: refusing to overwrite the input image {like.path}")

    lossy_alpha = alpha_arr is not None and fmt not in _ALPHA_FORMATS and not drop_alpha
    if lossy_alpha and (alpha_arr < 255).any():
        raise ImageWriteError(
            f"{target}: the image has transparency, which {fmt} cannot keep; write it as "
            "PNG or WEBP (--format PNG)"
        )
    img = Image.fromarray(arr, "RGB")
    if alpha_arr is not None and fmt in _ALPHA_FORMATS:
        img.putalpha(Image.fromarray(alpha_arr, "L"))
    params = _save_params(fmt, int(quality), like)
    # Encoding streams straight into the temp file; atomic_write checks overwrite first.
    return atomic_write(target, lambda f: img.save(f, format=fmt, **params), overwrite=overwrite)


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"rgb must have shape (H, W, 3) with H, W > 0, got {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"rgb must be uint8, got {arr.dtype} (clip and round first)")
    return np.ascontiguousarray(arr)


def _resolve_format(target: Path, format: str | None, like: LoadedImage | None) -> str:
    if format:
        fmt = format.upper()
    else:
        Image.init()  # load all plugins so registered_extensions() is complete
        fmt = Image.registered_extensions().get(target.suffix.lower()) or ""
        if not fmt and like is not None and like.format:
            fmt = like.format
    fmt = _FORMAT_ALIASES.get(fmt, fmt)
    if not fmt:
        raise ValueError(f"{target}: cannot infer the image format; pass format=")
    Image.init()
    if fmt not in Image.SAVE:
        raise ValueError(f"{target}: Pillow cannot write format {fmt!r}")
    return fmt


def _resolve_alpha(
    arr: np.ndarray, alpha: np.ndarray | None, like: LoadedImage | None
) -> np.ndarray | None:
    if alpha is not None:
        a = np.asarray(alpha)
        if a.shape != arr.shape[:2] or a.dtype != np.uint8:
            raise ValueError(
                f"alpha must be uint8 with shape {arr.shape[:2]}, got {a.dtype} {a.shape}"
            )
        return np.ascontiguousarray(a)
    if like is not None and like.alpha is not None and like.alpha.shape == arr.shape[:2]:
        return like.alpha
    return None


def _save_params(fmt: str, quality: int, like: LoadedImage | None) -> dict[str, object]:
    params: dict[str, object] = {}
    if fmt == "JPEG":
        params["quality"] = quality
        # 4:4:4 keeps full-resolution chroma; Pillow's default 4:2:0 would blur the cloak.
        params["subsampling"] = 0 if quality >= 90 else 2
        params["optimize"] = True
    elif fmt == "WEBP":
        params["quality"] = quality
    if like is not None:
        if like.exif and fmt in _EXIF_FORMATS:
            params["exif"] = like.exif
        if like.icc_profile and fmt in _ICC_FORMATS:
            params["icc_profile"] = like.icc_profile
    return params


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        # One of them does not exist: compare the resolved spellings instead.
        return a.resolve() == Path(b).resolve()
