"""Atomic file writing: readers see the old file or the complete new one, never a torn write.

The data goes to a temp file in the target's directory (same filesystem, so the final rename is
atomic), is fsynced, gets the permissions an ordinary ``open(path, "w")`` would have given it,
and is then renamed over the target (or hard-linked, when replacing is not allowed); the
directory is fsynced last so the rename survives a crash. On any failure the temp file is
removed and the target is left as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_json", "atomic_write_text"]

#: What :func:`atomic_write` accepts: the bytes themselves, or a function that writes them.
Writer = Callable[[IO[bytes]], object]


def atomic_write(
    path: str | os.PathLike[str],
    data_or_writer: bytes | bytearray | memoryview | Writer,
    *,
    overwrite: bool = True,
    mode: int | None = None,
) -> Path:
    """Write a file atomically.

    Args:
        path: target file; its directory must exist.
        data_or_writer: the bytes to write, or a callable that is given the open binary temp
            file and writes into it (e.g. ``lambda f: img.save(f, format="PNG")``), so large
            outputs need not be built in memory first.
        overwrite: replace an existing target. When False an existing target (even one that
            appears while we write) is never replaced.
        mode: permission bits for the file. Default: those of the file being replaced, else
            ``0o666`` minus the umask, as a normal write would give.

    Returns:
        The path written.

    Raises:
        FileExistsError: the target exists and ``overwrite`` is False.
        TypeError: ``data_or_writer`` is neither bytes-like nor callable (``str`` included:
            use :func:`atomic_write_text`).
        OSError: the directory is missing or not writable, the disk is full, ...; and
            whatever the writer raises. In every case no temp file is left behind.
    """
    if isinstance(data_or_writer, bytes | bytearray | memoryview):
        data = data_or_writer

        def write(f: IO[bytes]) -> object:
            return f.write(data)

    elif callable(data_or_writer):
        write = data_or_writer
    else:
        hint = " (use atomic_write_text for str)" if isinstance(data_or_writer, str) else ""
        raise TypeError(
            f"data_or_writer must be bytes-like or a callable, got "
            f"{type(data_or_writer).__name__}{hint}"
        )
    if mode is not None and not 0 <= mode <= 0o7777:
        raise ValueError(f"mode must be permission bits in 0..0o7777, got {mode:#o}")

    target = Path(path)
    # Fail before running a possibly expensive writer; _move_no_clobber re-checks atomically.
    # lexists: a dangling symlink is still a name we must not replace.
    if not overwrite and os.path.lexists(target):
        raise _exists_error(target)

    parent = target.parent  # Path("name").parent is Path("."), so bare names work too
    fd, tmp_name = tempfile.mkstemp(dir=parent, prefix=temp_prefix(target), suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; give the result the permissions a normal write would.
        os.chmod(tmp, _final_mode(target) if mode is None else mode)
        if overwrite:
            os.replace(tmp, target)
        else:
            _move_no_clobber(tmp, target)
        _fsync_dir(parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return target


def atomic_write_text(
    path: str | os.PathLike[str],
    text: str,
    *,
    encoding: str = "utf-8",
    overwrite: bool = True,
    mode: int | None = None,
) -> Path:
    """Write ``text`` atomically (no newline translation); see :func:`atomic_write`."""
    # Encode first: an unencodable string fails before anything touches the disk.
    return atomic_write(path, text.encode(encoding), overwrite=overwrite, mode=mode)


def atomic_write_json(
    path: str | os.PathLike[str],
    obj: Any,
    *,
    indent: int | None = 2,
    sort_keys: bool = False,
    overwrite: bool = True,
    mode: int | None = None,
) -> Path:
    """Write ``obj`` as JSON (UTF-8, trailing newline) atomically; see :func:`atomic_write`.

    Keys keep their insertion order unless ``sort_keys``. NaN and infinities are refused
    (``ValueError``) rather than written as the non-standard ``NaN``/``Infinity`` that other
    JSON readers reject; like any other serialisation error this happens before the file is
    touched.
    """
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n"
    return atomic_write_text(path, text, overwrite=overwrite, mode=mode)


def _exists_error(target: Path) -> FileExistsError:
    return FileExistsError(f"{target}: already exists (pass overwrite=True to replace it)")


def _final_mode(target: Path) -> int:
    try:
        return stat.S_IMODE(target.stat().st_mode)  # replacing: keep the old permissions
    except OSError:
        pass
    return 0o666 & ~_current_umask()


def _current_umask() -> int:
    # Linux exposes the umask read-only; elsewhere os.umask can only be read by setting it
    # (restored at once, but briefly visible to other threads).
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def temp_prefix(target: Path) -> str:
    """Prefix of ``target``'s temp files: ``.NAME.``, or for a name near the file system's
    255-byte limit a shortened name with a hash, so the temp name itself is never too long."""
    name = Path(target).name
    if len(name.encode()) <= 200:
        return f".{name}."
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return f".{name.encode()[:60].decode(errors='ignore')}-{digest}."


def _move_no_clobber(tmp: Path, target: Path) -> None:
    # link() fails if the target appeared since our lexists() check, unlike replace().
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise _exists_error(target) from None
    except OSError:
        # Filesystems without hard links: best effort re-check, then rename.
        if os.path.lexists(target):
            raise _exists_error(target) from None
        os.replace(tmp, target)
        return
    tmp.unlink()


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every OS/filesystem, so best effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
