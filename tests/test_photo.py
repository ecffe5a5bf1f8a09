"""Face policies, the Photo data model and the batching helpers, on real photos."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from jaxcloak.faces import NoFaceError, box_transform, prepare_photo, scatter_rows, stack_crops
from jaxcloak.io import read_image


def _save(path: Path, rgb: np.ndarray) -> Path:
    Image.fromarray(rgb).save(path)
    return path


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory):
    return read_image(
        _save(tmp_path_factory.mktemp("p") / "astronaut.png", skimage.data.astronaut())
    )


@pytest.fixture(scope="module")
def t1():
    spec = importlib.util.find_spec("insightface")
    path = Path(spec.origin).parent / "data/images/t1.jpg" if spec and spec.origin else None
    if path is None or not path.is_file():
        pytest.skip("insightface's t1.jpg not found: pip install --no-deps insightface")
    return read_image(path)


@pytest.fixture(scope="module")
def blank(tmp_path_factory):
    rgb = np.full((200, 300, 3), 128, np.uint8)
    return read_image(_save(tmp_path_factory.mktemp("p") / "blank.png", rgb))


def test_policies_on_a_group_photo(t1):
    all_faces = prepare_photo(t1)
    assert len(all_faces.faces) == 6
    areas = [f.box[2] * f.box[3] for f in all_faces.faces]
    assert areas == sorted(areas, reverse=True)
    assert [f.index for f in all_faces.faces] == list(range(6))
    largest = prepare_photo(t1, faces="largest")
    assert len(largest.faces) == 1
    np.testing.assert_array_equal(largest.faces[0].crop, all_faces.faces[0].crop)
    third = prepare_photo(t1, faces=2)
    assert third.faces[0].index == 2
    np.testing.assert_array_equal(third.faces[0].crop, all_faces.faces[2].crop)
    last = prepare_photo(t1, faces=-1)
    assert last.faces[0].index == 5
    with pytest.raises(NoFaceError, match=r"t1\.jpg: face index 6 out of range, 6 face"):
        prepare_photo(t1, faces=6)
    with pytest.raises(ValueError, match="faces must be"):
        prepare_photo(t1, faces="biggest")


def test_small_faces_are_reported_not_dropped_silently(t1):
    with pytest.raises(NoFaceError, match=r"no face found \(6 smaller than 500 px\)"):
        prepare_photo(t1, min_face=500)
    photo = prepare_photo(t1, min_face=500, no_face="whole-image")
    assert len(photo.too_small) == 6
    assert sum("below the 500 px minimum" in n for n in photo.notes) == 6


def test_no_face_policies(blank):
    with pytest.raises(NoFaceError, match=r"blank\.png: no face found"):
        prepare_photo(blank)
    whole = prepare_photo(blank, no_face="whole-image")
    (face,) = whole.faces
    assert face.origin == "whole-image" and face.index == -1
    assert face.crop.shape == (112, 112, 3)
    # The whole 300x200 photo maps into the crop: scale 112/300, centred.
    np.testing.assert_allclose(face.transform[0, 0], 112 / 300)
    np.testing.assert_allclose(face.transform @ [150, 100, 1], [56, 56])
    boxed = prepare_photo(blank, no_face=(10, 20, 50, 40))
    assert boxed.faces[0].origin == "user-box"
    np.testing.assert_allclose(boxed.faces[0].transform @ [35, 40, 1], [56, 56])
    # Landmarks of a fallback are the template mapped back into the photo.
    lm = boxed.faces[0].landmarks
    assert np.all((lm[:, 0] > 10) & (lm[:, 0] < 60) & (lm[:, 1] > 20) & (lm[:, 1] < 60))
    with pytest.raises(ValueError, match="no_face must be"):
        prepare_photo(blank, no_face="guess")


def test_box_transform_rejects_empty_box():
    with pytest.raises(ValueError, match="positive width"):
        box_transform((0, 0, 0, 10))


def test_stack_scatter_and_paste_round_trip(astronaut, t1):
    photos = [prepare_photo(astronaut), prepare_photo(t1)]
    crops, where = stack_crops(photos)
    assert crops.shape == (7, 112, 112, 3) and crops.dtype == np.float32
    assert crops.min() >= 0.0 and crops.max() <= 1.0
    assert where == [(0, 0)] + [(1, j) for j in range(6)]
    np.testing.assert_array_equal(crops[3] * 255, photos[1].faces[2].crop.astype(np.float32))
    per_photo = scatter_rows(np.arange(7), where, 2)
    assert per_photo == [[0], [1, 2, 3, 4, 5, 6]]
    zeros = [np.zeros((112, 112, 3), np.float32)] * 6
    np.testing.assert_array_equal(photos[1].paste(zeros), t1.rgb)
    with pytest.raises(ValueError, match="5 deltas for 6 faces"):
        photos[1].paste(zeros[:5])
    with pytest.raises(NoFaceError):
        stack_crops([])


def _sideways_portrait():
    """A package-built photo whose face YuNet misses once the photo is turned on its side."""
    from jaxcloak.faces import detect_faces
    from jaxcloak.faces.samples import synthetic_photos

    for _, rgb in synthetic_photos(40, seed=1, size=(200, 260), sources=("astronaut",)):
        turned = np.ascontiguousarray(np.rot90(rgb, 1))
        if detect_faces(rgb).faces and not detect_faces(turned).faces:
            return rgb, turned
    pytest.skip("no synthetic photo that YuNet misses sideways")


def test_sideways_portrait_is_found_and_aligned_as_upright(tmp_path):
    upright, turned = _sideways_portrait()
    path = _save(tmp_path / "sideways.png", turned)
    with pytest.raises(NoFaceError):
        prepare_photo(read_image(path), rotations="off")
    photo = prepare_photo(read_image(path))  # rotations="auto"
    ref = prepare_photo(read_image(_save(tmp_path / "up.png", upright))).faces[0]
    face = photo.faces[0]
    assert face.origin == "detected-rot270" and "turned 270 degrees" in photo.notes[-1]
    # The crop is the upright face: the turn is folded into the alignment.
    diff = np.abs(face.crop.astype(float) - ref.crop.astype(float)).mean()
    assert diff < 6, diff
    # Its landmarks are in the stored photo's coordinates (inside the turned image).
    h, w = turned.shape[:2]
    assert np.all((face.landmarks >= 0) & (face.landmarks < [w, h]))


def test_rotations_all_prefers_the_orientation_yunet_is_surest_of(astronaut, tmp_path):
    upright = prepare_photo(astronaut).faces[0]
    for k in (1, 2, 3):
        turned = read_image(_save(tmp_path / f"turned{k}.png", np.rot90(astronaut.rgb, k)))
        # YuNet fires on the turned face too, with landmarks in image order ...
        plain = prepare_photo(turned, rotations="off").faces[0]
        assert np.abs(plain.crop.astype(float) - upright.crop.astype(float)).mean() > 30
        # ... "all" looks at every orientation and keeps the most confident.
        best = prepare_photo(turned, rotations="all").faces[0]
        assert best.origin == f"detected-rot{90 * ((4 - k) % 4)}"
        assert np.abs(best.crop.astype(float) - upright.crop.astype(float)).mean() < 1


def test_a_user_box_outside_the_photo_is_not_protected(blank):
    with pytest.raises(NoFaceError, match="lies mostly outside"):
        prepare_photo(blank, no_face=(5000, 5000, 100, 100))
    photo = prepare_photo(blank, no_face=(10, 10, 50, 50))
    assert photo.faces[0].origin == "user-box"


def test_folder_scan_names_what_it_skips(tmp_path):
    import os

    from jaxcloak.pipelines.inputs import collect_inputs

    _save(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "b.gif").write_bytes(b"GIF89a")
    (tmp_path / "c.heic").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not a photo, not named")
    os.symlink(tmp_path / "gone.jpg", tmp_path / "link.jpg")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / ".hidden").mkdir()
    _save(tmp_path / ".hidden" / "h.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "out").mkdir()
    _save(tmp_path / "out" / "o.png", np.zeros((8, 8, 3), np.uint8))
    files, errors = collect_inputs([tmp_path], exclude=tmp_path / "out")
    assert [f.name for f in files] == ["a.png"]
    reasons = {p.name: msg for p, msg in errors}
    assert ".gif photos are not supported" in reasons["b.gif"]
    assert ".heic photos are not supported" in reasons["c.heic"]
    assert "broken symbolic link" in reasons["link.jpg"]
    assert "not a regular file" in reasons["pipe.png"]
    assert set(reasons) == {"b.gif", "c.heic", "link.jpg", "pipe.png"}
