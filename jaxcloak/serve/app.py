"""``jaxcloak serve``: the HTTP API and the page that uses it (FastAPI).

    POST /api/protect            photos + strength, identity, format -> 202 {id}; 429 when full
    GET  /api/jobs/{id}          progress and per-photo results (SFace and dlib verdicts, PSNR)
    GET  /api/jobs/{id}/files/{k}      protected photo k;  .../original/{k}, .../diff/{k}
    GET  /api/jobs/{id}/zip      every protected photo
    POST /api/masks              one photo -> its personal .mask file
    POST /api/masks/apply        a .mask file + photos -> the protected photos (zip)
    GET  /api/health             readiness and the queue
    GET  /                       the page; /docs the OpenAPI docs

Every upload is checked before decoding (count, bytes, pixels from the header); uploads are
stored under names the job gives them, never their own.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import re
import time
import zipfile
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, File, Form, Header, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from PIL import Image

from ..io.images import IMAGE_SUFFIXES, ImageReadError, decode_image, write_image
from ..methods.facecloak.cloaker import apply_mask
from ..methods.facecloak.masks import MaskFileError, load_mask, save_mask
from .jobs import JobStore, Limits, QueueFull
from .work import FORMATS, Warm, diff_path, run_protect_job

#: Largest .mask upload (a 112x112 mask with traces is well under 1 MB).
MAX_MASK_BYTES = 8 << 20

STRENGTHS = ("low", "mid", "high")
IDENTITIES = ("per-file", "single")
PAGE = Path(__file__).with_name("static") / "index.html"
_FORMAT_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}


def create_app(warm: Warm, root: Path, limits: Limits, token: str | None = None) -> FastAPI:
    """The app: ``warm`` holds the models, ``root`` every job's files."""
    store = JobStore(root, lambda job: run_protect_job(job, store.inputs(job), warm), limits)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        store.close()

    app = FastAPI(
        title="jaxcloak",
        description="Protect photos against face recognition (FaceCloak, JAX).",
        version="1",
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.black_box = warm.dlib is not None

    def authorised(authorization: Annotated[str | None, Header()] = None) -> None:
        if token is not None and not hmac.compare_digest(
            (authorization or "").encode(), f"Bearer {token}".encode()
        ):
            raise HTTPException(401, "a valid 'Authorization: Bearer TOKEN' header is required")

    @app.middleware("http")
    async def bounded_same_origin(request: Request, call_next):
        """Before any upload is read: refuse bodies over the limits, and requests a page of
        another site makes a browser send here."""
        if request.method == "POST":
            size = request.headers.get("content-length")
            if size is None:
                return JSONResponse({"detail": "a Content-Length is required"}, status_code=411)
            if int(size) > limits.max_total_bytes + (1 << 20):
                detail = f"uploads over {limits.max_total_bytes >> 20} MB"
                return JSONResponse({"detail": detail}, status_code=413)
            origin = request.headers.get("origin")
            if origin and urlsplit(origin).netloc != request.headers.get("host"):
                return JSONResponse({"detail": "cross-site request refused"}, status_code=403)
        return await call_next(request)

    guard = [Depends(authorised)]

    def read_uploads(files: list[UploadFile]) -> list[tuple[str, str, bytes]]:
        if not files:
            raise HTTPException(400, "no photos uploaded")
        if len(files) > limits.max_files:
            raise HTTPException(413, f"{len(files)} photos, at most {limits.max_files} a job")
        got, total = [], 0
        for f in files:
            name = Path((f.filename or "photo").replace("\\", "/")).name[:200] or "photo"
            data = f.file.read(limits.max_file_bytes + 1)
            if len(data) > limits.max_file_bytes:
                raise HTTPException(413, f"{name}: larger than {limits.max_file_bytes >> 20} MB")
            total += len(data)
            if total > limits.max_total_bytes:
                raise HTTPException(413, f"uploads over {limits.max_total_bytes >> 20} MB")
            got.append((name, _checked_suffix(name, data, limits), data))
        return got

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "queued": store.queued(),
            "queue_limit": limits.queue,
            "warm": sorted(warm.cloakers),
            "black_box": warm.dlib is not None,
            "auth": token is not None,
        }

    def queue_full() -> JSONResponse:
        return JSONResponse(
            {"detail": f"the queue is full ({limits.queue} jobs); retry later"},
            status_code=429,
            headers={"Retry-After": "10"},
        )

    @app.post("/api/protect", status_code=202, dependencies=guard)
    def protect_photos(
        files: Annotated[list[UploadFile], File(description="photos to protect")],
        strength: Annotated[str, Form()] = "mid",
        identity: Annotated[str, Form()] = "per-file",
        format: Annotated[str, Form()] = "as-input",
    ) -> JSONResponse:
        _choice("strength", strength, STRENGTHS)
        _choice("identity", identity, IDENTITIES)
        _choice("format", format, tuple(FORMATS))
        if store.queued() >= limits.queue:  # before reading what would be turned away
            return queue_full()
        uploads = read_uploads(files)
        opts = {"strength": strength, "identity": identity, "format": format}
        try:
            job = store.submit(uploads, opts)
        except QueueFull:
            return queue_full()
        return JSONResponse({"id": job.id, "status_url": f"/api/jobs/{job.id}"}, status_code=202)

    def job_or_404(job_id: str):
        job = store.get(job_id)
        if job is None:
            raise HTTPException(404, "no such job (finished jobs expire)")
        return job

    @app.get("/api/jobs/{job_id}", dependencies=guard)
    def job_status(job_id: str) -> dict[str, Any]:
        return job_or_404(job_id).public()

    def result_file(job_id: str, k: int) -> tuple[Path, Path]:
        job = job_or_404(job_id)
        row = next((r for r in job.results if r["index"] == k), None)
        if row is None or row.get("status") != "protected":
            raise HTTPException(404, f"photo {k} has no protected result")
        return store.inputs(job)[k], job.folder / "out" / row["output"]

    @app.get("/api/jobs/{job_id}/files/{k}", dependencies=guard)
    def protected_file(job_id: str, k: int) -> FileResponse:
        _, out = result_file(job_id, k)
        name = job_or_404(job_id).names[k]
        return FileResponse(out, filename=f"protected-{_safe(name)}{out.suffix}")

    @app.get("/api/jobs/{job_id}/original/{k}", dependencies=guard)
    def original_file(job_id: str, k: int) -> FileResponse:
        src, _ = result_file(job_id, k)
        return FileResponse(src)

    @app.get("/api/jobs/{job_id}/diff/{k}", dependencies=guard)
    def diff_file(job_id: str, k: int) -> FileResponse:
        _, out = result_file(job_id, k)
        return FileResponse(diff_path(out), media_type="image/png")

    @app.get("/api/jobs/{job_id}/zip", dependencies=guard)
    def job_zip(job_id: str) -> Response:
        job = job_or_404(job_id)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for row in job.results:
                if row.get("status") == "protected":
                    out = job.folder / "out" / row["output"]
                    stem = _safe(job.names[row["index"]])
                    zf.write(out, f"{row['index']:03d}-protected-{stem}{out.suffix}")
        headers = {"Content-Disposition": f'attachment; filename="jaxcloak-{job_id[:8]}.zip"'}
        return Response(buf.getvalue(), media_type="application/zip", headers=headers)

    @contextlib.contextmanager
    def slot():
        try:
            store.reserve()
        except QueueFull:
            raise HTTPException(
                429, "the queue is full; retry later", {"Retry-After": "10"}
            ) from None
        try:
            yield
        finally:
            store.release()

    @app.post("/api/masks", dependencies=guard)
    def fit_mask(
        file: Annotated[UploadFile, File(description="one photo of the person")],
        strength: Annotated[str, Form()] = "mid",
    ) -> Response:
        from ..faces import prepare_photo
        from ..faces.photo import NoFaceError

        _choice("strength", strength, STRENGTHS)
        with slot():
            ((name, _, data),) = read_uploads([file])
            try:
                photo = prepare_photo(decode_image(data, name), faces="largest")
            except (ImageReadError, NoFaceError) as e:
                raise HTTPException(422, f"{name}: {_reason(e)}") from None
            with warm.lock:
                cloaker = warm.get(strength)
                (res,) = cloaker.fit(photo.faces[0].crop[None], [f"{photo.image.sha256}#0"])
        path = root / f"mask-{time.time_ns()}.mask"
        try:
            save_mask(path, res.delta, res.meta, traces=res.trace)
            data = path.read_bytes()
        finally:
            path.unlink(missing_ok=True)
        headers = {"Content-Disposition": f'attachment; filename="{_safe(name)}.mask"'}
        return Response(data, media_type="application/octet-stream", headers=headers)

    @app.post("/api/masks/apply", dependencies=guard)
    def apply_personal_mask(
        mask: Annotated[UploadFile, File(description="a .mask file")],
        files: Annotated[list[UploadFile], File(description="photos")],
    ) -> Response:
        from ..faces import prepare_photo
        from ..faces.photo import NoFaceError

        with slot():
            raw = mask.file.read(MAX_MASK_BYTES + 1)
            if len(raw) > MAX_MASK_BYTES:
                raise HTTPException(413, f"a .mask file is at most {MAX_MASK_BYTES >> 20} MB")
            path = root / f"upload-{time.time_ns()}.mask"
            try:
                path.write_bytes(raw)
                personal = load_mask(path)
            except (MaskFileError, ValueError) as e:
                why = str(e).replace(str(path), "the file")
                raise HTTPException(422, f"not a usable .mask file: {why}") from None
            finally:
                path.unlink(missing_ok=True)
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as zf:
                for k, (name, suffix, data) in enumerate(read_uploads(files)):
                    try:
                        photo = prepare_photo(decode_image(data, name), size=personal.size)
                        rgb = apply_mask(photo, [personal.delta] * len(photo.faces))
                    except (ImageReadError, NoFaceError, ValueError) as e:
                        zf.writestr(f"{k:03d}-{_safe(name)}.error.txt", f"{name}: {_reason(e)}")
                        continue
                    out = root / f"apply-{time.time_ns()}{suffix}"
                    try:
                        write_image(out, rgb, like=photo.image)
                        zf.write(out, f"{k:03d}-protected-{_safe(name)}{suffix}")
                    finally:
                        out.unlink(missing_ok=True)
        return Response(buf.getvalue(), media_type="application/zip")

    return app


def _choice(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise HTTPException(422, f"{field} must be one of {', '.join(allowed)}, got {value!r}")


def _checked_suffix(name: str, data: bytes, limits: Limits) -> str:
    """The stored file's suffix, from the image's own header (never from its name), after
    the header says it is an image of at most ``limits.max_pixels`` pixels."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (w, h) = img.format, img.size
    except Exception:
        raise HTTPException(415, f"{name}: not a recognised image file") from None
    if w * h > limits.max_pixels:
        raise HTTPException(413, f"{name}: {w}x{h} pixels, above {limits.max_pixels:,}")
    suffix = _FORMAT_SUFFIX.get(fmt or "", "")
    if suffix not in IMAGE_SUFFIXES:
        raise HTTPException(415, f"{name}: {fmt} images are not protected")
    return suffix


def _reason(e: Exception) -> str:
    """An image error's reason without the path it names (the server's own folders)."""
    return str(e).split(": ", 1)[-1]


def _safe(name: str) -> str:
    """A display name's stem as a header- and zip-safe file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._")[:80] or "photo"
