"""``jaxcloak eval``: measure protected photos against their clean originals.

For every face of every clean photo: the face is re-detected on the protected photo (the
output file as written, not the clean box; docs/facecloak.md, "Defect: evaluation on the
clean box"), aligned and compared with the clean face by the white-box surrogate(s) and by the
dlib black box (its own detector, landmarks and network); image quality
is measured on the full photo and the face region; and the protected photo goes through the
robustness transforms (re-detecting each time). Bad or face-less files are reported and skipped.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..faces import align_face, detect_faces, warp_crop
from ..io import ImageReadError, read_image
from ..io.atomic import atomic_write_json, atomic_write_text
from ..io.folders import identity_from_path, scan_folder
from ..methods.facecloak.masks import MaskFileError, load_mask
from ..zoo.embed import embed_faces
from ..zoo.registry import FaceRecognizer
from . import figures, metrics
from .dlib_bb import box_iou
from .robustness import TRANSFORMS, apply_transform, map_box

Progress = Callable[[Iterable, str, int], Iterable]


def pair_files(clean_dir: Path, protected_dir: Path) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Match protected photos to clean ones. Returns ``(pairs, problems)``.

    In order of trust: the protected folder's manifest (which input became which output);
    the same relative path; the same relative path without suffix (protect may change the
    format), only where that name is unambiguous on both sides: ``a.jpg`` and ``a.png`` in one
    folder are never guessed at, they are reported.
    """
    clean, prot = _image_index(clean_dir), _image_index(protected_dir)
    pairs: dict[str, Path] = {}  # clean rel -> protected file
    for src, out in _manifest_pairs(protected_dir):
        try:
            rel = str(src.resolve().relative_to(clean_dir.resolve()))
        except ValueError:
            continue
        if rel in clean and out.is_file():
            pairs[rel] = out
    used = {p.resolve() for p in pairs.values()}
    for rel in clean:
        if rel not in pairs and rel in prot and prot[rel].resolve() not in used:
            pairs[rel] = prot[rel]
    used = {p.resolve() for p in pairs.values()}

    def stems(index: dict[str, Path]) -> dict[str, list[str]]:
        by: dict[str, list[str]] = {}
        for rel in index:
            by.setdefault(str(Path(rel).with_suffix("")), []).append(rel)
        return by

    clean_stems, prot_stems = stems(clean), stems(prot)
    problems = []
    for rel in sorted(clean):
        if rel in pairs:
            continue
        key = str(Path(rel).with_suffix(""))
        cands = [r for r in prot_stems.get(key, []) if prot[r].resolve() not in used]
        if len(clean_stems[key]) > 1 or len(cands) > 1:
            names = ", ".join(sorted(set(clean_stems[key]) | set(cands)))
            problems.append(
                f"{clean[rel]}: ambiguous name ({names} share '{key}'); not scored. Keep the "
                "protect run's manifest in the protected folder or pass explicit pairs"
            )
        elif cands:
            pairs[rel] = prot[cands[0]]
        else:
            problems.append(f"{clean[rel]}: no protected counterpart in {protected_dir}")
    if not pairs:
        problems.append(f"no photo of {clean_dir} has a protected counterpart in {protected_dir}")
    return [(clean[k], pairs[k]) for k in sorted(pairs)], problems


def _image_index(root: Path) -> dict[str, Path]:
    """Image files under ``root`` by relative path, skipping hidden folders and ``masks``."""
    scan = scan_folder(root, hidden_files=True, skip_folders={"masks"})
    return {str(f.relative_to(root)): f for f in scan.images}


def _manifest_pairs(protected_dir: Path) -> list[tuple[Path, Path]]:
    """(input, output) of every protected photo a manifest in ``protected_dir`` lists."""
    found = []
    for m in sorted(protected_dir.glob("manifest*.json")):
        try:
            photos = json.loads(m.read_text(encoding="utf-8")).get("photos", [])
        except (OSError, ValueError, AttributeError, UnicodeDecodeError):
            continue
        for ph in photos if isinstance(photos, list) else []:
            if isinstance(ph, dict) and isinstance(ph.get("input"), str) and ph.get("output"):
                found.append((Path(ph["input"]), Path(ph["output"])))
    return found


