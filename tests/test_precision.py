"""The precision policy: one setting reaches Flax ports and converted graphs alike."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcloak import precision
from jaxcloak.cli import args as cli_args
from jaxcloak.nets.layers import Conv2d, Linear


def _precisions(lowered_text: str) -> set[str]:
    return set(re.findall(r"#stablehlo<precision ([A-Z]+)>", lowered_text))


def _eqns(jaxpr):
    """Every equation of ``jaxpr``, nested ones (custom_vjp, pjit, scan bodies) included."""
    for e in jaxpr.eqns:
        yield e
        for v in e.params.values():
            for sub in v if isinstance(v, (tuple, list)) else (v,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _eqns(inner)


def test_names_and_resolution():
    assert cli_args.PRECISIONS == precision.NAMES
    for backend in ("cpu", "gpu", "tpu"):
        assert precision.resolve("auto", backend).name == "float32"
    assert precision.resolve(None, "cpu").name == "float32"
    assert precision.resolve("tf32").matmul == "tensorfloat32"
    with pytest.raises(ValueError, match=r"unknown precision 'fp8'.*bfloat16"):
        precision.get("fp8")
    assert precision.get("bfloat16").describe() == {
        "precision": "bfloat16",
        "matmul": "highest",
        "dtype": "bfloat16",
    }


@pytest.mark.parametrize(
    ("name", "expected"), [("float32", "HIGHEST"), ("tf32", "HIGH"), ("bfloat16", "HIGHEST")]
)
def test_policy_reaches_flax_layers(name, expected):
    """Conv2d and Linear name no precision: the policy's setting is what XLA is given (under
    bfloat16 too: float32 products outside the bf16 networks stay true FP32)."""
    conv = Conv2d(3, 4, 3, padding=1, rngs=nnx.Rngs(0))
    lin = Linear(4, 2, rngs=nnx.Rngs(0))
    x = jnp.ones((1, 8, 8, 3))
    with precision.scope(name):
        text = jax.jit(lambda x: lin(conv(x))).lower(x).as_text()
    assert _precisions(text) == {expected}


@pytest.fixture(scope="module")
def sface():
    from jaxcloak.faces.samples import astronaut_aligned
    from jaxcloak.zoo.registry import load

    rec = load("sface")
    x = np.asarray(astronaut_aligned()[None], np.float32) / 255.0
    return rec, x


def test_policy_reaches_converted_graph(sface):
    rec, x = sface
    for name, expected in (("float32", "HIGHEST"), ("tf32", "HIGH")):
        with precision.scope(name):
            text = jax.jit(rec.embed).lower(rec.params, x).as_text()
        assert _precisions(text) == {expected}, name


def test_each_policy_runs_and_float32_is_unchanged(sface):
    """float32 is what the session's parity tests check; tf32 equals it on a CPU (no TF32
    units); bfloat16 really runs in bf16 (convolutions on bf16 operands, not bit-equal) and
    barely moves the embedding."""
    rec, x = sface
    out = {}
    for name in ("float32", "tf32", "bfloat16"):
        policy = precision.get(name)
        embed = precision.wrap_network(rec.embed, policy)
        with precision.scope(policy):
            out[name] = np.asarray(jax.jit(embed)(rec.params, x))
            jaxpr = jax.make_jaxpr(embed)(rec.params, x)
        assert out[name].dtype == np.float32
        convs = [e for e in _eqns(jaxpr.jaxpr) if e.primitive.name == "conv_general_dilated"]
        dtypes = {str(e.invars[0].aval.dtype) for e in convs}
        assert dtypes == {"bfloat16" if name == "bfloat16" else "float32"}, name
    reference = np.asarray(jax.jit(rec.embed)(rec.params, x))  # the session's float32
    np.testing.assert_array_equal(out["float32"], reference)
    np.testing.assert_array_equal(out["tf32"], reference)
    cos = float(np.sum(reference * out["bfloat16"]) / np.linalg.norm(out["bfloat16"]))
    assert 0.99 < cos < 1.0
    assert precision.wrap_network(rec.embed, precision.get("float32")) is rec.embed


def test_cloaker_records_and_uses_its_policy(sface):
    from jaxcloak.faces.samples import astronaut_aligned
    from jaxcloak.methods.facecloak.anchors import builtin_pool
    from jaxcloak.methods.facecloak.cloaker import Cloaker
    from jaxcloak.methods.facecloak.config import CloakConfig
    from jaxcloak.methods.facecloak.views import make_view_generator

    rec, _ = sface
    face = astronaut_aligned()[None]
    masks = {}
    for name in ("float32", "bfloat16"):
        cloaker = Cloaker(
            rec,
            CloakConfig(steps=2),
            make_view_generator("augment", n_views=1),
            builtin_pool(),
            max_batch=1,
            precision=name,
        )
        assert cloaker.describe()["precision"] == precision.get(name).describe()
        (res,) = cloaker.fit(face, ["astronaut#0"])
        masks[name] = res.delta
    assert np.abs(masks["float32"]).max() > 0
    assert not np.array_equal(masks["float32"], masks["bfloat16"])  # bf16 really ran
    default = Cloaker(
        rec, CloakConfig(steps=2), make_view_generator("augment", n_views=1), builtin_pool()
    )
    assert default.precision.name == "float32"  # auto on this CPU


def test_wrap_network_casts_weights_and_input_only():
    """bfloat16: weights and the image run in bf16, later arguments (timesteps) keep their
    dtype, outputs come back float32; the float32 policy returns the function itself."""
    seen = {}

    def eps(params, x, t):
        seen.update(w=params["w"].dtype, x=x.dtype, t=t.dtype)
        return x * params["w"] + t[:, None, None, None].astype(x.dtype)

    low = precision.wrap_network(eps, precision.get("bfloat16"))
    out = low({"w": jnp.ones(3)}, jnp.ones((1, 2, 2, 3)), jnp.full((1,), 999.0))
    assert seen == {"w": jnp.bfloat16, "x": jnp.bfloat16, "t": jnp.float32}
    assert out.dtype == jnp.float32
    assert precision.wrap_network(eps, precision.get("tf32")) is eps


@pytest.mark.parametrize(
    ("platform", "dtype", "head", "expected"),
    [
        ("cpu", jnp.bfloat16, 64, "xla"),  # no fused kernel on CPUs
        ("cuda", jnp.bfloat16, 64, "cudnn"),
        ("cuda", jnp.float16, 128, "cudnn"),
        ("cuda", jnp.float32, 64, "xla"),  # cuDNN's flash kernel is half precision only
        ("cuda", jnp.bfloat16, 160, "xla"),  # SD-1.5's widest heads
        ("rocm", jnp.bfloat16, 64, "xla"),  # no cuDNN on AMD GPUs
    ],
)
def test_attention_implementation_by_platform(platform, dtype, head, expected):
    from jaxcloak.nets import sd_unet

    assert sd_unet.attention_implementation(dtype, head, platform) == expected
    assert sd_unet._platform() == "cpu"  # this test session


def test_score_network_runs_in_bfloat16_with_float32_timesteps():
    """MAP's score network under the bfloat16 policy: bf16 weights and images, float32
    timesteps (their sinusoids join the activations' dtype), float32 out, close to float32."""
    from jaxcloak.nets import ddpm_unet

    _, params = ddpm_unet.init("tiny", seed=0)
    eps = ddpm_unet.make_score(ddpm_unet.get_config("tiny"))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)
    t = jnp.asarray([999.0, 10.0])
    ref = np.asarray(jax.jit(eps)(params, x, t))
    with precision.scope("bfloat16"):
        low = np.asarray(
            jax.jit(precision.wrap_network(eps, precision.get("bfloat16")))(params, x, t)
        )
    assert low.dtype == np.float32 and not np.array_equal(low, ref)
    assert np.abs(low - ref).max() < 0.05 * np.abs(ref).max()
