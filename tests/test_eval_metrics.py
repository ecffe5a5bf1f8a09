"""Tests for jaxcloak.evaluate.metrics: hand-computed PSR cases, boundary rules, skimage parity."""

from __future__ import annotations

import doctest
import json

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from jaxcloak.evaluate import metrics
from jaxcloak.evaluate.metrics import (
    THRESHOLDS,
    Threshold,
    calibrate_threshold,
    calibration_report,
    identification_psr,
    is_same,
    l2,
    linf,
    mse,
    psnr,
    same_name_mask,
    ssim,
    ssim_int8_compat,
    verification_psr,
    verification_psr_at_far,
)


def test_docstring_examples() -> None:
    result = doctest.testmod(metrics)
    assert result.attempted >= 4
    assert result.failed == 0


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------


def test_sface_rule_counts_the_threshold_as_same() -> None:
    t = THRESHOLDS["sface"]["cosine"]
    assert (t.value, t.same_if) == (0.363, ">=")
    scores = [0.362999, 0.363, 0.4]
    np.testing.assert_array_equal(is_same(scores, t), [False, True, True])
    assert verification_psr(scores, t, mode="dodging") == pytest.approx(1 / 3)
    assert verification_psr(scores, t, mode="impersonation") == pytest.approx(2 / 3)
    # A bare number uses the same tie rule (score == threshold is "same").
    assert verification_psr(scores, 0.363) == pytest.approx(1 / 3)


def test_dlib_rule_counts_the_threshold_as_different() -> None:
    t = THRESHOLDS["dlib"]["l2"]
    assert (t.value, t.kind, t.same_if) == (0.6, "l2", "<")
    distances = [0.5999, 0.6, 0.61]
    np.testing.assert_array_equal(is_same(distances, t), [True, False, False])
    assert verification_psr(distances, t, mode="dodging") == pytest.approx(2 / 3)
    assert verification_psr(distances, 0.6, same_if="<") == pytest.approx(2 / 3)
    # A bare distance threshold defaults to "<=": 0.6 is then "same".
    assert verification_psr(distances, 0.6, higher_is_same=False) == pytest.approx(1 / 3)
    assert verification_psr(distances, t, higher_is_same=False, mode="impersonation") == (
        pytest.approx(1 / 3)
    )


def test_amt_gan_rule_is_strict() -> None:
    t = THRESHOLDS["irse50"][0.01]
    assert t.same_if == ">"
    assert verification_psr([t.value], t, mode="impersonation") == 0.0
    assert verification_psr([np.nextafter(t.value, 1.0)], t, mode="impersonation") == 1.0
    # An explicit same_if overrides the record's rule.
    assert verification_psr([t.value], t, mode="impersonation", same_if=">=") == 1.0


def test_verification_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="contradicts"):
        verification_psr([0.5], THRESHOLDS["dlib"]["l2"], higher_is_same=True)
    with pytest.raises(ValueError, match="contradicts"):
        verification_psr([0.5], 0.3, higher_is_same=True, same_if="<")
    with pytest.raises(ValueError, match="mode"):
        verification_psr([0.5], 0.3, mode="evasion")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-finite"):
        verification_psr([0.5, np.nan], 0.3)
    with pytest.raises(ValueError, match="empty"):
        verification_psr([], 0.3)


def test_verification_psr_at_far_uses_each_threshold() -> None:
    # irse50 thresholds: 0.144840, 0.241045, 0.312703 (strictly exceeded to count).
    scores = np.array([0.15, 0.25, 0.32, 0.1], np.float32)
    out = verification_psr_at_far(scores, "irse50")
    assert list(out) == [0.1, 0.01, 0.001]
    assert out == pytest.approx({0.1: 0.75, 0.01: 0.5, 0.001: 0.25})
    dodge = verification_psr_at_far(scores, "irse50", mode="dodging", fars=[0.01])
    assert dodge == pytest.approx({0.01: 0.5})
    with pytest.raises(KeyError):
        verification_psr_at_far(scores, "irse50", fars=[0.05])
    with pytest.raises(KeyError):
        verification_psr_at_far(scores, "arcface")
    with pytest.raises(ValueError, match="no FAR"):
        verification_psr_at_far(scores, "sface")


