"""The package's layering: every import inside ``jaxcloak`` points down, never up or sideways.

Walks the source (module-level and function-local imports alike, relative or absolute) and
checks each import against the ranks below. A new package needs a rank here, chosen by what it
may use; README's "Architecture" section explains the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "jaxcloak"

#: Higher ranks may import lower ones. Equal ranks are peers and may not import each other.
RANKS = {
    "__main__": 120,
    "cli": 110,
    "configs": 100,  # the presets the CLI reads; library code takes config objects
    "serve": 95,  # the web app: jobs on the bulk engine, verdicts from the evaluators
    "pipelines": 90,
    "evaluate": 80,
    "methods": 71,  # the namespace package only
    "methods.facecloak": 70,
    "methods.map": 70,
    "zoo": 60,
    "objectives": 50,
    "optim": 50,
    "diffusion": 45,
    "faces": 40,
    "nets": 30,
    "convert": 20,
    "ops": 15,
    "io": 10,
    "runtime": 6,
    "precision": 6,
    "parallel": 5,
    "paths": 2,
    "typing": 2,
    "": 0,  # the package root: __version__
}


def _unit(module: str) -> str:
    """The layer a dotted module name (without the leading ``jaxcloak``) belongs to."""
    parts = module.split(".") if module else []
    if parts[:1] == ["methods"] and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0] if parts else ""


def _module_name(path: Path) -> list[str]:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def imports() -> list[tuple[str, str, int]]:
    """``(importing file, imported module relative to jaxcloak, line)`` for every import."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name[:-1]
        rel = path.relative_to(PACKAGE.parent).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - (node.level - 1)]
                    target = base + (node.module.split(".") if node.module else [])
                elif node.module and node.module.split(".")[0] == "jaxcloak":
                    target = node.module.split(".")[1:]
                else:
                    continue
                # ``from . import x`` imports the submodule x when there is one
                for alias in node.names:
                    sub = PACKAGE.joinpath(*target, alias.name)
                    is_module = sub.with_suffix(".py").exists() or sub.is_dir()
                    found.append((rel, ".".join(target + [alias.name] * is_module), node.lineno))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "jaxcloak":
                        found.append((rel, ".".join(alias.name.split(".")[1:]), node.lineno))
    return found


def test_every_package_has_a_rank():
    units = {_unit(".".join(_module_name(p))) for p in PACKAGE.rglob("*.py")}
    assert units - set(RANKS) == set(), "give these packages a rank in RANKS"


def test_imports_point_down():
    bad = []
    for where, target, line in imports():
        src = _unit(".".join(_module_name(PACKAGE.parent / where)))
        dst = _unit(target)
        if src != dst and RANKS[src] <= RANKS[dst]:
            bad.append(f"{where}:{line}: {src} imports {target} ({dst})")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_import_by_name_string():
    """Importing by name at run time would hide edges from the check above."""
    ways = ("import_module", "__import__", "spec_from_file_location", "importlib.util.module_")
    offenders = [
        f"{p.relative_to(PACKAGE.parent)}: {way}"
        for p in PACKAGE.rglob("*.py")
        for way in ways
        if way in p.read_text()
    ]
    assert not offenders


@pytest.mark.parametrize(
    ("src", "dst", "allowed"),
    [
        ("cli", "pipelines", True),
        ("nets", "zoo", False),
        ("methods.map", "methods.facecloak", False),
    ],
)
def test_ranks_say_what_the_readme_says(src, dst, allowed):
    assert (RANKS[src] > RANKS[dst]) is allowed


def test_every_import_inside_the_package_resolves():
    """Function-local imports run only when their code does: check each one names a module,
    and names in it, that exist, so a moved module cannot leave a dangling import."""
    import importlib

    def module(name: str):
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as e:
            if (e.name or "").startswith("jaxcloak"):
                return None
            pytest.skip(f"optional package {e.name} is not installed")

    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level):
                continue
            where = path.relative_to(PACKAGE.parent)
            full = ["jaxcloak", *package]
            if node.level > len(full):
                bad.append(f"{where}:{node.lineno}: relative import beyond the package")
                continue
            base = full[: len(full) - (node.level - 1)]
            target = ".".join([*base, *([node.module] if node.module else [])])
            found = module(target)
            for alias in node.names:
                ok = found is not None and (
                    hasattr(found, alias.name) or module(f"{target}.{alias.name}") is not None
                )
                if not ok:
                    bad.append(f"{where}:{node.lineno}: {target}.{alias.name}")
    assert not bad, "imports of names that do not exist:\n" + "\n".join(bad)


#: Optional packages and the only modules that may import them (the rest of jaxcloak works
#: without them installed).
OPTIONAL = {
    "ray": {"pipelines/ray_engine.py"},
    "fsspec": {"io/locations.py"},
    "fastapi": {"serve/app.py"},
    "uvicorn": {"cli/commands/serve.py"},
}


def test_optional_packages_stay_in_their_module():
    found: dict[str, set[str]] = {name: set() for name in OPTIONAL}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in found:
                    found[top].add(path.relative_to(PACKAGE).as_posix())
    assert found == OPTIONAL
