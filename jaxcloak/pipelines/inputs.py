"""What a protect job is made of: input files found in folders, and the units they are
protected in (one person's photos, or for ``--identity per-file`` one photo whose every face is
its own person)."""

from __future__ import annotations

import csv
import hashlib
import os
import posixpath
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..io.folders import scan_folder
from ..io.images import IMAGE_SUFFIXES


def collect_inputs(
    paths: Iterable[str | os.PathLike], *, exclude: str | os.PathLike | None = None
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand files and folders (recursively, image suffixes only) into a sorted unique list.

    ``exclude``: a folder whose files are never inputs (the job's output folder, when it lies
    inside an input folder, so a rerun does not protect its own outputs).
    Returns ``(files, errors)``; a path that does not exist is an error, not an exception.
    """
    files: list[Path] = []
    errors: list[tuple[Path, str]] = []
    skip = Path(exclude).resolve() if exclude is not None else None
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found, skipped = _scan_folder(p, skip)
            errors.extend(skipped)
            if not found and not skipped:
                errors.append(
                    (p, f"{p}: folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
                )
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            errors.append((p, f"{p}: no such file or folder"))
    seen, unique = set(), []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, errors


#: Image formats people have that jaxcloak does not protect: named when skipped, not silent.
UNSUPPORTED_SUFFIXES = frozenset({".gif", ".heic", ".heif", ".avif", ".jxl", ".jp2"})


def _scan_folder(root: Path, skip: Path | None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files under ``root`` (hidden entries and ``skip`` left out), sorted, and the
    entries passed over with their reason: unsupported formats, broken links, non-regular
    files, unreadable subfolders."""
    scan = scan_folder(root, exclude=skip)
    skipped: list[tuple[Path, str]] = []
    for f, why, err in scan.skipped:
        if why == "unreadable":
            skipped.append((f, f"{f}: folder skipped, cannot be read ({err.strerror})"))
        elif why == "suffix" and f.suffix.lower() in UNSUPPORTED_SUFFIXES:
            skipped.append((f, f"{f}: skipped, {f.suffix.lower()} photos are not supported"))
        elif why == "broken-link":
            skipped.append((f, f"{f}: skipped, a broken symbolic link"))
        elif why == "not-regular":
            skipped.append((f, f"{f}: skipped, not a regular file"))
    return scan.images, skipped


def group_identities(files: Sequence[Path], mode: str) -> dict[str, list[Path]]:
    """Which photos show the same person: ``single`` (all), ``per-folder``, or a CSV file with
    ``path,identity`` rows (paths relative to the CSV's folder or absolute). ``per-file`` makes
    no groups: :func:`identity_units` gives each photo a unit of its own."""
    if mode == "single":
        return {"person": list(files)}
    if mode == "per-folder":
        groups: dict[str, list[Path]] = {}
        for f in files:
            groups.setdefault(_slug(str(f.parent.resolve().name) or "root"), []).append(f)
        return groups
    table = _identity_table(mode)
    by_path: dict[Path, str] = {}
    for name, ident in _identity_rows(table):
        p = Path(name)
        by_path[(p if p.is_absolute() else table.parent / p).resolve()] = ident
    groups = {}
    for f in files:
        ident = by_path.get(f.resolve())
        if ident is None:
            raise ValueError(f"{table}: no identity for {f}")
        groups.setdefault(_slug(ident), []).append(f)
    return groups


def _identity_table(mode: str) -> Path:
    """The CSV an ``--identity`` that is none of the named rules must be."""
    table = Path(mode)
    if table.suffix.lower() != ".csv" or not table.is_file():
        raise ValueError(
            "--identity must be single, per-file, per-folder or an existing .csv file, "
            f"got {mode!r}"
        )
    return table


def _identity_rows(table: Path) -> list[tuple[str, str]]:
    """``(path, identity)`` rows of an identity CSV: comments, blank lines and a
    ``path,identity`` header skipped; a row without an identity is an error naming its line."""
    rows = []
    with table.open(newline="") as fh:
        for n, row in enumerate(csv.reader(fh), 1):
            if not row or row[0].startswith("#") or (n == 1 and row[:2] == ["path", "identity"]):
                continue
            if len(row) < 2 or not row[1].strip():
                raise ValueError(f"{table}:{n}: expected 'path,identity', got {row!r}")
            rows.append((row[0], row[1].strip()))
    return rows


def _slug(name: str) -> str:
    """A file-name-safe identity name; long ones are cut and keep a hash of the whole, so mask
    file names stay unique and far below the file system's 255-byte limit."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "person"
    if len(slug) > 150:
        slug = f"{slug[:100]}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    return slug


def common_root(files: Sequence[Path]) -> Path:
    """The deepest folder holding every file (outputs mirror the tree below it)."""
    parents = [str(f.resolve().parent) for f in files]
    return Path(os.path.commonpath(parents)) if parents else Path.cwd()


#: One unit of work: a name and its photos (``identity_units``).
Unit = tuple[str, list[Path]]


def identity_units(files: Sequence[Path], mode: str, root: Path) -> list[Unit]:
    """The job's units in the order they are protected and shared between processes.

    ``per-file``: one unit per photo, in input order, named after its path below ``root`` (the
    job's root, so every process names a photo alike); every face on it is its own person.
    Other modes (:func:`group_identities`): one unit per person, sorted by name.
    """
    if mode == "per-file":
        return [(photo_identity(f.resolve().relative_to(root)), [f]) for f in files]
    return sorted(group_identities(files, mode).items())


def photo_identity(rel: Path) -> str:
    """Name of a per-file unit: the photo's relative path without its suffix, file-name safe."""
    return _slug(str(rel.with_suffix("")).replace(os.sep, "__"))


def face_identity(unit: str, face: int, n_faces: int) -> str:
    """Identity of face ``face`` of a unit's reference photo: the unit's name, with the face's
    index when the photo shows several people."""
    return unit if n_faces == 1 else f"{unit}-face{face}"


def stray_identity(unit: str, photo: Path, face: int) -> str:
    """Identity of a face that matches none of its unit's reference faces: a person of its
    own, named after the unit, the photo and the face."""
    return f"{unit}-{_slug(photo.stem)}-face{face}"


def uri_units(uris: Sequence[str], mode: str, folder: str) -> list[tuple[str, list[str]]]:
    """:func:`identity_units` for photos named by URI below the URI ``folder``: the same
    names a local job gives the same tree (a CSV lists URIs in its path column)."""
    from ..io.locations import relative

    if mode == "per-file":
        return [(photo_identity(Path(relative(u, folder))), [u]) for u in uris]
    if mode == "single":
        return [("person", list(uris))]
    groups: dict[str, list[str]] = {}
    if mode == "per-folder":
        for u in uris:
            parent = posixpath.basename(posixpath.dirname(u.split("://", 1)[1]))
            groups.setdefault(_slug(parent or "root"), []).append(u)
        return sorted(groups.items())
    table = _identity_table(mode)
    by_uri = {name.strip(): ident for name, ident in _identity_rows(table)}
    for u in uris:
        if u not in by_uri:
            raise ValueError(f"{table}: no identity for {u}")
        groups.setdefault(_slug(by_uri[u]), []).append(u)
    return sorted(groups.items())


def collect_uris(
    uris: Iterable[str], *, exclude: str | None = None
) -> tuple[list[str], list[tuple[str, str]]]:
    """:func:`collect_inputs` for URIs: photo URIs and URI folders (listed recursively, image
    suffixes only, hidden entries left out) into a unique list in the order given.

    ``exclude``: a URI folder whose objects are never inputs (the job's destination, when it
    lies below an input folder). Returns ``(uris, errors)``.
    """
    from ..io.images import IMAGE_SUFFIXES
    from ..io.locations import list_photos

    found: list[str] = []
    errors: list[tuple[str, str]] = []
    skip = exclude.rstrip("/") + "/" if exclude else None
    for uri in uris:
        try:
            listed = list_photos(uri, IMAGE_SUFFIXES)
        except FileNotFoundError as e:
            errors.append((uri, str(e)))
            continue
        except Exception as e:  # a backend's own error (credentials, network): named, not fatal
            errors.append((uri, f"{uri}: cannot be listed ({type(e).__name__}: {e})"))
            continue
        listed = [u for u in listed if not (skip and u.startswith(skip))]
        if not listed:
            errors.append(
                (uri, f"{uri}: folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            )
        found.extend(listed)
    return list(dict.fromkeys(found)), errors
