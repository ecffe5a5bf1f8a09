"""Bulk protection on Ray Data (``jaxcloak protect --engine ray``): the local engine's
semantics, past one machine.

    driver: list the inputs, form the units (as the local engine), plan and claim outputs,
            open the manifest log, find the earlier records
    Ray Data, tasks: per unit, fetch each photo (path or URI), hash it, keep what is up to
            date, decode and detect the rest                     -> rows of ready photos
    Ray Data, actor pool: each actor builds one Cloaker when it first has work (its programs
            come from the shared persistent compile cache) and runs :func:`.engine.run_units`
            on a batch of units: the same buckets, keys and writes as a local job; outputs to
            an fsspec destination are written locally, then uploaded whole
    driver: each record, as its batch comes back, appended once to ``manifest.jsonl``;
            ``manifest.json`` at the end

A mask's key derives from the run's seed and its reference face, and a face's fit does not
depend on what else shares its device step, so the outputs equal a local run's byte for byte.
An actor that dies is restarted and its batch retried (``retries`` times each); outputs are
written atomically and a retried batch writes the same bytes, and the driver keeps the first
record of each photo, so every photo appears once. Ray is imported only in this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..io.hashing import sha256_file
from ..io.images import ImageReadError, decode_image
from ..io.locations import (
    common_folder,
    files_below,
    get_file,
    is_uri,
    protocol,
    put_file,
    read_bytes,
    relative,
)
from ..io.locations import (
    join as join_uri,
)
from ..methods.facecloak.cloaker import Cloaker
from ..paths import home
from .engine import Progress, photo_reader, read_reference, run_units
from .inputs import common_root, identity_units, uri_units
from .outputs import LEDGER, OutputConflict, claim_outputs, output_name, plan_outputs
from .records import MANIFEST, ManifestLog, PhotoRecord, Summary, write_manifest


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray job runs.

    Attributes:
      address: a running cluster (``auto``: the one ``ray start`` made on this machine, or
        ``ray://host:10001``); None starts a private one on this machine for the job.
      actors: actors in the pool, each with its own compiled Cloaker.
      gpus_per_actor: GPUs Ray reserves per actor (1: one actor per GPU); 0 on CPUs.
      retries: restarts of a dead actor, and retries of the batch it held.
      units_per_batch: units an actor protects per call (default: the Cloaker's bucket, so
        a per-file batch fills one device step).
    """

    address: str | None = None
    actors: int = 1
    gpus_per_actor: float = 0.0
    retries: int = 3
    units_per_batch: int | None = None


@dataclass(frozen=True)
class _Source:
    """One photo of the job, as a worker sees it."""

    index: int  # place in the job's input order
    key: str  # where it is read: an absolute local path or a URI
    label: str  # how the manifest names it: the path as given, or the URI
    out: str  # where its output goes: an absolute local path or a URI
    out_label: str  # how the manifest names the output
    out_rel: str  # the output's path below the destination


