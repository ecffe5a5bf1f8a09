"""Image input/output: safe reading and atomic, metadata-preserving writing."""

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
    "read_image",
    "read_images",
    "write_image",
]
