"""Streaming bulk protection: every face its own identity, any number of photos, bounded memory.

The engine behind ``jaxcloak protect --identity per-file`` (one person per face, no matching
across photos, so nothing has to wait for the whole input):

    readers (threads: hash, decode, detect, align)     -> bounded, in input order
    main thread: fill a bucket of faces, dispatch       -> compiled step, sharded over devices
    finisher thread: wait for the step, score masks     -> bounded queue of batches
    writers (threads: paste back, encode, write atomically, verify, append to the manifest)

Every stage holds a bounded number of photos, so memory does not grow with the input count.
JAX dispatch is asynchronous: while the device runs one bucket the main thread already fills
the next, and the finisher records when each step completes, which gives the share of the
wall time the device was busy.

Resumable: ``<name>.jsonl`` gets one line per finished photo, appended and fsynced; a run
started again (after a crash or a kill) skips every photo whose line, input hash and output
hash still match, and a torn last line is ignored. ``<name>.json`` (the same records plus the
run's settings, masks and timing) is written atomically at the end.
"""

from __future__ import annotations

import glob
import json
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ..faces.chain import paste_realign_taps
from ..faces.photo import (
    FacePolicy,
    NoFaceError,
    NoFacePolicy,
    Photo,
    RotationPolicy,
    prepare_photo,
)
from ..io.atomic import atomic_write_json, temp_prefix
from ..io.images import ImageReadError, read_image, write_image
from ..methods.facecloak.cloaker import Cloaker, apply_mask
from ..methods.facecloak.masks import save_mask
from .bulk import (
    MANIFEST,
    PhotoRecord,
    Summary,
    _face_report,
    _slug,
    _up_to_date,
    change_report,
    claim_outputs,
    plan_outputs,
    same_run,
)

#: Progress callback: ``progress(done, total, postfix)`` after every finished photo.
Progress = Callable[[int, int, dict[str, Any]], None]


@dataclass
class _Item:
    """One photo on its way through the pipeline."""

    index: int
    path: Path
    out: Path
    photo: Photo | None = None
    record: PhotoRecord | None = None  # set when the photo needs no device work
    masks: dict[int, Any] = field(default_factory=dict)  # face index -> FitResult
    anchors: list = field(default_factory=list)  # per face, from the reader thread


@dataclass
class _Batch:
    faces: np.ndarray
    ids: list[str]
    owners: list[tuple[_Item, int]]  # (photo, face index) per row
    out: Any
    anchors: list
    dispatched: float


