"""``jaxcloak protect --demo``: protect scikit-image's public-domain astronaut and report on it.

The photo is NASA's portrait of Eileen Collins (public domain), read at run time from the
installed scikit-image; nothing is downloaded and nothing third-party ships in this repository.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..evaluate import metrics
from ..io import read_image, write_image
from ..io.atomic import atomic_write_text
from ..methods.facecloak.cloaker import Cloaker
from .engine import protect


def run_demo(outdir: Path, cloaker: Cloaker, *, evaluate: bool = True) -> int:
    """Protect the astronaut into ``outdir`` and write ``report.md`` and ``comparison.png``."""
    import skimage.data

    outdir.mkdir(parents=True, exist_ok=True)
    src_dir = outdir / "input"
    src_dir.mkdir(exist_ok=True)
    src = src_dir / "astronaut.png"
    if not src.exists():
        write_image(src, skimage.data.astronaut(), format="PNG")
    print(f"protecting {src} (NASA, public domain) into {outdir / 'protected'} ...", flush=True)
    summary = protect([src], outdir / "protected", cloaker)
    rec = summary.records[0]
    if rec.status not in ("protected", "up-to-date"):
        print(f"demo failed: {rec.error}")
        return 1
    clean = read_image(src).rgb
    prot = read_image(rec.output).rgb
    diff = prot.astype(np.int16) - clean.astype(np.int16)
    changed = np.any(diff != 0, axis=-1)
    # Amplified difference image: grey is unchanged, brighter/darker is the mask x 8.
    amp = np.clip(128 + 8 * diff, 0, 255).astype(np.uint8)
    comparison = np.concatenate([clean, prot, amp], axis=1)
    write_image(outdir / "comparison.png", comparison, format="PNG", overwrite=True)

    cfg = cloaker.config
    thr = cloaker.recognizer.spec.require_threshold()
    faces = rec.faces
    mask_file = next(iter(summary.masks.values()), None)
    s = summary.seconds
    lines = [
        "# jaxcloak demo report",
        "",
        f"Input: `{src}` (scikit-image `astronaut`, NASA, public domain), "
        f"{clean.shape[1]}x{clean.shape[0]}.",
        f"Output: `{rec.output}`; mask: `{mask_file}`; manifest: "
        f"`{outdir / 'protected' / 'manifest.json'}`; side by side: `comparison.png` "
        "(clean | protected | difference x8).",
        "",
        "## Settings",
        "",
        f"- FaceCloak, mode `{cfg.mode}`, budget L-inf {cfg.eps * 255:.0f}/255, "
        f"{cfg.steps if cfg.mode == 'fixed' else cfg.passes} "
        f"{'steps over all views' if cfg.mode == 'fixed' else 'passes'}, "
        f"step {cfg.step * 255:.2f}/255, {cloaker.views.config().get('n_views')} views + the photo",
        f"- Surrogate: `{cloaker.recognizer.spec.name}` (same-person threshold cosine {thr}); "
        f"anchor pool: {cloaker.pool.source} ({len(cloaker.pool)} faces)",
        f"- Seed {cloaker.seed}; config hash `{cfg.digest()}`",
        "",
        "## Result",
        "",
        "| face | identity | surrogate cosine clean vs protected (read back from file) | "
        "recognised as the same person? |",
        "|---|---|---|---|",
    ]
    for f in faces:
        same = "yes (protection failed)" if f["same_person_after"] else "no"
        lines.append(f"| {f['index']} | {f['identity']} | {f['cos_after']:.3f} | {same} |")
    lines += [
        "",
        f"- Largest change of any pixel: {int(np.abs(diff).max())} grey levels "
        f"(budget {cfg.eps * 255:.0f}); "
        f"PSNR of the whole photo: {metrics.psnr(clean, prot):.1f} dB",
        f"- Pixels changed: {changed.mean() * 100:.1f}% of the photo, all inside the face region",
        f"- Time: fit {s['fit']:.1f} s (compile {s['compile']:.1f} s), apply {s['apply']:.1f} s, "
        f"total {s['total']:.1f} s",
        "",
        "The cosine is measured by the surrogate itself (white box); the evaluation in "
        "`eval/report.md` adds dlib's recogniser as a black box, image quality and a "
        "robustness sweep.",
    ]
    report = "\n".join(lines) + "\n"
    atomic_write_text(outdir / "report.md", report, overwrite=True)
    print(report)
    print(f"wrote {outdir / 'report.md'}")
    ok = all(not f["same_person_after"] for f in faces)
    if evaluate:
        from .evaluation import run_eval

        print("\nevaluating (surrogate, dlib black box, quality, robustness) ...", flush=True)
        run_eval(src_dir, outdir / "protected", outdir / "eval")
    return 0 if ok else 1
