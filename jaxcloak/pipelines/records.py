"""What a protect job records: a :class:`PhotoRecord` per input, the manifest, the resume check.

``<name>.jsonl`` gets one line per finished photo while the job runs (the first line is the
run's settings), each appended and fsynced, so a kill loses nothing that was finished.
``<name>.json`` (the records in input order, the run's settings, its masks and its timing) is
written atomically once, at the end. A job started again with the same settings
(:func:`_same_run`) keeps every photo whose record, input hash and output hash still match
(:meth:`ManifestLog.done`); a torn last line is ignored.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io.atomic import atomic_write_json
from ..io.hashing import sha256_file
from ..precision import recorded

#: Base name of a job's manifest: ``manifest.jsonl`` while it runs, ``manifest.json`` at the end.
MANIFEST = "manifest"

#: Statuses of a photo that a rerun need not redo.
DONE = ("protected", "up-to-date")


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
    """What a run did: records in input order, the mask files it wrote (identity -> path),
    timing, and how many masks it fitted; ``failed`` lists (path, message)."""

    records: list[PhotoRecord]
    masks: dict[str, str]
    seconds: dict[str, float]
    fitted: int = 0

    @property
    def failed(self) -> list[tuple[str, str]]:
        return [
            (r.input, r.error or r.status)
            for r in self.records
            if r.status in ("failed", "no-face")
        ]


def _same_run(old: dict, run: dict) -> bool:
    """Whether a manifest's run record was made with this run's settings, so its finished
    photos can be kept on resume: config, seed, surrogate and precision policy (records from
    before the policy existed ran in float32)."""
    keys = ("config_hash", "seed", "surrogate")
    same_policy = recorded(old.get("precision")) == recorded(run.get("precision"))
    return same_policy and all(old.get(k) == run[k] for k in keys)


def _up_to_date(prev: dict, src: Path, out: Path) -> bool:
    """Whether ``prev`` (an earlier record of ``src``) still describes ``src`` and its output
    ``out``: same output path, and both files hash as recorded."""
    try:
        return (
            prev.get("output") == str(out)
            and out.is_file()
            and prev.get("input_sha256") == sha256_file(src)
            and prev.get("output_sha256") == sha256_file(out)
        )
    except OSError:
        return False


class ManifestError(ValueError):
    """An earlier run's log that cannot be read back (a corrupt line that is not the last)."""


class ManifestLog:
    """The running manifest ``outdir/<name>.jsonl``: append-only, safe to kill at any point.

    ``previous``: the finished photos of earlier runs with the same settings (from the log,
    and from the final ``<name>.json`` of a run that wrote no log), unless ``resume`` is off.
    """

    def __init__(self, outdir: Path, name: str, run: dict[str, Any], resume: bool):
        self.path = outdir / f"{name}.jsonl"
        self.lock = threading.Lock()
        logged = read_log(self.path, run) if resume and self.path.is_file() else {}
        final = _read_final(outdir / f"{name}.json", run) if resume else {}
        self.previous: dict[str, dict] = {**final, **logged}
        if logged:
            _drop_torn_tail(self.path)
        self.fh = self.path.open("a" if logged else "w", encoding="utf-8")
        if not logged:
            self._append({"run": run})

    def done(self, src: Path, out: Path) -> PhotoRecord | None:
        """The resume check: ``src``'s earlier record, now "up-to-date", if it still holds."""
        prev = self.previous.get(str(src))
        if prev and _up_to_date(prev, src, out):
            return PhotoRecord(**{**prev, "status": "up-to-date"})
        return None

    def _append(self, obj: dict) -> None:
        self.fh.write(json.dumps(obj) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def add(self, record: PhotoRecord) -> None:
        with self.lock:
            self._append({"photo": record.__dict__})

    def close(self) -> None:
        self.fh.close()


def read_log(path: Path, run: dict[str, Any]) -> dict[str, dict]:
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
            raise ManifestError(f"{path}:{n + 1}: corrupt manifest line") from None
        if n == 0:
            old = obj.get("run", {})
            if not _same_run(old, run):
                return {}
            continue
        rec = obj.get("photo", {})
        if rec.get("status") in DONE:
            done[rec["input"]] = rec
    return done


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line a kill left unfinished, so the next line appended starts on its own."""
    with path.open("rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - (1 << 20)))  # a line is far shorter than that
        tail = fh.read()
        if not tail.endswith(b"\n"):
            fh.truncate(size - len(tail) + tail.rfind(b"\n") + 1)


def _read_final(path: Path, run: dict[str, Any]) -> dict[str, dict]:
    """Finished photos listed in a final manifest written with the same settings."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not _same_run(data.get("run", {}), run):
        return {}
    return {r["input"]: r for r in data.get("photos", []) if r.get("status") in DONE}


def write_manifest(path: Path, run: dict, summary: Summary, previous: dict[str, dict]) -> None:
    """The final manifest: the run, every mask (this run's and those of the earlier runs whose
    photos were kept), the records in input order and the timing."""
    masks = dict(summary.masks)
    for rec in previous.values():
        for face in rec.get("faces", []):
            name = face.get("identity")
            m = path.parent / "masks" / f"{name}.mask"
            if name and name not in masks and m.is_file():
                masks[name] = str(m)
    photos = [r.__dict__ for r in summary.records]
    stats = {k: round(v, 3) for k, v in summary.seconds.items()}
    atomic_write_json(path, {"run": run, "masks": masks, "photos": photos, "seconds": stats})
