"""The engine behind ``jaxcloak protect``: every ``--identity`` mode, streaming, bounded, resumable.

A job is a list of units (:func:`.inputs.identity_units`): one person's photos (``single``,
``per-folder``, a CSV), or for ``per-file`` one photo. Every face of a unit's reference photo
(``reference``, else the unit's first photo with a face) is a person and gets a mask fitted on
it; a face on the unit's other photos takes the mask of the reference face the surrogate matches
it to (cosine above its threshold), and a face that matches none gets a mask of its own. So in
``per-file`` every face is its own person. A mask's PRNG key derives from its reference face, so
a unit fitted again (a resumed job) gets the same masks.

    readers (threads): check the manifest, decode, detect, align      -> bounded, in job order
    the same threads: plan each unit (who is who, anchors)             -> bounded, in job order
    main thread: fill a bucket with identities, dispatch               -> compiled step, sharded
    finisher thread: wait for the step, score the masks; a unit whose masks are all in goes to
    writers (threads): save masks; paste back, encode, write atomically, verify, log the photo

Every stage holds a bounded number of units (a unit's photos travel together), so memory grows with
the largest unit, not with the job (``per-file``: flat; ``single``: one unit, the job). JAX
dispatch is asynchronous: while the device runs one bucket the main thread already fills the next,
and the finisher records when each step completes, which gives the share of the wall time the
device was busy.

Resumable (:mod:`.records`): a unit whose photos are all up to date is skipped; a unit with
some photos still to do is planned as in a fresh job (its finished photos are read again, as
they may hold the reference) and only the photos still to do are written.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..faces.align import warp_crop
from ..faces.chain import paste_realign_taps
from ..faces.photo import (
    FacePolicy,
    NoFaceError,
    NoFacePolicy,
    Photo,
    RotationPolicy,
    prepare_photo,
)
from ..io.images import ImageReadError, read_image, write_image
from ..methods.facecloak.cloaker import Cloaker, FitResult, apply_mask
from ..methods.facecloak.masks import save_mask
from ..precision import scope
from ..zoo.embed import embed_faces
from .inputs import common_root, face_identity, identity_units, stray_identity
from .outputs import claim_outputs, plan_outputs, remove_stale_temps
from .records import MANIFEST, ManifestLog, PhotoRecord, Summary, write_manifest

#: Progress callback: ``progress(done, total, postfix)`` after every finished photo.
Progress = Callable[[int, int, dict[str, Any]], None]


def protect(
    files: Sequence[Path],
    outdir: Path,
    cloaker: Cloaker,
    *,
    identity: str = "single",
    root: Path | None = None,
    reference: Path | None = None,
    views_from: str = "reference",
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
    manifest: str = MANIFEST,
    progress: Progress | None = None,
) -> Summary:
    """Protect every face in ``files``; write outputs, masks and the manifest to ``outdir``.

    Args:
      files: the photos (this process's share when several processes split a job: whole
        units, :func:`.inputs.identity_units`).
      outdir: output folder; outputs keep their path relative to ``root``.
      cloaker: the compiled stages 1-2; its ``max_batch`` (rounded to whole devices) is the
        bucket every device step is filled to.
      identity: who is who (:func:`.inputs.group_identities`): ``single``, ``per-folder``, a
        CSV file, or ``per-file``.
      root: folder the outputs' relative paths (and per-file mask names) are taken from;
        default the common folder of ``files`` and ``reference`` (processes that share a job
        pass the job's).
      reference: a photo whose faces are every unit's people, instead of the unit's first.
      views_from: ``"group"`` (needs ``cloaker.max_extra``): the largest face of each other
        photo of a one-person unit that the surrogate matches to the reference joins the
        views, so the mask is fitted on the person's photos rather than one.
      faces, no_face, min_face, rotations: face policies (:func:`jaxcloak.faces.prepare_photo`).
      fmt, quality: output format (None: as the input) and JPEG/WebP quality.
      resume: keep the photos an earlier run with the same settings finished, whose input and
        output still match.
      save_masks: also write each mask (and its trace) to ``outdir/masks``.
      readers, writers: host threads decoding/detecting/planning and encoding/writing.
      manifest: manifest base name (``.jsonl`` while running, ``.json`` at the end).
      progress: called after every finished photo.

    Returns:
      A :class:`.records.Summary` in input order; ``seconds`` holds ``total``, ``fit``
      (compiling, dispatching and running device steps), ``device_busy`` (seconds a step was
      running) and its ``device_busy_share``, ``compile`` and ``apply`` (writer time).
    """
    t_start = time.perf_counter()
    if views_from not in ("reference", "group"):
        raise ValueError(f"views_from must be 'reference' or 'group', got {views_from!r}")
    if views_from == "group" and not cloaker.max_extra:
        raise ValueError("views_from='group' needs a Cloaker built with max_extra > 0")
    files = list(files)
    root = Path(root or common_root(files + ([reference] if reference else []))).resolve()
    outside = [f for f in files if not f.resolve().is_relative_to(root)]
    if outside:
        raise ValueError(f"{outside[0]} is not inside the job's root folder {root}")
    units = identity_units(files, identity, root)
    read = photo_reader(faces, no_face, min_face, rotations)
    ref_photo = read_reference(reference, read) if reference is not None else None
    outdir.mkdir(parents=True, exist_ok=True)
    plan = plan_outputs(files, root, outdir, fmt)
    claim_outputs(outdir, plan.values())
    run = cloaker.describe()
    log = ManifestLog(outdir, manifest, run, resume)
    index = {f: i for i, f in enumerate(files)}
    try:
        summary = run_units(
            [(name, [(index[f], f, plan[f]) for f in fs]) for name, fs in units],
            outdir,
            cloaker,
            sink=log,
            read=read,
            ref_photo=ref_photo,
            per_file=identity == "per-file",
            views_from=views_from,
            fmt=fmt,
            quality=quality,
            save_masks=save_masks,
            readers=readers,
            writers=writers,
            progress=progress,
            total=len(files),
            t_start=t_start,
        )
    finally:
        log.close()
    write_manifest(outdir / f"{manifest}.json", run, summary, log.previous)
    return summary


def photo_reader(
    faces: FacePolicy, no_face: NoFacePolicy, min_face: float, rotations: RotationPolicy
) -> Callable[[Path], Photo]:
    """How the engine reads a photo: decode it, then find and align its faces."""

    def read(path: Path) -> Photo:
        policy = dict(faces=faces, no_face=no_face, min_face=min_face, rotations=rotations)
        return prepare_photo(read_image(path), **policy)

    return read


def read_reference(reference: Path, read: Callable[[Path], Photo]) -> Photo:
    """The ``--reference`` photo; a ValueError says why it cannot serve."""
    try:
        return read(reference)
    except (ImageReadError, NoFaceError) as e:
        raise ValueError(f"reference photo unusable: {e}") from e


class RecordSink(Protocol):
    """Where finished photos go: the resume check and the record of each photo done."""

    def done(self, src: Path, out: Path) -> PhotoRecord | None:
        """``src``'s earlier record, as "up-to-date", when it and ``out`` still match it."""

    def add(self, record: PhotoRecord) -> None:
        """Record one photo the job finished (not called for up-to-date photos)."""


#: A unit as the engine runs it: its name and, per photo, (job index, input, output).
UnitItems = tuple[str, list[tuple[int, Path, Path]]]


def run_units(
    units: Iterable[UnitItems],
    outdir: Path,
    cloaker: Cloaker,
    *,
    sink: RecordSink,
    read: Callable[[Path], Photo],
    ref_photo: Photo | None = None,
    per_file: bool = False,
    views_from: str = "reference",
    fmt: str | None = None,
    quality: int = 95,
    save_masks: bool = True,
    readers: int = 2,
    writers: int = 2,
    progress: Progress | None = None,
    total: int = 0,
    t_start: float | None = None,
    label: Callable[[Path], str] = str,
    full_buckets: bool = False,
) -> Summary:
    """The pipeline on ``units``, whose outputs are already planned and claimed: what
    :func:`protect` runs, and what each worker of a distributed engine runs on its share.

    Masks go to ``outdir/masks`` (``save_masks``); every photo's record goes to ``sink``, its
    input named by ``label`` (a worker reading from object storage names the URI).
    ``full_buckets``: pad every device step to the full bucket, even a run's only one (a
    worker that runs many small jobs then compiles one program, not one per size).
    Returns the :class:`.records.Summary` of these units, records in job-index order.
    """
    if save_masks:
        (outdir / "masks").mkdir(parents=True, exist_ok=True)
    job = _Job(
        cloaker,
        sink,
        outdir,
        read=read,
        ref_photo=ref_photo,
        per_file=per_file,
        views_from=views_from,
        fmt=fmt,
        quality=quality,
        save_masks=save_masks,
        readers=readers,
        writers=writers,
        progress=progress,
        total=total,
        t_start=time.perf_counter() if t_start is None else t_start,
    )
    job.full_buckets = full_buckets
    job.run(
        _Unit(name, [_Item(i, src, out, label(src)) for i, src, out in items])
        for name, items in units
    )
    return job.summary()


@dataclass
class _Item:
    """One photo on its way through the pipeline."""

    index: int  # position in the job's file list: its place in the manifest
    path: Path
    out: Path
    label: str  # how the manifest names the input: the path as given, or its URI
    photo: Photo | None = None
    record: PhotoRecord | None = None  # finished without being written: up to date, unreadable
    names: list[str] = field(default_factory=list)  # identity of each face


@dataclass
class _Identity:
    """One person: the reference face a mask is fitted on, and what the fit needs with it."""

    crop: np.ndarray
    ref_id: str  # "<photo sha256>#<face index>": keys the identity's PRNG
    transform: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)  # joins the mask file's metadata
    extras: np.ndarray | None = None  # the person's other photos' faces (views_from="group")
    anchors: Any = None
    result: FitResult | None = None


