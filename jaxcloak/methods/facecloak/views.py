"""FaceCloak stage 1: turn one aligned face into a small set of varied views of the same person.

The reference (docs/facecloak.md, "Stage 1: views of the person") draws 8 Arc2Face samples
from the face's identity embedding and appends the real image last; stage 2 then optimises one
mask against all 9. This module fixes that contract as :class:`ViewGenerator` and provides a
fast, deterministic, JAX-native backend, :class:`AugmentViews`, built from
:mod:`jaxcloak.faces.augment`, and the published generative one,
:class:`.arc2face.Arc2FaceViews`. A generator whose weights are large exposes them as
``params`` (a pytree, or None): stage 2 then passes them as an argument of its compiled
program (``gen(face, key=key, params=params)``) rather than baking them in as constants.

>>> import jax, jax.numpy as jnp
>>> gen = make_view_generator("augment", n_views=8)
>>> gen(jnp.full((112, 112, 3), 0.5, jnp.float32), key=jax.random.key(0)).shape
(9, 112, 112, 3)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from ...faces import augment as aug
from ...typing import Image, PRNGKey


@runtime_checkable
class ViewGenerator(Protocol):
    """``gen(face, key=key) -> (V, H, W, 3)`` views of one aligned face, the face itself last.

    Attributes:
      name: registry key of the backend.
    """

    name: str

    def config(self) -> dict[str, Any]:
        """Everything that determines the views besides the face and key, JSON-able."""
        ...

    def __call__(self, face: Image, *, key: PRNGKey) -> jax.Array:
        """Views of ``face`` ((H, W, 3) float32 RGB in [0, 1], aligned).

        Returns:
          (n_views + 1, H, W, 3) float32 in [0, 1]; the last entry is ``face`` unchanged, as
          the reference appends the real image after its synthetic ones.
        """
        ...


@dataclasses.dataclass(frozen=True)
class AugmentRanges:
    """Ranges of the random transforms in :class:`AugmentViews`; each draw is uniform.

    Attributes:
      rotate_deg, scale, shift, perspective: pose, as :func:`jaxcloak.faces.augment.random_pose`.
      brightness: added offset in [-b, b].
      contrast, saturation: factors in [1 - c, 1 + c].
      gamma: exponent exp(u), u in [-g, g].
      gain: per-channel gain in [1 - g, 1 + g] (white balance, coloured light).
      light: directional-light strength in [0, l], at a uniform angle.
      blur_sigma: Gaussian blur sigma range (taken with probability 1/2).
      sharpen_amount: unsharp-mask amount range (taken otherwise, at sigma 1).
      jpeg_quality: libjpeg quality range; every view is compressed.
      occlude_frac: largest side fraction of the occluding patch.
      resize_scale, p_resize: a down-and-up resize at this scale with this probability.
      yaw_deg, pitch_deg: a turn of the head in [-max, max] degrees, through a mean face's
        depth and re-aligned (:func:`jaxcloak.faces.augment.head_turn`); 0 skips it.
      warp_px: largest displacement of a smooth expression-like local warp; 0 skips it.
    """

    rotate_deg: float
    scale: float
    shift: float
    perspective: float
    brightness: float
    contrast: float
    saturation: float
    gamma: float
    gain: float
    light: float
    blur_sigma: tuple[float, float]
    sharpen_amount: tuple[float, float]
    jpeg_quality: tuple[float, float]
    occlude_frac: float
    resize_scale: float
    p_resize: float
    yaw_deg: float = 0.0
    pitch_deg: float = 0.0
    warp_px: float = 0.0


# Modest on purpose: every view must stay the same person to a recogniser (the real-face test
# in tests/test_views.py checks SFace cosine to the original for "mid").
STRENGTHS: dict[str, AugmentRanges] = {
    "low": AugmentRanges(
        rotate_deg=5.0,
        scale=0.05,
        shift=2.0,
        perspective=0.01,
        brightness=0.08,
        contrast=0.1,
        saturation=0.1,
        gamma=0.1,
        gain=0.05,
        light=0.1,
        blur_sigma=(0.3, 0.8),
        sharpen_amount=(0.2, 0.6),
        jpeg_quality=(70.0, 95.0),
        occlude_frac=0.2,
        resize_scale=0.75,
        p_resize=0.2,
    ),
    "mid": AugmentRanges(
        rotate_deg=10.0,
        scale=0.1,
        shift=4.0,
        perspective=0.02,
        brightness=0.15,
        contrast=0.2,
        saturation=0.2,
        gamma=0.2,
        gain=0.08,
        light=0.2,
        blur_sigma=(0.4, 1.2),
        sharpen_amount=(0.3, 1.0),
        jpeg_quality=(50.0, 95.0),
        occlude_frac=0.3,
        resize_scale=0.6,
        p_resize=0.3,
    ),
    "high": AugmentRanges(
        rotate_deg=15.0,
        scale=0.15,
        shift=6.0,
        perspective=0.04,
        brightness=0.2,
        contrast=0.3,
        saturation=0.3,
        gamma=0.3,
        gain=0.12,
        light=0.3,
        blur_sigma=(0.5, 1.3),
        sharpen_amount=(0.5, 1.5),
        jpeg_quality=(30.0, 90.0),
        occlude_frac=0.35,
        resize_scale=0.5,
        p_resize=0.4,
    ),
}
# Identity-level variation: "mid" plus turns of the head and expression-like local warps, the
# geometry another photo of the person has and pixel jitter does not.
STRENGTHS["pose"] = dataclasses.replace(STRENGTHS["mid"], yaw_deg=25.0, pitch_deg=10.0, warp_px=2.0)


@dataclasses.dataclass(frozen=True)
class AugmentViews:
    """Varied views by random composition of differentiable image transforms.

    Each view draws, from its own key: an occluding patch (probability ``p_occlude``), a
    mirror (``p_flip``, via :func:`jaxcloak.faces.augment.hflip_aligned`'s matrix) composed with a
    random pose into a single resampling, colour and illumination (gamma, brightness,
    contrast, saturation, channel gain, directional light), blur or sharpen, an optional
    down-and-up resize, then JPEG at a random quality. Options are blended with ``jnp.where``
    so shapes stay static; the generator is jitted once per configuration and shape, and
    ``jax.jit(gen)`` or ``jax.vmap`` over faces and keys works too.

    Attributes:
      n_views: synthetic views; the output has ``n_views + 1`` images, the face last.
      strength: "low", "mid" or "high", a row of :data:`STRENGTHS`.
      p_flip: probability of mirroring a view.
      p_occlude: probability of an occluding patch.
    """

    n_views: int = 8
    strength: str = "mid"
    p_flip: float = 0.5
    p_occlude: float = 0.3
    name: str = dataclasses.field(default="augment", init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.n_views, int) or self.n_views < 1:
            raise ValueError(f"n_views must be a positive int, got {self.n_views!r}")
        if self.strength not in STRENGTHS:
            raise ValueError(f"unknown strength {self.strength!r}; known: {sorted(STRENGTHS)}")
        for field in ("p_flip", "p_occlude"):
            p = getattr(self, field)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{field} must be in [0, 1], got {p}")

    @property
    def ranges(self) -> AugmentRanges:
        return STRENGTHS[self.strength]

    def config(self) -> dict[str, Any]:
        cfg = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        cfg["ranges"] = dataclasses.asdict(self.ranges)
        return cfg

    def __call__(self, face: Image, *, key: PRNGKey) -> jax.Array:
        face = jnp.asarray(face)
        if face.ndim != 3 or face.shape[-1] != 3:
            raise ValueError(f"expected one (H, W, 3) face, got shape {face.shape}")
        if face.shape[0] != face.shape[1]:
            raise ValueError(f"expected a square aligned face, got {face.shape[:2]}")
        if not jnp.issubdtype(face.dtype, jnp.floating):
            raise TypeError(f"expected float RGB in [0, 1], got {face.dtype}; divide by 255")
        return _augment_views(face.astype(jnp.float32), key, self)


@functools.partial(jax.jit, static_argnums=2)
def _augment_views(face: Image, key: PRNGKey, gen: AugmentViews) -> jax.Array:
    keys = jax.random.split(key, gen.n_views)
    views = jax.vmap(_one_view, in_axes=(None, 0, None))(face, keys, gen)
    return jnp.concatenate([views, face[None]])


def _one_view(face: Image, key: PRNGKey, gen: AugmentViews) -> Image:
    r = gen.ranges
    size = face.shape[0]
    ks = jax.random.split(key, 16)

    def uniform(k: PRNGKey, lo: float, hi: float, shape: tuple[int, ...] = ()) -> jax.Array:
        return jax.random.uniform(k, shape, minval=lo, maxval=hi)

    x = face
    # The head's own geometry first (turn, expression), where the template landmarks hold.
    # Keys for these are folded in, so views without them keep their draws.
    if r.yaw_deg or r.pitch_deg:
        kt = jax.random.split(jax.random.fold_in(key, 101), 2)
        yaw = jnp.deg2rad(uniform(kt[0], -r.yaw_deg, r.yaw_deg))
        x = aug.head_turn(x, yaw, jnp.deg2rad(uniform(kt[1], -r.pitch_deg, r.pitch_deg)))
    if r.warp_px:
        x = aug.smooth_warp(x, jax.random.fold_in(key, 102), r.warp_px)

    # An occluder (hand, hair, glasses) is part of the scene, so it goes in before the pose.
    x = jnp.where(
        jax.random.bernoulli(ks[0], gen.p_occlude), aug.occlude(x, ks[1], r.occlude_frac), x
    )

    # Pose, with the mirror folded into the same matrix so the face is resampled once.
    flip = jnp.where(
        jax.random.bernoulli(ks[2], gen.p_flip),
        jnp.asarray(aug.hflip_matrix(size)),
        jnp.eye(3, dtype=jnp.float32),
    )
    pose = aug.random_pose(ks[3], size, r.rotate_deg, r.scale, r.shift, r.perspective)
    x = aug.affine_warp(x, flip @ pose)

    # Illumination and colour.
    x = aug.adjust_colour(
        x,
        brightness=uniform(ks[4], -r.brightness, r.brightness),
        contrast=uniform(ks[5], 1 - r.contrast, 1 + r.contrast),
        saturation=uniform(ks[6], 1 - r.saturation, 1 + r.saturation),
        gamma=jnp.exp(uniform(ks[7], -r.gamma, r.gamma)),
    )
    x = aug.channel_gain(x, uniform(ks[8], 1 - r.gain, 1 + r.gain, (3,)))
    x = aug.directional_light(x, uniform(ks[9], 0.0, 2 * jnp.pi), uniform(ks[10], 0.0, r.light))

    # Optics and processing: blur or sharpen, maybe a low-resolution round trip, then JPEG.
    # An unsharp mask with amount -1 is exactly a blur, so one blur serves both branches.
    blur = jax.random.bernoulli(ks[11])
    amount = jnp.where(blur, -1.0, uniform(ks[12], *r.sharpen_amount))
    x = aug.sharpen(x, amount, jnp.where(blur, uniform(ks[13], *r.blur_sigma), 1.0))
    x = jnp.where(
        jax.random.bernoulli(ks[14], r.p_resize), aug.resize_round_trip(x, r.resize_scale), x
    )
    return aug.jpeg_like(x, uniform(ks[15], *r.jpeg_quality))


@dataclasses.dataclass(frozen=True, eq=False)
class MultiPhotoViews:
    """Views drawn from several photos of one person: the reference face and ``photos``.

    Synthetic view ``i`` is ``base``'s view of photo ``i mod (E + 1)`` (the reference first,
    then each extra photo), so every given photo feeds the optimisation while the number of
    views, and so the cost per step, stays that of ``base``. The reference face is still
    appended last, unchanged. Real other photos carry what no augmentation can: another day's
    pose, light, expression and camera.

    Attributes:
      base: the generator applied to each photo (its ``n_views`` views per call).
      photos: (E, S, S, 3) float32 [0, 1] aligned crops of the person's other photos.
    """

    base: ViewGenerator
    photos: Any
    name: str = dataclasses.field(default="multi-photo", init=False)

    @property
    def n_views(self) -> int:
        return self.base.n_views

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "extra_photos": len(self.photos),
            "base": self.base.config(),
        }

    def __call__(self, face: Image, *, key: PRNGKey) -> jax.Array:
        extra = jnp.asarray(self.photos, jnp.float32)
        return views_of_photos(self.base, face, extra, extra.shape[0], key=key)


def views_of_photos(
    base: ViewGenerator, face: Image, extra: jax.Array, n_extra: jax.Array | int, *, key: PRNGKey
) -> jax.Array:
    """``base``'s views drawn from ``face`` and the first ``n_extra`` rows of ``extra``.

    View ``i`` comes from photo ``i mod (n_extra + 1)`` (the face first), so every given photo
    feeds the views while their number stays ``base.n_views``; the face is appended last,
    unchanged. ``extra`` is (E, S, S, 3) float32 [0, 1], padded to a static E so one compiled
    program serves people with any number of photos up to E; ``n_extra`` may be traced.
    """
    face = jnp.asarray(face, jnp.float32)
    sources = jnp.concatenate([face[None], jnp.asarray(extra, jnp.float32)])  # (E + 1, ...)
    keys = jax.random.split(key, sources.shape[0])
    per = jnp.stack([base(sources[k], key=keys[k])[:-1] for k in range(len(keys))])
    pick = jnp.arange(base.n_views)
    views = per[pick % (jnp.asarray(n_extra) + 1), pick]
    return jnp.concatenate([views, face[None]])


def _arc2face(**kwargs: Any) -> ViewGenerator:
    from .arc2face import Arc2FaceViews  # the diffusion networks load only when asked for

    return Arc2FaceViews(**kwargs)


VIEW_GENERATORS: dict[str, Callable[..., ViewGenerator]] = {
    "augment": AugmentViews,
    "arc2face": _arc2face,
}


def make_view_generator(name: str, **kwargs: Any) -> ViewGenerator:
    """Build a registered view generator.

    Args:
      name: "augment" (:class:`AugmentViews`) or "arc2face"
        (:class:`jaxcloak.methods.facecloak.arc2face.Arc2FaceViews`, needs its networks' weights).
      **kwargs: passed to the generator's constructor.

    Returns:
      A :class:`ViewGenerator`.

    Raises:
      KeyError: for an unknown name (the message lists the known ones).
    """
    try:
        factory = VIEW_GENERATORS[name]
    except KeyError:
        raise KeyError(
            f"unknown view generator {name!r}; known: {sorted(VIEW_GENERATORS)}"
        ) from None
    return factory(**kwargs)
