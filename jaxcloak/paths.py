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


def package_file(package: str, relative: str, install_hint: str) -> Callable[[], Path]:
    """Locate a file inside an installed package without importing (running) it."""

    def locate() -> Path:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise FileNotFoundError(f"package {package!r} is not installed; {install_hint}")
        path = Path(spec.origin).parent / relative
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing from the installed {package!r}; {install_hint}"
            )
        return path

    return locate
