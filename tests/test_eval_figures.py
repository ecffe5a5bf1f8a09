"""The evaluation report's PNG figures: written, non-trivial, and "no data" for empty inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxcloak.evaluate import figures as F


def _assert_png(path: Path, min_side: int = 300) -> np.ndarray:
    """The file is a PNG of a sensible size that is not one flat colour; returns its pixels."""
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert min(im.size) >= min_side and max(im.size) <= 6000
        px = np.asarray(im.convert("RGB"))
    packed = (px[..., 0].astype(np.uint32) << 16) | (px[..., 1].astype(np.uint32) << 8) | px[..., 2]
    assert px.std() > 5 and np.unique(packed).size > 10  # (unique over axis=0 is very slow)
    # Written atomically: no temp file left next to it.
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    return px


def _face(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255.0 / w, yy * 255.0 / h, np.full((h, w), 120.0)], axis=-1)
    img[((yy - h / 2) / (0.35 * h)) ** 2 + ((xx - w / 2) / (0.25 * w)) ** 2 < 1] = (220, 180, 150)
    return np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


def _protect(img: np.ndarray, seed: int) -> np.ndarray:
    d = np.random.default_rng(seed).integers(-4, 5, img.shape)
    return np.clip(img.astype(int) + d, 0, 255).astype(np.uint8)


@pytest.fixture
def no_data_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records the messages of every "no data" figure (which are still written for real)."""
    calls: list[str] = []
    real = F._no_data

    def spy(path, title, message, dpi):
        calls.append(message)
        return real(path, title, message, dpi)

    monkeypatch.setattr(F, "_no_data", spy)
    return calls


# ----------------------------------------------------------------------------- difference image


def test_amplified_difference_values() -> None:
    clean = np.full((1, 6, 3), 100, np.uint8)
    protected = clean.copy()
    protected[0, :, 0] = [101, 99, 100, 120, 80, 103]
    protected[0, :, 1] = [0, 255, 100, 100, 100, 100]  # extreme changes must clip, not wrap
    d = F.amplified_difference(clean, protected, amplify=8)
    assert d.dtype == np.uint8 and d.shape == clean.shape
    np.testing.assert_array_equal(d[0, :, 0], [136, 120, 128, 255, 0, 152])
    np.testing.assert_array_equal(d[0, :, 1], [0, 255, 128, 128, 128, 128])
    np.testing.assert_array_equal(d[0, :, 2], 128)  # unchanged is mid-grey
    np.testing.assert_array_equal(F.amplified_difference(clean, protected, 1)[0, :2, 0], [129, 127])