def test_threshold_table_is_consistent() -> None:
    for model in ("ir152", "irse50", "facenet", "mobile_face"):
        row = THRESHOLDS[model]
        values = [row[far].value for far in (0.1, 0.01, 0.001)]
        assert values == sorted(values)  # a lower FAR needs a stricter threshold
        assert all(t.kind == "cosine" and t.same_if == ">" for t in row.values())
    for row in THRESHOLDS.values():
        for t in row.values():
            assert isinstance(t, Threshold) and t.source
            assert (t.kind == "cosine") == (t.same_if in (">=", ">"))


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------


def test_calibrate_threshold_is_the_lowest_with_far_at_most_target() -> None:
    impostors = np.arange(1000) / 1000  # 0.000 .. 0.999
    t_strict = calibrate_threshold([0.99], impostors, 0.01, same_if=">")
    assert t_strict == 0.989  # 10 impostors (0.990 .. 0.999) exceed it
    assert np.mean(impostors > t_strict) == 0.01
    assert np.mean(impostors > np.nextafter(t_strict, -1.0)) > 0.01
    t = calibrate_threshold([0.99], impostors, 0.01)  # ">=" by default
    assert np.mean(impostors >= t) == 0.01
    assert np.mean(impostors >= np.nextafter(t, -1.0)) > 0.01
    # Round trip through verification_psr with its default rule: impostors accepted <= far.
    assert verification_psr(impostors, t, mode="impersonation") <= 0.01


def test_calibrate_threshold_far_rounding_and_ties() -> None:
    # 0.29 * 100 is 28.999999999999996 in binary: 29 false accepts must still be allowed.
    impostors = np.arange(100) / 100
    assert calibrate_threshold([1.0], impostors, 0.29, same_if=">") == 0.70
    tied = np.array([0.9] * 5 + [0.1] * 5)
    t = calibrate_threshold([1.0], tied, 0.1, same_if=">")
    assert t == 0.9 and np.mean(tied > t) == 0.0  # ties can only lower the achieved FAR


def test_calibrate_threshold_needs_enough_impostors() -> None:
    with pytest.raises(ValueError, match="at least 100 impostor"):
        calibrate_threshold([0.9], np.linspace(0, 1, 99), 0.01)
    calibrate_threshold([0.9], np.linspace(0, 1, 100), 0.01)
    with pytest.raises(ValueError, match="at least 1000 impostor"):
        calibrate_threshold([0.9], np.linspace(0, 1, 999), 0.001)
    with pytest.raises(ValueError, match="far"):
        calibrate_threshold([0.9], np.linspace(0, 1, 100), 1.5)
    with pytest.raises(ValueError, match="same_if"):
        calibrate_threshold([0.9], np.linspace(0, 1, 100), 0.1, same_if="<")  # type: ignore[arg-type]


def test_calibration_report() -> None:
    impostors = np.arange(1000) / 1000
    genuine = [0.995, 0.5, 0.99, 0.9895]
    report = calibration_report(genuine, impostors, fars=(0.1, 0.01))
    assert report[0.01]["far"] == 0.01
    assert report[0.01]["tar"] == 0.75  # 0.5 is below t = next float above 0.989
    assert report[0.1]["tar"] == 0.75
    assert report[0.1]["far"] == pytest.approx(0.1)
    assert report[0.1]["n_impostor"] == 1000 and report[0.1]["n_genuine"] == 4


# --------------------------------------------------------------------------------------------
# Identification
# --------------------------------------------------------------------------------------------

_GALLERY = ["a", "a", "b", "c", "d"]


