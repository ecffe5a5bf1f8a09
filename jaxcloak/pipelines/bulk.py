"""Protect folders of photos: who is who, fit one mask per person, apply, write, resume.

Library side of ``jaxcloak protect``: takes ready objects (a
:class:`~jaxcloak.methods.facecloak.cloaker.Cloaker`, paths, policies) and never reads flags.
Every input is read once, nothing is ever written over an input, outputs and the manifest are
written atomically, a bad file is reported and skipped, and a rerun skips the photos whose
manifest entry and output still match.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..faces.align import warp_crop
from ..faces.photo import (
    FacePolicy,
    NoFaceError,
    NoFacePolicy,
    Photo,
    RotationPolicy,
    prepare_photo,
)
from ..io.atomic import atomic_write_json
from ..io.images import IMAGE_SUFFIXES, ImageReadError, read_image, write_image
from ..methods.facecloak.cloaker import Cloaker, FitResult, apply_mask
from ..methods.facecloak.masks import save_mask
from ..precision import recorded
from ..zoo.embed import embed_faces

MANIFEST = "manifest.json"


def collect_inputs(
    paths: Iterable[str | os.PathLike], *, exclude: str | os.PathLike | None = None
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand files and folders (recursively, image suffixes only) into a sorted unique list.

    ``exclude``: a folder whose files are never inputs (the job's output folder, when it lies
    inside an input folder, so a rerun does not protect its own outputs).
    Returns ``(files, errors)``; a path that does not exist is an error, not an exception.
    """
    files: list[Path] = []
    errors: list[tuple[Path, str]] = []
    skip = Path(exclude).resolve() if exclude is not None else None
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found, skipped = _scan_folder(p, skip)
            errors.extend(skipped)
            if not found and not skipped:
                errors.append(
                    (p, f"{p}: folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
                )
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            errors.append((p, f"{p}: no such file or folder"))
    seen, unique = set(), []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, errors


#: Image formats people have that jaxcloak does not protect: named when skipped, not silent.
UNSUPPORTED_SUFFIXES = frozenset({".gif", ".heic", ".heif", ".avif", ".jxl", ".jp2"})


def _scan_folder(root: Path, skip: Path | None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files under ``root`` (hidden entries and ``skip`` left out), sorted, and the
    entries passed over with their reason: unsupported formats, broken links, non-regular
    files, unreadable subfolders."""
    found: list[Path] = []
    skipped: list[tuple[Path, str]] = []

    def unreadable(err: OSError) -> None:
        where = Path(err.filename) if err.filename else root
        skipped.append((where, f"{where}: folder skipped, cannot be read ({err.strerror})"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        d = Path(dirpath)
        dirnames[:] = sorted(
            n
            for n in dirnames
            if not n.startswith(".") and not (skip and (d / n).resolve().is_relative_to(skip))
        )
        for name in sorted(filenames):
            f = d / name
            suffix = f.suffix.lower()
            if name.startswith(".") or (skip and f.resolve().is_relative_to(skip)):
                continue
            if suffix in UNSUPPORTED_SUFFIXES:
                skipped.append((f, f"{f}: skipped, {suffix} photos are not supported"))
            elif suffix not in IMAGE_SUFFIXES:
                continue
            elif f.is_symlink() and not f.exists():
                skipped.append((f, f"{f}: skipped, a broken symbolic link"))
            elif not f.is_file():
                skipped.append((f, f"{f}: skipped, not a regular file"))
            else:
                found.append(f)
    return sorted(found), skipped


def group_identities(files: Sequence[Path], mode: str) -> dict[str, list[Path]]:
    """Which photos show the same person: ``single`` (all), ``per-file``, ``per-folder``, or
    a CSV file with ``path,identity`` rows (paths relative to the CSV's folder or absolute)."""
    if mode == "single":
        return {"person": list(files)}
    if mode == "per-file":
        return {_slug(f"{i:04d}-{f.stem}"): [f] for i, f in enumerate(files)}
    if mode == "per-folder":
        groups: dict[str, list[Path]] = {}
        for f in files:
            groups.setdefault(_slug(str(f.parent.resolve().name) or "root"), []).append(f)
        return groups
    table = Path(mode)
    if table.suffix.lower() != ".csv" or not table.is_file():
        raise ValueError(
            "--identity must be single, per-file, per-folder or an existing .csv file, "
            f"got {mode!r}"
        )
    by_path: dict[Path, str] = {}
    with table.open(newline="") as fh:
        for n, row in enumerate(csv.reader(fh), 1):
            if not row or row[0].startswith("#") or (n == 1 and row[:2] == ["path", "identity"]):
                continue
            if len(row) < 2 or not row[1].strip():
                raise ValueError(f"{table}:{n}: expected 'path,identity', got {row!r}")
            p = Path(row[0])
            by_path[(p if p.is_absolute() else table.parent / p).resolve()] = row[1].strip()
    groups = {}
    for f in files:
        ident = by_path.get(f.resolve())
        if ident is None:
            raise ValueError(f"{table}: no identity for {f}")
        groups.setdefault(_slug(ident), []).append(f)
    return groups


def _slug(name: str) -> str:
    """A file-name-safe identity name; long ones are cut and keep a hash of the whole, so mask
    file names stay unique and far below the file system's 255-byte limit."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "person"
    if len(slug) > 150:
        slug = f"{slug[:100]}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    return slug


@dataclass
class PhotoRecord:
    """One input's line in the manifest."""

    input: str
    status: str  # "protected", "up-to-date", "failed", "no-face"
    input_sha256: str | None = None
    output: str | None = None
    output_sha256: str | None = None
    faces: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    linf: int | None = None  # largest change of any pixel in the written file, grey levels


@dataclass
class Summary:
    """What a run did; ``failed`` lists (path, message)."""

    records: list[PhotoRecord]
    masks: dict[str, str]
    seconds: dict[str, float]

    @property
    def failed(self) -> list[tuple[str, str]]:
        return [
            (r.input, r.error or r.status)
            for r in self.records
            if r.status in ("failed", "no-face")
        ]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def output_name(rel: Path, fmt: str | None) -> Path:
    """``rel`` with the suffix of the chosen output format (unchanged when ``fmt`` is None)."""
    if not fmt:
        return rel
    ext = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "TIFF": ".tif"}.get(fmt.upper())
    return rel.with_suffix(ext or f".{fmt.lower()}")


class OutputConflict(ValueError):
    """Planned outputs that would overwrite each other, an input, or a file jaxcloak did not
    write; raised before any work starts."""


#: Every output a job plans, one path per line relative to the output folder, appended before
#: the photo is written: a file listed here was jaxcloak's to replace, even if a kill came
#: before its manifest line.
LEDGER = ".jaxcloak-outputs"


def check_output_folder(outdir: Path, inputs: Iterable[str | os.PathLike]) -> None:
    """Refuse an output folder that is one of the input folders (outputs would land next to,
    or on, the photos they protect). One inside an input folder is fine: it is excluded from
    the scan (:func:`collect_inputs`'s ``exclude``)."""
    out = Path(outdir).resolve()
    for raw in inputs:
        p = Path(raw)
        if p.is_dir() and p.resolve() == out:
            raise OutputConflict(
                f"-o {outdir} is the input folder {raw}; write the outputs to another folder"
            )
    if out.exists() and not out.is_dir():
        raise OutputConflict(f"-o {outdir}: exists and is not a folder")


def plan_outputs(
    files: Sequence[Path], root: Path, outdir: Path, fmt: str | None
) -> dict[Path, Path]:
    """Each input's output path; raises :class:`OutputConflict` if two inputs map to one
    output (``x.jpg`` and ``x.png`` with ``--format PNG``) or an output is an input."""
    plan = {f: outdir / output_name(f.resolve().relative_to(root), fmt) for f in files}
    claimed: dict[str, Path] = {}
    clashes = []
    inputs = {f.resolve() for f in files}
    for f, out in plan.items():
        key = os.path.normcase(str(out.resolve()))
        if key in claimed:
            clashes.append(f"{claimed[key]} and {f} would both be written to {out}")
        claimed.setdefault(key, f)
        if out.resolve() in inputs:
            clashes.append(f"{f}: its output {out} is an input photo")
    if clashes:
        more = f" (and {len(clashes) - 5} more)" if len(clashes) > 5 else ""
        raise OutputConflict(
            "outputs would collide: "
            + "; ".join(clashes[:5])
            + more
            + ". Rename the inputs, drop --format, or choose another -o"
        )
    return plan


def claim_outputs(outdir: Path, outputs: Iterable[Path]) -> None:
    """Refuse to replace files in ``outdir`` that jaxcloak did not write, then record the
    outputs about to be written in the folder's ledger.

    A file is jaxcloak's when an earlier job listed it in the ledger (or, for folders written
    before the ledger existed, in a manifest). Raises :class:`OutputConflict` naming the files.
    """
    outdir = Path(outdir)
    ledger = outdir / LEDGER
    known: set[str] = set()
    try:
        known.update(ln for ln in ledger.read_text(encoding="utf-8").splitlines() if ln)
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as e:
        raise OutputConflict(f"{ledger}: cannot read the output ledger ({e})") from None
    known.update(_manifest_outputs(outdir))
    rels = [str(Path(o).relative_to(outdir)) for o in outputs]
    foreign = [r for r in rels if r not in known and (outdir / r).exists()]
    if foreign:
        more = f" (and {len(foreign) - 5} more)" if len(foreign) > 5 else ""
        raise OutputConflict(
            f"{outdir} already holds {', '.join(foreign[:5])}{more}, not written by jaxcloak; "
            "move them away or choose another -o (nothing was written)"
        )
    new = [r for r in dict.fromkeys(rels) if r not in known]
    if new:
        with ledger.open("a", encoding="utf-8") as fh:
            fh.write("".join(r + "\n" for r in new))
            fh.flush()
            os.fsync(fh.fileno())


def _manifest_outputs(outdir: Path) -> set[str]:
    """Outputs listed in any manifest in ``outdir`` (``.json`` or ``.jsonl``), relative."""
    found: set[str] = set()
    for m in outdir.glob("manifest*.json*"):
        try:
            text = m.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if m.suffix == ".json":
            try:
                photos = json.loads(text).get("photos", [])
            except (ValueError, AttributeError):
                continue
        else:
            photos = []
            for ln in text.splitlines():
                try:
                    photos.append(json.loads(ln).get("photo") or {})
                except (ValueError, AttributeError):
                    continue
        for ph in photos:
            out = ph.get("output") if isinstance(ph, dict) else None
            if isinstance(out, str) and Path(out).resolve().is_relative_to(outdir.resolve()):
                found.add(str(Path(out).resolve().relative_to(outdir.resolve())))
    return found


def common_root(files: Sequence[Path]) -> Path:
    """The deepest folder holding every file (outputs mirror the tree below it)."""
    parents = [str(f.resolve().parent) for f in files]
    return Path(os.path.commonpath(parents)) if parents else Path.cwd()


def protect_files(
    files: Sequence[Path],
    outdir: Path,
    cloaker: Cloaker,
    *,
    identity: str = "single",
    reference: Path | None = None,
    faces: FacePolicy = "all",
    no_face: NoFacePolicy = "skip",
    min_face: float = 20,
    rotations: RotationPolicy = "auto",
    fmt: str | None = None,
    quality: int = 95,
    resume: bool = True,
    progress: Callable[[Iterable, str, int], Iterable] | None = None,
    views_from: str = "reference",
    root: Path | None = None,
    manifest: str = MANIFEST,
) -> Summary:
    """Protect every face in ``files``; write outputs, masks and ``manifest.json`` to ``outdir``.

    Identities: photos are grouped by ``identity`` (see :func:`group_identities`). In each group
    every face of the reference photo (``reference``, else the group's first photo with a face)
    is one person and gets a mask fitted on it; faces in the group's other photos take the mask
    of the reference face they match (surrogate cosine above its threshold), and a face that
    matches none gets a mask of its own. Masks of all identities are fitted in batches.
    ``views_from="group"`` (needs ``cloaker.max_extra``): the largest face of each other photo
    of a one-person group that the surrogate matches to the reference joins the views, so
    the mask is fitted on the person's photos rather than one.

    Outputs keep their path relative to ``root`` (default: the inputs' common folder); the
    manifest is written to ``outdir / manifest``.
    """
    t_start = time.perf_counter()
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "masks").mkdir(exist_ok=True)
    run = cloaker.describe()
    manifest_path = outdir / manifest
    previous = _load_manifest(manifest_path, run) if resume else {}
    root = root or common_root(list(files) + ([reference] if reference else []))
    plan = plan_outputs(files, Path(root).resolve(), outdir, fmt)
    claim_outputs(outdir, plan.values())
    wrap = progress or (lambda it, desc, total: it)

    records: dict[str, PhotoRecord] = {}
    todo: list[tuple[str, Path]] = []
    for group, members in group_identities(files, identity).items():
        for f in members:
            out = plan[f]
            prev = previous.get(str(f))
            if prev and _up_to_date(prev, f, out):
                records[str(f)] = PhotoRecord(**{**prev, "status": "up-to-date"})
            else:
                todo.append((group, f))

    # 1. Read and detect (host); bad files are recorded and skipped.
    photos: dict[str, Photo] = {}
    for _group, f in wrap(todo, "reading and detecting", len(todo)):
        try:
            photos[str(f)] = prepare_photo(
                read_image(f), faces=faces, no_face=no_face, min_face=min_face, rotations=rotations
            )
        except (ImageReadError, NoFaceError) as e:
            status = "no-face" if isinstance(e, NoFaceError) else "failed"
            records[str(f)] = PhotoRecord(str(f), status, error=str(e))
    ref_photo = None
    if reference is not None:
        try:
            ref_photo = prepare_photo(
                read_image(reference),
                faces=faces,
                no_face=no_face,
                min_face=min_face,
                rotations=rotations,
            )
        except (ImageReadError, NoFaceError) as e:
            raise ValueError(f"reference photo unusable: {e}") from e

    # 2. Reference faces per group -> identities; fit them all in batches.
    groups: dict[str, list[Path]] = {}
    for group, f in todo:
        if str(f) in photos:
            groups.setdefault(group, []).append(f)
    identities: dict[str, tuple[np.ndarray, str, np.ndarray]] = {}  # name -> (crop, id, M)
    members_of: dict[str, list[str]] = {}
    for group, members in groups.items():
        ref = ref_photo or photos[str(members[0])]
        names = []
        for j, face in enumerate(ref.faces):
            name = group if len(ref.faces) == 1 else f"{group}-face{j}"
            identities[name] = (face.crop, f"{ref.image.sha256}#{j}", face.transform)
            names.append(name)
        members_of[group] = names
    extras = {}
    if views_from == "group":
        if not cloaker.max_extra:
            raise ValueError("views_from='group' needs a Cloaker built with max_extra > 0")
        extras = _group_extras(cloaker, groups, photos, members_of, identities)
    elif views_from != "reference":
        raise ValueError(f"views_from must be 'reference' or 'group', got {views_from!r}")
    t0 = time.perf_counter()
    fitted = _fit(cloaker, identities, wrap, extras)

    # 3. Assign every face to an identity (fitting new ones for unmatched faces).
    assign: dict[tuple[str, int], str] = {}
    extra: dict[str, tuple[np.ndarray, str, np.ndarray]] = {}
    thr = cloaker.recognizer.spec.require_threshold()
    ref_emb = {n: r.embedding for n, r in fitted.items()}
    for group, members in groups.items():
        for f in members:
            photo = photos[str(f)]
            embs = embed_faces(cloaker.recognizer, np.stack([fc.crop for fc in photo.faces]))
            for j, face in enumerate(photo.faces):
                ref_id = f"{photo.image.sha256}#{j}"
                if any(identities[n][1] == ref_id for n in members_of[group]):
                    assign[(str(f), j)] = next(
                        n for n in members_of[group] if identities[n][1] == ref_id
                    )
                    continue
                sims = {n: float(embs[j] @ ref_emb[n]) for n in members_of[group]}
                best = max(sims, key=sims.get) if sims else None
                if best is not None and sims[best] >= thr:
                    assign[(str(f), j)] = best
                else:
                    name = f"{group}-{_slug(f.stem)}-face{j}"
                    extra[name] = (face.crop, ref_id, face.transform)
                    assign[(str(f), j)] = name
    fitted.update(_fit(cloaker, extra, wrap))
    fit_seconds = time.perf_counter() - t0

    mask_files, mask_errors = {}, {}
    for name, res in fitted.items():
        path = outdir / "masks" / f"{name}.mask"
        meta = {**res.meta, "identity": name}
        try:
            save_mask(path, res.delta, meta, traces=res.trace, overwrite=True)
        except OSError as e:  # the photos can still be protected; the note says what is missing
            mask_errors[name] = f"mask file {path} not written ({e.strerror or e})"
            continue
        mask_files[name] = str(path)

    # 4. Apply, write, verify by reading the written file back.
    t1 = time.perf_counter()
    for f in wrap([f for fs in groups.values() for f in fs], "applying masks", len(photos)):
        photo = photos[str(f)]
        out = plan[f]
        try:
            names = [assign[(str(f), j)] for j in range(len(photo.faces))]
            rgb = apply_mask(photo, [fitted[n].delta for n in names])
            out.parent.mkdir(parents=True, exist_ok=True)
            write_image(out, rgb, like=photo.image, format=fmt, quality=quality, overwrite=True)
            written = read_image(out)
            face_rows = _face_report(cloaker, photo, written.rgb, names)
            linf, over = change_report(cloaker, photo, written.rgb)
            records[str(f)] = PhotoRecord(
                str(f),
                "protected",
                photo.image.sha256,
                str(out),
                written.sha256,
                face_rows,
                list(photo.notes)
                + over
                + [mask_errors[n] for n in dict.fromkeys(names) if n in mask_errors],
                linf=linf,
            )
        except Exception as e:  # one bad photo must not stop the batch
            records[str(f)] = PhotoRecord(
                str(f), "failed", photo.image.sha256, error=f"{f}: {type(e).__name__}: {e}"
            )
        _write_manifest(manifest_path, run, records, mask_files)
    ordered = [records[str(f)] for f in files if str(f) in records]
    _write_manifest(manifest_path, run, records, mask_files)
    seconds = {
        "fit": fit_seconds,
        "apply": time.perf_counter() - t1,
        "total": time.perf_counter() - t_start,
        "compile": sum(cloaker.compile_seconds.values()),
    }
    return Summary(ordered, mask_files, seconds)


def _fit(
    cloaker: Cloaker,
    identities: dict[str, tuple[np.ndarray, str, np.ndarray]],
    wrap,
    extras: dict[str, np.ndarray] | None = None,
) -> dict[str, FitResult]:
    if not identities:
        return {}
    names = list(identities)
    crops = np.stack([identities[n][0] for n in names])
    out: dict[str, FitResult] = {}
    step = cloaker.max_batch
    chunks = range(0, len(names), step)
    for s in wrap(chunks, f"fitting {len(names)} mask(s)", len(chunks)):
        sub = names[s : s + step]
        res = cloaker.fit(
            crops[s : s + step],
            [identities[n][1] for n in sub],
            [identities[n][2] for n in sub],
            [(extras or {}).get(n) for n in sub] if cloaker.max_extra else None,
        )
        out.update(zip(sub, res, strict=True))
    return out


def _group_extras(cloaker, groups, photos, members_of, identities) -> dict:
    """For each one-person group: the largest face of each other photo in it that the surrogate
    matches to the reference face, at most ``cloaker.max_extra``; they join the views."""
    thr = cloaker.recognizer.spec.require_threshold()
    out = {}
    for group, members in groups.items():
        if len(members_of[group]) != 1:
            continue  # several people on the reference photo: whose photo is whose is unclear
        name = members_of[group][0]
        ref_crop = identities[name][0]
        ref_sha = identities[name][1].split("#")[0]
        crops = [
            photos[str(f)].faces[0].crop for f in members if photos[str(f)].image.sha256 != ref_sha
        ]
        if not crops:
            continue
        emb = embed_faces(cloaker.recognizer, np.stack([ref_crop, *crops]))
        same = [c for c, e in zip(crops, emb[1:], strict=True) if float(e @ emb[0]) >= thr]
        if same:
            out[name] = np.stack(same[: cloaker.max_extra])
    return out


def change_report(cloaker: Cloaker, photo: Photo, written: np.ndarray) -> tuple[int, list[str]]:
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


def same_run(old: dict, run: dict) -> bool:
    """Whether a manifest's run record was made with this run's settings, so its finished
    photos can be kept on resume: config, seed, surrogate and precision policy (records from
    before the policy existed ran in float32)."""
    keys = ("config_hash", "seed", "surrogate")
    same_policy = recorded(old.get("precision")) == recorded(run.get("precision"))
    return same_policy and all(old.get(k) == run[k] for k in keys)


def _load_manifest(path: Path, run: dict) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not same_run(data.get("run", {}), run):
        return {}
    return {
        r["input"]: r
        for r in data.get("photos", [])
        if r.get("status") in ("protected", "up-to-date")
    }


def _up_to_date(prev: dict, src: Path, out: Path) -> bool:
    try:
        return (
            prev.get("output") == str(out)
            and out.is_file()
            and prev.get("input_sha256") == _sha(src)
            and prev.get("output_sha256") == _sha(out)
        )
    except OSError:
        return False


def _write_manifest(path: Path, run: dict, records: dict[str, PhotoRecord], masks: dict) -> None:
    photos = [r.__dict__ for r in records.values()]
    atomic_write_json(path, {"run": run, "masks": masks, "photos": photos}, overwrite=True)
