"""Fully connected networks (MLPs) in JAX, as pure functions, with a parametrization switch.

Parameters are a list of ``{"w": (fan_in, fan_out), "b": (fan_out,)}`` dicts, one per layer; inputs are
``(n, n0)`` and outputs ``(n, n_out)``. Layer ``l`` computes

    h_{l+1} = m_l * (a_l @ W_l) + beta * b_l,      a_l = act(h_l) (a_0 = x),

and the parametrization fixes the forward multiplier ``m_l`` and the initial spread of ``W_l``, ``b_l``
(``s`` = sqrt(weight_var), ``beta`` the bias scale):

============  =======================  ==========================  ============================
name          weights at init          forward                     infinite-width behaviour
============  =======================  ==========================  ============================
``ntk``       W, b ~ N(0, 1)           m = s / sqrt(fan_in)        Jacot et al. 2018: NTK limit
``standard``  W ~ N(0, s^2/fan_in),    m = 1, bias scale 1         same function at init, NTK
              b ~ N(0, beta^2)                                     grows with width
``mup``       W, b ~ N(0, 1)           as ``ntk`` but the readout  maximal update (Yang & Hu
                                       uses m = s / fan_in         2021) in NTK-style form;
                                                                   train with lr proportional to
                                                                   width
============  =======================  ==========================  ============================

``ntk`` and ``standard`` give the same distribution of functions at initialization (the NNGP of
:mod:`repro.core.kernels`), but gradient descent sees different tangent kernels. ``mup`` is written as
the NTK parametrization with a ``1/fan_in`` readout multiplier, which is muP once the learning rate is
scaled by the width (Yang & Hu 2021, "Feature learning in infinite-width neural networks", Sec. 5);
networks of one paper should therefore be trained with ``lr = base_lr * width`` under ``mup``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from repro.core.parametrization import (  # noqa: F401 - re-exported
    PARAMETRIZATIONS,
    check_parametrization as _check_parametrization,
    layer_multipliers,
)


Params = list[dict[str, jax.Array]]


def _erf(z):
    return jax.scipy.special.erf(z)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "erf": _erf,
    "tanh": jnp.tanh,
    "identity": lambda z: z,
    "gelu": lambda z: jax.nn.gelu(z, approximate=False),
    "softplus": jax.nn.softplus,
    "sigmoid": jax.nn.sigmoid,
    "sin": jnp.sin,
}


def get_activation(activation: str | Callable) -> Callable[[jax.Array], jax.Array]:
    """The elementwise function for a name in :data:`ACTIVATIONS`, or ``activation`` itself if callable."""
    if callable(activation):
        return activation
    try:
        return ACTIVATIONS[activation]
    except KeyError:
        raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)} "
                         "or pass a callable") from None


def init_mlp(key: jax.Array, sizes: Sequence[int], *, parametrization: str = "ntk", weight_var: float = 1.0,
             beta: float = 0.1, dtype: Any = None) -> Params:
    """Random parameters for an MLP with layer sizes ``sizes = (n0, n1, ..., n_L)``.

    ``dtype`` defaults to JAX's default float (float64 once ``jax_enable_x64`` is on).
    For ``parametrization="standard"`` the init spreads use ``weight_var`` and ``beta``; the other
    parametrizations store N(0, 1) values and apply the scales in the forward pass.
    """
    _check_parametrization(parametrization)
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"sizes must list at least an input and an output size, all >= 1; got {sizes}")
    dtype = dtype or jnp.result_type(float)
    shapes = [((fan_in, fan_out), (fan_out,)) for fan_in, fan_out in zip(sizes[:-1], sizes[1:])]
    # one draw for the whole network: a single random kernel to compile, whatever the depth
    flat = jax.random.normal(key, (sum(a * b + b for (a, b), _ in shapes),), dtype)
    params: Params = []
    start = 0
    for (w_shape, b_shape), fan_in in zip(shapes, sizes[:-1]):
        n_w, n_b = w_shape[0] * w_shape[1], b_shape[0]
        w = flat[start : start + n_w].reshape(w_shape)
        b = flat[start + n_w : start + n_w + n_b]
        start += n_w + n_b
        if parametrization == "standard":
            w = w * jnp.sqrt(weight_var / fan_in)
            b = b * beta
        params.append({"w": w, "b": b})
    return params


def init_mlp_numpy(seed, sizes: Sequence[int], *, parametrization: str = "ntk", weight_var: float = 1.0,
                   beta: float = 0.1, dtype: Any = None) -> Params:
    """Like :func:`init_mlp` (same distribution and layout), drawn on the host with NumPy.

    ``seed`` is anything ``numpy.random.default_rng`` accepts (an int or a sequence of ints). Nothing is
    compiled, and on a CPU it is several times faster than JAX's counter-based generator, which matters
    when many networks of several widths are drawn once each. Returns NumPy arrays (JAX takes them as is).
    """
    import numpy as np

    _check_parametrization(parametrization)
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"sizes must list at least an input and an output size, all >= 1; got {sizes}")
    dtype = np.dtype(dtype or jnp.result_type(float))
    total = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    flat = np.random.default_rng(seed).standard_normal(total, dtype=np.float64).astype(dtype, copy=False)
    params: Params = []
    start = 0
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        w = flat[start : start + fan_in * fan_out].reshape(fan_in, fan_out)
        b = flat[start + fan_in * fan_out : start + fan_in * fan_out + fan_out]
        start += fan_in * fan_out + fan_out
        if parametrization == "standard":
            w, b = w * np.sqrt(weight_var / fan_in), b * beta
        params.append({"w": w, "b": b})
    return params


def apply_mlp(params: Params, x: jax.Array, *, parametrization: str = "ntk", activation: str | Callable = "relu",
              beta: float = 0.1, weight_var: float = 1.0) -> jax.Array:
    """Network outputs ``(n, n_out)`` for inputs ``x`` of shape ``(n, n0)`` (or ``(n0,)`` -> ``(n_out,)``)."""
    return mlp_forward(params, x, parametrization=parametrization, activation=activation, beta=beta,
                       weight_var=weight_var)[0]


def mlp_forward(params: Params, x: jax.Array, *, parametrization: str = "ntk", activation: str | Callable = "relu",
                beta: float = 0.1, weight_var: float = 1.0, shifts: Sequence[jax.Array] | None = None
                ) -> tuple[jax.Array, list[jax.Array]]:
    """Outputs and the input ``a_l`` of every layer (``a_0 = x``), for analyses of the hidden layers.

    ``shifts`` (one array per layer, shaped like its pre-activations) are added to the pre-activations;
    differentiating with respect to zero shifts gives the back-propagated signals ``d f / d h_l``.
    """
    act = get_activation(activation)
    mults = layer_multipliers(hidden_sizes(params), parametrization, weight_var, beta)
    h = x
    inputs = []
    for i, (layer, (mw, mb)) in enumerate(zip(params, mults)):
        inputs.append(h)
        # pre-activation of layer i+1: m * a W + beta * b  (Jacot et al. Eq. 1 for "ntk")
        h = mw * (h @ layer["w"]) + mb * layer["b"]
        if shifts is not None:
            h = h + shifts[i]
        if i < len(params) - 1:
            h = act(h)
    return h, inputs


def hidden_sizes(params: Params) -> list[int]:
    """The layer sizes ``(n0, ..., n_L)`` of a parameter list."""
    return [params[0]["w"].shape[0]] + [layer["w"].shape[1] for layer in params]


def count_params(params: Params) -> int:
    return int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(params)))


class MLP(NamedTuple):
    """``init(key) -> params`` and ``apply(params, x) -> outputs`` bound to one architecture."""

    init: Callable[[jax.Array], Params]
    apply: Callable[[Params, jax.Array], jax.Array]
    sizes: tuple[int, ...]


def make_mlp(sizes: Sequence[int], *, parametrization: str = "ntk", activation: str | Callable = "relu",
             beta: float = 0.1, weight_var: float = 1.0, dtype: Any = None) -> MLP:
    """An :class:`MLP` whose init and forward pass share one set of settings (no way to mix them up)."""
    _check_parametrization(parametrization)
    get_activation(activation)
    sizes = tuple(int(s) for s in sizes)

    def init(key):
        return init_mlp(key, sizes, parametrization=parametrization, weight_var=weight_var, beta=beta, dtype=dtype)

    def apply(params, x):
        return apply_mlp(params, x, parametrization=parametrization, activation=activation, beta=beta,
                         weight_var=weight_var)

    return MLP(init=init, apply=apply, sizes=sizes)
