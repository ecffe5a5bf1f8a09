"""dlib black-box evaluator sanity checks and the robustness transforms.

The dlib tests need ``pip install dlib-bin face-recognition-models`` and are skipped without it;
the robustness tests need only Pillow and OpenCV. Real photos are read from the installed
packages at run time, never copied (they are third-party photos). Measured here (CPU):
HOG ~0.13 s on the astronaut, ~0.7 s on t1; ~0.11 s per descriptor.
"""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from jaxcloak.evaluate import dlib_bb
from jaxcloak.evaluate.dlib_bb import THRESHOLD, DlibRecognizer, box_iou
from jaxcloak.evaluate.robustness import (
    TRANSFORMS,
    apply_transform,
    centre_crop,
    map_box,
    map_points,
)
from jaxcloak.faces import detect_faces
from jaxcloak.io.images import read_image

needs_dlib = pytest.mark.skipif(
    not DlibRecognizer.available(),
    reason=f"dlib or its models are not installed ({dlib_bb.INSTALL_HINT})",
)


def _t1_path() -> Path | None:
    # find_spec does not execute insightface (heavy imports); the photo ships in its data folder.
    spec = importlib.util.find_spec("insightface")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "data" / "images" / "t1.jpg"
    return path if path.is_file() else None


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def rec() -> DlibRecognizer:
    return DlibRecognizer().load()


@pytest.fixture(scope="module")
def t1() -> np.ndarray:
    path = _t1_path()
    if path is None:
        pytest.skip("insightface's data/images/t1.jpg is not installed")
    return read_image(path).rgb


@pytest.fixture(scope="module")
def t1_faces(rec: DlibRecognizer, t1: np.ndarray):
    """dlib's own faces in t1, computed once for the tests that share them."""
    return rec.describe(t1)


# -- the black box ---------------------------------------------------------------------------


@needs_dlib
def test_astronaut_and_its_mirror_are_the_same_person(rec, astronaut) -> None:
    (face,) = detect_faces(astronaut).faces
    clean = rec.match(astronaut, face.box)
    assert clean is not None and clean.detector == "hog"
    assert clean.descriptor.shape == (128,) and clean.descriptor.dtype == np.float32
    assert clean.landmarks.shape == (5, 2)
    assert not clean.descriptor.flags.writeable

    # describe() also finds a weak HOG false positive on the sleeve; the face is largest.
    faces = rec.describe(astronaut)
    assert faces[0].area >= max(f.area for f in faces)
    np.testing.assert_array_equal(faces[0].descriptor, clean.descriptor)

    flipped = np.ascontiguousarray(astronaut[:, ::-1])
    x, y, w, h = face.box
    mirror = rec.match(flipped, (astronaut.shape[1] - x - w, y, w, h))
    assert mirror is not None
    d = rec.distance(clean.descriptor, mirror.descriptor)
    print(f"astronaut vs mirror: dlib distance {d:.3f}")
    assert 0.0 < d < THRESHOLD
    assert rec.same_person(clean.descriptor, mirror.descriptor)
    assert rec.distance(clean.descriptor, clean.descriptor) == 0.0


@needs_dlib
def test_t1_people_are_pairwise_different(rec, t1_faces) -> None:
    assert len(t1_faces) == 6  # dlib's HOG detector finds all 6 people of t1.jpg
    areas = [f.area for f in t1_faces]
    assert areas == sorted(areas, reverse=True)
    desc = np.stack([f.descriptor for f in t1_faces])
    dists = [rec.distance(desc[i], desc[j]) for i, j in itertools.combinations(range(6), 2)]
    print(f"t1 impostor pairs: min {min(dists):.3f}, max {max(dists):.3f}")
    assert min(dists) > THRESHOLD
    # The broadcasting form agrees with the pairwise one.
    np.testing.assert_allclose(rec.distance(desc[:1], desc[1:]), dists[:5], rtol=1e-6)


@needs_dlib
def test_match_picks_the_face_by_box(rec, t1, t1_faces) -> None:
    yunet = detect_faces(t1).faces
    assert len(yunet) == 6
    # A hint on background (no dlib face overlaps it) must come back "not detected"; and a second
    # hint on an already matched face must not steal it (matching is one-to-one).
    h, w = t1.shape[:2]
    empty = next(
        b
        for b in [(0.0, 0.0, 60.0, 60.0), (w - 60.0, 0.0, 60.0, 60.0), (0.0, h - 60.0, 60.0, 60.0)]
        if all(box_iou(b, f.box) == 0.0 for f in t1_faces)
    )
    x, y, bw, bh = yunet[0].box
    shifted = (x + 0.3 * bw, y, bw, bh)  # overlaps face 0 less than its own YuNet box does
    *matched, none_empty, none_dup = rec.match_many(t1, [*(f.box for f in yunet), empty, shifted])
    for y_face, m in zip(yunet, matched, strict=True):
        assert m is not None and m.detector == "hog" and m.iou >= rec.min_iou
        # The match is the dlib face overlapping this YuNet box most, descriptor and all.
        best = max(t1_faces, key=lambda f: box_iou(f.box, y_face.box))
        assert m.box == best.box
        np.testing.assert_array_equal(m.descriptor, best.descriptor)
    assert len({m.box for m in matched}) == 6
    assert none_empty is None and none_dup is None


