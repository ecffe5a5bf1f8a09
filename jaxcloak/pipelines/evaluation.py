"""The evaluation run shared by ``jaxcloak eval``, ``protect --demo`` and MAP: evaluate, print
the summary."""

from __future__ import annotations

import sys
from pathlib import Path

from .progress import progress_bar


def _dlib_or_none(enabled: bool):
    if not enabled:
        return None
    from ..evaluate.dlib_bb import DlibRecognizer

    rec = DlibRecognizer()
    if not rec.available():
        print(
            "warning: dlib black box unavailable (pip install dlib-bin face-recognition-models);"
            " reporting the surrogate only",
            file=sys.stderr,
        )
        return None
    return rec


def run_eval(
    clean: Path | None,
    protected: Path,
    outdir: Path,
    *,
    models=("sface",),
    dlib=True,
    transforms=None,
    gallery: Path | None = None,
    pairs=None,
    target: Path | None = None,
) -> dict:
    """Evaluate and print the five-line summary (shared by `eval` and `protect --demo`)."""
    from ..evaluate.robustness import TRANSFORMS
    from ..evaluate.run import evaluate, summary_lines
    from ..zoo.registry import load

    report = evaluate(
        clean,
        protected,
        outdir,
        [load(m) for m in models],
        dlib=_dlib_or_none(dlib),
        transforms=list(TRANSFORMS) if transforms is None else transforms,
        gallery=gallery,
        progress=progress_bar,
        pairs=pairs,
        target=target,
    )
    for line in summary_lines(report):
        print(line)
    print(f"report: {outdir / 'report.md'} (and report.json, figures)")
    return report