def _redetect(rgb: np.ndarray, box, min_iou: float = 0.3):
    """The detected face in ``rgb`` that best overlaps ``box``, or None."""
    best, best_iou = None, min_iou
    for f in detect_faces(rgb):
        iou = box_iou(f.box, box)
        if iou > best_iou:
            best, best_iou = f, iou
    return best


def _crop_after(rgb: np.ndarray, box, fallback_m: np.ndarray | None):
    """(aligned crop, detected?) of the face at ``box`` in a protected/transformed photo."""
    f = _redetect(rgb, box)
    if f is not None:
        return align_face(rgb, f.landmarks)[0], True
    return (warp_crop(rgb, fallback_m) if fallback_m is not None else None), False


def evaluate(
    clean_dir: Path,
    protected_dir: Path,
    outdir: Path,
    recognizers: Sequence[FaceRecognizer],
    *,
    dlib=None,
    transforms: Sequence[str] = tuple(TRANSFORMS),
    gallery: Path | None = None,
    progress: Progress | None = None,
    figures_on: bool = True,
    pairs: Sequence[tuple[Path, Path]] | None = None,
    target: Path | None = None,
) -> dict[str, Any]:
    """Evaluate every (clean, protected) photo pair; write report.json, report.md and figures.

    Args:
      clean_dir, protected_dir: the originals and the outputs of ``jaxcloak protect``.
      outdir: report folder.
      recognizers: white-box surrogate(s) (verification by their cosine threshold).
      dlib: a :class:`~jaxcloak.evaluate.dlib_bb.DlibRecognizer`, or None to skip the black box.
      transforms: robustness transforms to apply to each protected photo.
      gallery: optional labelled folder (identity = subfolder or filename prefix up to "_")
        for closed-set identification: top-1/top-5 PSR of the protected faces, with the clean
        faces' rates as the baseline. Probe identities come from the clean photos' names the
        same way.
      pairs: explicit ``(clean, protected)`` files instead of matching the two folders by name
        (``protect --method map`` writes one flat folder for photos from anywhere).
      target: photo of an impersonation target (MAP): each protected face's similarity to the
        target's largest face is reported, and the impersonation success rate (surrogate
        cosine at or above its threshold; dlib distance below 0.6) next to the clean rate.
    """
    t0 = time.perf_counter()
    wrap = progress or (lambda it, desc, total: it)
    outdir.mkdir(parents=True, exist_ok=True)
    if pairs is None:
        pairs, problems = pair_files(clean_dir, protected_dir)
    else:
        pairs, problems = list(pairs), []
    models = {r.spec.name: r for r in recognizers}
    targets = _target_embeddings(target, models, dlib) if target is not None else None
    faces: list[dict[str, Any]] = []
    probes: list[tuple[str, str, np.ndarray, np.ndarray]] = []  # (id, file, clean, protected)
    grid_rows = []
    for clean_path, prot_path in wrap(pairs, "evaluating", len(pairs)):
        try:
            clean, prot = read_image(clean_path), read_image(prot_path)
        except ImageReadError as e:
            problems.append(str(e))
            continue
        if clean.rgb.shape != prot.rgb.shape:
            problems.append(
                f"{prot_path}: size {prot.rgb.shape[:2]} differs from the clean "
                f"{clean.rgb.shape[:2]}"
            )
            continue
        found = detect_faces(clean.rgb)
        if len(found) == 0:
            problems.append(f"{clean_path}: no face found in the clean photo; skipped")
            continue
        grid_rows.append((clean_path.name, clean.rgb, prot.rgb))
        for j, f in enumerate(found):
            row, crop_c, crop_p = _evaluate_face(
                clean_path, prot_path, clean.rgb, prot.rgb, j, f, models, dlib, transforms, targets
            )
            faces.append(row)
            root = clean_dir if clean_dir is not None else clean_path.parent
            ident = identity_from_path(clean_path.relative_to(root))
            probes.append((ident, clean_path.name, crop_c, crop_p))

    report = _summarise(faces, models, dlib, transforms)
    if targets is not None:
        report["impersonation"] = _impersonation(faces, models, dlib, target)
    if gallery is not None:
        report["identification"] = _identification(gallery, probes, models, problems)
    report.update(
        jaxcloak=__version__,
        clean=str(clean_dir) if clean_dir is not None else "(listed photos)",
        protected=str(protected_dir),
        problems=problems,
        seconds=round(time.perf_counter() - t0, 2),
        traces=_read_traces(protected_dir),
        run=_read_run(protected_dir),
    )
    if figures_on:
        report["figures"] = _figures(outdir, report, grid_rows, faces, models, dlib)
    atomic_write_json(outdir / "report.json", _jsonable(report), overwrite=True)
    atomic_write_text(outdir / "report.md", render_markdown(report), overwrite=True)
    return report