def protect_ray(
    inputs: Sequence[Path | str],
    dest: Path | str,
    cloaker: Cloaker,
    make_cloaker: Callable[[], Cloaker],
    *,
    identity: str = "single",
    reference: Path | None = None,
    views_from: str = "reference",
    faces: Any = "all",
    no_face: Any = "skip",
    min_face: float = 20,
    rotations: Any = "auto",
    fmt: str | None = None,
    quality: int = 95,
    resume: bool = True,
    save_masks: bool = True,
    readers: int = 2,
    writers: int = 2,
    manifest: str = MANIFEST,
    options: RayOptions = RayOptions(),
    progress: Progress | None = None,
) -> Summary:
    """Protect ``inputs`` (local photo files, or photo URIs: :func:`.inputs.collect_uris`
    lists folders) into ``dest`` (a folder or a URI folder) on a Ray cluster; arguments as
    :func:`.engine.protect`.

    ``cloaker`` gives the run's settings (it compiles nothing here); ``make_cloaker`` builds
    the same Cloaker in each actor (it must pickle, e.g. a ``functools.partial``). Returns the
    :class:`.records.Summary`; ``seconds`` adds
    ``ray_start`` (joining or starting the cluster) and ``first_batch`` (until the first batch
    came back: actor start, model load, compile); ``fit``, ``device_busy``, ``apply`` and
    ``compile`` are summed over the actors, and ``device_busy_share`` is per actor.
    """
    t_start = time.perf_counter()
    if views_from == "group" and not cloaker.max_extra:
        raise ValueError("views_from='group' needs a Cloaker built with max_extra > 0")
    run = cloaker.describe()
    units_per_batch = options.units_per_batch or cloaker.bucket(cloaker.max_batch)
    units, n_photos = _plan(inputs, dest, identity, reference, fmt)
    remote = is_uri(str(dest))
    read = photo_reader(faces, no_face, min_face, rotations)
    ref_photo = read_reference(reference, read) if reference is not None else None
    if remote:
        state = _state_folder(str(dest))
        _fetch_logs(str(dest), state, manifest)
        _claim_remote(str(dest), [s.out for _, srcs in units for s in srcs], state)
    else:
        state = Path(dest)
        state.mkdir(parents=True, exist_ok=True)
        claim_outputs(state, [Path(s.out_label) for _, srcs in units for s in srcs])
    log = ManifestLog(state, manifest, run, resume)
    settings = dict(
        policy=dict(faces=faces, no_face=no_face, min_face=min_face, rotations=rotations),
        engine=dict(
            per_file=identity == "per-file",
            views_from=views_from,
            fmt=fmt,
            quality=quality,
            save_masks=save_masks,
            readers=readers,
            writers=writers,
        ),
        dest=str(dest) if remote else str(Path(dest).resolve()),
        dest_label=str(dest),
        remote=remote,
    )
    records: dict[int, PhotoRecord] = {}
    masks: dict[str, str] = {}
    seconds = dict.fromkeys(
        ("ray_start", "first_batch", "compile", "fit", "device_busy", "apply"), 0.0
    )
    fitted = 0
    started = False
    try:
        ray, started = _connect(options.address)
        _check_gpus(ray, options, started)
        seconds["ray_start"] = time.perf_counter() - t_start
        rows = [
            {"unit": pickle.dumps((name, srcs, _earlier(srcs, log.previous)))}
            for name, srcs in units
        ]
        ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 1000)))
        actor_cpus, read_cpus = _cpu_shares(ray.cluster_resources().get("CPU", 1), options)
        ds = ds.map(_read_unit, fn_kwargs={"policy": settings["policy"]}, num_cpus=read_cpus)
        with warnings.catch_warnings():
            # Bounded restarts have no named parameter yet (Ray 2.60); ray_remote_args warns.
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = _protect_stage(
                ds, ray, settings, make_cloaker, ref_photo, options, units_per_batch, actor_cpus
            )
        for row in _rows(ds):
            got = pickle.loads(row["result"])
            if not seconds["first_batch"]:
                seconds["first_batch"] = time.perf_counter() - t_start
            for index, rec in got["records"]:
                if index in records:
                    continue  # a retried batch's repeat: the first record stands
                records[index] = rec
                if rec.status != "up-to-date":
                    log.add(rec)
                if progress:
                    progress(len(records), n_photos, {})
            masks.update(got["masks"])
            fitted += got["fitted"]
            for k, v in got["seconds"].items():
                seconds[k] += v
    finally:
        log.close()
        if started:
            ray.shutdown()
        if remote:  # what finished is at the destination even when the job stopped
            _upload(state / f"{manifest}.jsonl", join_uri(str(dest), f"{manifest}.jsonl"))
    seconds["total"] = time.perf_counter() - t_start
    seconds["device_busy_share"] = seconds["device_busy"] / (seconds["total"] * options.actors)
    missing = n_photos - len(records)
    if missing:  # never claim a job complete that is not
        raise RuntimeError(f"{missing} photo(s) came back from no worker; run again to resume")
    summary = Summary([records[i] for i in sorted(records)], masks, seconds, fitted)
    write_manifest(state / f"{manifest}.json", run, summary, log.previous)
    if remote:
        _upload(state / f"{manifest}.json", join_uri(str(dest), f"{manifest}.json"))
    return summary


