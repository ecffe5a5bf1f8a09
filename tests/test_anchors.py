"""Anchor pools and FaceCloak's anchor selection (docs/facecloak.md, "Anchors").

Real faces only, read at run time from installed packages: insightface's ``t1.jpg`` (6 different
people) and Tom Hanks crop when insightface is installed (tests skip with the reason otherwise),
scikit-image's astronaut and LFW faces. Same-person decisions use SFace's cosine threshold.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import skimage.data

from jaxcloak.faces import detect_faces
from jaxcloak.faces.samples import astronaut_aligned
from jaxcloak.io.images import read_image, write_image
from jaxcloak.methods.facecloak import anchors as A
from jaxcloak.methods.facecloak.anchors import (
    AnchorPool,
    anchor_embeddings,
    builtin_pool,
    select_anchors,
    user_pool,
)
from jaxcloak.zoo import load
from jaxcloak.zoo.embed import embed_faces

needs_insightface = pytest.mark.skipif(
    A._insightface_images() is None,
    reason="insightface not installed (pip install --no-deps insightface): no t1.jpg faces",
)


@pytest.fixture(scope="module")
def sface():
    return load("sface")


@pytest.fixture(scope="module")
def pool() -> AnchorPool:
    if A._insightface_images() is None:
        pytest.skip("insightface not installed: the built-in pool is LFW only")
    return builtin_pool()


@pytest.fixture(scope="module")
def pool_emb(pool, sface) -> np.ndarray:
    return pool.embeddings(sface)


@pytest.fixture(scope="module")
def astro() -> tuple[np.ndarray, np.ndarray]:
    """The astronaut's aligned face and its SFace embedding, plus its mirror's embedding."""
    face = astronaut_aligned()
    return face, embed_faces(load("sface"), np.stack([face, face[:, ::-1]]))


@needs_insightface
def test_builtin_pool_has_seven_distinct_people_and_identity_keeping_variants(
    pool, pool_emb, sface
):
    thr = sface.spec.threshold
    assert pool.faces.shape == (28, 112, 112, 3) and pool.faces.dtype == np.uint8
    assert len(pool.identities) >= 7 and not any(i.startswith("lfw:") for i in pool.ids)
    assert len(set(pool.names)) == len(pool) and "builtin:t1#3~flip" in pool.names
    originals = [i for i, n in enumerate(pool.names) if "~" not in n]
    t1 = [i for i in originals if pool.names[i].startswith("builtin:t1#")]
    assert len(t1) == 6
    sim = pool_emb[t1] @ pool_emb[t1].T
    off = sim[~np.eye(6, dtype=bool)]
    assert off.max() < thr, f"two t1.jpg people look alike to SFace: max cos {off.max():.3f}"
    # Each variant still is the same person as its original, and carries its label.
    for i in originals:
        variants = [j for j, n in enumerate(pool.names) if n.startswith(pool.names[i] + "~")]
        assert len(variants) == 3
        for j in variants:
            assert pool.ids[j] == pool.ids[i]
            assert pool_emb[i] @ pool_emb[j] >= thr, (pool.names[j], pool_emb[i] @ pool_emb[j])


@needs_insightface
def test_builtin_pool_is_deterministic(pool):
    again = A._builtin_pool_cached.__wrapped__(str(A._insightface_images()), False)
    assert again.names == pool.names and again.ids == pool.ids
    assert again.content_sha256 == pool.content_sha256


def test_builtin_pool_falls_back_to_lfw_with_a_warning(monkeypatch):
    monkeypatch.setattr(A, "_insightface_images", lambda: None)
    with pytest.warns(UserWarning, match="weak"):
        lfw = builtin_pool()
    assert len(lfw) == 400 and len(lfw.identities) == 100
    assert all(i.startswith("lfw:") for i in lfw.ids)
    assert "WEAK" in lfw.source


@needs_insightface
def test_astronaut_anchors_are_other_people_ordered_by_similarity(pool, pool_emb, astro, sface):
    _, e = astro
    a = select_anchors(
        e[0], pool_emb, pool.ids, user_id="astronaut", same_person_threshold=sface.spec.threshold
    )
    cos = pool_emb @ e[0]
    assert 0 <= a.similar_index < len(pool) and 0 <= a.distant_index < len(pool)
    assert a.similar_cos > a.distant_cos
    assert a.similar_cos == pytest.approx(cos.max(), abs=1e-6)
    assert a.distant_cos == pytest.approx(cos[a.distant_index], abs=1e-6)
    assert pool.ids[a.similar_index] != "astronaut"
    assert pool.ids[a.similar_index] != pool.ids[a.distant_index]
    assert a.excluded == 0 and a.distant_source == "pool"


@needs_insightface
def test_fixed_rule_excludes_the_user_and_look_alikes_faithful_rule_does_not(
    pool, pool_emb, astro, sface
):
    _, e = astro
    thr = sface.spec.threshold
    assert e[0] @ e[1] >= thr  # the mirror is the same person to SFace: a look-alike
    # The user's own photo (labelled) and its mirror under another label join the pool.
    emb = np.vstack([pool_emb, e[0], e[1]])
    ids = (*pool.ids, "astronaut", "mystery")
    own = {len(pool), len(pool) + 1}

    for uid in ("astronaut", None):  # excluded by label and/or by the threshold
        a = select_anchors(e[0], emb, ids, user_id=uid, same_person_threshold=thr)
        assert a.similar_index not in own and a.distant_index not in own
        assert a.excluded == 2 and a.similar_cos < thr
    # Only the threshold kept them out: without it the identical face wins.
    a = select_anchors(e[0], emb, ids, same_person_threshold=1.5)
    assert a.similar_index == len(pool)

    far = pool_emb[0]
    f = select_anchors(
        e[0], emb, ids, rule="faithful", same_person_threshold=thr, far_anchor_emb=far
    )
    assert f.similar_index == len(pool) and f.similar_cos == pytest.approx(1.0, abs=1e-5)
    assert f.distant_index is None and f.distant_source == "far_anchor" and f.excluded == 0
    assert f.distant_cos == pytest.approx(float(far @ e[0]), abs=1e-5)


def test_faithful_rule_needs_a_far_anchor_and_unknown_rules_fail():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(5, 8))
    ids = ["a", "b", "c", "d", "e"]
    for rule in ("faithful", "constant"):
        with pytest.raises(ValueError, match="CelebA"):
            select_anchors(g[0], g, ids, rule=rule, same_person_threshold=0.4)
    with pytest.raises(ValueError, match="unknown anchor rule"):
        select_anchors(g[0], g, ids, rule="closest", same_person_threshold=0.4)


def test_fewer_than_two_identities_left_raises():
    rng = np.random.default_rng(1)
    g = rng.normal(size=(4, 8))
    user = g[0]
    # Two faces of the user, two of one other person: one identity is left after exclusion.
    with pytest.raises(ValueError, match="at least 2 other identities"):
        select_anchors(user, g, ["me", "me", "x", "x"], user_id="me", same_person_threshold=2.0)
    a = select_anchors(user, g, ["me", "me", "x", "y"], user_id="me", same_person_threshold=2.0)
    assert {a.similar_index, a.distant_index} == {2, 3}


@needs_insightface
def test_anchor_embeddings_returns_anchor_rows_and_a_json_record(pool, pool_emb, astro, sface):
    face, _ = astro
    e_sim, e_dist, info = anchor_embeddings(sface, face, pool, user_id="astronaut")
    json.dumps(info, allow_nan=False)
    s, d = info["similar"], info["distant"]
    assert s["name"] == pool.names[s["index"]] and s["id"] == pool.ids[s["index"]]
    assert d["name"] == pool.names[d["index"]] and d["source"] == "pool"
    np.testing.assert_allclose(e_sim, pool_emb[s["index"]], atol=1e-6)
    np.testing.assert_allclose(e_dist, pool_emb[d["index"]], atol=1e-6)
    assert info["pool"]["size"] == len(pool) and info["rule"] == "gallery_filtered"
    assert info["model_sha256"] == sface.sha256 and s["cos"] > d["cos"]

    with pytest.raises(ValueError, match="CelebA"):
        anchor_embeddings(sface, face, pool, rule="faithful")
    _, e_far, info = anchor_embeddings(
        sface, face, pool, rule="faithful", far_anchor_face=pool.faces[5], far_anchor_name="g-"
    )
    assert info["distant"] == {
        "name": "g-",
        "id": "g-",
        "index": None,
        "cos": pytest.approx(float(pool_emb[5] @ astro[1][0]), abs=1e-4),
        "source": "far_anchor",
    }
    assert e_far @ pool_emb[5] > 0.9999


@needs_insightface
def test_user_pool_labels_faces_and_reports_bad_files(tmp_path, sface):
    t1 = read_image(A._insightface_images() / "t1.jpg").rgb
    people = sorted(detect_faces(t1), key=lambda f: f.box[0])[:2]
    gallery = tmp_path / "gallery"
    for k, face in enumerate(people):
        x, y, w, h = (int(v) for v in face.box)
        crop = np.ascontiguousarray(t1[max(0, y - h) : y + 2 * h, max(0, x - w) : x + 2 * w])
        (gallery / f"p{k}").mkdir(parents=True)
        write_image(gallery / f"p{k}" / "a.jpg", crop)
        write_image(gallery / f"p{k}" / "b.png", np.ascontiguousarray(crop[:, ::-1]))
    (gallery / "astro").mkdir()
    write_image(gallery / "astro" / "nasa.png", skimage.data.astronaut())
    (gallery / "p1" / "bad.jpg").write_text("this is not an image")
    (gallery / "p1" / "empty.jpg").write_bytes(b"")
    write_image(gallery / "p1" / "blank.png", np.full((200, 200, 3), 128, np.uint8))
    (gallery / "notes.txt").write_text("hello")
    (gallery / ".DS_Store").write_bytes(b"\0")

    up = user_pool(gallery)
    assert up.ids == ("astro", "p0", "p0", "p1", "p1")
    assert up.names[:2] == ("user:astro/nasa.png#0", "user:p0/a.jpg#0")
    reasons = {p.split("/")[-1]: r for p, r in up.skipped}
    assert set(reasons) == {"bad.jpg", "empty.jpg", "blank.png", "notes.txt"}
    assert "not a recognised image" in reasons["bad.jpg"] and "empty" in reasons["empty.jpg"]
    assert reasons["blank.png"] == "no face found" and "suffix" in reasons["notes.txt"]
    # The crops are real aligned faces: each person's two photos match, the people do not.
    e = up.embeddings(sface)
    sim = e @ e.T
    thr = sface.spec.threshold
    assert sim[1, 2] >= thr and sim[3, 4] >= thr and sim[1, 3] < thr and sim[0, 1] < thr


def test_user_pool_flat_folder_naming_and_empty_folder(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    astro = skimage.data.astronaut()
    write_image(flat / "eileen_collins_1.png", astro)
    write_image(flat / "eileen_2.jpg", np.ascontiguousarray(astro[:, ::-1]))
    write_image(flat / "nobody.png", np.zeros((64, 64, 3), np.uint8))
    up = user_pool(flat)
    assert up.ids == ("eileen", "eileen") and up.skipped[0][1] == "no face found"
    assert up.names == ("user:eileen_2.jpg#0", "user:eileen_collins_1.png#0")  # sorted

    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match="no usable face"):
        user_pool(tmp_path / "none")
    with pytest.raises(NotADirectoryError):
        user_pool(tmp_path / "missing")


def test_pool_embeddings_are_cached_per_model_and_content(sface):
    face = astronaut_aligned()
    small = AnchorPool(
        faces=np.stack([face, face[:, ::-1], face[::-1]]),
        ids=("a", "a", "b"),
        names=("x", "x~flip", "x~upside"),
        source="test",
    )
    from jaxcloak.paths import home

    def counting(calls: list):
        def embed(params, x):
            calls.append(x.shape)  # runs when traced: a fresh function is traced on first use
            return sface.embed(params, x)

        return dataclasses.replace(sface, embed=embed)

    before = set((home() / "anchors").glob("*.npz"))
    first: list = []
    e1 = small.embeddings(counting(first))
    new = set((home() / "anchors").glob("*.npz")) - before
    assert first and len(new) == 1
    second: list = []
    np.testing.assert_array_equal(small.embeddings(counting(second)), e1)
    assert second == []
    # Another model file (its hash) is another entry; a corrupt entry is recomputed.
    other: list = []
    small.embeddings(dataclasses.replace(counting(other), sha256="0" * 64))
    assert other
    new.pop().write_bytes(b"garbage")
    again: list = []
    np.testing.assert_allclose(small.embeddings(counting(again)), e1, atol=1e-6)
    assert again
