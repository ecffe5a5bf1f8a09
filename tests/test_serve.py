"""``jaxcloak serve``'s HTTP API through FastAPI's test client: the happy path with verdicts and
downloads, bad uploads refused before decoding, names that try to be paths, a full queue, the
token, expiry, and the personal-mask endpoints. One warm model at the cheapest settings."""

from __future__ import annotations

import io
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
pytest.importorskip("httpx", reason="FastAPI's test client needs httpx")

from fastapi.testclient import TestClient

from jaxcloak.cli.main import build_parser
from jaxcloak.cli.wiring import make_cloaker
from jaxcloak.faces.samples import synthetic_photos
from jaxcloak.serve.app import create_app
from jaxcloak.serve.jobs import JobStore, Limits, QueueFull
from jaxcloak.serve.work import Warm

LIMITS = Limits(max_files=3, max_file_bytes=1 << 20, max_pixels=600_000, queue=2)


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def warm() -> Warm:
    args = build_parser().parse_args(["serve", "--steps", "1", "--views", "1", "--batch", "2"])
    args._precision, args._compiles = None, None

    def build(strength: str):
        args.strength = strength
        return make_cloaker(args)

    return Warm(build)


@pytest.fixture(scope="module")
def photo() -> bytes:
    ((_, rgb),) = synthetic_photos(1, seed=21, size=(240, 320), sources=("astronaut",))
    return _png(rgb)


@pytest.fixture
def client(warm, tmp_path):
    app = create_app(warm, tmp_path / "jobs", LIMITS)
    with TestClient(app) as c:
        c.root = tmp_path / "jobs"
        yield c


def _wait(client, job_id: str, headers=None) -> dict:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        j = client.get(f"/api/jobs/{job_id}", headers=headers).json()
        if j["status"] in ("done", "failed"):
            return j
        time.sleep(0.1)
    raise AssertionError("job did not finish")


def test_protect_a_photo_end_to_end(client, photo):
    r = client.post(
        "/api/protect", files=[("files", ("me.png", photo, "image/png"))], data={"strength": "low"}
    )
    assert r.status_code == 202, r.text
    job = _wait(client, r.json()["id"])
    assert job["status"] == "done" and job["done"] == 1
    (row,) = job["results"]
    assert row["status"] == "protected" and row["name"] == "me.png"
    assert row["psnr_db"] > 25 and len(row["faces"]) == 1
    face = row["faces"][0]
    assert isinstance(face["sface_recognised"], bool) and "sface_cosine" in face
    if client.app.state.black_box:  # dlib and its models are installed (they are in CI)
        assert "black-box" in row["verdict"] and "dlib_recognised" in face
    base = f"/api/jobs/{job['id']}"
    out = Image.open(io.BytesIO(client.get(f"{base}/files/0").content))
    orig = Image.open(io.BytesIO(client.get(f"{base}/original/0").content))
    assert out.size == orig.size and np.abs(np.asarray(out, int) - np.asarray(orig, int)).max() > 0
    assert client.get(f"{base}/original/0").content == photo  # the upload, unchanged
    assert Image.open(io.BytesIO(client.get(f"{base}/diff/0").content)).format == "PNG"
    names = zipfile.ZipFile(io.BytesIO(client.get(f"{base}/zip").content)).namelist()
    assert names == ["000-protected-me.png"]
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and "low" in health["warm"]


