"""``protect --engine ray`` on a private local Ray cluster (loopback, 2 CPUs): the same bytes as
the local engine, resume, fsspec URIs, a bad file among good ones, and an actor SIGKILLed
mid-job. Each run is a separate CLI process, as people start it, sharing one compile cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("ray", reason="the [ray] extra is not installed: pip install 'jaxcloak[ray]'")

from jaxcloak.faces.samples import synthetic_photos
from jaxcloak.io.hashing import sha256_file

# Cheapest real settings: the engine is under test here, not the mask's strength.
ARGS = ["--steps", "1", "--views", "1", "--batch", "2", "--allow-unprotected"]
RAY = ["--engine", "ray", "--actors", "2"]


def _protect(
    inputs: list[str], out: str, *extra: str, cache: Path, check_rc: int | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAXCLOAK_COMPILE_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "jaxcloak", "protect", *inputs, "-o", out, *ARGS, *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stdout + proc.stderr
    return proc


def _tree(folder: Path, pattern: str = "*.png") -> dict[str, str]:
    """Digest of every file matching ``pattern`` below ``folder``, by relative path."""
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob(pattern))}


def _manifest(folder: Path) -> dict[str, dict]:
    data = json.loads((folder / "manifest.json").read_text())
    return {Path(r["input"]).name: r for r in data["photos"]}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ray_xla_cache")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Five photos in two people's folders, and a corrupt file among them."""
    d = tmp_path_factory.mktemp("ray_in")
    shots = synthetic_photos(5, seed=11, size=(220, 300), sources=("astronaut",))
    for k, (_, rgb) in enumerate(shots):
        person = d / ("ann" if k < 3 else "bob")
        person.mkdir(exist_ok=True)
        Image.fromarray(rgb).save(person / f"photo-{k}.png")
    (d / "bob" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    return d


def test_ray_equals_local_byte_for_byte_and_resumes(photos, cache, tmp_path):
    local, ray_out = tmp_path / "local", tmp_path / "ray"
    _protect([str(photos)], str(local), "--identity", "per-file", cache=cache, check_rc=1)
    run = _protect([str(photos)], str(ray_out), "--identity", "per-file", *RAY, cache=cache)
    assert run.returncode == 1, run.stdout + run.stderr  # the broken file, as locally
    assert _tree(ray_out) == _tree(local) and len(_tree(local)) == 5
    assert _tree(ray_out / "masks", "*.mask").keys() == _tree(local / "masks", "*.mask").keys()
    got, want = _manifest(ray_out), _manifest(local)
    assert {k: r["status"] for k, r in got.items()} == {k: r["status"] for k, r in want.items()}
    bad = got["broken.png"]
    assert bad["status"] == "failed" and "broken.png" in bad["error"]
    assert "not a recognised image" in bad["error"]
    assert "broken.png" in run.stdout + run.stderr
    for name, rec in got.items():  # paths named as the local engine names them
        assert rec["input"] == want[name]["input"]
        if rec["output"]:
            assert Path(rec["output"]).relative_to(ray_out) == Path(
                want[name]["output"]
            ).relative_to(local)

    again = _protect([str(photos)], str(ray_out), "--identity", "per-file", *RAY, cache=cache)
    assert again.returncode == 1, again.stdout + again.stderr
    assert "wrote 0 photo(s)" in again.stdout and "5 already up to date" in again.stdout
    assert "0 mask(s) fitted" in again.stdout
    assert _tree(ray_out) == _tree(local)
    lines = (ray_out / "manifest.jsonl").read_text().splitlines()
    logged = [json.loads(ln)["photo"]["input"] for ln in lines[1:]]
    # the broken file is tried (and logged) again on the rerun, the others are not
    protected = [r["input"] for r in got.values() if r["status"] == "protected"]
    assert sorted(logged) == sorted(protected + [bad["input"]] * 2)


def test_uri_inputs_and_destination_equal_local_folders(photos, cache, tmp_path):
    """file:// goes through fsspec (listing, reading, uploading) like an object store."""
    local, dest = tmp_path / "local", tmp_path / "dest"
    good = [str(p) for p in sorted(photos.rglob("photo-*.png"))]
    _protect(good, str(local), "--identity", "per-folder", cache=cache, check_rc=0)
    uris = [f"file://{photos / 'ann'}", f"file://{photos / 'bob' / 'photo-3.png'}"]
    uris.append(f"file://{photos / 'bob' / 'photo-4.png'}")
    run = _protect(uris, f"file://{dest}", "--identity", "per-folder", *RAY, cache=cache)
    assert run.returncode == 0, run.stdout + run.stderr
    assert _tree(dest) == _tree(local)
    assert _tree(dest / "masks", "*.mask").keys() == {"ann.mask", "bob.mask"}
    records = json.loads((dest / "manifest.json").read_text())["photos"]
    assert [r["input"] for r in records] == [
        f"file://{p}" for p in sorted(photos.rglob("photo-*.png"))
    ]
    assert all(r["output"].startswith(f"file://{dest}/") for r in records)
    assert not list(dest.rglob("*.tmp"))  # uploads land whole

    # A rerun against the destination's manifests: nothing to do, nothing compiled.
    again = _protect(uris, f"file://{dest}", "--identity", "per-folder", *RAY, cache=cache)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "wrote 0 photo(s)" in again.stdout and "5 already up to date" in again.stdout
    assert _tree(dest) == _tree(local)


def _actor_pids() -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"MapBatches(_Protector)" in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_sigkilled_actor_still_gives_every_photo_once(cache, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for k, (_, rgb) in enumerate(synthetic_photos(8, seed=12, size=(300, 400))):
        Image.fromarray(rgb).save(src / f"p{k}.png")
    local, ray_out = tmp_path / "local", tmp_path / "ray"
    slow = ["--identity", "per-file", "--steps", "6"]  # each batch busy for a while
    _protect([str(src)], str(local), *slow, cache=cache, check_rc=0)
    log = ray_out / "manifest.jsonl"
    killed: list[tuple[int, int]] = []

    def kill_one_actor() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            done = log.read_text().count('"photo"') if log.exists() else 0
            pids = _actor_pids()
            if done >= 1 and pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append((pids[0], done))
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_actor)
    killer.start()
    run = _protect([str(src)], str(ray_out), *slow, *RAY, "--batch", "1", cache=cache)
    killer.join()
    assert killed and killed[0][1] < 8, "the kill did not land mid-job"
    assert run.returncode == 0, run.stdout + run.stderr
    records = json.loads((ray_out / "manifest.json").read_text())["photos"]
    assert sorted(Path(r["input"]).name for r in records) == [f"p{k}.png" for k in range(8)]
    assert all(r["status"] == "protected" for r in records)
    logged = [json.loads(ln)["photo"]["input"] for ln in log.read_text().splitlines()[1:]]
    assert len(logged) == len(set(logged)) == 8  # once each
    for r in records:
        assert sha256_file(Path(r["output"])) == r["output_sha256"]
    assert _tree(ray_out) == _tree(local)
    assert not list(ray_out.rglob("*.tmp"))