def _evaluate_face(
    clean_path, prot_path, clean, prot, j, f, models, dlib, transforms, targets=None
) -> dict:
    crop_c, m = align_face(clean, f.landmarks)
    crop_p, detected = _crop_after(prot, f.box, m)
    row: dict[str, Any] = {
        "clean": str(clean_path),
        "protected": str(prot_path),
        "face": j,
        "box": [round(v, 1) for v in f.box],
        "detected_after": detected,
    }
    for name, rec in models.items():
        e = embed_faces(rec, np.stack([crop_c, crop_p]))
        row[f"{name}_cos"] = float(e[0] @ e[1])
        if targets is not None:
            row[f"{name}_cos_target_clean"], row[f"{name}_cos_target"] = map(
                float, e @ targets[name]
            )
    dc = None
    if dlib is not None:
        dc, dp = dlib.describe_near(clean, f.box), dlib.describe_near(prot, f.box)
        row["dlib_detected_clean"] = dc is not None
        row["dlib_detected_after"] = dp is not None
        row["dlib_distance"] = None if dc is None or dp is None else float(dlib.distance(dc, dp))
        if targets is not None and targets["dlib"] is not None:
            for key, d in (("dlib_distance_target_clean", dc), ("dlib_distance_target", dp)):
                row[key] = None if d is None else float(dlib.distance(d, targets["dlib"]))
    x, y, w, h = (round(v) for v in f.box)
    region = np.zeros(clean.shape[:2], bool)
    region[max(0, y) : max(0, y + h), max(0, x) : max(0, x + w)] = True
    row.update(
        psnr=metrics.psnr(clean, prot),
        ssim=metrics.ssim(clean, prot),
        ssim_face=metrics.ssim(clean, prot, mask=region),
        linf=metrics.linf(clean, prot),
        l2=metrics.l2(clean, prot),
    )
    rob = {}
    for t in transforms:
        tp, mt = apply_transform(t, prot)
        box_t = map_box(mt, f.box)
        crop_t, det_t = _crop_after(tp, box_t, None)
        entry: dict[str, Any] = {"detected": det_t}
        for name, rec in models.items():
            if crop_t is not None:
                e = embed_faces(rec, np.stack([crop_c, crop_t]))
                entry[f"{name}_cos"] = float(e[0] @ e[1])
        if dlib is not None and dc is not None:
            dt = dlib.describe_near(tp, box_t)
            entry["dlib_distance"] = None if dt is None else float(dlib.distance(dc, dt))
        rob[t] = entry
    row["robustness"] = rob
    return row, crop_c, crop_p


def _target_embeddings(target: Path, models, dlib) -> dict[str, Any]:
    """The target's largest face: one unit embedding per surrogate and its dlib descriptor."""
    rgb = read_image(target).rgb
    found = detect_faces(rgb)
    if len(found) == 0:
        raise ValueError(f"{target}: no face found in the target photo")
    f = max(found, key=lambda d: d.box[2] * d.box[3])
    crop, _ = align_face(rgb, f.landmarks)
    out: dict[str, Any] = {n: embed_faces(r, crop[None])[0] for n, r in models.items()}
    out["dlib"] = dlib.describe_near(rgb, f.box) if dlib is not None else None
    return out


