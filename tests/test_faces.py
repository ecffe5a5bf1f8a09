"""Face detection, alignment and paste-back on real photos read at run time.

Independent references, each used only when installed (tests skip with the reason otherwise):
- insightface (``pip install --no-deps insightface``): its ``t1.jpg`` group photo (6 faces) and
  ``face_align.norm_crop``, loaded straight from its file because ``import insightface`` needs
  ``requests`` and more.
- dlib (``pip install dlib-bin face-recognition-models``): 68-point landmarks from a different
  detector and landmark model.
"""

from __future__ import annotations

import importlib.util
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import skimage.transform

from jaxcloak.faces import (
    ARCFACE_TEMPLATE,
    align_face,
    crop_mask,
    detect_faces,
    estimate_similarity,
    invert_affine,
    paste_back,
)
from jaxcloak.faces.detect import _detector


def _package_dir(name: str) -> Path | None:
    """Install folder of a package, found without importing (running) it."""
    spec = importlib.util.find_spec(name)
    return None if spec is None or spec.origin is None else Path(spec.origin).parent


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def t1() -> np.ndarray:
    root = _package_dir("insightface")
    path = root / "data/images/t1.jpg" if root else None
    if path is None or not path.is_file():
        pytest.skip("insightface's t1.jpg not found: pip install --no-deps insightface")
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def norm_crop():
    root = _package_dir("insightface")
    path = root / "utils/face_align.py" if root else None
    if path is None or not path.is_file():
        pytest.skip("insightface not installed: pip install --no-deps insightface")
    # face_align.py only needs cv2, numpy and skimage; the package __init__ needs much more.
    spec = importlib.util.spec_from_file_location("_insightface_face_align", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.norm_crop


@pytest.fixture(scope="module")
def dlib_landmarks():
    """Returns f(rgb) -> list of (5, 2) points in YuNet order, from dlib's 68-point model."""
    dlib = pytest.importorskip("dlib", reason="pip install dlib-bin face-recognition-models")
    root = _package_dir("face_recognition_models")
    model = root / "models/shape_predictor_68_face_landmarks.dat" if root else None
    if model is None or not model.is_file():
        pytest.skip("dlib's 68-point model not found: pip install face-recognition-models")
    detector, predictor = dlib.get_frontal_face_detector(), dlib.shape_predictor(str(model))

    def landmarks(rgb: np.ndarray) -> list[np.ndarray]:
        out = []
        for rect in detector(rgb, 1):
            p = np.array([[q.x, q.y] for q in predictor(rgb, rect).parts()], np.float64)
            # iBUG 68: 36-41 / 42-47 eye contours (image-left eye first), 30 nose tip,
            # 48 / 54 mouth corners.
            out.append(np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]]))
        return out

    return landmarks


def _closest(candidates: list[np.ndarray], lm: np.ndarray) -> np.ndarray:
    """Per-point distances to the candidate landmark set nearest ``lm`` on average."""
    dists = [np.linalg.norm(c - lm, axis=1) for c in candidates]
    return min(dists, key=np.mean)


# --- detection ---------------------------------------------------------------------------


def test_astronaut_has_exactly_one_face(astronaut):
    result = detect_faces(astronaut)
    assert len(result) == 1 and result.too_small == () and result.scale == 1.0
    face = result[0]
    x, y, w, h = face.box
    assert x >= 0 and y >= 0 and x + w <= 512 and y + h <= 512 and w > 60
    assert face.landmarks.shape == (5, 2) and face.score > 0.9
    # YuNet order: the subject's right eye is on the image left, mouth below nose below eyes.
    lm = face.landmarks
    assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]
    assert lm[:2, 1].max() < lm[2, 1] < lm[3:, 1].min()
    assert np.all((lm >= (x, y)) & (lm <= (x + w, y + h)))


def test_t1_has_six_faces_sorted_by_area(t1):
    result = detect_faces(t1)
    assert len(result) == 6
    areas = [f.area for f in result]
    assert areas == sorted(areas, reverse=True)


def test_small_faces_are_reported_not_dropped(astronaut):
    result = detect_faces(astronaut, min_face=200)
    assert result.faces == () and len(result.too_small) == 1


