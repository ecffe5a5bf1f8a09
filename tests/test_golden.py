"""Golden outputs: ``protect`` with a fixed seed writes the same bytes it wrote when these
digests were recorded, for the demo photo and for a small folder under each kind of
``--identity`` grouping. Guards refactors of the pipelines against silent behaviour changes.

What is compared: every written photo byte for byte; every mask's arrays byte for byte and
its metadata as JSON; ``manifest.json`` as JSON. Left out: timestamps (``created``), run times
(``seconds``, the report's time line), compile statistics, the running log ``manifest.jsonl``
and the temporary folder's absolute path.

The digests are exact XLA CPU results, so they hold for the machine type they were recorded
on (the CI machine type); elsewhere the test is skipped and says why. To record them anew
after an intended change: ``python tests/test_golden.py --write`` (and say why in the commit).
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).parent / "golden" / "protect.json"
FAST = ["--steps", "1", "--views", "1", "--batch", "2", "--allow-unprotected", "--seed", "7"]
RUNS = {
    "demo": ["--demo", "--steps", "2", "--views", "2", "--no-eval", "--seed", "3"],
    "single": ["{in}", "--identity", "single", *FAST],
    "per-folder": ["{in}", "--identity", "per-folder", *FAST],
    "per-file": ["{in}", "--identity", "per-file", *FAST],
}
VOLATILE = {"seconds", "compilation", "created"}


def machine() -> str:
    """What the exact digests depend on: the jaxlib build and the CPU it ran on."""
    import jaxlib

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"jaxlib {jaxlib.__version__} {platform.machine()} {cpu or platform.processor()}"


def _photos(folder: Path) -> None:
    from PIL import Image

    from jaxcloak.faces.samples import synthetic_photos

    shots = synthetic_photos(4, seed=5, size=(240, 320), sources=("astronaut",))
    for k, (_, rgb) in enumerate(shots):
        sub = folder / ("alice" if k < 2 else "bob")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(sub / f"p{k}.jpg", quality=92)


def _clean(value, root: str):
    if isinstance(value, dict):
        return {k: _clean(v, root) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_clean(v, root) for v in value]
    if isinstance(value, str):
        return value.replace(root, "<tmp>")
    return value


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _mask_digest(path: Path, root: str) -> dict:
    out = {}
    with zipfile.ZipFile(path) as z:
        for name in sorted(z.namelist()):
            if name == "meta.npy":
                blob = np.load(io.BytesIO(z.read(name)))
                out[name] = _clean(json.loads(bytes(blob)), root)
            else:
                out[name] = _digest(z.read(name))
    return out


def snapshot(outdir: Path, root: str) -> dict:
    """Digest of everything a run wrote that must not change."""
    files = {}
    for p in sorted(outdir.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(outdir).as_posix()
        if p.suffix == ".jsonl":
            continue  # the running log; manifest.json is its final form
        if p.name == "manifest.json":
            files[rel] = _clean(json.loads(p.read_text()), root)
        elif p.suffix == ".mask":
            files[rel] = _mask_digest(p, root)
        elif p.suffix == ".md":
            lines = p.read_text().replace(root, "<tmp>").splitlines()
            files[rel] = [ln for ln in lines if not ln.startswith("- Time:")]
        else:
            files[rel] = _digest(p.read_bytes())
    return files


def run_all(tmp: Path) -> dict:
    from jaxcloak.cli.main import main

    inputs = tmp / "in"
    _photos(inputs)
    result = {}
    for name, args in RUNS.items():
        out = tmp / name
        argv = [a.replace("{in}", str(inputs)) for a in args]
        rc = main(["protect", *argv, "-o", str(out), "--no-compile-cache"])
        result[name] = {"exit status": rc, **snapshot(out, str(tmp))}
    return result


@pytest.fixture(scope="module")
def golden() -> dict:
    data = json.loads(GOLDEN.read_text())
    if data["machine"] != machine():
        pytest.skip(f"golden digests were recorded on '{data['machine']}', this is '{machine()}'")
    return data


@pytest.fixture(scope="module")
def current(golden, tmp_path_factory) -> dict:
    return run_all(tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize("run", list(RUNS))
def test_protect_outputs_unchanged(golden, current, run):
    got, want = current[run], golden["runs"][run]
    assert sorted(got) == sorted(want), f"{run}: files written changed"
    for rel in want:
        assert got[rel] == want[rel], f"{run}: {rel} changed"


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        runs = run_all(Path(d))
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps({"machine": machine(), "runs": runs}, indent=1) + "\n")
    print(f"wrote {GOLDEN}")