@needs_dlib
def test_hint_fallback_describes_a_face_hog_misses(rec, astronaut) -> None:
    clean = rec.describe_near(astronaut, detect_faces(astronaut)[0].box)
    # At 1/5 scale the face is ~18 px: below HOG's ~40 px floor (upsample 1), still found by YuNet.
    tiny = cv2.resize(astronaut, (102, 102), interpolation=cv2.INTER_AREA)
    (face,) = detect_faces(tiny, min_face=5).faces
    assert rec.match(tiny, face.box) is None
    hinted = rec.match(tiny, face.box, fallback=True)
    assert hinted is not None and hinted.detector == "hint" and np.isnan(hinted.score)
    assert hinted.descriptor.shape == (128,)
    x, y, w, h = face.box
    assert np.all(
        (hinted.landmarks >= (x - 2, y - 2)) & (hinted.landmarks <= (x + w + 2, y + h + 2))
    )
    d = rec.distance(clean, hinted.descriptor)
    print(f"astronaut at 1/5 scale via the hint box: distance {d:.3f}")


def test_unavailable_error_names_the_install(monkeypatch) -> None:
    monkeypatch.setattr(dlib_bb, "_MODELS_PACKAGE", "no_such_package_jaxcloak")
    with pytest.raises(
        dlib_bb.DlibUnavailableError, match="pip install dlib-bin face-recognition-models"
    ):
        dlib_bb._model_files()
    assert not DlibRecognizer.available()


# -- robustness transforms -------------------------------------------------------------------


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_transform_shapes_and_dtypes(name: str, astronaut: np.ndarray) -> None:
    src = astronaut.copy()
    out, affine = apply_transform(name, astronaut)
    np.testing.assert_array_equal(astronaut, src)  # input untouched
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert out.flags.c_contiguous and out.flags.writeable
    assert affine.shape == (2, 3) and affine.dtype == np.float64
    if name == "crop90":
        assert out.shape == (round(0.9 * 512), round(0.9 * 512), 3)
    else:
        assert out.shape == astronaut.shape
        np.testing.assert_array_equal(affine, [[1, 0, 0], [0, 1, 0]])
        assert not np.array_equal(out, astronaut)


def test_crop_mapping_lands_on_the_same_content(astronaut: np.ndarray) -> None:
    face = detect_faces(astronaut)[0]
    out, affine = apply_transform("crop90", astronaut)
    mapped = map_points(affine, face.landmarks)
    for (x, y), (u, v) in zip(
        face.landmarks.round().astype(int), mapped.round().astype(int), strict=True
    ):
        np.testing.assert_array_equal(
            out[v - 4 : v + 5, u - 4 : u + 5], astronaut[y - 4 : y + 5, x - 4 : x + 5]
        )
    # Independent of the matrix: template matching finds each landmark's patch where it says.
    for (x, y), (u, v) in zip(
        face.landmarks.round().astype(int), mapped.round().astype(int), strict=True
    ):
        patch = astronaut[y - 10 : y + 11, x - 10 : x + 11]
        score = cv2.matchTemplate(out, patch, cv2.TM_SQDIFF)
        assert np.unravel_index(np.argmin(score), score.shape) == (v - 10, u - 10)
    # And YuNet re-run on the crop agrees up to its anchor grid (it is not shift-equivariant:
    # ~5 px here for a 25 px shift), so only a loose bound.
    again = detect_faces(out)[0]
    assert np.abs(again.landmarks - mapped).max() < 0.1 * face.box[2]
    assert box_iou(map_box(affine, face.box), again.box) > 0.85


def test_crop_geometry_on_odd_sizes() -> None:
    rgb = np.arange(101 * 57 * 3, dtype=np.uint64).reshape(101, 57, 3).astype(np.uint8)
    out, affine = centre_crop(rgb, 0.9)
    assert out.shape == (91, 51, 3)
    x0, y0 = -affine[0, 2], -affine[1, 2]
    assert (x0, y0) == (3, 5)
    np.testing.assert_array_equal(out, rgb[5:96, 3:54])
    assert map_box(affine, (10, 20, 5, 6)) == (7.0, 15.0, 5.0, 6.0)


def test_jpeg_and_gray(astronaut: np.ndarray) -> None:
    j75, _ = apply_transform("jpeg75", astronaut)
    assert not np.array_equal(j75, astronaut)
    p75 = _psnr(j75, astronaut)
    p50 = _psnr(apply_transform("jpeg50", astronaut).rgb, astronaut)
    p95 = _psnr(apply_transform("jpeg95", astronaut).rgb, astronaut)
    print(f"JPEG PSNR on the astronaut: q95 {p95:.1f}, q75 {p75:.1f}, q50 {p50:.1f} dB")
    assert p75 > 30 and p95 > p75 > p50
    np.testing.assert_array_equal(apply_transform("jpeg75", astronaut).rgb, j75)  # deterministic

    g, _ = apply_transform("gray", astronaut)
    np.testing.assert_array_equal(g[..., 0], g[..., 1])
    np.testing.assert_array_equal(g[..., 0], g[..., 2])
    want = astronaut.astype(np.float64) @ [0.299, 0.587, 0.114]
    assert np.abs(g[..., 0] - want).max() <= 1.0


def test_unknown_transform_and_bad_input(astronaut: np.ndarray) -> None:
    with pytest.raises(KeyError, match=r"unknown robustness transform 'jpeg30'.*jpeg75"):
        apply_transform("jpeg30", astronaut)
    with pytest.raises(ValueError, match="uint8"):
        apply_transform("blur1", astronaut.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        apply_transform("gray", astronaut[..., 0])