def test_amplified_difference_checks_inputs() -> None:
    grey = np.full((4, 5), 50, np.uint8)
    assert F.amplified_difference(grey, grey).shape == (4, 5, 3)  # grey promoted to RGB
    with pytest.raises(ValueError, match="differ in size"):
        F.amplified_difference(grey, np.zeros((4, 6), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        F.amplified_difference(grey.astype(np.float32), grey)


# ----------------------------------------------------------------------------------- the figures


def test_image_grid(tmp_path: Path, no_data_calls: list[str]) -> None:
    rows = []
    for i, (h, w) in enumerate([(96, 128), (700, 520), (80, 80)]):  # one needs downscaling
        c = _face(h, w, i)
        rows.append((f"photo_{i}.jpg", c, _protect(c, i)))
    out = F.image_grid(rows, tmp_path / "grid.png", amplify=8, max_side=256)
    assert out == tmp_path / "grid.png"
    px = _assert_png(out)
    assert px.shape[0] > px.shape[1]  # three rows of three panels: taller than wide
    assert not no_data_calls


def test_image_grid_caps_rows(tmp_path: Path) -> None:
    c = _face(64, 64, 0)
    rows = [(f"p{i}", c, _protect(c, i)) for i in range(5)]
    h_all = _assert_png(F.image_grid(rows, tmp_path / "a.png", max_rows=5)).shape[0]
    h_cap = _assert_png(F.image_grid(rows, tmp_path / "b.png", max_rows=2)).shape[0]
    assert h_cap < h_all


def test_image_grid_rejects_mismatched_pair(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="differ in size"):
        F.image_grid([("x", _face(32, 32, 0), _face(32, 40, 0))], tmp_path / "g.png")
    assert not (tmp_path / "g.png").exists()


def test_similarity_histograms(tmp_path: Path, no_data_calls: list[str]) -> None:
    rng = np.random.default_rng(0)
    scores = {
        "SFace": dict(
            clean=rng.normal(0.7, 0.08, 30),
            protected=rng.normal(0.2, 0.1, 30),
            threshold=0.363,
            higher_is_same=True,
            label="cosine similarity",
        ),
        # A single face and no baseline: must still be drawn.
        "ArcFace": dict(
            clean=None, protected=np.array([0.41]), threshold=0.28, higher_is_same=True, label="cos"
        ),
        # A distance (lower = same), with a NaN to drop and no threshold at all.
        "FaceNet": dict(
            clean=[0.6, 0.7, np.nan], protected=[1.3, 1.2], threshold=None, higher_is_same=False
        ),
        "empty model": dict(clean=None, protected=[], threshold=0.5),
    }
    _assert_png(F.similarity_histograms(scores, tmp_path / "hist.png"))
    assert not no_data_calls


def test_robustness_bars(tmp_path: Path, no_data_calls: list[str]) -> None:
    table = {
        "none": {"SFace": 1.0, "ArcFace": 0.8, "FaceNet": 0.55},
        "JPEG q=75": {"SFace": 0.9, "ArcFace": 0.6, "FaceNet": None},
        "resize 0.5x": {"SFace": 0.7, "ArcFace": 0.0},  # FaceNet missing: drawn as n/a
    }
    _assert_png(F.robustness_bars(table, tmp_path / "bars.png"))
    assert not no_data_calls


def test_trace_plot(tmp_path: Path, no_data_calls: list[str]) -> None:
    rng = np.random.default_rng(0)
    steps = np.arange(120)
    traces = {}
    for i in range(10):  # more than the cap of 8
        cs = 0.1 + 0.5 * np.exp(-steps / 40) + rng.normal(0, 0.01, steps.size)
        cd = 0.05 + 0.4 * (1 - np.exp(-steps / 50))
        cc = 0.3 + 0.7 * np.exp(-steps / 60)
        traces[f"id{i}"] = {
            "loss": (cs - cd).astype(np.float32),
            "cos_similar": cs,
            "cos_distant": cd,
            "cos_clean": cc,
            "cos_clean_real": cc - 0.05,
            "alpha_max": np.ones(steps.size),  # not asked for: ignored
        }
    traces["short"] = {"loss": np.array([0.4, 0.3]), "cos_similar": np.array([0.5, 0.45])}
    _assert_png(F.trace_plot(traces, tmp_path / "trace.png"))
    assert not no_data_calls

    with pytest.warns(UserWarning, match="expected \\(steps,\\)"):
        F.trace_plot({"bad": {"loss": np.zeros((3, 4))}, "ok": {"loss": steps}}, tmp_path / "w.png")


@pytest.mark.parametrize(
    ("func", "arg"),
    [
        (F.image_grid, []),
        (F.similarity_histograms, {}),
        (F.robustness_bars, {}),
        (F.robustness_bars, {"jpeg": {}}),
        (F.trace_plot, {}),
        (F.trace_plot, {"id": {"alpha_max": np.ones(3)}}),  # none of the requested keys
    ],
)
def test_empty_inputs_give_no_data_figure(
    tmp_path: Path, no_data_calls: list[str], func, arg
) -> None:
    out = func(arg, tmp_path / "empty.png")
    assert no_data_calls and "no data" in no_data_calls[0]
    with Image.open(out) as im:
        assert im.format == "PNG" and min(im.size) > 100
        assert np.asarray(im.convert("L")).std() > 1  # the text is drawn
