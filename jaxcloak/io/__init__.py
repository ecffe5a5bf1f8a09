"""File input/output: safe image reading, atomic metadata-preserving writing, atomic files."""

from .atomic import atomic_write, atomic_write_json, atomic_write_text
from .images import (
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    ImageWriteError,
    LoadedImage,
    read_image,
    read_images,
    write_image,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageReadError",
    "ImageWriteError",
    "LoadedImage",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "read_image",
    "read_images",
    "write_image",
]