def test_large_photo_is_downscaled_and_mapped_back(astronaut):
    big = cv2.resize(astronaut, (3000, 3000), interpolation=cv2.INTER_CUBIC)
    result = detect_faces(big, max_side=1280)
    assert len(result) == 1 and result.scale == pytest.approx(1280 / 3000)
    face = result[0]
    # Exactly the detection on the downscaled copy, scaled back up.
    small = cv2.resize(big, (1280, 1280), interpolation=cv2.INTER_AREA)
    ref = detect_faces(small)[0]
    np.testing.assert_allclose(face.landmarks, ref.landmarks * 3000 / 1280, rtol=1e-9)
    np.testing.assert_allclose(face.box, np.array(ref.box) * 3000 / 1280, rtol=1e-9)
    # And where the native-size detection puts it: within 6% of the face width (YuNet's
    # landmarks shift a few pixels with the face's apparent size).
    native = detect_faces(astronaut)[0]
    k = 3000 / 512
    assert np.abs(face.landmarks / k - native.landmarks).max() < 0.06 * native.box[2]
    assert np.abs(np.array(face.box) / k - native.box).max() < 0.06 * native.box[2]


def test_detector_is_cached_per_size():
    assert _detector(512, 512, 0.6) is _detector(512, 512, 0.6)
    assert _detector(512, 512, 0.6) is not _detector(640, 480, 0.6)


def test_detection_is_thread_safe_on_same_size_photos(astronaut):
    # Same-size photos are the norm; one shared detector object corrupted concurrent calls.
    photos = []
    for i in range(16):
        y, x = 8 * (i % 4), 8 * (i // 4)
        img = astronaut[y : y + 256, 100 + x : 356 + x]
        photos.append(np.ascontiguousarray(img[:, ::-1] if i % 2 else img))
    want = [[f.box for f in detect_faces(p)] for p in photos]
    with ThreadPoolExecutor(4) as ex:
        for _ in range(5):
            got = list(ex.map(lambda p: [f.box for f in detect_faces(p)], photos))
            assert got == want


def test_rejects_non_uint8_rgb(astronaut):
    with pytest.raises(ValueError):
        detect_faces(astronaut.astype(np.float32))


def test_astronaut_landmarks_agree_with_dlib(astronaut, dlib_landmarks):
    # Different annotation schemes (YuNet's eye points vs dlib's eye-contour centres, etc.);
    # on the 512 px astronaut both eyes and the 5-point mean still agree within 5 px.
    d = _closest(dlib_landmarks(astronaut), detect_faces(astronaut)[0].landmarks)
    assert d.mean() < 5.0 and d[:2].max() < 5.0


def test_t1_landmarks_agree_with_dlib(t1, dlib_landmarks):
    # Relative budget for the group photo: mean error under 25% of the inter-ocular distance.
    candidates = dlib_landmarks(t1)
    for face in detect_faces(t1):
        d = _closest(candidates, face.landmarks)
        assert d.mean() < 0.25 * np.linalg.norm(face.landmarks[0] - face.landmarks[1])


# --- alignment ---------------------------------------------------------------------------


def test_umeyama_matches_skimage(astronaut):
    rng = np.random.default_rng(0)
    cases = [(detect_faces(astronaut)[0].landmarks, ARCFACE_TEMPLATE)]
    for _ in range(20):
        src = rng.uniform(0, 500, (5, 2))
        cases.append((src, src @ rng.normal(size=(2, 2)) + rng.normal(size=2) * 50))
    for src, dst in cases:
        ref = skimage.transform.SimilarityTransform.from_estimate(src, dst)
        assert ref
        np.testing.assert_allclose(estimate_similarity(src, dst), ref.params[:2], atol=1e-6)


def test_umeyama_recovers_exact_similarity():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (5, 2))
    a, s = 0.3, 1.7
    m = np.array([[s * np.cos(a), -s * np.sin(a), 4.0], [s * np.sin(a), s * np.cos(a), -9.0]])
    np.testing.assert_allclose(estimate_similarity(src, src @ m[:, :2].T + m[:, 2]), m, atol=1e-9)


