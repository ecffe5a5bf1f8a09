"""Photos and outputs named by URI (``s3://``, ``gs://``, ``az://``, ``file://``, any fsspec
protocol) beside plain local paths. Only the Ray engine takes URIs; fsspec is imported here and
only once a URI is used. Object-store credentials come from the usual environment (fsspec's
backends read ``AWS_*``, ``GOOGLE_APPLICATION_CREDENTIALS``, ...)."""

from __future__ import annotations

import posixpath
import re
import uuid
from collections.abc import Iterable
from pathlib import Path

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


def is_uri(name: str | Path) -> bool:
    """Whether ``name`` is a URI (``scheme://...``) rather than a local path."""
    return isinstance(name, str) and bool(_SCHEME.match(name))


def _fs(uri: str):
    from fsspec.core import url_to_fs

    return url_to_fs(uri)


def protocol(uri: str) -> str:
    """The URI's scheme, e.g. ``s3``."""
    return uri.split("://", 1)[0].lower()


def list_photos(uri: str, suffixes: Iterable[str]) -> list[str]:
    """The photo URIs ``uri`` names: itself if it is a file, else every file below it with
    one of ``suffixes`` (hidden entries left out), sorted. Raises FileNotFoundError."""
    fs, path = _fs(uri)
    if fs.isfile(path):
        return [uri]
    if not fs.isdir(path):
        raise FileNotFoundError(f"{uri}: no such file or folder")
    wanted = {s.lower() for s in suffixes}
    found = []
    for p in sorted(fs.find(path)):
        rel = posixpath.relpath(p, path)
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        if posixpath.splitext(p)[1].lower() in wanted:
            found.append(join(uri, rel))
    return found


def join(base: str, rel: str) -> str:
    """``base``/``rel`` for a URI folder and a relative POSIX path."""
    return base.rstrip("/") + "/" + rel.lstrip("/")


def common_folder(uris: list[str]) -> str:
    """The deepest URI folder holding every URI (all must share one scheme and host)."""
    schemes = {protocol(u) for u in uris}
    if len(schemes) != 1:
        raise ValueError(f"inputs mix URI schemes ({', '.join(sorted(schemes))})")
    bodies = [u.split("://", 1)[1] for u in uris]
    folder = posixpath.commonpath([posixpath.dirname(b) or b for b in bodies])
    return f"{schemes.pop()}://{folder}"


def relative(uri: str, folder: str) -> str:
    """``uri``'s path below the URI ``folder``."""
    body, base = uri.split("://", 1)[1], folder.split("://", 1)[1]
    return posixpath.relpath(body, base)


def read_bytes(uri: str) -> bytes:
    """The object's bytes (OSError / FileNotFoundError when it cannot be read)."""
    fs, path = _fs(uri)
    return fs.cat_file(path)


def exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.exists(path)


def files_below(uri: str) -> set[str]:
    """Every file below the URI folder, as URIs (empty when it does not exist)."""
    fs, path = _fs(uri)
    if not fs.isdir(path):
        return set()
    return {join(uri, posixpath.relpath(p, path)) for p in fs.find(path)}


def put_file(local: Path, uri: str) -> None:
    """Upload ``local`` to ``uri`` so that a reader sees the old object or the whole new one.

    Object stores make an upload visible at once when it completes; a file system (``file://``)
    gets a temporary name in the same folder, then a rename.
    """
    fs, path = _fs(uri)
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if "file" in _protocols(fs):
        tmp = f"{parent}/.{posixpath.basename(path)}.{uuid.uuid4().hex[:8]}.tmp"
        fs.put_file(str(local), tmp)
        fs.mv(tmp, path)
    else:
        fs.put_file(str(local), path)


def get_file(uri: str, local: Path) -> None:
    fs, path = _fs(uri)
    fs.get_file(path, str(local))


def _protocols(fs) -> tuple[str, ...]:
    p = fs.protocol
    return (p,) if isinstance(p, str) else tuple(p)
