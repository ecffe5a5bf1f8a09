"""PNG figures for the evaluation report.

Four figures, each built from plain NumPy arrays and dicts so the evaluator (or a notebook) can
call them without any JAX state:

* :func:`image_grid`: clean | protected | amplified difference, one row per photo;
* :func:`similarity_histograms`: protected-vs-clean scores per recogniser, with its threshold;
* :func:`robustness_bars`: protection success rate (PSR) per transformation and recogniser;
* :func:`trace_plot`: the per-step optimisation traces that ``protect`` saved with each mask.

Only the object-oriented :class:`matplotlib.figure.Figure` API is used (never ``pyplot``), so
nothing touches matplotlib's global state or picks a GUI backend: PNGs are rendered by Agg.
Every file is written with :func:`jaxcloak.io.atomic.atomic_write`, so a report never links to a
half-written image. Empty inputs give a figure that says "no data" instead of raising, so one
missing part does not sink the whole report.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from PIL import Image

from ..io.atomic import atomic_write
from .metrics import psnr

__all__ = [
    "DEFAULT_DPI",
    "amplified_difference",
    "image_grid",
    "robustness_bars",
    "similarity_histograms",
    "trace_plot",
]

#: Resolution of every PNG; with the panel sizes below, 10 pt text is ~21 px high.
DEFAULT_DPI = 150

# Colour-blind-safe pairs (Okabe-Ito) for protected vs clean, and the tab10 cycle for models.
_PROTECTED_COLOUR = "#D55E00"
_CLEAN_COLOUR = "#0072B2"
_SAME_SIDE_COLOUR = "#009E73"
_LINESTYLES: tuple[Any, ...] = (
    "-",
    "--",
    ":",
    "-.",
    (0, (5, 1, 1, 1, 1, 1)),
    (0, (10, 3)),
    (0, (1, 3)),
    (0, (12, 2, 2, 2, 2, 2)),
)
_COSINE_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")


# --------------------------------------------------------------------------------------------
# helpers


# A two-column legend in a band just above the axes, so it never covers the data.
_LEGEND_ABOVE = {
    "fontsize": 8.5,
    "loc": "lower left",
    "bbox_to_anchor": (0.0, 1.01, 1.0, 0.1),
    "mode": "expand",
    "ncols": 2,
    "frameon": False,
}


def _save(fig: Figure, path: str | os.PathLike[str], dpi: int) -> Path:
    """Render ``fig`` to a PNG atomically and return its path."""
    target = Path(path)
    return atomic_write(target, lambda f: fig.savefig(f, format="png", dpi=dpi, facecolor="white"))


def _no_data(path: str | os.PathLike[str], title: str, message: str, dpi: int) -> Path:
    """Write a small figure that only says why there is nothing to show."""
    fig = Figure(figsize=(6, 2.5), layout="constrained")
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.text(0.5, 0.6, title, ha="center", va="center", fontsize=13, weight="bold")
    ax.text(0.5, 0.3, message, ha="center", va="center", fontsize=11, color="0.35")
    return _save(fig, path, dpi)


def _as_rgb_uint8(img: np.ndarray, what: str) -> np.ndarray:
    """Accept (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 and return (H, W, 3) uint8."""
    a = np.asarray(img)
    if a.dtype != np.uint8:
        raise TypeError(f"{what}: expected uint8 pixels, got {a.dtype}")
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or 0 in a.shape[:2]:
        raise ValueError(f"{what}: expected an (H, W, 3) image, got shape {a.shape}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return a[..., :3]  # alpha plays no part in what a recogniser sees


def amplified_difference(
    clean: np.ndarray, protected: np.ndarray, amplify: float = 8
) -> np.ndarray:
    """The perturbation made visible: ``128 + amplify * (protected - clean)``, clipped to uint8.

    Mid-grey means "unchanged"; brighter / darker means the protected pixel is higher / lower.

    Args:
        clean: original image, uint8 (H, W, 3) (grey or RGBA accepted too).
        protected: the protected image, same size.
        amplify: gain applied to the signed difference (a few grey levels are invisible
            otherwise).

    Returns:
        uint8 (H, W, 3) difference image.

    Raises:
        ValueError: the two images differ in size.
    """
    c = _as_rgb_uint8(clean, "clean")
    p = _as_rgb_uint8(protected, "protected")
    if c.shape != p.shape:
        raise ValueError(f"clean {c.shape} and protected {p.shape} images differ in size")
    # float: uint8 arithmetic would wrap around before the clip.
    d = 128.0 + float(amplify) * (p.astype(np.float64) - c.astype(np.float64))
    return np.clip(np.rint(d), 0, 255).astype(np.uint8)


def _downscale(img: np.ndarray, max_side: int, resample: Image.Resampling) -> np.ndarray:
    """Shrink so the longer side is at most ``max_side`` (the figure cannot show more)."""
    h, w = img.shape[:2]
    if max(h, w) <= max_side:
        return img
    s = max_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.asarray(Image.fromarray(img).resize(size, resample))


def _finite(values: Any) -> tuple[np.ndarray, int]:
    """Flatten to float64 and drop NaN / inf; returns the values and how many were dropped."""
    if values is None:
        return np.zeros(0), 0
    a = np.asarray(values, dtype=np.float64).ravel()
    keep = np.isfinite(a)
    return a[keep], int(a.size - keep.sum())


# --------------------------------------------------------------------------------------------
# image grid


def image_grid(
    rows: Sequence[tuple[str, np.ndarray, np.ndarray]],
    path: str | os.PathLike[str],
    *,
    amplify: float = 8,
    max_side: int = 512,
    max_rows: int = 8,
    dpi: int = DEFAULT_DPI,
) -> Path:
    """Clean | protected | amplified difference, one row per photo.

    Args:
        rows: ``(name, clean, protected)`` per photo; images are uint8 (H, W, 3) of equal size.
        path: PNG to write.
        amplify: gain of the difference column (written in its title).
        max_side: longer side, in pixels, to which large images are shrunk for the figure.
        max_rows: at most this many photos are drawn (the title says when some were left out),
            so a large evaluation still gives a readable figure.
        dpi: PNG resolution.

    Returns:
        The path written.

    Raises:
        ValueError / TypeError: an image is not uint8 (H, W, 3) or a pair differs in size.
    """
    rows = list(rows)
    if not rows:
        return _no_data(path, "Clean / protected / difference", "no data: no images given", dpi)
    shown = rows[:max_rows]

    panels = []
    for name, clean, protected in shown:
        c = _as_rgb_uint8(clean, f"{name}: clean")
        p = _as_rgb_uint8(protected, f"{name}: protected")
        diff = amplified_difference(c, p, amplify)
        change = np.abs(p.astype(np.int16) - c.astype(np.int16))
        stats = f"max |Δ| = {int(change.max())}, PSNR = {psnr(c, p):.1f} dB"
        panels.append(
            (
                f"{name}\n{c.shape[1]}×{c.shape[0]} px",
                _downscale(c, max_side, Image.Resampling.LANCZOS),
                _downscale(p, max_side, Image.Resampling.LANCZOS),
                # Nearest keeps the true amplitudes; averaging would hide pixel-level noise.
                _downscale(diff, max_side, Image.Resampling.NEAREST),
                stats,
            )
        )

    # Each panel is about max_side pixels wide at `dpi`, so images appear near native size.
    panel_in = float(np.clip(max_side / dpi, 2.2, 4.5))
    # Row heights follow each photo's aspect, so portrait and landscape rows leave no gaps.
    aspects = [float(np.clip(p[1].shape[0] / p[1].shape[1], 0.25, 4.0)) for p in panels]
    fig = Figure(
        figsize=(3 * panel_in + 0.6, sum(panel_in * a + 0.45 for a in aspects) + 0.6),
        layout="constrained",
    )
    axes = fig.subplots(len(panels), 3, squeeze=False, height_ratios=aspects)
    col_titles = ("clean", "protected", f"difference ×{amplify:g}\n(grey = unchanged)")
    for r, (label, c, p, d, stats) in enumerate(panels):
        for k, img in enumerate((c, p, d)):
            ax = axes[r, k]
            ax.imshow(img, interpolation="antialiased" if k < 2 else "nearest")
            # Ticks off but the frame kept, so the row label (ylabel) stays visible.
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col_titles[k], fontsize=11)
        axes[r, 0].set_ylabel(label, fontsize=10)
        axes[r, 2].set_xlabel(stats, fontsize=9)
    title = "Clean vs protected"
    if len(rows) > len(panels):
        title += f" (first {len(panels)} of {len(rows)} photos)"
    fig.suptitle(title, fontsize=13, weight="bold")
    return _save(fig, path, dpi)


# --------------------------------------------------------------------------------------------
# similarity histograms


def _same_side_text(higher_is_same: bool) -> str:
    return "≥ threshold: same person" if higher_is_same else "≤ threshold: same person"


def similarity_histograms(
    scores: Mapping[str, Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    dpi: int = DEFAULT_DPI,
) -> Path:
    """One panel per recogniser: score histograms with the decision threshold.

    Each panel has a histogram (top) and a strip plot of every single value (bottom), so even
    one or two faces stay visible. The threshold is a dashed vertical line, labelled with its
    value, and the "same person" side of it is shaded; the panel title says how many protected
    faces fall on the "different person" side.

    Args:
        scores: ``{model_name: spec}`` where ``spec`` has
            ``protected`` (array: protected-vs-clean scores),
            ``clean`` (array or None: a baseline such as clean-vs-clean-transformed or genuine
            pairs), ``threshold`` (float), ``higher_is_same`` (bool: True for similarities,
            False for distances) and ``label`` (str: what the score is, used as the x-axis
            label, e.g. ``"cosine similarity"``). Optional ``protected_name`` / ``clean_name``
            rename the legend entries. NaN / inf values are dropped (and counted in the title).
        path: PNG to write.
        dpi: PNG resolution.

    Returns:
        The path written.
    """
    if not scores:
        return _no_data(path, "Similarity scores", "no data: no models given", dpi)

    n = len(scores)
    ncols = min(n, 2)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(6.4 * ncols, 4.6 * nrows + 0.5), layout="constrained")
    subfigs = np.atleast_1d(fig.subfigures(nrows, ncols, squeeze=False)).ravel()
    for sf in subfigs[n:]:
        sf.set_visible(False)
    for sf, (model, spec) in zip(subfigs, scores.items(), strict=False):
        _similarity_panel(sf, str(model), spec)
    fig.suptitle("Recogniser scores: protected vs clean", fontsize=13, weight="bold")
    return _save(fig, path, dpi)


def _similarity_panel(sf: Any, model: str, spec: Mapping[str, Any]) -> None:
    prot, prot_bad = _finite(spec.get("protected"))
    clean, clean_bad = _finite(spec.get("clean"))
    thr = spec.get("threshold")
    thr = float(thr) if thr is not None and np.isfinite(thr) else None
    higher = bool(spec.get("higher_is_same", True))
    xlabel = str(spec.get("label") or "score")
    names = (
        str(spec.get("protected_name") or "protected vs clean"),
        str(spec.get("clean_name") or "clean baseline"),
    )

    ax_h, ax_s = sf.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    if prot.size == 0 and clean.size == 0:
        ax_s.set_visible(False)
        ax_h.set_axis_off()
        ax_h.text(0.5, 0.5, "no data", ha="center", va="center", fontsize=12, color="0.35")
        sf.suptitle(model, fontsize=12, weight="bold")
        return

    # Shared bins over both sets (and the threshold) so the histograms are comparable.
    pooled = np.concatenate([prot, clean, [thr] if thr is not None else []])
    dmin, dmax = float(pooled.min()), float(pooled.max())
    span = dmax - dmin if dmax > dmin else max(abs(dmax), 1.0) * 0.1
    nbins = int(np.clip(2 * math.sqrt(max(prot.size, clean.size)), 8, 40))
    bins = np.linspace(dmin - 0.01 * span, dmax + 0.01 * span, nbins + 1)
    lo, hi = dmin - 0.08 * span, dmax + 0.08 * span  # margin: edge values stay visible
    if thr is not None:
        # Room on both sides of the threshold for the "same person" / "different" labels.
        lo, hi = min(lo, thr - 0.3 * span), max(hi, thr + 0.3 * span)

    series = [(clean, names[1], _CLEAN_COLOUR), (prot, names[0], _PROTECTED_COLOUR)]
    series = [s for s in series if s[0].size]
    for vals, name, colour in series:
        ax_h.hist(
            vals,
            bins=bins,
            color=colour,
            alpha=0.45,
            edgecolor=colour,
            linewidth=1.0,
            label=f"{name} (n={vals.size})",
        )
    ax_h.set_xlim(lo, hi)
    ax_h.set_ylabel("faces")
    ax_h.yaxis.get_major_locator().set_params(integer=True)

    # Strip plot: every value as a dot, jittered vertically (fixed seed: reproducible figure).
    rng = np.random.default_rng(0)
    for i, (vals, _, colour) in enumerate(series):
        y = i + rng.uniform(-0.18, 0.18, vals.size)
        ax_s.scatter(vals, y, s=22, color=colour, alpha=0.8, edgecolors="none")
    ax_s.set_yticks(range(len(series)), ["clean" if s[1] == names[1] else "prot." for s in series])
    ax_s.set_ylim(-0.6, len(series) - 0.4)
    ax_s.set_xlabel(xlabel)

    title = model
    if thr is not None:
        for ax in (ax_h, ax_s):
            ax.axvline(thr, color="black", linestyle="--", linewidth=1.6, zorder=5)
            # Shade the "same person" side: the protected mass should sit outside it.
            if higher:
                ax.axvspan(thr, hi, color=_SAME_SIDE_COLOUR, alpha=0.08, zorder=0)
            else:
                ax.axvspan(lo, thr, color=_SAME_SIDE_COLOUR, alpha=0.08, zorder=0)
        # Say on the plot itself which side of the line is which.
        same_txt, diff_txt = (
            ("same person →", "← different") if higher else ("← same person", "different →")
        )
        for txt, right in ((same_txt, higher), (diff_txt, not higher)):
            ax_h.text(
                thr,
                0.97,
                f" {txt} ",
                transform=ax_h.get_xaxis_transform(),
                ha="left" if right else "right",
                va="top",
                fontsize=9,
                color=_SAME_SIDE_COLOUR if txt == same_txt else "0.25",
                weight="bold",
            )
        # Above the axes (constrained layout makes room), so it can never hide a bar.
        ax_h.legend(
            handles=[
                *ax_h.get_legend_handles_labels()[0],
                Line2D([], [], color="black", linestyle="--", label=f"threshold = {thr:.3g}"),
                Patch(color=_SAME_SIDE_COLOUR, alpha=0.2, label=_same_side_text(higher)),
            ],
            **_LEGEND_ABOVE,
        )
        # Headroom for the side labels at the top.
        ax_h.set_ylim(0, ax_h.get_ylim()[1] * 1.2)
        if prot.size:
            same = prot >= thr if higher else prot <= thr
            title += f": {int((~same).sum())}/{prot.size} protected judged a different person"
    else:
        ax_h.legend(**_LEGEND_ABOVE)
        title += " (no threshold)"
    dropped = prot_bad + clean_bad
    if dropped:
        title += f"\n({dropped} non-finite values dropped)"
    sf.suptitle(title, fontsize=11, weight="bold")


# --------------------------------------------------------------------------------------------
# robustness bars


def robustness_bars(
    table: Mapping[str, Mapping[str, float | None]],
    path: str | os.PathLike[str],
    *,
    dpi: int = DEFAULT_DPI,
) -> Path:
    """Grouped bars: PSR per transformation (groups) and recogniser (colours).

    Args:
        table: ``{transform_name: {model_name: psr}}`` with ``psr`` in [0, 1], or None where it
            was not measured (drawn as "n/a"; a model missing from a transform counts as None).
        path: PNG to write.
        dpi: PNG resolution.

    Returns:
        The path written.
    """
    transforms = list(table)
    models: list[str] = []
    for row in table.values():
        models.extend(m for m in row if m not in models)  # first-seen order, stable
    if not transforms or not models:
        return _no_data(path, "Protection success vs transformation", "no data", dpi)

    nt, nm = len(transforms), len(models)
    width = 0.8 / nm
    fig = Figure(
        figsize=(float(np.clip(0.45 * nt * nm + 0.5 * nt + 2.0, 6.0, 16.0)), 4.8),
        layout="constrained",
    )
    ax = fig.add_subplot()
    x = np.arange(nt)
    # Vertical labels when bars are narrow, so neighbouring labels never overlap.
    vertical = width * fig.get_figwidth() / (nt + 0.5) < 0.38
    fontsize = 8 if vertical or nm > 3 else 9
    for j, model in enumerate(models):
        colour = f"C{j % 10}"
        xs = x - 0.4 + width * (j + 0.5)
        for xi, t in zip(xs, transforms, strict=True):
            v = table[t].get(model)
            ok = v is not None and np.isfinite(v)
            if ok:
                pct = 100.0 * float(v)
                ax.bar(xi, pct, width * 0.92, color=colour)
                text, y = f"{pct:.0f}%", pct + 1.5
            else:
                # A hatched stub marks where the bar would be; the text says why it is missing.
                ax.bar(xi, 3, width * 0.92, facecolor="none", edgecolor=colour, hatch="///")
                text, y = "n/a", 4.5
            ax.text(
                xi,
                y,
                text,
                ha="center",
                va="bottom",
                fontsize=fontsize,
                rotation=90 if vertical else 0,
                color="black" if ok else "0.4",
            )
    ax.set_xticks(x, transforms, rotation=25 if max(map(len, transforms)) > 10 else 0, ha="right")
    if max(map(len, transforms)) <= 10:
        for lab in ax.get_xticklabels():
            lab.set_horizontalalignment("center")
    ax.set_ylim(0, 118)  # headroom for the labels of 100 % bars
    ax.set_yticks(range(0, 101, 20), [f"{v}%" for v in range(0, 101, 20)])
    ax.set_ylabel("protection success rate")
    ax.set_xlabel("transformation applied to the protected image")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_xlim(-0.6, nt - 0.4)
    # Above the axes, not inside: nothing can hide a bar or its label. (A figure "outside"
    # legend would collide with the suptitle.)
    ax.legend(
        handles=[Patch(color=f"C{j % 10}", label=m) for j, m in enumerate(models)],
        loc="lower center",
        bbox_to_anchor=(0.5, 1.01),
        ncols=min(nm, 6),
        fontsize=9,
        frameon=False,
    )
    fig.suptitle("Protection success vs transformation", fontsize=13, weight="bold")
    return _save(fig, path, dpi)


# --------------------------------------------------------------------------------------------
# optimisation traces


def trace_plot(
    traces: Mapping[str, Mapping[str, np.ndarray]],
    path: str | os.PathLike[str],
    *,
    keys: Sequence[str] = ("loss", "cos_similar", "cos_distant", "cos_clean", "cos_clean_real"),
    max_identities: int = 8,
    dpi: int = DEFAULT_DPI,
) -> Path:
    """Per-step optimisation curves: the loss in one panel, the cosines in another.

    In the loss panel each identity has its own colour and line style; in the cosine panel the
    colour says which cosine and the line style which identity (two legends).

    Args:
        traces: ``{identity: {key: (steps,) array}}``, e.g. ``FitResult.trace`` or the traces
            saved next to a mask. Keys not in ``keys`` are ignored; missing keys are skipped;
            non-1-D arrays are skipped with a warning.
        path: PNG to write.
        keys: what to draw; keys containing ``"loss"`` go to the loss panel, the rest to the
            cosine panel.
        max_identities: at most this many identities are drawn (said in the title), since more
            line styles cannot be told apart.
        dpi: PNG resolution.

    Returns:
        The path written.
    """
    loss_keys = [k for k in keys if "loss" in k]
    other_keys = [k for k in keys if "loss" not in k]
    curves: dict[str, dict[str, np.ndarray]] = {}
    for ident, tr in traces.items():
        got = {}
        for k in keys:
            if k not in tr or tr[k] is None:
                continue
            a = np.asarray(tr[k], dtype=np.float64)
            if a.ndim == 0:
                a = a[None]
            if a.ndim != 1:
                warnings.warn(
                    f"trace_plot: {ident}/{k} has shape {a.shape}, expected (steps,); skipped",
                    stacklevel=2,
                )
                continue
            if a.size:
                got[k] = a
        if got:
            curves[str(ident)] = got
    if not curves:
        return _no_data(path, "Optimisation traces", "no data: no traces with these keys", dpi)

    idents = list(curves)[:max_identities]
    panels = [
        (ks, name)
        for ks, name in ((loss_keys, "loss"), (other_keys, "cosine similarity"))
        if any(k in curves[i] for i in idents for k in ks)
    ]
    fig = Figure(figsize=(7.5 * len(panels) + 0.5, 5.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)).ravel()
    for ax, (ks, ylabel) in zip(axes, panels, strict=True):
        is_loss = ylabel == "loss"
        for n, ident in enumerate(idents):
            style = _LINESTYLES[n % len(_LINESTYLES)]
            for c, k in enumerate(ks):
                if k not in curves[ident]:
                    continue
                y = curves[ident][k]
                colour = f"C{n % 10}" if is_loss else _COSINE_COLOURS[c % len(_COSINE_COLOURS)]
                ax.plot(
                    np.arange(y.size),
                    y,
                    color=colour,
                    linestyle=style,
                    linewidth=1.5,
                    # Markers make very short traces (or a single step) visible.
                    marker="o" if y.size <= 20 else None,
                    markersize=3.5,
                    label=ident if is_loss else None,
                )
        ax.set_xlabel("step")
        ax.xaxis.get_major_locator().set_params(integer=True)  # no "step 0.25"
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        used = [k for k in ks if any(k in curves[i] for i in idents)]
        ax.set_title(", ".join(used), fontsize=11)
        if is_loss:
            ax.legend(title="identity", fontsize=8.5, title_fontsize=9, framealpha=0.9)
        else:
            # One legend (constrained layout only makes room for the axes' own legend):
            # colour = which cosine, line style = which identity (drawn in grey).
            handles = [
                Line2D([], [], color=_COSINE_COLOURS[c % len(_COSINE_COLOURS)], label=k)
                for c, k in enumerate(ks)
                if k in used
            ]
            if len(idents) > 1:
                handles += [
                    Line2D([], [], color="none", label=" "),  # spacer between the groups
                    *(
                        Line2D(
                            [],
                            [],
                            color="0.3",
                            linestyle=_LINESTYLES[n % len(_LINESTYLES)],
                            label=ident,
                        )
                        for n, ident in enumerate(idents)
                    ),
                ]
            ax.legend(
                handles=handles,
                title="colour: cosine\nstyle: identity" if len(idents) > 1 else "cosine",
                fontsize=8.5,
                title_fontsize=9,
                loc="upper left",
                bbox_to_anchor=(1.01, 1.0),
                handlelength=3,
            )
    title = "Optimisation traces"
    if len(curves) > len(idents):
        title += f" (first {len(idents)} of {len(curves)} identities)"
    fig.suptitle(title, fontsize=13, weight="bold")
    return _save(fig, path, dpi)
