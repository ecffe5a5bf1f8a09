"""Surrogate augmentation and feature taps: edits of a converted recogniser, weights untouched.

An attack that follows one network's exact gradient overfits that network; what transfers to
recognisers it never saw is what many similar networks agree on. These edits make the one
surrogate behave like a family of them, each step a different member, without changing a
weight (they run inside the compiled scan through :data:`jaxcloak.convert.onnx.Edit`):

- :func:`linear_backprop`: the backward pass of every activation is mixed toward the identity
  (LinBP); the forward pass is unchanged. For plain conv chains such as SFace, which have no
  residual branches, this is the analogue of skip-gradient.
- :func:`skip_gradient`: on residual additions, the gradient through the residual branch is
  scaled by ``gamma`` < 1, favouring the skip path (SGM); forward unchanged.
- :func:`activation_dropout`: random activations dropped per step (forward and backward).
- :func:`tap`: records activations, for the intermediate-feature term (masked features pushed
  away from the clean face's at the same layer).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..convert.onnx import Edit, Site
from ..typing import PRNGKey

#: Pointwise nonlinearities, where LinBP and dropout act and features are tapped.
ACTIVATIONS = frozenset(
    {"Relu", "PRelu", "LeakyRelu", "Elu", "Selu", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid"}
)

#: Ops that merge a residual branch into its skip path.
MERGES = frozenset({"Add", "Sum"})


def activation_sites(sites: Iterable[Site]) -> list[Site]:
    """The sites of pointwise nonlinearities, in execution order."""
    return [s for s in sites if s.op_type in ACTIVATIONS]


def feature_site(sites: Sequence[Site], depth: float) -> Site:
    """The activation nearest relative depth ``depth`` in [0, 1] (0: first, 1: last).

    Raises:
      ValueError: the network has no pointwise activation to tap.
    """
    acts = activation_sites(sites)
    if not acts:
        raise ValueError("the surrogate has no activation layer to take features from")
    return min(acts, key=lambda s: abs(s.index / max(s.count - 1, 1) - depth))


def residual_sites(sites: Iterable[Site]) -> list[Site]:
    """Additions of two computed tensors (residual merges); the skip input is the older."""
    return [
        s for s in sites if s.op_type in MERGES and len(s.producers) == 2 and max(s.producers) >= 0
    ]


def _keep_forward(y: jax.Array, surrogate_grad: jax.Array) -> jax.Array:
    """``y`` forward, the gradient of ``surrogate_grad`` backward."""
    return surrogate_grad + jax.lax.stop_gradient(y - surrogate_grad)


def linear_backprop(gamma: float) -> Edit:
    """Backward pass of each activation ``(1 - gamma) f'(x) + gamma``; forward unchanged."""

    def edit(site: Site, ins: tuple, outs: tuple) -> tuple:
        x = ins[0] if ins else None
        if site.op_type not in ACTIVATIONS or not isinstance(x, jax.Array):
            return outs
        y = outs[0]
        return (_keep_forward(y, (1.0 - gamma) * y + gamma * x), *outs[1:])

    return edit


def skip_gradient(gamma: float, touched: list | None = None) -> Edit:
    """On residual additions, the branch's gradient scaled by ``gamma``; forward unchanged.

    ``touched`` (optional) collects the names of the sites rewritten, so a caller can tell a
    network without residual branches (where this edit does nothing) from one with them.
    """

    def edit(site: Site, ins: tuple, outs: tuple) -> tuple:
        if site.op_type not in MERGES or len(ins) != 2:
            return outs
        if not all(isinstance(v, jax.Array) for v in ins) or np.shape(ins[0]) != np.shape(ins[1]):
            return outs
        skip, branch = (ins[0], ins[1]) if site.producers[0] < site.producers[1] else ins[::-1]
        if touched is not None:
            touched.append(site.name)
        return (_keep_forward(outs[0], skip + gamma * branch), *outs[1:])

    return edit


def activation_dropout(key: PRNGKey, rate: float) -> Edit:
    """Each activation dropped with probability ``rate`` (kept ones scaled by 1/(1-rate))."""
    keep = 1.0 - rate

    def edit(site: Site, ins: tuple, outs: tuple) -> tuple:
        if site.op_type not in ACTIVATIONS or not rate:
            return outs
        y = outs[0]
        on = jax.random.bernoulli(jax.random.fold_in(key, site.index), keep, y.shape)
        return (jnp.where(on, y / keep, 0.0).astype(y.dtype), *outs[1:])

    return edit


def tap(names: Iterable[str], store: dict[str, jax.Array]) -> Edit:
    """Records the first output of each named site into ``store`` (at trace time)."""
    wanted = frozenset(names)

    def edit(site: Site, ins: tuple, outs: tuple) -> tuple:
        if site.name in wanted:
            store[site.name] = outs[0]
        return outs

    return edit


def chain(*edits: Edit | None) -> Edit | None:
    """The edits applied one after another (``None`` entries skipped; all ``None``: None)."""
    live = [e for e in edits if e is not None]
    if not live:
        return None

    def edit(site: Site, ins: tuple, outs: tuple) -> tuple:
        for e in live:
            outs = e(site, ins, outs)
        return outs

    return edit


def feature_cosine(a: jax.Array, b: jax.Array) -> jax.Array:
    """Per-example cosine between two batches of activations, (N, ...) -> (N,)."""
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    num = jnp.sum(a * b, axis=-1)
    return num / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1) + 1e-12)