def _plan(
    inputs: Sequence[Path | str],
    dest: Path | str,
    identity: str,
    reference: Path | None,
    fmt: str | None,
) -> tuple[list[tuple[str, list[_Source]]], int]:
    """The job's units of sources, in the local engine's order, and the photo count."""
    uris = [str(x) for x in inputs if is_uri(str(x))]
    if uris and len(uris) != len(inputs):
        raise ValueError("give either local paths or URIs as inputs, not both")
    remote = is_uri(str(dest))
    if uris:
        found = list(dict.fromkeys(uris))
        folder = common_folder(found)
        units = uri_units(found, identity, folder)
        rels = {u: relative(u, folder) for u in found}
        keys = {u: u for u in found}
        order = found
    else:
        files = [Path(x) for x in inputs]
        root = common_root(files + ([reference] if reference else []))
        units = identity_units(files, identity, root)
        rels = {f: f.resolve().relative_to(root).as_posix() for f in files}
        keys = {f: str(f.resolve()) for f in files}
        order = files
    index = {f: i for i, f in enumerate(order)}
    outs = {f: output_name(Path(rels[f]), fmt).as_posix() for f in order}
    if not remote and not uris:  # exactly the local engine's plan and its conflict checks
        local = plan_outputs(order, root, Path(dest), fmt)
        labels = {f: str(local[f]) for f in order}
    else:
        seen: dict[str, Any] = {}
        for f in order:
            if outs[f] in seen:
                raise OutputConflict(
                    f"outputs would collide: {seen[outs[f]]} and {f} would both be written to "
                    f"{outs[f]}; rename the inputs, drop --format, or choose another -o"
                )
            seen[outs[f]] = f
        base = str(dest) if remote else str(Path(dest))
        labels = {
            f: join_uri(base, outs[f]) if remote else str(Path(base) / outs[f]) for f in order
        }
        inputs_at = {_place(keys[f]) for f in order}
        onto = [labels[f] for f in order if _place(labels[f]) in inputs_at]
        if onto:
            raise OutputConflict(f"{onto[0]} is both an input and an output; choose another -o")
    units_out = []
    for name, members in units:
        srcs = []
        for f in members:
            out = labels[f] if remote else str(Path(labels[f]).resolve())
            srcs.append(_Source(index[f], keys[f], str(f), out, labels[f], outs[f]))
        units_out.append((name, srcs))
    return units_out, len(order)


def _protect_stage(ds, ray, settings, make_cloaker, ref_photo, options, units_per_batch, cpus):
    """The actor pool: fixed size, ``options.retries`` restarts and batch retries."""
    return ds.map_batches(
        _Protector,
        fn_constructor_kwargs={
            "make_cloaker": make_cloaker,
            "ref_photo": ref_photo,
            "settings": settings,
        },
        batch_size=units_per_batch,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=options.actors),
        num_gpus=options.gpus_per_actor or None,
        num_cpus=cpus,
        max_restarts=options.retries,
        max_task_retries=options.retries,
    )


def _place(name: str) -> str:
    """One spelling per location: ``file://`` URIs and local paths as resolved paths."""
    if is_uri(name) and protocol(name) != "file":
        return name
    return str(Path(name.removeprefix("file://")).resolve())


def _earlier(srcs: list[_Source], previous: dict[str, dict]) -> dict[str, dict]:
    """The earlier records of a unit's photos (what a worker's resume check compares)."""
    return {s.label: previous[s.label] for s in srcs if s.label in previous}