def test_bad_uploads_are_refused_with_the_file_named(client, photo):
    def post(*files):
        return client.post("/api/protect", files=[("files", f) for f in files])

    r = post(("notes.txt", b"hello, not a photo", "text/plain"))
    assert r.status_code == 415 and "notes.txt: not a recognised image" in r.json()["detail"]
    r = post(*[(f"p{k}.png", photo, "image/png") for k in range(4)])
    assert r.status_code == 413 and "at most 3" in r.json()["detail"]
    big = _png(np.zeros((900, 900, 3), np.uint8))  # 810k pixels, few bytes
    r = post(("big.png", big, "image/png"))
    assert r.status_code == 413 and "big.png: 900x900 pixels" in r.json()["detail"]
    r = post(("huge.png", photo + b"\0" * (1 << 20), "image/png"))
    assert r.status_code == 413 and "huge.png: larger than 1 MB" in r.json()["detail"]
    assert not list(client.root.glob("*/in/*"))  # nothing was stored for any of them
    # a header that reads but data that does not: accepted, then reported, the job goes on
    r = post(("cut.png", photo[: len(photo) // 2], "image/png"), ("ok.png", photo, "image/png"))
    assert r.status_code == 202
    job = _wait(client, r.json()["id"])
    cut, ok = job["results"]
    assert cut["status"] == "failed" and "truncated" in cut["error"]
    assert str(client.root) not in cut["error"]  # the server's folders stay private
    assert ok["status"] == "protected"


def test_upload_names_never_become_paths(client, photo):
    r = client.post("/api/protect", files=[("files", ("../../../escape.png", photo, "image/png"))])
    assert r.status_code == 202
    job = _wait(client, r.json()["id"])
    assert job["results"][0]["name"] == "escape.png"
    stored = [p.relative_to(client.root) for p in client.root.rglob("*") if p.is_file()]
    assert all(".." not in p.parts and "escape" not in p.name for p in stored)
    assert not (client.root.parent / "escape.png").exists()


def test_a_full_queue_answers_429_with_retry_after(warm, tmp_path, photo):
    app = create_app(warm, tmp_path / "jobs", Limits(queue=1))
    files = [("files", ("a.png", photo, "image/png"))]
    with TestClient(app) as client, warm.lock:  # the worker waits for the device
        assert client.post("/api/protect", files=files).status_code == 202
        r = client.post("/api/protect", files=files)
        assert r.status_code == 429 and r.headers["Retry-After"] == "10"


def test_token_is_required_when_set(warm, tmp_path, photo):
    app = create_app(warm, tmp_path / "jobs", LIMITS, token="s3cret")
    files = [("files", ("a.png", photo, "image/png"))]
    with TestClient(app) as client:
        assert client.post("/api/protect", files=files).status_code == 401
        bad = {"Authorization": "Bearer nope"}
        assert client.post("/api/protect", files=files, headers=bad).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        r = client.post("/api/protect", files=files, headers=ok)
        assert r.status_code == 202
        assert client.get(f"/api/jobs/{r.json()['id']}").status_code == 401
        assert _wait(client, r.json()["id"], headers=ok)["status"] == "done"
        assert client.get("/api/health").status_code == 200  # no secrets there


def test_finished_jobs_expire_with_their_files(client, photo):
    r = client.post("/api/protect", files=[("files", ("a.png", photo, "image/png"))])
    job = _wait(client, r.json()["id"])
    store = client.app.state.store
    folder = client.root / job["id"]
    assert folder.is_dir()
    assert store.sweep(now=time.time() + LIMITS.ttl_seconds / 2) == 0
    assert store.sweep(now=time.time() + LIMITS.ttl_seconds + 1) == 1
    assert not folder.exists() and client.get(f"/api/jobs/{job['id']}").status_code == 404


def test_job_store_bounds_its_queue(tmp_path):
    import threading

    gate = threading.Event()
    store = JobStore(tmp_path, lambda job: gate.wait(30), Limits(queue=1))
    store.submit([("a.png", ".png", b"x")], {})
    with pytest.raises(QueueFull):
        store.submit([("b.png", ".png", b"x")], {})
    gate.set()
    store.close()
    assert store.queued() == 0


def test_personal_mask_fit_and_apply(client, photo, tmp_path):
    r = client.post("/api/masks", files={"file": ("me.png", photo, "image/png")})
    assert r.status_code == 200, r.text
    from jaxcloak.methods.facecloak.masks import load_mask

    (tmp_path / "me.mask").write_bytes(r.content)
    assert load_mask(tmp_path / "me.mask").delta.ndim == 3
    r = client.post(
        "/api/masks/apply",
        files=[
            ("mask", ("me.mask", r.content, "application/octet-stream")),
            ("files", ("x.png", photo, "image/png")),
        ],
    )
    assert r.status_code == 200, r.text
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    assert zf.namelist() == ["000-protected-x.png"]
    r = client.post(
        "/api/masks/apply",
        files=[
            ("mask", ("bad.mask", b"junk", "application/octet-stream")),
            ("files", ("x.png", photo, "image/png")),
        ],
    )
    assert r.status_code == 422 and "not a usable .mask" in r.json()["detail"]


def test_oversized_bodies_and_other_sites_are_refused_before_reading(warm, tmp_path, photo):
    app = create_app(warm, tmp_path / "jobs", Limits(max_total_bytes=1 << 20))
    with TestClient(app) as client:
        blob = photo + b"\0" * (3 << 20)
        r = client.post("/api/protect", files=[("files", ("a.png", blob, "image/png"))])
        assert r.status_code == 413 and "over 1 MB" in r.json()["detail"]
        r = client.post(
            "/api/protect",
            files=[("files", ("a.png", photo, "image/png"))],
            headers={"Origin": "http://elsewhere.example"},
        )
        assert r.status_code == 403 and "cross-site" in r.json()["detail"]
        assert not (tmp_path / "jobs").exists() or not any((tmp_path / "jobs").iterdir())