def _impersonation(faces, models, dlib, target: Path) -> dict[str, Any]:
    """Share of faces recognised as the target, protected and (baseline) clean."""
    out: dict[str, Any] = {"target": str(target)}
    for name, rec in models.items():
        thr = rec.spec.require_threshold()
        rate = {
            which: float(np.mean([r[f"{name}_cos_target{sfx}"] >= thr for r in faces]))
            if faces
            else None
            for which, sfx in (("protected", ""), ("clean", "_clean"))
        }
        out[name] = {**rate, "threshold": thr, "rule": f"cosine to the target >= {thr}"}
    if dlib is not None:
        rate = {}
        for which, key in (
            ("protected", "dlib_distance_target"),
            ("clean", "dlib_distance_target_clean"),
        ):
            vals = [r.get(key) for r in faces if key in r]
            rate[which] = (
                float(np.mean([v is not None and v < 0.6 for v in vals])) if vals else None
            )
        out["dlib"] = {**rate, "threshold": 0.6, "rule": "L2 distance to the target < 0.6"}
    return out


def _identification(gallery: Path, probes, models, problems: list[str]) -> dict[str, Any]:
    """Top-1/top-5 PSR of protected (and, as a baseline, clean) faces against ``gallery``."""
    from ..methods.facecloak.anchors import user_pool

    pool = user_pool(gallery)
    problems.extend(f"gallery {p}: {r}" for p, r in pool.skipped)
    if not probes:
        return {}
    g_names = [n.split(":", 1)[1].rsplit("#", 1)[0] for n in pool.names]
    p_ids = [p[0] for p in probes]
    exclude = metrics.same_name_mask([p[1] for p in probes], g_names)
    out: dict[str, Any] = {
        "gallery": str(gallery),
        "gallery_faces": len(pool),
        "gallery_identities": len(pool.identities),
    }
    for name, rec in models.items():
        g = embed_faces(rec, pool.faces)
        res = {}
        for which, idx in (("protected", 3), ("clean", 2)):
            e = embed_faces(rec, np.stack([p[idx] for p in probes]))
            r = metrics.identification_psr(
                e @ g.T, p_ids, list(pool.ids), ranks=(1, 5), exclude=exclude
            )
            res[which] = {str(k): v for k, v in r.items()}
        out[name] = res
    return out


def _psr_sface(rows: list[dict], name: str, thr: float, key: str = "cos") -> float | None:
    """Dodging PSR: a face counts as protected when its cosine is below the threshold or the
    face is no longer detected."""
    vals = [r.get(f"{name}_{key}") for r in rows]
    if not rows:
        return None
    ok = [v is None or v < thr for v in vals]
    return float(np.mean(ok))


def _summarise(faces, models, dlib, transforms) -> dict[str, Any]:
    out: dict[str, Any] = {"faces": faces, "n_faces": len(faces)}
    psr: dict[str, Any] = {}
    for name, rec in models.items():
        thr = rec.spec.require_threshold()
        psr[name] = {
            "threshold": thr,
            "psr": _psr_sface(faces, name, thr),
            "rule": f"cosine < {thr} or face not re-detected",
        }
    if dlib is not None:
        scored = [r for r in faces if r.get("dlib_detected_clean")]
        vals = [r["dlib_distance"] for r in scored]
        psr["dlib"] = {
            "threshold": 0.6,
            "psr": float(np.mean([v is None or v >= 0.6 for v in vals])) if scored else None,
            "rule": "L2 distance >= 0.6 or face not found by dlib on the protected photo",
            "faces_scored": len(scored),
        }
    out["psr"] = psr
    q = {k: [r[k] for r in faces] for k in ("psnr", "ssim", "ssim_face", "linf", "l2")}
    out["quality"] = {
        k: {
            "mean": float(np.mean(v)) if v else None,
            "min": float(np.min(v)) if v else None,
            "max": float(np.max(v)) if v else None,
        }
        for k, v in q.items()
    }
    out["detection_after"] = float(np.mean([r["detected_after"] for r in faces])) if faces else None
    table: dict[str, dict[str, float | None]] = {}
    for t in transforms:
        rows = [r["robustness"][t] for r in faces]
        entry: dict[str, float | None] = {}
        for name, rec in models.items():
            entry[name] = _psr_sface(rows, name, rec.spec.require_threshold()) if rows else None
        if dlib is not None:
            d = [x.get("dlib_distance") for x in rows if "dlib_distance" in x]
            entry["dlib"] = float(np.mean([v is None or v >= 0.6 for v in d])) if d else None
        entry["detected"] = float(np.mean([x["detected"] for x in rows])) if rows else None
        table[t] = entry
    out["robustness"] = table
    return out