def _state_folder(dest: str) -> Path:
    """Where the running log of a job writing to object storage lives on the driver: a log is
    appended line by line, which object stores cannot do; both manifests are uploaded at the
    end."""
    digest = hashlib.sha256(dest.encode()).hexdigest()[:16]
    folder = home() / "ray-jobs" / digest
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _fetch_logs(dest: str, state: Path, manifest: str) -> None:
    """A resumed job whose driver kept no log takes the destination's manifests."""
    for name in (f"{manifest}.jsonl", f"{manifest}.json"):
        if not (state / name).exists():
            with contextlib.suppress(OSError):  # none there: a fresh job
                get_file(join_uri(dest, name), state / name)


def _claim_remote(dest: str, outputs: list[str], state: Path) -> None:
    """The object-store form of :func:`.outputs.claim_outputs`: refuse to replace objects
    that neither the destination's ledger of planned outputs nor any of its manifests lists,
    then add this job's outputs to the ledger (before any is written, so a job killed at any
    point can replace its own outputs when run again, with any settings)."""
    ledger_uri = join_uri(dest, LEDGER)
    known: set[str] = set()
    try:
        known.update(ln for ln in read_bytes(ledger_uri).decode().splitlines() if ln)
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as e:
        raise OutputConflict(f"{ledger_uri}: cannot read the output ledger ({e})") from None
    for m in state.glob("manifest*.json*"):  # what _fetch_logs brought, any settings
        for line in m.read_text(encoding="utf-8", errors="replace").splitlines():
            known.update(re.findall(r'"output": "([^"]+)"', line))
    present = files_below(dest)
    foreign = [o for o in outputs if o in present and o not in known]
    if foreign:
        more = f" (and {len(foreign) - 5} more)" if len(foreign) > 5 else ""
        raise OutputConflict(
            f"{dest} already holds {', '.join(foreign[:5])}{more}, not written by jaxcloak; "
            "move them away or choose another -o (nothing was written)"
        )
    new = [o for o in dict.fromkeys(outputs) if o not in known]
    if new:
        (state / LEDGER).write_text("".join(o + "\n" for o in sorted(known | set(new))))
        put_file(state / LEDGER, ledger_uri)


def _upload(local: Path, uri: str) -> None:
    """A manifest to the destination; a failure is reported, the local copy stays."""
    try:
        if local.exists():
            put_file(local, uri)
    except Exception as e:  # the job's result must not be lost to a failed upload
        print(f"warning: {uri} not uploaded ({e}); the driver's copy is {local}", file=sys.stderr)


def _rows(ds) -> Iterator[dict[str, Any]]:
    """The dataset's rows; a job Ray gives up on (retries spent, an actor that cannot start)
    becomes one RuntimeError saying so, the finished photos being in the log."""
    try:
        yield from ds.iter_rows()
    except Exception as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise RuntimeError(
            f"the Ray job stopped ({type(e).__name__}: {reason[:500]}); the photos finished "
            "so far are in the manifest log and a rerun resumes from them"
        ) from e


def _check_gpus(ray, options: RayOptions, started: bool) -> None:
    """Fail fast when the actors ask for more GPUs than a cluster started here has (they
    would wait forever); a cluster joined may be autoscaling, so it only gets a warning."""
    need = options.actors * options.gpus_per_actor
    have = ray.cluster_resources().get("GPU", 0)
    if need <= have:
        return
    msg = (
        f"{options.actors} actor(s) x {options.gpus_per_actor:g} GPU need {need:g} GPU(s), "
        f"the cluster has {have:g}"
    )
    if started:
        raise ValueError(msg + "; lower --actors or --gpus-per-actor")
    print(f"warning: {msg}; the job waits until the cluster has them", file=sys.stderr)


def _forwarded_env() -> dict[str, str]:
    """The driver's jaxcloak, JAX, XLA and Hugging Face settings, for the workers."""
    prefixes = ("JAXCLOAK_", "JAX_", "XLA_", "HF_")
    return {k: v for k, v in os.environ.items() if k.startswith(prefixes)}


