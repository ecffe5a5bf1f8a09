"""Where jaxcloak keeps its files, and where installed packages keep the model files it reads."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path


def home() -> Path:
    """The jaxcloak data directory: ``$JAXCLOAK_HOME`` or the platform's user cache dir."""
    env = os.environ.get("JAXCLOAK_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("jaxcloak"))


def package_dir(package: str) -> Path | None:
    """The folder of an installed top-level package, found without importing (running) it;
    ``None`` when it is not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def package_file(package: str, relative: str, install_hint: str) -> Callable[[], Path]:
    """Locate a file inside an installed package without importing (running) it.

    Returns a function that gives the file's path, or raises :class:`FileNotFoundError` naming
    the package or the file and ``install_hint``.
    """

    def locate() -> Path:
        folder = package_dir(package)
        if folder is None:
            raise FileNotFoundError(f"package {package!r} is not installed; {install_hint}")
        path = folder / relative
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing from the installed {package!r}; {install_hint}"
            )
        return path

    return locate
