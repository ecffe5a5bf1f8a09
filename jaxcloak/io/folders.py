"""Photos in folders: the one walk every command uses to find image files, and the rule that
names a gallery photo's person after its path."""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import Literal, NamedTuple

from .images import IMAGE_SUFFIXES

__all__ = ["FolderScan", "Skipped", "identity_from_path", "scan_folder"]


class Skipped(NamedTuple):
    """An entry :func:`scan_folder` passed over, and why.

    ``why``: ``"suffix"`` (a file whose suffix is not in :data:`.images.IMAGE_SUFFIXES`),
    ``"broken-link"`` or ``"not-regular"`` (an image name that is a dangling symbolic link, or
    not a regular file: a pipe, a socket, ...), ``"unreadable"`` (a folder that could not be
    listed; ``error`` says why).
    """

    path: Path
    why: Literal["suffix", "broken-link", "not-regular", "unreadable"]
    error: OSError | None = None


class FolderScan(NamedTuple):
    """What :func:`scan_folder` found: ``images`` sorted by path, ``skipped`` in walk order."""

    images: list[Path]
    skipped: list[Skipped]


def scan_folder(
    root: str | os.PathLike,
    *,
    hidden_files: bool = False,
    skip_folders: Collection[str] = (),
    exclude: str | os.PathLike | None = None,
) -> FolderScan:
    """Image files under ``root``, recursively (suffixes compared case-insensitively).

    Hidden folders (a name starting with ``.``) are never entered, nor are symbolic links to
    folders; links to files count as the file they point to. The walk goes through each
    folder's files, then its subfolders, both by name.

    Args:
      root: the folder.
      hidden_files: also look at hidden files (by default they are left out, silently).
      skip_folders: folder names never entered, at any depth (e.g. ``{"masks"}``).
      exclude: a folder whose contents are left out, silently (compared after resolving
        links, so a link into it is left out too).

    Returns:
      The images, and every other entry with the reason it is not one, for the caller to
      report or ignore.
    """
    root = Path(root)
    skip = Path(exclude).resolve() if exclude is not None else None
    images: list[Path] = []
    skipped: list[Skipped] = []

    def excluded(path: Path) -> bool:
        return skip is not None and path.resolve().is_relative_to(skip)

    def unreadable(err: OSError) -> None:
        skipped.append(Skipped(Path(err.filename) if err.filename else root, "unreadable", err))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        d = Path(dirpath)
        dirnames[:] = sorted(
            n
            for n in dirnames
            if not n.startswith(".") and n not in skip_folders and not excluded(d / n)
        )
        for name in sorted(filenames):
            f = d / name
            if (name.startswith(".") and not hidden_files) or excluded(f):
                continue
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append(Skipped(f, "suffix"))
            elif f.is_symlink() and not f.exists():
                skipped.append(Skipped(f, "broken-link"))
            elif not f.is_file():
                skipped.append(Skipped(f, "not-regular"))
            else:
                images.append(f)
    return FolderScan(sorted(images), skipped)


def identity_from_path(rel: Path) -> str:
    """The person a gallery photo shows, from its path below the gallery folder: the first-level
    subfolder's name, else the file name up to the first ``_`` (``alice_01.jpg`` -> ``alice``)."""
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem.split("_")[0]