def _cpu_shares(cpus: float, options: RayOptions) -> tuple[float, float]:
    """CPUs Ray reserves per actor and per read task: at most one each, and never so much
    for the actors that no read task fits beside them (the job would wait forever). They are
    scheduling shares; XLA in an actor still uses the cores it finds."""
    per_actor = min(1.0, cpus / (options.actors + 1))
    per_read = min(1.0, (cpus - options.actors * per_actor) / 2)
    return round(per_actor, 3), round(max(per_read, 0.01), 3)


def _connect(address: str | None):
    """Ray, joined to ``address`` or to a private cluster started here, and quiet: Ray's own
    notices (its C++ core's too) stay out of the job's output unless RAY_BACKEND_LOG_LEVEL
    asks for them; failures still raise."""
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    import ray
    from ray.data import DataContext

    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    started = False
    if not ray.is_initialized():
        with warnings.catch_warnings():
            # Ray starts its daemons with fork+exec, which JAX's fork warning cannot tell apart
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR,
                # a cluster started elsewhere does not see this shell's settings otherwise
                runtime_env={"env_vars": _forwarded_env()},
            )
        started = True
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # the job's own bar counts photos
    ctx.print_on_execution_start = False
    return ray, started


# -- Ray Data tasks ----------------------------------------------------------------------------


def _read_unit(row: dict[str, Any], *, policy: dict[str, Any]) -> dict[str, Any]:
    """Fetch a unit's photos, keep the up-to-date ones, decode and detect the rest (and the
    up-to-date ones too when something is left: they may hold the unit's reference face)."""
    name, srcs, earlier = pickle.loads(row["unit"])
    data: dict[str, bytes | Exception] = {}
    done: dict[str, PhotoRecord] = {}
    for s in srcs:
        try:
            blob = read_bytes(s.key) if is_uri(s.key) else Path(s.key).read_bytes()
        except FileNotFoundError:
            data[s.key] = ImageReadError(f"{s.label}: file not found")
            continue
        except Exception as e:  # any backend's error fails this photo, not the job
            why = getattr(e, "strerror", None) or f"{type(e).__name__}: {e}"
            data[s.key] = ImageReadError(f"{s.label}: cannot read file ({why})")
            continue
        data[s.key] = blob
        prev = earlier.get(s.label)
        if prev and _still_matches(prev, s, hashlib.sha256(blob).hexdigest()):
            done[s.key] = PhotoRecord(**{**prev, "status": "up-to-date"})
    photos: dict[str, Any] = {}
    if len(done) < len(srcs):
        from ..faces.photo import prepare_photo

        for s in srcs:
            blob = data[s.key]
            try:
                if isinstance(blob, Exception):
                    raise blob
                image = decode_image(blob, s.label, path=s.key)
                photos[s.key] = prepare_photo(image, **policy)
            except Exception as e:  # the engine reports it as it would a local read's
                photos[s.key] = e
    return {"unit": pickle.dumps((name, srcs, done, photos))}


def _still_matches(prev: dict, s: _Source, input_sha: str) -> bool:
    """The resume check (:meth:`.records.ManifestLog.done`) on fetched bytes."""
    if prev.get("output") != s.out_label or prev.get("input_sha256") != input_sha:
        return False
    try:
        if is_uri(s.out):
            got = hashlib.sha256(read_bytes(s.out)).hexdigest()
        else:
            got = sha256_file(Path(s.out))
    except Exception:  # unreadable or gone: redo the photo
        return False
    return got == prev.get("output_sha256")


class _Sink:
    """A worker's record sink: the resume decisions made while reading; records are
    collected from the run's summary."""

    def __init__(self, done: dict[Path, PhotoRecord | None]):
        self.decided = done

    def done(self, src: Path, out: Path) -> PhotoRecord | None:
        return self.decided.get(src)

    def add(self, record: PhotoRecord) -> None:
        pass