def test_invert_affine():
    m = np.array([[1.2, -0.3, 5.0], [0.4, 0.9, -7.0]])
    both = np.vstack([m, [0, 0, 1]]) @ np.vstack([invert_affine(m), [0, 0, 1]])
    np.testing.assert_allclose(both, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(invert_affine(m), cv2.invertAffineTransform(m), atol=1e-12)


def test_aligned_landmarks_land_on_template(astronaut):
    lm = detect_faces(astronaut)[0].landmarks
    crop, m = align_face(astronaut, lm)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    mapped = lm @ m[:, :2].T + m[:, 2]
    # A similarity cannot fit 5 points exactly; a couple of pixels of residual is normal.
    assert np.linalg.norm(mapped - ARCFACE_TEMPLATE, axis=1).max() < 5.0


def test_crop_matches_skimage_warp(astronaut):
    # Independent resampler: skimage's bilinear warp of the same similarity.
    lm = detect_faces(astronaut)[0].landmarks
    crop, m = align_face(astronaut, lm)
    ref = skimage.transform.warp(
        astronaut,
        skimage.transform.AffineTransform(matrix=np.vstack([invert_affine(m), [0, 0, 1]])),
        output_shape=(112, 112),
        order=1,
        mode="constant",
        cval=0,
        preserve_range=True,
    )
    assert np.abs(crop.astype(np.float64) - ref).mean() <= 2.0


# insightface's own estimate_norm still calls skimage's deprecated SimilarityTransform.estimate.
@pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")
def test_crop_matches_insightface_norm_crop(astronaut, t1, norm_crop):
    for img in (astronaut, t1):
        for face in detect_faces(img):
            crop, _ = align_face(img, face.landmarks)
            ref = norm_crop(img, face.landmarks.astype(np.float32))
            assert np.abs(crop.astype(np.int16) - ref).mean() <= 2.0


# --- paste back --------------------------------------------------------------------------


def _region(shape: tuple[int, int], m: np.ndarray, size: int = 112, grow: int = 2) -> np.ndarray:
    """Photo pixels the crop covers, dilated by ``grow`` pixels for bilinear spill."""
    ones = np.ones((size, size), np.uint8)
    region = cv2.warpAffine(
        ones, m, shape[::-1], flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderValue=0
    )
    return cv2.dilate(region, np.ones((2 * grow + 1,) * 2, np.uint8)).astype(bool)


@pytest.mark.parametrize("which", ["astronaut", "t1"])
def test_zero_delta_returns_photo_exactly(which, request):
    photo = request.getfixturevalue(which)
    ms = [align_face(photo, f.landmarks)[1] for f in detect_faces(photo)]
    out = paste_back(photo, [np.zeros((112, 112, 3), np.float32)] * len(ms), ms)
    assert out.dtype == np.uint8 and np.array_equal(out, photo)
    tiny = [np.full((112, 112, 3), 1e-3, np.float32)] * len(ms)
    assert np.array_equal(paste_back(photo, tiny, ms), photo)


@pytest.mark.parametrize("which", ["astronaut", "t1"])
def test_bounded_delta_stays_bounded_and_local(which, request):
    photo = request.getfixturevalue(which)
    faces = detect_faces(photo)
    ms = [align_face(photo, f.landmarks)[1] for f in faces]
    rng = np.random.default_rng(0)
    deltas = [rng.choice([-8.0, 8.0], (112, 112, 3)).astype(np.float32) for _ in ms]
    out = paste_back(photo, deltas, ms)
    diff = np.abs(out.astype(np.int16) - photo)
    assert diff.max() <= 8 and diff.max() == 8
    changed = diff.any(axis=-1)
    allowed = np.zeros(photo.shape[:2], bool)
    for m in ms:
        allowed |= _region(photo.shape[:2], m)
    assert not (changed & ~allowed).any()
    # Nearly all of each face's inner crop is perturbed, not just a few pixels.
    inner = crop_mask(112) == 1.0
    for m in ms:
        core = cv2.warpAffine(
            inner.astype(np.uint8),
            m,
            photo.shape[1::-1],
            flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
        ).astype(bool)
        assert changed[core].mean() > 0.9


def test_paste_back_undoes_alignment_in_the_face(astronaut):
    # Pasting (crop' - crop) should turn the face region into crop' warped back.
    face = detect_faces(astronaut)[0]
    crop, m = align_face(astronaut, face.landmarks)
    target = np.full_like(crop, 128)
    out = paste_back(astronaut, [target.astype(np.float32) - crop], [m])
    back = align_face(out, face.landmarks)[0]
    inner = crop_mask(112) == 1.0
    # Up to two bilinear resamplings of a textured face: a few grey levels on average.
    assert np.abs(back[inner].astype(np.int16) - 128).mean() < 6.0


def test_crop_mask_shape():
    mask = crop_mask(112, feather=2.0, erode=2)
    assert mask.shape == (112, 112) and mask.max() == 1.0
    assert (mask[:2] == 0).all() and (mask[:, -2:] == 0).all()
    assert (mask[8:104, 8:104] > 0.3).all() and (mask[14:98, 14:98] == 1.0).all()


def test_paste_back_validates():
    photo = np.zeros((50, 50, 3), np.uint8)
    with pytest.raises(ValueError):
        paste_back(photo, [np.zeros((112, 112, 3))], [])
    with pytest.raises(ValueError):
        paste_back(photo, [np.zeros((112, 100, 3))], [np.eye(2, 3)])