def _read_traces(protected_dir: Path) -> dict[str, dict[str, list[float]]]:
    out = {}
    for f in sorted((protected_dir / "masks").glob("*.mask")):
        try:
            mask = load_mask(f)
        except MaskFileError:
            continue
        out[f.stem] = {k: v.tolist() for k, v in mask.traces.items()}
    return out


def _read_run(protected_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((protected_dir / "manifest.json").read_text()).get("run")
    except (OSError, ValueError):
        return None


def _figures(outdir, report, grid_rows, faces, models, dlib) -> dict[str, str]:
    figs = {}
    figs["images"] = str(figures.image_grid(grid_rows[:6], outdir / "images.png"))
    scores = {}
    for name, rec in models.items():
        scores[name] = {
            "protected": np.array([r[f"{name}_cos"] for r in faces]),
            "clean": None,
            "threshold": rec.spec.threshold,
            "higher_is_same": True,
            "label": f"{name} cosine (clean vs protected)",
        }
    if dlib is not None:
        d = [r["dlib_distance"] for r in faces if r.get("dlib_distance") is not None]
        scores["dlib"] = {
            "protected": np.array(d),
            "clean": None,
            "threshold": 0.6,
            "higher_is_same": False,
            "label": "dlib L2 distance (clean vs protected)",
        }
    figs["similarity"] = str(figures.similarity_histograms(scores, outdir / "similarity.png"))
    bars = {
        t: {k: v for k, v in e.items() if k != "detected"} for t, e in report["robustness"].items()
    }
    figs["robustness"] = str(figures.robustness_bars(bars, outdir / "robustness.png"))
    traces = {k: {n: np.asarray(v) for n, v in t.items()} for k, t in report["traces"].items()}
    figs["traces"] = str(figures.trace_plot(traces, outdir / "traces.png"))
    return figs


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.0f}%"


