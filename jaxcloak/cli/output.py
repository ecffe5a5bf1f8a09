"""What the commands print: tables, progress bars, change and failure summaries, exit statuses."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


def format_table(rows: list[dict], columns: Sequence[str]) -> str:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    line = "  ".join(c.ljust(widths[c]) for c in columns)
    sep = "  ".join("-" * widths[c] for c in columns)
    body = ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join([line, sep, *body])


def print_change(records, budget: float) -> None:
    """The largest pixel change in the written files, next to the budget it should keep."""
    written = [r for r in records if r.status == "protected" and r.linf is not None]
    if not written:
        return
    worst = max(r.linf for r in written)
    over = sum(r.linf > budget + 0.5 for r in written)
    tail = (
        f"; {over} photo(s) over it from lossy re-encoding (--format PNG keeps it exact)"
        if over
        else ""
    )
    print(
        f"largest pixel change in the written files: {worst} grey levels "
        f"(budget {budget:.0f}){tail}"
    )


def print_failures(failed: list[tuple[str, str]], limit: int = 20) -> None:
    """Each failed photo once (its path, then the reason), grouped by reason."""
    by: dict[str, list[str]] = {}
    for path, msg in failed:
        reason = msg[len(path) + 2 :] if msg.startswith(f"{path}: ") else msg
        by.setdefault(reason, []).append(path)
    shown = 0
    for reason, paths in sorted(by.items(), key=lambda kv: -len(kv[1])):
        head = f"{len(paths)} photo(s): " if len(paths) > 1 else ""
        print(f"  FAILED {head}{reason}", file=sys.stderr)
        for path in paths[: max(limit - shown, 0)]:
            print(f"    {path}", file=sys.stderr)
        shown += len(paths)
    if shown > limit:
        print(f"  ({shown - limit} more paths in the manifest)", file=sys.stderr)


#: Exit status when every photo was written but some face is still recognised by the surrogate.
EXIT_STILL_RECOGNISED = 3


def _still_recognised(records) -> tuple[list[str], int]:
    """Outputs with a face the surrogate still matches to its clean self, and photos scored."""
    scored = [r for r in records if r.status in ("protected", "up-to-date") and r.faces]
    still = [str(r.output) for r in scored if any(f["same_person_after"] for f in r.faces)]
    return still, len(scored)


def report_unprotected(records, surrogate: str, allow: bool) -> int:
    """Print the photos still recognised; the exit status they call for."""
    still, n = _still_recognised(records)
    if not still:
        if n:
            print(f"all {n} photo(s) are no longer recognised by {surrogate} (the surrogate)")
        return 0
    print(
        f"{len(still)} of {n} photo(s) are still recognised by {surrogate}: their faces still "
        "match the clean photo (manifest: same_person_after); try --strength high",
        file=sys.stderr,
    )
    for path in still[:20]:
        print(f"  STILL RECOGNISED {path}", file=sys.stderr)
    if len(still) > 20:
        print(f"  ... and {len(still) - 20} more (see the manifest)", file=sys.stderr)
    return 0 if allow else EXIT_STILL_RECOGNISED


def print_summary(summary, manifest: Path, surrogate: str, budget: float, allow: bool) -> int:
    """What a protect run did, photo counts to timing; the exit status it calls for."""
    done = [r for r in summary.records if r.status == "protected"]
    fresh = [r for r in summary.records if r.status == "up-to-date"]
    faces = [(r, face) for r in done for face in r.faces]
    still = sum(face["same_person_after"] for _, face in faces)
    print(
        f"wrote {len(done)} photo(s) ({len(faces)} face(s), {still} still matched by the "
        f"surrogate), {len(fresh)} already up to date, {len(summary.failed)} failed; "
        f"{summary.fitted} mask(s) fitted"
    )
    for r, face in faces[:20]:
        flag = "still matches!" if face["same_person_after"] else "no match"
        print(
            f"  {r.output}: face {face['index']} ({face['identity']}): surrogate cosine "
            f"{face['cos_after']:.3f} ({flag})"
        )
    if len(faces) > 20:
        print(f"  ... and {len(faces) - 20} more face(s) in the manifest")
    print_failures(summary.failed)
    print_change(summary.records, budget)
    s = summary.seconds
    rate = len(done) / s["total"] if s["total"] > 0 else 0.0
    print(
        f"time: fit {s['fit']:.1f} s (of which compile {s['compile']:.1f} s), apply "
        f"{s['apply']:.1f} s, total {s['total']:.1f} s, {rate:.2f} photo/s; device step busy "
        f"{100 * s['device_busy_share']:.0f}% of the time; manifest {manifest}"
    )
    status = report_unprotected(summary.records, surrogate, allow)
    return 1 if summary.failed else status


def print_compiles(args: argparse.Namespace, manifest: Path) -> None:
    """Report (and record in the manifest) how many programs were compiled vs cache-loaded."""
    counter = getattr(args, "_compiles", None)
    if counter is None:
        return
    c = counter.as_dict()
    where = args._cache_dir or "off"
    print(
        f"compilation: {c['compiled']} program(s) compiled, {c['cache_hits']} loaded from the "
        f"persistent cache ({where}); {c['xla_seconds']:.1f} s in XLA"
    )
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return
    from ..io.atomic import atomic_write_json

    data["compilation"] = {**c, "cache_dir": str(args._cache_dir) if args._cache_dir else None}
    atomic_write_json(manifest, data)


def print_map_result(args: argparse.Namespace, result: dict, run_dir: Path) -> int:
    thr = result["threshold"]
    for r in result["faces"]:
        if "error" in r:
            print(f"  {r['output']}: could not re-measure: {r['error']}", file=sys.stderr)
            continue
        hit = thr is not None and r["cos_target_protected"] >= thr
        print(
            f"  {r['output']}: cosine to target {r['cos_target_clean']:.3f} -> "
            f"{r['cos_target_protected']:.3f} ({'recognised as target' if hit else 'not target'}),"
            f" p({args.expression}) {r['p_expression_clean']:.3f} -> "
            f"{r['p_expression_protected']:.3f}, PSNR "
            + ("identical" if r["psnr_photo"] is None else f"{r['psnr_photo']:.1f} dB")
        )
    print(
        f"time: compile {result['compile_s'] or 0:.1f} s, {result['seconds_per_step']:.2f} s per "
        f"step; report {run_dir / 'report.md'}"
    )
    return 1 if any("error" in r for r in result["faces"]) else 0