class _Manifest:
    """Append-only JSON-lines record of finished photos; safe to kill at any point."""

    def __init__(self, path: Path, run: dict[str, Any], resume: bool):
        self.path = path
        self.lock = threading.Lock()
        self.previous: dict[str, dict] = {}
        if resume and path.is_file():
            self.previous = _read_jsonl(path, run)
        self.fh = path.open("w" if not self.previous else "a", encoding="utf-8")
        if not self.previous:
            self._append({"run": run})

    def _append(self, obj: dict) -> None:
        self.fh.write(json.dumps(obj) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def add(self, record: PhotoRecord) -> None:
        with self.lock:
            self._append({"photo": record.__dict__})

    def close(self) -> None:
        self.fh.close()


def _read_jsonl(path: Path, run: dict[str, Any]) -> dict[str, dict]:
    """Finished photos of an earlier run with the same settings ({} if the settings differ)."""
    done: dict[str, dict] = {}
    with path.open(encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    for n, line in enumerate(lines):
        try:
            obj = json.loads(line)
        except ValueError:
            if n == len(lines) - 1:
                break  # torn by a kill mid-write: the photo is simply redone
            raise ValueError(f"{path}:{n + 1}: corrupt manifest line") from None
        if n == 0:
            old = obj.get("run", {})
            if not same_run(old, run):
                return {}
            continue
        rec = obj.get("photo", {})
        if rec.get("status") in ("protected", "up-to-date"):
            done[rec["input"]] = rec
    return done


def _ordered_prefetch(
    fn: Callable[[Any], Any], items: Iterable[Any], pool: ThreadPoolExecutor, depth: int
) -> Iterator[Any]:
    """``map(fn, items)`` on ``pool`` with at most ``depth`` results in flight, in order."""
    pending: deque[Future] = deque()
    it = iter(items)
    for x in it:
        pending.append(pool.submit(fn, x))
        if len(pending) >= depth:
            break
    while pending:
        yield pending.popleft().result()
        for x in it:
            pending.append(pool.submit(fn, x))
            break


def mask_name(rel: Path, face: int, n_faces: int) -> str:
    """Stable identity name of one face: the photo's relative path, plus the face index."""
    base = _slug(str(rel.with_suffix("")).replace(os.sep, "__"))
    return base if n_faces == 1 else f"{base}-face{face}"


def protect_stream(
    files: Sequence[Path],
    outdir: Path,
    cloaker: Cloaker,
    *,
    root: Path,
    faces: FacePolicy = "all",
    no_face: NoFacePolicy = "skip",
    min_face: float = 20,
    rotations: RotationPolicy = "auto",
    fmt: str | None = None,
    quality: int = 95,
    resume: bool = True,
    save_masks: bool = True,
    readers: int = 2,
    writers: int = 2,
    manifest: str = MANIFEST.removesuffix(".json"),
    progress: Progress | None = None,
) -> Summary:
    """Protect every face of every photo with a mask fitted on that face, streaming.

    Args:
      files: the photos (this process's share when several processes split a job).
      outdir: output folder; outputs keep their path relative to ``root``.
      cloaker: the compiled stages 1-2; its ``max_batch`` (rounded to whole devices) is the
        bucket every device step is filled to.
      root: folder the outputs' relative paths are taken from (the common root of the whole
        job, so processes that share a job agree on it).
      faces, no_face, min_face, rotations: face policies (:func:`jaxcloak.faces.prepare_photo`).
      fmt, quality: output format (None: as the input) and JPEG/WebP quality.
      resume: skip photos the manifest lists as done whose input and output still match.
      save_masks: also write each face's mask (and trace) to ``outdir/masks``.
      readers, writers: host threads decoding/detecting and encoding/writing.
      manifest: manifest base name (``.jsonl`` while running, ``.json`` at the end).
      progress: called after every finished photo.

    Returns:
      A :class:`~jaxcloak.pipelines.bulk.Summary` in input order; ``seconds`` holds ``total``,
      ``device_busy`` (seconds a device step was running), ``compile`` and ``fit``.
    """
    t_start = time.perf_counter()
    root = Path(root).resolve()
    outside = [f for f in files if not f.resolve().is_relative_to(root)]
    if outside:
        raise ValueError(f"{outside[0]} is not inside the job's root folder {root}")
    outdir.mkdir(parents=True, exist_ok=True)
    plan = plan_outputs(files, root, outdir, fmt)
    claim_outputs(outdir, plan.values())
    if save_masks:
        (outdir / "masks").mkdir(exist_ok=True)
    run = cloaker.describe()
    log = _Manifest(outdir / f"{manifest}.jsonl", run, resume)
    bucket = cloaker.bucket(cloaker.max_batch)
    records: dict[int, PhotoRecord] = {}
    mask_files: dict[str, str] = {}
    lock = threading.Lock()
    busy = {"device": 0.0, "last_done": t_start, "fit_wall": 0.0}
    done_count = [0]

    def finish(item: _Item, record: PhotoRecord) -> None:
        if record.status != "up-to-date":
            log.add(record)
        with lock:
            records[item.index] = record
            done_count[0] += 1
            n = done_count[0]
            share = busy["device"] / max(time.perf_counter() - t_start, 1e-9)
        if progress:
            progress(n, len(files), {"device busy": f"{100 * share:.0f}%"})

    def load(arg: tuple[int, Path]) -> _Item:
        i, f = arg
        item = _Item(i, f, plan[f])
        prev = log.previous.get(str(f))
        if prev and _up_to_date(prev, f, item.out):
            item.record = PhotoRecord(**{**prev, "status": "up-to-date"})
            return item
        try:
            item.photo = prepare_photo(
                read_image(f), faces=faces, no_face=no_face, min_face=min_face, rotations=rotations
            )
            item.anchors = [cloaker.anchors_for(face.crop) for face in item.photo.faces]
        except (ImageReadError, NoFaceError) as e:
            status = "no-face" if isinstance(e, NoFaceError) else "failed"
            item.record = PhotoRecord(str(f), status, error=str(e))
        except Exception as e:  # one bad photo must not stop the batch
            item.record = PhotoRecord(str(f), "failed", error=f"{f}: {type(e).__name__}: {e}")
        return item

    def write(item: _Item) -> None:
        photo, f = item.photo, item.path
        try:
            rel = item.out.relative_to(outdir)
            n = len(photo.faces)
            names = [mask_name(rel, j, n) for j in range(n)]
            rgb = apply_mask(photo, [item.masks[j].delta for j in range(n)])
            item.out.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_temps(item.out)
            # Overwrite: an output without a manifest line is a killed run's, to be redone.
            write_image(
                item.out, rgb, like=photo.image, format=fmt, quality=quality, overwrite=True
            )
            written = read_image(item.out)
            rows = _face_report(cloaker, photo, written.rgb, names)
            linf, over = change_report(cloaker, photo, written.rgb)
            if save_masks:
                for j, name in enumerate(names):
                    res = item.masks[j]
                    path = outdir / "masks" / f"{name}.mask"
                    meta = {**res.meta, "identity": name, "photo": str(f)}
                    save_mask(path, res.delta, meta, traces=res.trace, overwrite=True)
                    with lock:
                        mask_files[name] = str(path)
            record = PhotoRecord(
                str(f),
                "protected",
                photo.image.sha256,
                str(item.out),
                written.sha256,
                rows,
                list(photo.notes) + over,
                linf=linf,
            )
        except Exception as e:  # one bad photo must not stop the batch
            sha = photo.image.sha256 if photo else None
            record = PhotoRecord(str(f), "failed", sha, error=f"{f}: {type(e).__name__}: {e}")
        finish(item, record)

    write_pool = ThreadPoolExecutor(writers, thread_name_prefix="jaxcloak-write")
    write_slots = threading.BoundedSemaphore(2 * bucket + writers)
    batches: queue.Queue[_Batch | None] = queue.Queue(maxsize=2)
    waiting: dict[int, int] = {}  # photo index -> faces still without a mask

    def submit_write(item: _Item) -> None:
        write_slots.acquire()

        def job():
            try:
                write(item)
            finally:
                item.photo = item.anchors = None  # free them as soon as the photo is written
                write_slots.release()

        write_pool.submit(job)

    def finisher() -> None:
        while (batch := batches.get()) is not None:
            try:
                if isinstance(batch.out, _Failed):
                    raise batch.out.error
                results = cloaker.collect(batch.out, batch.faces, batch.ids, batch.anchors)
                error = None
            except Exception as e:  # a failed step fails its photos, not the run
                results, error = [None] * len(batch.ids), f"{type(e).__name__}: {e}"
            now = time.perf_counter()
            with lock:
                busy["device"] += now - max(batch.dispatched, busy["last_done"])
                busy["last_done"] = now
            for (item, j), res in zip(batch.owners, results, strict=True):
                if item.record is not None:
                    continue  # already failed by an earlier face
                if error is not None:
                    item.record = PhotoRecord(
                        str(item.path),
                        "failed",
                        item.photo.image.sha256,
                        error=f"{item.path}: {error}",
                    )
                    item.photo = None
                    finish(item, item.record)
                    continue
                item.masks[j] = res
                waiting[item.index] -= 1
                if waiting[item.index] == 0:
                    submit_write(item)

    fin = threading.Thread(target=finisher, name="jaxcloak-finish", daemon=True)
    fin.start()
    pending: list[tuple[_Item, int]] = []

    def dispatch(rows: list[tuple[_Item, int]]) -> None:
        crops = np.stack([it.photo.faces[j].crop for it, j in rows])
        ids = [f"{it.photo.image.sha256}#{j}" for it, j in rows]
        taps = [paste_realign_taps(it.photo.faces[j].transform) for it, j in rows]
        t0 = time.perf_counter()
        try:
            # Always the full bucket, even for the last faces: one program for the whole run.
            anchors = [it.anchors[j] for it, j in rows]
            out, anchors = cloaker.fit_arrays(crops, ids, taps, anchors, size=bucket)
        except Exception as e:
            out, anchors = _Failed(e), []
        busy["fit_wall"] += time.perf_counter() - t0
        batches.put(_Batch(crops, ids, rows, out, anchors, time.perf_counter()))

    read_pool = ThreadPoolExecutor(readers, thread_name_prefix="jaxcloak-read")
    try:
        depth = 2 * bucket + readers
        for item in _ordered_prefetch(load, enumerate(files), read_pool, depth):
            if item.record is not None:
                finish(item, item.record)
                continue
            waiting[item.index] = len(item.photo.faces)
            pending.extend((item, j) for j in range(len(item.photo.faces)))
            while len(pending) >= bucket:
                dispatch(pending[:bucket])
                del pending[:bucket]
        if pending:
            dispatch(pending)
    finally:
        batches.put(None)
        fin.join()
        read_pool.shutdown(wait=True)
        write_pool.shutdown(wait=True)
        log.close()

    ordered = [records[i] for i in sorted(records)]
    total = time.perf_counter() - t_start
    seconds = {
        "total": total,
        "device_busy": busy["device"],
        "device_busy_share": busy["device"] / max(total, 1e-9),
        "fit": busy["fit_wall"],
        "compile": sum(cloaker.compile_seconds.values()),
        "apply": 0.0,
    }
    summary = Summary(ordered, mask_files, seconds)
    _write_final(outdir / f"{manifest}.json", run, summary, log.previous)
    return summary


class _Failed:
    """Stands in for a step's output when dispatching it raised; the finisher re-raises."""

    def __init__(self, error: Exception):
        self.error = error


def _remove_stale_temps(target: Path) -> None:
    """Drop temp files a killed run left for ``target`` (only this process writes it)."""
    for tmp in target.parent.glob(f"{glob.escape(temp_prefix(target))}*.tmp"):
        tmp.unlink(missing_ok=True)


def _write_final(path: Path, run: dict, summary: Summary, previous: dict[str, dict]) -> None:
    masks = dict(summary.masks)
    for rec in previous.values():  # masks written by the interrupted run(s)
        for face in rec.get("faces", []):
            name = face.get("identity")
            m = path.parent / "masks" / f"{name}.mask"
            if name and name not in masks and m.is_file():
                masks[name] = str(m)
    photos = [r.__dict__ for r in summary.records]
    stats = {k: round(v, 3) for k, v in summary.seconds.items()}
    atomic_write_json(path, {"run": run, "masks": masks, "photos": photos, "seconds": stats})


def device_summary() -> str:
    """e.g. ``"4 x cpu"``: what this process computes on."""
    devs = jax.local_devices()
    return f"{len(devs)} x {devs[0].platform}"