def test_identification_hand_computed() -> None:
    sim = np.array(
        [
            # probe "a": genuine 0.9 (rank 1) and 0.5 (two impostors above: rank 3)
            [0.9, 0.5, 0.7, 0.6, 0.1],
            # probe "b": genuine 0.8 tied with impostor 0.8 -> counted as found at rank 1
            [0.3, 0.8, 0.8, 0.2, 0.1],
            # probe "e": no genuine in the gallery -> left out and counted
            [0.5, 0.5, 0.5, 0.5, 0.5],
            # probe "a": its own file (column 1) excluded; genuine 0.4 has impostor 0.5 above
            [0.4, 0.95, 0.5, 0.3, 0.2],
        ]
    )
    exclude = np.zeros_like(sim, dtype=bool)
    exclude[3, 1] = True
    out = identification_psr(sim, ["a", "b", "e", "a"], _GALLERY, ranks=(1, 2, 3), exclude=exclude)
    # scores: rank 1 (0.5, 1, 0), rank 2 (0.5, 1, 1), rank 3 (1, 1, 1)
    assert out[1] == pytest.approx(0.5)
    assert out[2] == pytest.approx(1 - 2.5 / 3)
    assert out[3] == pytest.approx(0.0)
    assert out["n_probes_without_genuine"] == 1
    assert out["n_probes_scored"] == 3
    # Without the exclusion, probe 3's own file is a genuine hit at rank 1: score 0.5.
    plain = identification_psr(sim, ["a", "b", "e", "a"], _GALLERY, ranks=(1,))
    assert plain[1] == pytest.approx(1 - 2.0 / 3)


def test_identification_excluded_impostor_does_not_count() -> None:
    # Genuine items 0.4 and 0.1 both sit below impostor 0.5: a miss at rank 1.
    sim = np.array([[0.4, 0.1, 0.5, 0.3, 0.2]])
    assert identification_psr(sim, ["a"], _GALLERY, ranks=(1,))[1] == 1.0
    # Excluding impostor 0.5 lifts 0.4 to rank 1; 0.1 stays behind 0.3 and 0.2.
    exclude = np.array([[False, False, True, False, False]])
    assert identification_psr(sim, ["a"], _GALLERY, ranks=(1,), exclude=exclude)[1] == 0.5
    exclude[0, 1] = True  # and with the genuine 0.1 skipped too, the person is found
    assert identification_psr(sim, ["a"], _GALLERY, ranks=(1,), exclude=exclude)[1] == 0.0


def test_identification_ids_may_be_ints() -> None:
    sim = np.array([[0.2, 0.9, 0.1], [0.3, 0.2, 0.25]])
    out = identification_psr(sim, [7, 3], [7, 1, 3], ranks=(1,))
    # probe 7: genuine 0.2 below impostor 0.9 (miss); probe 3: genuine 0.25 below 0.3 (miss)
    assert out[1] == 1.0


def _brute_force(sim, pid, gid, exclude, ranks):
    psr, scored = {}, 0
    for n in ranks:
        scores = []
        for p in range(sim.shape[0]):
            gen = [g for g in range(sim.shape[1]) if gid[g] == pid[p] and not exclude[p, g]]
            imp = [h for h in range(sim.shape[1]) if gid[h] != pid[p] and not exclude[p, h]]
            if not gen:
                continue
            hits = [sum(sim[p, h] > sim[p, g] for h in imp) <= n - 1 for g in gen]
            scores.append(np.mean(hits))
        psr[n], scored = 1 - np.mean(scores), len(scores)
    return psr, scored


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_identification_matches_brute_force_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_probe, n_gallery = 7, 15
    pid = rng.integers(0, 5, n_probe)
    gid = rng.integers(0, 4, n_gallery)  # label 4 never in the gallery: probes without genuine
    sim = np.round(rng.uniform(-1, 1, (n_probe, n_gallery)), 1)  # one decimal: many ties
    exclude = rng.uniform(size=sim.shape) < 0.2
    ranks = (1, 2, 5)
    expected, scored = _brute_force(sim, pid, gid, exclude, ranks)
    out = identification_psr(sim, pid, gid, ranks=ranks, exclude=exclude)
    for n in ranks:
        assert out[n] == pytest.approx(expected[n], abs=1e-6)
    assert out["n_probes_scored"] == scored
    assert out["n_probes_without_genuine"] == n_probe - scored


