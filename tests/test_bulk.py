"""Bulk protection end to end through the CLI, as separate processes: kill and resume,
persistent compile cache, and two processes with a loopback coordinator == one process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxcloak.faces.samples import synthetic_photos
from jaxcloak.io import read_image
from jaxcloak.methods.facecloak.masks import load_mask
from jaxcloak.pipelines.inputs import face_identity, photo_identity
from jaxcloak.pipelines.records import read_log
from jaxcloak.runtime import init_distributed, process_share

N_PHOTOS = 10  # enough after the first batch that a kill lands mid-run
# Cheapest real settings: the pipeline is under test here, not the mask's strength.
ARGS = [
    "--identity",
    "per-file",
    "--steps",
    "1",
    "--views",
    "1",
    "--batch",
    "2",
    "--allow-unprotected",
]


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "JAXCLOAK_COMPILE_CACHE": str(cache)}


def _cmd(photos: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jaxcloak", "protect", str(photos), "-o", str(out), *ARGS, *extra]


def _done_lines(manifest: Path) -> int:
    try:
        return sum('"photo"' in ln for ln in manifest.read_text().splitlines())
    except OSError:
        return 0


def _kill_once_done(cmd: list[str], cache: Path, manifest: Path, n: int) -> None:
    """Start ``cmd`` and SIGKILL it as soon as ``manifest`` lists ``n`` finished photos."""
    proc = subprocess.Popen(cmd, env=_env(cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 400
    while _done_lines(manifest) < n and proc.poll() is None:
        assert time.monotonic() < deadline, "first run made no progress"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _compiled(stdout: str) -> int:
    line = next(ln for ln in stdout.splitlines() if ln.startswith("compilation:"))
    return int(line.split()[1])


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bulk_in")
    # Two small photos first (the batch the kill test waits for), then larger ones, so the run
    # is still busy for a good while after the first batch lands: once the step got fast,
    # six small photos finished within 0.1 s of the first two.
    small = synthetic_photos(2, seed=3, size=(220, 300), sources=("astronaut",))
    large = synthetic_photos(N_PHOTOS - 2, seed=4, size=(900, 1200), sources=("astronaut",))
    for k, (_, rgb) in enumerate([*small, *large]):
        Image.fromarray(rgb).save(d / f"photo-{k:02d}.jpg", quality=92)
    return d


@pytest.fixture(scope="module")
def killed_and_resumed(photos, tmp_path_factory):
    """Run, SIGKILL once two photos are done, run again; return what both runs left."""
    # Convert SFace and embed the anchor pool into the session's model cache first, so both
    # runs start from the same cached model (a fresh conversion traces slightly different
    # weight-staging programs than a cache load, which would blur the compile-count check).
    from jaxcloak.methods.facecloak.anchors import builtin_pool
    from jaxcloak.zoo.registry import load

    builtin_pool().embeddings(load("sface"))
    tmp = tmp_path_factory.mktemp("bulk_out")
    out, cache = tmp / "out", tmp / "xla-cache"
    _kill_once_done(_cmd(photos, out), cache, out / "manifest.jsonl", 2)
    first = json.loads((out / "manifest.jsonl").read_text().splitlines()[1])["photo"]
    stat_before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.jpg")}
    done_before = {
        json.loads(ln)["photo"]["input"]
        for ln in (out / "manifest.jsonl").read_text().splitlines()[1:]
        if ln.strip().endswith("}")
    }
    again = subprocess.run(
        _cmd(photos, out), env=_env(cache), capture_output=True, text=True, timeout=600
    )
    return {
        "out": out,
        "cache": cache,
        "first": first,
        "stat_before": stat_before,
        "done_before": done_before,
        "again": again,
        "killed_early": len(done_before) < N_PHOTOS,
    }


def test_killed_run_resumes_without_redoing_or_corrupting(killed_and_resumed, photos):
    r = killed_and_resumed
    again, out = r["again"], r["out"]
    assert again.returncode == 0, again.stdout + again.stderr
    assert r["killed_early"], "the first run finished before it could be killed"
    manifest = json.loads((out / "manifest.json").read_text())
    status = {Path(p["input"]).name: p["status"] for p in manifest["photos"]}
    assert len(status) == N_PHOTOS
    # Photos finished before the kill are not redone, the rest are protected now.
    for inp in r["done_before"]:
        assert status[Path(inp).name] == "up-to-date"
    assert list(status.values()).count("protected") == N_PHOTOS - len(r["done_before"])
    for name, (ino, mtime) in r["stat_before"].items():
        if str(photos / name) in r["done_before"]:
            st = (out / name).stat()
            assert (st.st_ino, st.st_mtime_ns) == (ino, mtime), f"{name} was rewritten"
    # Every output decodes and is the photo's size; no temp files are left behind.
    for p in manifest["photos"]:
        img = read_image(p["output"])
        assert img.rgb.shape == read_image(p["input"]).rgb.shape
        assert img.sha256 == p["output_sha256"]
    assert not list(out.rglob("*.tmp"))
    assert f"{len(r['done_before'])} already up to date" in again.stdout
    assert len(manifest["masks"]) == N_PHOTOS  # one face each, masks of both runs


def test_second_run_loads_every_program_from_the_persistent_cache(killed_and_resumed, photos):
    """The same job again, into a new folder: every program comes from the cache."""
    r = killed_and_resumed
    out = r["out"].with_name("second")
    run = subprocess.run(
        _cmd(photos, out), env=_env(r["cache"]), capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert _compiled(run.stdout) == 0, run.stdout
    data = json.loads((out / "manifest.json").read_text())["compilation"]
    # Everything loaded: at least the fit and the one bucketed embedding program.
    assert data["compiled"] == 0 and data["cache_hits"] >= 2
    assert Path(data["cache_dir"]) == r["cache"]
    # Same bytes as the killed-and-resumed job: determinism across processes and restarts.
    for p in photos.glob("*.jpg"):
        assert (out / p.name).read_bytes() == (r["out"] / p.name).read_bytes()


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_two_processes_split_the_job_and_equal_one_process(killed_and_resumed, photos, tmp_path):
    single = killed_and_resumed["out"]
    out = tmp_path / "two"
    port = _free_port()
    procs = [
        subprocess.Popen(
            _cmd(
                photos,
                out,
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ),
            env=_env(killed_and_resumed["cache"]),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    shares = []
    for i in range(2):
        m = json.loads((out / f"manifest.p{i}of2.json").read_text())
        shares.append({Path(p["input"]).name for p in m["photos"]})
        assert all(p["status"] == "protected" for p in m["photos"])
        assert f"process {i} of 2" in logs[i]
    assert shares[0].isdisjoint(shares[1])
    assert shares[0] | shares[1] == {p.name for p in photos.glob("*.jpg")}
    assert len(shares[0]) == len(shares[1]) == N_PHOTOS // 2
    for name in shares[0] | shares[1]:
        assert (out / name).read_bytes() == (single / name).read_bytes(), name


def test_process_share_is_a_deterministic_partition():
    items = list(range(11))
    parts = [process_share(items, i, 3) for i in range(3)]
    assert sorted(x for p in parts for x in p) == items
    assert parts[0] == [0, 3, 6, 9]
    with pytest.raises(ValueError, match="outside"):
        process_share(items, 3, 3)


def test_multi_process_flags_are_checked():
    with pytest.raises(ValueError, match="needs --num-processes"):
        init_distributed("127.0.0.1:1234", None, None)
    with pytest.raises(ValueError, match=r"process-id must be in 0\.\.1"):
        init_distributed("127.0.0.1:1234", 2, 2)
    with pytest.raises(ValueError, match="needs --coordinator"):
        init_distributed(None, 2, 0)
    assert init_distributed(None, None, None) == (0, 1)


def test_manifest_log_survives_a_torn_last_line(tmp_path):
    run = {"config_hash": "h", "seed": 0, "surrogate": "s"}
    rec = {"input": "a.jpg", "status": "protected"}
    log = tmp_path / "m.jsonl"
    log.write_text(
        json.dumps({"run": run}) + "\n" + json.dumps({"photo": rec}) + '\n{"photo": {"inp'
    )
    assert read_log(log, run) == {"a.jpg": rec}
    assert read_log(log, {**run, "seed": 1}) == {}  # other settings: start over
    log.write_text(json.dumps({"run": run}) + "\ngarbage\n" + json.dumps({"photo": rec}) + "\n")
    with pytest.raises(ValueError, match=r"m\.jsonl:2: corrupt"):
        read_log(log, run)


def test_mask_names_are_stable_and_unique_per_face():
    assert face_identity(photo_identity(Path("a/b c.jpg")), 0, 1) == "a__b_c"
    assert face_identity(photo_identity(Path("a/b c.jpg")), 1, 2) == "a__b_c-face1"


def test_group_run_killed_mid_person_resumes_to_the_same_bytes(tmp_path):
    """--identity per-folder through the same engine: a kill after the first person's photos,
    a rerun skips them and fits the half-done second person again to the same mask, so every
    output equals an uninterrupted run's."""
    inp = tmp_path / "in"
    small = synthetic_photos(2, seed=3, size=(220, 300), sources=("astronaut",))
    large = synthetic_photos(6, seed=4, size=(900, 1200), sources=("astronaut",))
    for k, (_, rgb) in enumerate([*small, *large]):
        folder = inp / ("ann" if k < 2 else "bob" if k < 5 else "cy")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(folder / f"p{k}.jpg", quality=92)
    cache, out, clean = tmp_path / "xla-cache", tmp_path / "out", tmp_path / "clean"
    args = [*ARGS[2:], "--identity", "per-folder", "--readers", "1", "--writers", "1"]

    def cmd(dest: Path) -> list[str]:
        return [sys.executable, "-m", "jaxcloak", "protect", str(inp), "-o", str(dest), *args]

    _kill_once_done(cmd(out), cache, out / "manifest.jsonl", 2)
    lines = (out / "manifest.jsonl").read_text().splitlines()[1:]
    done_before = {json.loads(ln)["photo"]["input"] for ln in lines if ln.strip().endswith("}")}
    assert 2 <= len(done_before) < 8, "the first run was not killed mid-job"
    again = subprocess.run(cmd(out), env=_env(cache), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    photos = json.loads((out / "manifest.json").read_text())["photos"]
    status = {p["input"]: p["status"] for p in photos}
    assert len(status) == 8 and all(status[i] == "up-to-date" for i in done_before)
    assert list(status.values()).count("protected") == 8 - len(done_before)
    run = subprocess.run(cmd(clean), env=_env(cache), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    for p in inp.rglob("*.jpg"):
        rel = p.relative_to(inp)
        assert (out / rel).read_bytes() == (clean / rel).read_bytes(), rel
    masks = sorted(m.name for m in (clean / "masks").glob("*.mask"))
    assert masks == ["ann.mask", "bob.mask", "cy.mask"]
    for name in masks:
        assert np.array_equal(
            load_mask(out / "masks" / name).delta, load_mask(clean / "masks" / name).delta
        ), name
