"""Where a protect job writes: output paths, the checks that nothing is written over an input
or over a file jaxcloak did not write, and the ledger of outputs a job may replace."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..io.atomic import temp_prefix


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
    the scan (:func:`.inputs.collect_inputs`'s ``exclude``)."""
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


def remove_stale_temps(target: Path) -> None:
    """Drop temp files a killed run left for ``target`` (only this process writes it)."""
    for tmp in target.parent.glob(f"{glob.escape(temp_prefix(target))}*.tmp"):
        tmp.unlink(missing_ok=True)