def test_identification_rejects_bad_input() -> None:
    sim = np.array([[0.5, 0.4]])
    with pytest.raises(ValueError, match="no probe"):
        identification_psr(sim, ["x"], ["a", "b"])
    with pytest.raises(ValueError, match="non-finite"):
        identification_psr(np.array([[np.nan, 0.4]]), ["a"], ["a", "b"])
    with pytest.raises(ValueError, match="ids"):
        identification_psr(sim, ["a"], ["a", "b", "c"])
    with pytest.raises(ValueError, match="ranks"):
        identification_psr(sim, ["a"], ["a", "b"], ranks=(0,))
    with pytest.raises(ValueError, match="exclude"):
        identification_psr(sim, ["a"], ["a", "b"], exclude=np.zeros((1, 2), int))


def test_same_name_mask() -> None:
    mask = same_name_mask(["probe/x_1.jpg", "probe/y_2.jpg"], ["gal/x_1.jpg", "x_2.jpg", "y_2.jpg"])
    np.testing.assert_array_equal(mask, [[True, False, False], [False, False, True]])


# --------------------------------------------------------------------------------------------
# Image quality
# --------------------------------------------------------------------------------------------


def _pair(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    b = np.clip(a.astype(np.int64) + rng.integers(-24, 25, shape), 0, 255).astype(np.uint8)
    return a, b


def _skimage_ssim(a, b, **kw):
    return structural_similarity(
        a, b, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, **kw
    )


@pytest.mark.parametrize("shape", [(11, 11, 3), (17, 29, 3), (64, 48, 3), (112, 112, 3)])
def test_ssim_and_psnr_match_skimage(shape: tuple[int, ...]) -> None:
    a, b = _pair(np.random.default_rng(sum(shape)), shape)
    assert abs(ssim(a, b) - _skimage_ssim(a, b, channel_axis=-1)) < 1e-10
    assert abs(psnr(a, b) - peak_signal_noise_ratio(a, b, data_range=255)) < 1e-10


def test_ssim_channel_layouts_and_float_input() -> None:
    rng = np.random.default_rng(7)
    a, b = _pair(rng, (3, 20, 24))
    assert abs(ssim(a, b, channel_axis=0) - _skimage_ssim(a, b, channel_axis=0)) < 1e-10
    g1, g2 = a[0], b[0]
    assert abs(ssim(g1, g2, channel_axis=None) - _skimage_ssim(g1, g2)) < 1e-10
    f1 = rng.uniform(0, 255, (20, 24, 3))
    f2 = np.clip(f1 + rng.normal(0, 5, f1.shape), 0, 255)
    assert abs(ssim(f1, f2) - _skimage_ssim(f1, f2, channel_axis=-1)) < 1e-10
    assert ssim(a, a, channel_axis=0) == pytest.approx(1.0)


def test_ssim_region_mask() -> None:
    a, b = _pair(np.random.default_rng(3), (32, 40, 3))
    full = ssim(a, b)
    assert ssim(a, b, mask=np.ones((32, 40), bool)) == pytest.approx(full, abs=1e-12)
    region = np.zeros((32, 40), bool)
    region[8:20, 10:30] = True
    _, smap = _skimage_ssim(a, b, channel_axis=-1, full=True)
    expected = smap.mean(axis=-1)[region].mean()  # region lies inside the 5-pixel border
    assert ssim(a, b, mask=region) == pytest.approx(expected, abs=1e-10)
    border = np.zeros((32, 40), bool)
    border[:5] = True
    with pytest.raises(ValueError, match="border"):
        ssim(a, b, mask=border)
    with pytest.raises(ValueError, match="mask"):
        ssim(a, b, mask=np.ones((32, 41), bool))


def test_ssim_refuses_int8_and_small_images() -> None:
    a = np.zeros((16, 16, 3), np.int8)
    with pytest.raises(TypeError, match="int8"):
        ssim(a, a)
    with pytest.raises(ValueError, match="11x11"):
        ssim(np.zeros((10, 16, 3)), np.zeros((10, 16, 3)))


def test_ssim_int8_compat_reproduces_the_reference_bug() -> None:
    rng = np.random.default_rng(11)
    a, b = _pair(rng, (24, 24, 3))
    reference = structural_similarity(
        a.astype(np.int8), b.astype(np.int8), data_range=255, channel_axis=2
    )
    assert ssim_int8_compat(a, b) == reference
    assert ssim_int8_compat(a.astype(np.float64), b.astype(np.float32)) == reference
    # Bright pixels wrap to negative values, so the compat value is not the real SSIM.
    assert abs(ssim_int8_compat(a, b) - ssim(a, b)) > 0.01
    with pytest.raises(ValueError, match="integral"):
        ssim_int8_compat(a + 0.5, b)


def test_norms_and_mse_in_grey_levels() -> None:
    a = np.zeros((2, 2, 3), np.uint8)
    b = a.copy()
    b[0, 0, 1] = 3
    b[1, 1, 2] = 255  # uint8 subtraction would wrap 0 - 255 to 1
    assert linf(a, b) == 255.0
    assert l2(a, b) == pytest.approx(np.sqrt(9 + 255**2))
    assert mse(a, b) == pytest.approx((9 + 255**2) / 12)
    region = np.array([[True, False], [False, False]])
    assert linf(a, b, mask=region) == 3.0
    assert l2(a, b, mask=region) == 3.0
    assert mse(a, b, mask=region) == pytest.approx(3.0)  # 9 over the 3 channels of one pixel
    assert psnr(a, b, mask=region) == pytest.approx(10 * np.log10(255**2 / 3.0))
    assert psnr(a, a) == np.inf
    with pytest.raises(ValueError, match="shape"):
        linf(a, b[:1])


def test_pair_files_never_guesses_between_same_stem_photos(tmp_path):
    from jaxcloak.evaluate.run import pair_files

    clean, prot = tmp_path / "clean", tmp_path / "prot"
    for d, names in (
        (clean, ["a.jpg", "a.png", "b.jpg", "c/d.jpg", "lone.jpg"]),
        (prot, ["a.jpg", "a.png", "b.png", "c/d.jpg", "masks/x.png"]),
    ):
        for n in names:
            (d / n).parent.mkdir(parents=True, exist_ok=True)
            (d / n).write_bytes(b"x")
    pairs, problems = pair_files(clean, prot)
    got = {str(c.relative_to(clean)): str(p.relative_to(prot)) for c, p in pairs}
    assert got == {"a.jpg": "a.jpg", "a.png": "a.png", "b.jpg": "b.png", "c/d.jpg": "c/d.jpg"}
    assert len(problems) == 1 and "lone.jpg: no protected counterpart" in problems[0]
    # Only one protected 'a' left: which clean photo it came from cannot be told by name.
    (prot / "a.jpg").unlink()
    pairs, problems = pair_files(clean, prot)
    assert any("a.jpg: ambiguous name" in p for p in problems)
    assert (clean / "a.png", prot / "a.png") in pairs  # the same path is no guess
    assert all(c.name != "a.jpg" for c, _ in pairs)
    # The manifest says which input became which output, whatever the names.
    (prot / "manifest.json").write_text(
        json.dumps({"photos": [{"input": str(clean / "a.jpg"), "output": str(prot / "a.png")}]})
    )
    pairs, problems = pair_files(clean, prot)
    assert (clean / "a.jpg", prot / "a.png") in pairs
    assert all(c.name != "a.png" for c, _ in pairs)  # its namesake output is taken
    assert any("a.png: ambiguous name" in p for p in problems)