class _Protector:
    """One actor of the pool: builds its Cloaker when it first has a face to fit, then
    protects batches of units with the local engine."""

    def __init__(self, make_cloaker: Callable[[], Any], ref_photo: Any, settings: dict):
        self.make_cloaker, self.ref_photo, self.settings = make_cloaker, ref_photo, settings
        self.cloaker = None
        self.remote = settings["remote"]
        self.dest = settings["dest"]
        self.scratch = Path(tempfile.mkdtemp(prefix="jaxcloak-ray-")) if self.remote else None

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        units = [pickle.loads(b) for b in batch["unit"]]
        by_index = {s.index: s for _, srcs, _, _ in units for s in srcs}
        source = {_engine_path(s.key): s for s in by_index.values()}
        done = {k: r for _, _, d, _ in units for k, r in d.items()}
        photos = {k: p for *_, ps in units for k, p in ps.items()}
        todo = [u for u in units if len(u[2]) < len(u[1])]
        if not todo:  # nothing to fit: no Cloaker needed
            recs = [(s.index, done[s.key]) for _, srcs, _, _ in units for s in srcs]
            return _result(recs, {}, 0, {})
        if self.cloaker is None:
            self.cloaker = self.make_cloaker()
        outdir = self.scratch if self.remote else Path(self.dest)
        items = [
            (name, [(s.index, _engine_path(s.key), self._local_out(s)) for s in srcs])
            for name, srcs, _, _ in units
        ]

        def read(path: Path):
            got = photos[source[path].key]
            if isinstance(got, Exception):
                raise got
            return got

        summary = run_units(
            items,
            outdir,
            self.cloaker,
            sink=_Sink({p: done.get(s.key) for p, s in source.items()}),
            read=read,
            ref_photo=self.ref_photo,
            label=lambda path: source[path].label,
            full_buckets=True,  # one program per actor, whatever size each batch has
            **self.settings["engine"],
        )
        order = sorted(by_index)
        recs = []
        for index, rec in zip(order, summary.records, strict=True):
            recs.append((index, self._deliver(rec, by_index[index])))
        masks = self._deliver_masks(summary.masks)
        seconds = {k: summary.seconds[k] for k in ("fit", "device_busy", "apply")}
        seconds["compile"] = sum(self.cloaker.compile_seconds.values())
        self.cloaker.compile_seconds.clear()  # each compile counted once
        return _result(recs, masks, summary.fitted, seconds)

    def _local_out(self, s: _Source) -> Path:
        return self.scratch / s.out_rel if self.remote else Path(s.out)

    def _deliver(self, rec: PhotoRecord, s: _Source) -> PhotoRecord:
        """The record as the manifest names things; an upload that fails fails the photo."""
        if rec.status != "protected":
            return rec
        if not self.remote:
            return replace(rec, output=s.out_label)
        local = self._local_out(s)
        try:
            put_file(local, s.out)
        except Exception as e:  # the photo is not protected where it was asked for
            why = f"{s.label}: output not uploaded to {s.out} ({type(e).__name__}: {e})"
            return PhotoRecord(s.label, "failed", rec.input_sha256, error=why)
        finally:
            local.unlink(missing_ok=True)
        return replace(rec, output=s.out)

    def _deliver_masks(self, masks: dict[str, str]) -> dict[str, str]:
        if not self.remote:  # named below -o as given, as a local run names them
            base = Path(self.settings["dest_label"]) / "masks"
            return {name: str(base / Path(path).name) for name, path in masks.items()}
        sent = {}
        for name, path in masks.items():
            uri = join_uri(self.dest, f"masks/{Path(path).name}")
            try:
                put_file(Path(path), uri)
                sent[name] = uri
            except Exception:
                pass  # its photos are protected; the manifest lists only masks that exist
            Path(path).unlink(missing_ok=True)
        return sent

    def __del__(self):
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def _engine_path(key: str) -> Path:
    """The path the engine knows a photo by: the local path, or a URI's path part (unique
    within a job, whose URIs share one scheme; its file name names stray faces' masks)."""
    return Path(key.split("://", 1)[1]) if is_uri(key) else Path(key)


def _result(recs: list, masks: dict, fitted: int, seconds: dict) -> dict[str, Any]:
    blob = pickle.dumps({"records": recs, "masks": masks, "fitted": fitted, "seconds": seconds})
    return {"result": [blob]}