@dataclass
class _Unit:
    """Photos protected together: one person's, or one photo's (``per-file``)."""

    name: str
    items: list[_Item]
    fits: dict[str, _Identity] = field(default_factory=dict)
    waiting: int = 0  # identities still without a mask
    error: str | None = None  # a device step of the unit failed
    saved: dict[str, Future] = field(default_factory=dict)  # -> note when the mask is missing

    @property
    def todo(self) -> list[_Item]:
        """The photos to write."""
        return [it for it in self.items if it.record is None]


@dataclass
class _Batch:
    faces: np.ndarray
    ids: list[str]
    owners: list[tuple[_Unit, str]]  # (unit, identity) per row
    out: Any
    anchors: list
    dispatched: float


class _Failed:
    """Stands in for a step's output when dispatching it raised; the finisher re-raises."""

    def __init__(self, error: Exception):
        self.error = error


class _Job:
    """One run's pipeline and the state its threads share."""

    def __init__(
        self,
        cloaker: Cloaker,
        log: RecordSink,
        outdir: Path,
        *,
        read: Callable[[Path], Photo],
        ref_photo: Photo | None,
        per_file: bool,
        views_from: str,
        fmt: str | None,
        quality: int,
        save_masks: bool,
        readers: int,
        writers: int,
        progress: Progress | None,
        total: int,
        t_start: float,
    ):
        self.cloaker, self.log, self.outdir, self.read = cloaker, log, outdir, read
        self.ref_photo, self.per_file, self.views_from = ref_photo, per_file, views_from
        self.fmt, self.quality, self.save_masks = fmt, quality, save_masks
        self.readers, self.writers = readers, writers
        self.progress, self.total, self.t_start = progress, total, t_start
        self.bucket = cloaker.bucket(cloaker.max_batch)
        self.threshold = cloaker.recognizer.spec.require_threshold()
        self.records: dict[int, PhotoRecord] = {}
        self.masks: dict[str, str | None] = {}  # in planning order; a path once written
        self.fitted = self.steps = 0
        self.lock = threading.Lock()
        self.fatal: list[BaseException] = []  # what stops the job: the manifest not writable
        self.busy = {"device": 0.0, "last_done": t_start, "fit_wall": 0.0, "write": 0.0}
        self.batches: queue.Queue[_Batch | None] = queue.Queue(maxsize=2)
        self.write_pool = ThreadPoolExecutor(writers, thread_name_prefix="jaxcloak-write")
        self.write_slots = threading.BoundedSemaphore(2 * self.bucket + writers)
        self.full_buckets = False

    # -- main thread ---------------------------------------------------------------------------

    def run(self, units: Iterable[_Unit]) -> None:
        """Protect ``units``; built as they are read, so a finished unit's masks are freed."""
        fin = threading.Thread(target=self._finisher, name="jaxcloak-finish", daemon=True)
        fin.start()
        pool = ThreadPoolExecutor(self.readers, thread_name_prefix="jaxcloak-read")
        pending: list[tuple[_Unit, str]] = []
        try:
            ahead, behind = itertools.tee(units)
            photos = (it for unit in ahead for it in unit.items)
            loaded = _ordered_prefetch(self._load, photos, pool, 2 * self.bucket + self.readers)
            for unit in _ordered_prefetch(self._plan, _whole(behind, loaded), pool, self.readers):
                if self.fatal:
                    break
                for it in unit.items:
                    if it.record is not None:
                        self._finish(it, it.record)
                        it.photo = None  # read again as its unit's reference, or not at all
                if unit.fits:
                    unit.waiting = len(unit.fits)
                    if self.save_masks:
                        with self.lock:  # the manifest lists masks in this order
                            for name in unit.fits:
                                self.masks.setdefault(name, None)
                    pending.extend((unit, name) for name in unit.fits)
                while len(pending) >= self.bucket:
                    self._dispatch(pending[: self.bucket], self.bucket)
                    del pending[: self.bucket]
            if pending and not self.fatal:
                # The full bucket, even for the last faces (one program for the whole run),
                # unless they are the run's only step: then the smallest bucket that holds them.
                self._dispatch(pending, self.bucket if self.steps or self.full_buckets else None)
        finally:
            self.batches.put(None)
            fin.join()
            pool.shutdown(wait=True)
            self.write_pool.shutdown(wait=True)
        if self.fatal:
            raise self.fatal[0]

    def _dispatch(self, rows: list[tuple[_Unit, str]], size: int | None) -> None:
        people = [unit.fits[name] for unit, name in rows]
        crops = np.stack([p.crop for p in people])
        ids = [p.ref_id for p in people]
        taps = [paste_realign_taps(p.transform) for p in people]
        extras = [p.extras for p in people] if self.cloaker.max_extra else None
        t0 = time.perf_counter()
        try:
            out, anchors = self.cloaker.fit_arrays(
                crops, ids, taps, [p.anchors for p in people], size=size, extras=extras
            )
        except Exception as e:
            out, anchors = _Failed(e), []
        self.busy["fit_wall"] += time.perf_counter() - t0
        self.steps += 1
        self.batches.put(_Batch(crops, ids, rows, out, anchors, time.perf_counter()))

    def summary(self) -> Summary:
        total = time.perf_counter() - self.t_start
        seconds = {
            "total": total,
            "fit": self.busy["fit_wall"] + self.busy["device"],
            "device_busy": self.busy["device"],
            "device_busy_share": self.busy["device"] / max(total, 1e-9),
            "compile": sum(self.cloaker.compile_seconds.values()),
            "apply": self.busy["write"],
        }
        records = [self.records[i] for i in sorted(self.records)]
        masks = {name: path for name, path in self.masks.items() if path}
        return Summary(records, masks, seconds, self.fitted)

    # -- reader threads ------------------------------------------------------------------------

    def _load(self, item: _Item) -> _Item:
        item.record = self.log.done(item.path, item.out)
        if item.record is not None:
            return item
        try:
            item.photo = self.read(item.path)
        except (ImageReadError, NoFaceError) as e:
            status = "no-face" if isinstance(e, NoFaceError) else "failed"
            item.record = PhotoRecord(item.label, status, error=str(e))
        except Exception as e:  # one bad photo must not stop the job
            item.record = _failed(item, e)
        return item

    def _plan(self, unit: _Unit) -> _Unit:
        todo = unit.todo
        if not todo:
            return unit  # nothing to write: up to date or unreadable
        try:
            self._who_is_who(unit, todo)
            for person in unit.fits.values():
                person.anchors = self.cloaker.anchors_for(person.crop)
        except Exception as e:  # one bad unit must not stop the job
            unit.fits.clear()
            for it in todo:
                it.record = _failed(it, e)
        return unit

    def _who_is_who(self, unit: _Unit, todo: list[_Item]) -> None:
        """The unit's identities (``unit.fits``) and each face's (``item.names``)."""
        readable = [p for p in map(self._context, unit.items) if p is not None]
        ref = self.ref_photo or readable[0]
        refs = []
        for j, face in enumerate(ref.faces):
            name = face_identity(unit.name, j, len(ref.faces))
            unit.fits[name] = _Identity(face.crop, f"{ref.image.sha256}#{j}", face.transform)
            refs.append(name)
        if self.views_from == "group" and len(refs) == 1:
            self._add_views(unit.fits[refs[0]], ref, readable)
        by_ref = {unit.fits[n].ref_id: n for n in refs}
        ref_emb = None
        for it in todo:
            embs = None
            for j, face in enumerate(it.photo.faces):
                ref_id = f"{it.photo.image.sha256}#{j}"
                if ref_id in by_ref:
                    it.names.append(by_ref[ref_id])
                    continue
                if embs is None:
                    embs = self._embed([fc.crop for fc in it.photo.faces])
                if ref_emb is None:
                    with scope(self.cloaker.precision):  # as the fit embeds them
                        ref_emb = self._embed([unit.fits[n].crop for n in refs])
                sims = {n: float(embs[j] @ e) for n, e in zip(refs, ref_emb, strict=True)}
                best = max(sims, key=sims.get)
                if sims[best] >= self.threshold:
                    it.names.append(best)
                else:
                    name = stray_identity(unit.name, it.path, j)
                    unit.fits[name] = _Identity(face.crop, ref_id, face.transform)
                    it.names.append(name)
        for person in unit.fits.values():  # per-file masks name their photo, others count views
            extra = {"extra_photos": 0 if person.extras is None else len(person.extras)}
            person.meta = {"photo": todo[0].label} if self.per_file else extra

    def _context(self, item: _Item) -> Photo | None:
        """``item``'s photo; one finished in an earlier run is read again (it may be the
        reference or feed the views), and is None when unreadable."""
        if item.photo is None and item.record is not None and item.record.status == "up-to-date":
            try:
                item.photo = self.read(item.path)
            except (ImageReadError, NoFaceError):
                return None
        return item.photo

    def _add_views(self, person: _Identity, ref: Photo, photos: list[Photo]) -> None:
        """The largest face of each other photo that the surrogate matches to ``person``, at
        most ``cloaker.max_extra``, joins the views."""
        crops = [p.faces[0].crop for p in photos if p.image.sha256 != ref.image.sha256]
        if not crops:
            return
        emb = self._embed([person.crop, *crops])
        same = [
            c for c, e in zip(crops, emb[1:], strict=True) if float(e @ emb[0]) >= self.threshold
        ]
        if same:
            person.extras = np.stack(same[: self.cloaker.max_extra])

    def _embed(self, crops: list[np.ndarray]) -> np.ndarray:
        return embed_faces(self.cloaker.recognizer, np.stack(crops))

    # -- finisher thread -----------------------------------------------------------------------

    def _finisher(self) -> None:
        while (batch := self.batches.get()) is not None:
            try:
                self._collect(batch)
            except BaseException as e:  # keep draining, so the main thread never blocks
                self.fatal.append(e)

    def _collect(self, batch: _Batch) -> None:
        try:
            if isinstance(batch.out, _Failed):
                raise batch.out.error
            results = self.cloaker.collect(batch.out, batch.faces, batch.ids, batch.anchors)
            error = None
        except Exception as e:  # a failed step fails its units' photos, not the job
            results, error = [None] * len(batch.ids), f"{type(e).__name__}: {e}"
        now = time.perf_counter()
        with self.lock:
            self.busy["device"] += now - max(batch.dispatched, self.busy["last_done"])
            self.busy["last_done"] = now
        for (unit, name), res in zip(batch.owners, results, strict=True):
            unit.fits[name].result = res
            unit.error = unit.error or error
            unit.waiting -= 1
            if unit.waiting == 0:
                self._fitted(unit)

    def _fitted(self, unit: _Unit) -> None:
        """Every mask of ``unit`` is in: save them and write its photos (on the writers)."""
        if unit.error:
            for it in unit.todo:
                self._finish(it, _failed(it, unit.error))
                it.photo = None
            return
        self.fitted += len(unit.fits)
        if self.save_masks:
            for name, person in unit.fits.items():
                unit.saved[name] = self.write_pool.submit(self._save, name, person)
        for it in unit.todo:  # after the masks: a writer waits only for jobs already started
            self.write_slots.acquire()
            self.write_pool.submit(self._write_job, it, unit)

    # -- writer threads ------------------------------------------------------------------------

    def _save(self, name: str, person: _Identity) -> str | None:
        """Write one mask file; None, or the note its photos carry when it could not be."""
        res = person.result
        path = self.outdir / "masks" / f"{name}.mask"
        meta = {**res.meta, "identity": name, **person.meta}
        try:
            remove_stale_temps(path)  # a killed run's half-written mask
            save_mask(path, res.delta, meta, traces=res.trace, overwrite=True)
        except OSError as e:  # the photos can still be protected; the note says what is missing
            return f"mask file {path} not written ({e.strerror or e})"
        with self.lock:
            self.masks[name] = str(path)
        return None

    def _write_job(self, item: _Item, unit: _Unit) -> None:
        t0 = time.perf_counter()
        try:
            self._finish(item, self._write(item, unit))
        except BaseException as e:  # the manifest cannot be written: stop the job
            self.fatal.append(e)
        finally:
            item.photo = None  # free it as soon as the photo is written
            self.write_slots.release()
            with self.lock:
                self.busy["write"] += time.perf_counter() - t0

    def _write(self, item: _Item, unit: _Unit) -> PhotoRecord:
        photo, out = item.photo, item.out
        try:
            rgb = apply_mask(photo, [unit.fits[n].result.delta for n in item.names])
            out.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(out)
            # Overwrite: an output without a manifest line is a killed run's, to be redone.
            write_image(
                out, rgb, like=photo.image, format=self.fmt, quality=self.quality, overwrite=True
            )
            written = read_image(out)
            rows = _face_report(self.cloaker, photo, written.rgb, item.names)
            linf, over = _change_report(self.cloaker, photo, written.rgb)
            saved = (unit.saved[n].result() for n in dict.fromkeys(item.names) if n in unit.saved)
            missing = [note for note in saved if note]
            return PhotoRecord(
                item.label,
                "protected",
                photo.image.sha256,
                str(out),
                written.sha256,
                rows,
                list(photo.notes) + over + missing,
                linf=linf,
            )
        except Exception as e:  # one bad photo must not stop the job
            return _failed(item, e)

    # -- any thread ----------------------------------------------------------------------------

    def _finish(self, item: _Item, record: PhotoRecord) -> None:
        if record.status != "up-to-date":
            self.log.add(record)
        with self.lock:
            self.records[item.index] = record
            n = len(self.records)
            share = self.busy["device"] / max(time.perf_counter() - self.t_start, 1e-9)
        if self.progress:
            self.progress(n, self.total, {"device busy": f"{100 * share:.0f}%"})


