"""What the server's worker does with a job: protect its photos with the local engine and a warm
Cloaker, then judge each result as people would ask: is the face still recognised by the
surrogate (SFace) and by the dlib black box, which never enters the fit, and how much did the
photo change (PSNR)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..evaluate.dlib_bb import DlibRecognizer
from ..evaluate.metrics import psnr
from ..io.images import read_image
from ..methods.facecloak.cloaker import Cloaker
from ..pipelines.engine import protect
from .jobs import Job

#: The output formats a job may ask for (None: as each input).
FORMATS = {"as-input": None, "png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


class Warm:
    """One Cloaker per strength, built and compiled on first use and kept for the server's
    life; ``lock`` serialises the device among the worker and the mask endpoints."""

    def __init__(self, build: Callable[[str], Cloaker]):
        self.build = build
        self.cloakers: dict[str, Cloaker] = {}
        self.lock = threading.Lock()
        self.dlib = DlibRecognizer() if DlibRecognizer.available() else None

    def get(self, strength: str) -> Cloaker:
        if strength not in self.cloakers:
            self.cloakers[strength] = self.build(strength)
        return self.cloakers[strength]


def run_protect_job(job: Job, inputs: list[Path], warm: Warm) -> None:
    """Protect ``inputs`` into ``job.folder/out``; ``job.results`` gets one entry per photo."""
    opts = job.options
    out = job.folder / "out"

    def progress(done: int, total: int, postfix: dict) -> None:
        job.done = done

    with warm.lock:
        cloaker = warm.get(opts["strength"])
        summary = protect(
            inputs,
            out,
            cloaker,
            identity=opts["identity"],
            root=job.folder / "in",
            fmt=FORMATS[opts["format"]],
            resume=False,
            save_masks=False,
            progress=progress,
        )
    job.results = [_judge(k, job.names[k], rec, warm.dlib) for k, rec in enumerate(summary.records)]


def diff_path(output: Path) -> Path:
    """Where a photo's difference image is kept (rendered once, by the worker)."""
    return output.with_name(f"diff-{output.stem}.png")


def _judge(k: int, name: str, rec: Any, dlib: DlibRecognizer | None) -> dict[str, Any]:
    """A photo's result in plain terms, and the figures behind them."""
    row: dict[str, Any] = {"index": k, "name": name, "status": rec.status}
    if rec.status != "protected":
        row["error"] = (rec.error or rec.status).split(": ", 1)[-1]  # not our folder's path
        return row
    before = read_image(rec.input).rgb
    after = read_image(rec.output).rgb
    row["psnr_db"] = round(float(psnr(before, after)), 2)
    row["output"] = Path(rec.output).name
    Image.fromarray(difference_image(before, after)).save(diff_path(Path(rec.output)))
    faces = []
    for face in rec.faces:
        entry = {
            "box": face["box"],
            "sface_cosine": face["cos_after"],
            "sface_recognised": face["same_person_after"],
        }
        if dlib is not None:
            clean = dlib.describe_near(before, face["box"], fallback=True)
            prot = dlib.describe_near(after, face["box"])
            if prot is None:
                entry["dlib"], entry["dlib_recognised"] = "no face found", False
            else:
                dist = float(DlibRecognizer.distance(clean, prot))
                entry["dlib_distance"] = round(dist, 3)
                entry["dlib_recognised"] = bool(DlibRecognizer.same_person(clean, prot))
        faces.append(entry)
    row["faces"] = faces
    row["verdict"] = _verdict(faces)
    return row


def _verdict(faces: list[dict[str, Any]]) -> str:
    if not faces:
        return "no face was protected"
    sface = sum(f["sface_recognised"] for f in faces)
    dl = [f["dlib_recognised"] for f in faces if "dlib_recognised" in f]
    parts = [
        "not recognised by the model it was optimised against"
        if not sface
        else f"still recognised by the model it was optimised against ({sface} of {len(faces)})"
    ]
    if dl:
        parts.append(
            "not recognised by the black-box model"
            if not any(dl)
            else f"still recognised by the black-box model ({sum(dl)} of {len(dl)})"
        )
    return "; ".join(parts)


def difference_image(before: np.ndarray, after: np.ndarray, gain: float = 8.0) -> np.ndarray:
    """The change between two photos, amplified so a few grey levels show (mid-grey: none)."""
    d = after.astype(np.float32) - before.astype(np.float32)
    return np.clip(128 + gain * d, 0, 255).astype(np.uint8)