def render_markdown(report: dict[str, Any]) -> str:
    """A readable report.md from the report dict."""
    lines = [
        "# jaxcloak evaluation",
        "",
        f"Clean: `{report['clean']}` · protected: `{report['protected']}` · "
        f"{report['n_faces']} face(s) · {report['seconds']} s",
        "",
    ]
    lines += [
        "## Protection success (dodging: the protected face is not matched to the clean one)",
        "",
        "| model | kind | PSR | rule |",
        "|---|---|---|---|",
    ]
    for name, p in sorted(report["psr"].items(), key=lambda kv: kv[0] != "dlib"):  # dlib first
        kind = "black box (never used to build the protection)" if name == "dlib" else "surrogate"
        lines.append(f"| {name} | {kind} | {_pct(p['psr'])} | {p['rule']} |")
    q = report["quality"]
    det = report["detection_after"]
    lines += [
        "",
        "## Image quality",
        "",
        f"- PSNR (full photo): mean {q['psnr']['mean']:.2f} dB, min {q['psnr']['min']:.2f} dB"
        if q["psnr"]["mean"] is not None
        else "- PSNR: n/a",
        f"- SSIM (full photo / face region): {q['ssim']['mean']:.4f} / {q['ssim_face']['mean']:.4f}"
        if q["ssim"]["mean"] is not None
        else "- SSIM: n/a",
        f"- L-inf of the change: max {q['linf']['max']:.0f} grey levels; L2 mean "
        f"{q['l2']['mean']:.1f}"
        if q["linf"]["max"] is not None
        else "- L-inf: n/a",
        "- LPIPS: unavailable (no LPIPS weights can be installed offline here; not faked)",
        f"- Faces re-detected on the protected photos: {_pct(det)}",
        "",
    ]
    imp = report.get("impersonation")
    if imp:
        lines += [
            f"## Impersonation (recognised as the target `{imp['target']}`)",
            "",
            "| model | protected | clean (baseline) | rule |",
            "|---|---|---|---|",
        ]
        for m, r in imp.items():
            if isinstance(r, dict):
                lines.append(f"| {m} | {_pct(r['protected'])} | {_pct(r['clean'])} | {r['rule']} |")
        lines.append("")
    ident = report.get("identification")
    if ident:
        lines += [
            f"## Identification against `{ident['gallery']}` ({ident['gallery_faces']} faces, "
            f"{ident['gallery_identities']} identities)",
            "",
            "| model | top-1 PSR protected | top-5 PSR protected | top-1 PSR clean (baseline) "
            "| probes without a genuine gallery face |",
            "|---|---|---|---|---|",
        ]
        for m, r in ident.items():
            if isinstance(r, dict) and "protected" in r:
                p, c = r["protected"], r["clean"]
                lines.append(
                    f"| {m} | {_pct(p.get('1'))} | {_pct(p.get('5'))} | {_pct(c.get('1'))} "
                    f"| {p.get('n_probes_without_genuine')} |"
                )
        lines.append("")
    models = list(report["psr"])
    lines += [
        "## Robustness (PSR after transforming the protected photo; clean face unchanged)",
        "",
        "| transform | " + " | ".join(models) + " | re-detected |",
        "|---|" + "---|" * (len(models) + 1),
    ]
    for t, e in report["robustness"].items():
        lines.append(
            f"| {t} | "
            + " | ".join(_pct(e.get(m)) for m in models)
            + f" | {_pct(e.get('detected'))} |"
        )
    lines += [
        "",
        "## Faces",
        "",
        "| photo | face | "
        + " | ".join(
            [f"{m} cos" for m in models if m != "dlib"]
            + (["dlib dist"] if "dlib" in models else [])
        )
        + " | PSNR dB |",
        "|---|---|" + "---|" * len(models) + "---|",
    ]
    for r in report["faces"]:
        vals = [f"{r[f'{m}_cos']:.3f}" for m in models if m != "dlib"]
        if "dlib" in models:
            d = r.get("dlib_distance")
            vals.append("not found" if d is None else f"{d:.3f}")
        lines.append(
            f"| {Path(r['protected']).name} | {r['face']} | "
            + " | ".join(vals)
            + f" | {r['psnr']:.1f} |"
        )
    if report["problems"]:
        lines += ["", "## Problems (reported, skipped)", ""] + [
            f"- {p}" for p in report["problems"]
        ]
    if report.get("figures"):
        lines += ["", "## Figures", ""] + [f"- {k}: `{v}`" for k, v in report["figures"].items()]
    return "\n".join(lines) + "\n"


def summary_lines(report: dict[str, Any]) -> list[str]:
    """Five lines for the terminal (six with an impersonation target)."""
    p = report["psr"]
    q = report["quality"]
    rob = report["robustness"]
    worst = min(rob.items(), key=lambda kv: kv[1].get("sface") or 0.0) if rob else None
    # The black box first: it is what a scraper's unknown recogniser is closest to.
    return [
        f"faces evaluated: {report['n_faces']} ({len(report['problems'])} problem(s) reported)",
        f"black-box PSR (dlib, never used to build the protection): "
        f"{_pct(p['dlib']['psr']) if 'dlib' in p else 'not run'}",
        "surrogate (white-box) PSR: "
        + ", ".join(f"{k} {_pct(v['psr'])}" for k, v in p.items() if k != "dlib"),
        f"quality: PSNR {q['psnr']['mean']:.1f} dB, SSIM {q['ssim']['mean']:.4f}, "
        f"max change {q['linf']['max']:.0f} grey levels"
        if q["psnr"]["mean"] is not None
        else "quality: n/a",
        f"robustness: worst for sface is {worst[0]} ({_pct(worst[1].get('sface'))})"
        if worst
        else "robustness: not run",
        *_impersonation_line(report.get("impersonation")),
    ]


def _impersonation_line(imp: dict[str, Any] | None) -> list[str]:
    if not imp:
        return []
    parts = [
        f"{m} {_pct(r['protected'])} (clean {_pct(r['clean'])})"
        for m, r in imp.items()
        if isinstance(r, dict)
    ]
    return ["recognised as the target: " + ", ".join(parts)]