def _failed(item: _Item, error: Exception | str) -> PhotoRecord:
    reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    sha = item.photo.image.sha256 if item.photo else None
    return PhotoRecord(item.label, "failed", sha, error=f"{item.label}: {reason}")


def _whole(units: Iterable[_Unit], loaded: Iterator[_Item]) -> Iterator[_Unit]:
    """Each unit once the readers are done with all its photos (they come in job order)."""
    for unit in units:
        for _ in unit.items:
            next(loaded)
        yield unit


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


def _change_report(cloaker: Cloaker, photo: Photo, written: np.ndarray) -> tuple[int, list[str]]:
    """The written file's largest pixel change against the input, and a note when it exceeds
    the mask's budget (lossy re-encoding adds its own error on top of the mask's)."""
    if written.shape != photo.image.rgb.shape:
        raise ValueError(f"written image is {written.shape}, input {photo.image.rgb.shape}")
    linf = int(np.abs(written.astype(np.int16) - photo.image.rgb.astype(np.int16)).max())
    budget = cloaker.config.max_levels()
    if linf <= budget + 0.5:
        return linf, []
    return linf, [
        f"the written file changes pixels by up to {linf} grey levels, {linf - budget:.0f} over "
        f"the mask's budget of {budget:.0f} (lossy re-encoding); --format PNG keeps it exact"
    ]


def _face_report(
    cloaker: Cloaker, photo: Photo, written: np.ndarray, names: list[str]
) -> list[dict]:
    """Surrogate cosine between each clean face and the same region of the written output."""
    after = np.stack([warp_crop(written, f.transform, f.crop.shape[0]) for f in photo.faces])
    before = np.stack([f.crop for f in photo.faces])
    emb = embed_faces(cloaker.recognizer, np.concatenate([before, after]))
    n = len(photo.faces)
    cos = np.sum(emb[:n] * emb[n:], axis=1)
    thr = cloaker.recognizer.spec.require_threshold()
    return [
        {
            "index": f.index,
            "origin": f.origin,
            "box": [round(v, 1) for v in f.box],
            "identity": names[j],
            "cos_after": round(float(cos[j]), 4),
            "same_person_after": bool(cos[j] >= thr),
        }
        for j, f in enumerate(photo.faces)
    ]
