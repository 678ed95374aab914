"""Infinite-width kernels of fully connected networks: NNGP (Sigma) and NTK (Theta), in JAX.

For an MLP of ``depth`` L weight layers in NTK parametrization (Jacot et al. 2018; see
:mod:`repro.core.mlp_jax`), with weight variance ``sw2`` and bias scale ``beta``, as all hidden widths
go to infinity:

    Sigma^(1)(x, x')    = sw2 * x.x' / n0 + beta^2
    Sigma^(l+1)(x, x')  = sw2 * E[act(u) act(v)] + beta^2          (u, v) ~ N(0, Sigma^(l) on {x, x'})
    SigmaDot^(l+1)      = sw2 * E[act'(u) act'(v)]
    Theta^(1)           = Sigma^(1)
    Theta^(l+1)         = Theta^(l) * SigmaDot^(l+1) + Sigma^(l+1)

``Sigma^(L)`` is the covariance of the network outputs at initialization (the NNGP kernel), and
``Theta^(L)`` is the limiting neural tangent kernel, per output coordinate. The 2-D Gaussian expectations
have closed forms for ReLU (arc-cosine kernels, Cho & Saul 2009), erf (Williams 1997) and the identity;
any other activation (a name of :data:`repro.core.mlp_jax.ACTIVATIONS` or a callable) uses a
Gauss-Hermite product rule for both expectations.

Everything runs in the precision JAX is set to: turn on float64 first
(``repro.profiles.setup(..., jax_x64=True)`` or ``jax.config.update("jax_enable_x64", True)``); a warning
says so otherwise. With ``x2=None`` the kernel is computed on ``x1`` against itself and its diagonal is
computed exactly (correlation exactly 1), so Gram matrices are symmetric with exact diagonals.

The second half holds the function-space dynamics of NTK training with the squared loss
``C = 1/(2N) ||f(X) - Y||^2``: kernel regression, and the Gaussian distribution (over initializations)
of an infinitely wide network after ``steps`` of gradient descent (Jacot et al. Sec. 5; Lee et al. 2019).
These work on kernel matrices in NumPy float64, like :mod:`repro.core.gp`.
"""

from __future__ import annotations

import warnings
from functools import lru_cache, partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from repro.core import gp
from repro.core.mlp_jax import get_activation

CLOSED_FORMS: tuple[str, ...] = ("relu", "erf", "identity")
METHODS: tuple[str, ...] = ("auto", "closed", "quadrature")


# -- Gaussian expectations ----------------------------------------------------------------------------
def _safe_arccos(rho):
    # arccos is not differentiable at +-1 (the exact diagonal); the double `where` keeps gradients finite
    inside = jnp.abs(rho) < 1.0
    theta = jnp.arccos(jnp.where(inside, rho, 0.0))
    return jnp.where(inside, theta, jnp.where(rho >= 1.0, 0.0, jnp.pi))


def _safe_sqrt(z):
    pos = z > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, z, 1.0)), 0.0)


def _correlation(var1, var2, cov):
    norm = jnp.sqrt(var1 * var2)
    return jnp.clip(cov / jnp.where(norm > 0, norm, 1.0), -1.0, 1.0), norm


def relu_expectations(var1, var2, cov):
    """E[relu(u) relu(v)] and E[step(u) step(v)] for (u, v) ~ N(0, [[var1, cov], [cov, var2]])."""
    rho, norm = _correlation(var1, var2, cov)
    theta = _safe_arccos(rho)  # angle between the two inputs of the layer
    e_act = norm / (2 * jnp.pi) * (_safe_sqrt(1.0 - rho**2) + (jnp.pi - theta) * rho)
    e_dact = (jnp.pi - theta) / (2 * jnp.pi)
    return e_act, e_dact


def erf_expectations(var1, var2, cov):
    """E[erf(u) erf(v)] and E[erf'(u) erf'(v)] (Williams 1997) for the same Gaussian pair."""
    d1, d2 = 1.0 + 2.0 * var1, 1.0 + 2.0 * var2
    e_act = 2.0 / jnp.pi * jnp.arcsin(jnp.clip(2.0 * cov / jnp.sqrt(d1 * d2), -1.0, 1.0))
    e_dact = 4.0 / jnp.pi / jnp.sqrt(d1 * d2 - 4.0 * cov**2)
    return e_act, e_dact


def identity_expectations(var1, var2, cov):
    return cov, jnp.ones_like(cov)


_CLOSED = {"relu": relu_expectations, "erf": erf_expectations, "identity": identity_expectations}


@lru_cache(maxsize=16)
def _hermite_rule(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of the probabilists' Gauss-Hermite rule, weights summing to 1 (E over N(0,1))."""
    z, w = np.polynomial.hermite_e.hermegauss(n)
    return z, w / w.sum()


def quadrature_expectations(activation: str | Callable, var1, var2, cov, *, quad_points: int = 128):
    """E[act(u) act(v)] and E[act'(u) act'(v)] by a Gauss-Hermite product rule, for any activation.

    Writes u = sqrt(var1) z1 and v = sqrt(var2) (rho z1 + sqrt(1 - rho^2) z2) with z1, z2 iid N(0, 1),
    then sums over the nodes of z1 (a scan) and z2 (vectorized). ``act'`` is taken by forward-mode
    autodiff, so ``act`` must be elementwise. Exact for polynomials of degree < 2 * quad_points; for
    smooth activations 128 nodes give about 1e-6 relative accuracy at unit-order variances (fewer digits
    when the variances are large); kinked activations (ReLU) converge only like 1/quad_points, which is
    why they have closed forms.
    """
    if not 2 <= int(quad_points) <= 300:  # NumPy's Hermite weights overflow beyond ~350 nodes
        raise ValueError(f"quad_points must be in [2, 300], got {quad_points}")
    act = get_activation(activation)

    def dact(z):
        return jax.jvp(act, (z,), (jnp.ones_like(z),))[1]

    var1, var2, cov = jnp.broadcast_arrays(*(jnp.asarray(a) for a in (var1, var2, cov)))
    z_np, w_np = _hermite_rule(int(quad_points))
    z = jnp.asarray(z_np, dtype=var1.dtype)
    w = jnp.asarray(w_np, dtype=var1.dtype)
    rho, _ = _correlation(var1, var2, cov)
    s1, s2 = jnp.sqrt(var1), jnp.sqrt(var2)
    rc = _safe_sqrt(1.0 - rho**2)
    inner_v = s2[..., None] * rc[..., None] * z  # (..., q): the z2 part of v

    def body(carry, node):
        zi, wi = node
        u = s1 * zi
        v = (s2 * rho * zi)[..., None] + inner_v
        acc_act = carry[0] + wi * act(u) * jnp.tensordot(act(v), w, axes=1)
        acc_dact = carry[1] + wi * dact(u) * jnp.tensordot(dact(v), w, axes=1)
        return (acc_act, acc_dact), None

    zero = jnp.zeros_like(var1)
    (e_act, e_dact), _ = jax.lax.scan(body, (zero, zero), (z, w))
    return e_act, e_dact


def gaussian_expectations(activation: str | Callable, var1, var2, cov, *, method: str = "auto",
                          quad_points: int = 128):
    """``(E[act(u) act(v)], E[act'(u) act'(v)])`` for (u, v) ~ N(0, [[var1, cov], [cov, var2]]).

    ``method="auto"`` uses a closed form where one exists (:data:`CLOSED_FORMS`), else quadrature.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    name = activation if isinstance(activation, str) else None
    if method == "closed" and name not in _CLOSED:
        raise ValueError(f"no closed form for activation {activation!r}; closed forms: {', '.join(CLOSED_FORMS)}")
    if method != "quadrature" and name in _CLOSED:
        return _CLOSED[name](var1, var2, cov)
    return quadrature_expectations(activation, var1, var2, cov, quad_points=quad_points)


# -- the layer recursion ------------------------------------------------------------------------------
class KernelLayers(NamedTuple):
    """Kernels of every layer, stacked: index ``l - 1`` holds layer ``l``."""

    nngp: jax.Array  # (depth, ...): Sigma^(1..L)
    sigma_dot: jax.Array  # (depth - 1, ...): SigmaDot^(2..L)
    ntk: jax.Array  # (depth, ...): Theta^(1..L)


_warned_x64 = False


def _as_float(x) -> jax.Array:
    global _warned_x64
    if not jax.config.jax_enable_x64 and not _warned_x64:
        warnings.warn("repro.core.kernels: JAX runs in float32; enable float64 with "
                      "jax.config.update('jax_enable_x64', True) (setup(..., jax_x64=True)) for accurate kernels",
                      stacklevel=3)
        _warned_x64 = True
    x = jnp.asarray(x)
    return x.astype(jnp.result_type(float)) if not jnp.issubdtype(x.dtype, jnp.floating) else x


def _check_args(depth: int, beta: float, weight_var: float) -> None:
    if not isinstance(depth, (int, np.integer)) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1 (number of weight layers), got {depth!r}")
    if beta < 0 or weight_var <= 0:
        raise ValueError(f"need beta >= 0 and weight_var > 0, got beta={beta}, weight_var={weight_var}")


def kernel_layers(x1, x2=None, depth: int = 2, activation: str | Callable = "relu", beta: float = 0.1,
                  weight_var: float = 1.0, *, diag: bool = False, method: str = "auto",
                  quad_points: int = 128) -> KernelLayers:
    """The NNGP / NTK recursion for every layer (see the module docstring for the equations).

    ``x1``: (n1, n0); ``x2``: (n2, n0) or ``None`` for ``x1`` against itself. With ``diag=True`` (and
    ``x2=None``) each kernel is the vector ``k(x, x)`` over the rows of ``x1``. Compiled once per
    shape and architecture; differentiable in the inputs, ``beta`` and ``weight_var``.
    """
    return _run_recursion(x1, x2, depth, activation, beta, weight_var, diag, method, quad_points, every_layer=True)


def _run_recursion(x1, x2, depth, activation, beta, weight_var, diag, method, quad_points, every_layer):
    if isinstance(beta, (int, float)) and isinstance(weight_var, (int, float)):
        _check_args(depth, beta, weight_var)
    elif not isinstance(depth, (int, np.integer)) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1 (number of weight layers), got {depth!r}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    get_activation(activation)
    x1 = _as_float(x1)
    if x1.ndim != 2:
        raise ValueError(f"x1 must be (n, n0), got shape {x1.shape}")
    if diag and x2 is not None:
        raise ValueError("diag=True computes k(x, x) over x1; leave x2=None")
    same = x2 is None
    x2 = x1 if same else _as_float(x2)
    if x2.ndim != 2 or x2.shape[1] != x1.shape[1]:
        raise ValueError(f"x2 must be (n2, {x1.shape[1]}), got shape {x2.shape}")
    return _recursion(x1, x2, jnp.asarray(beta, x1.dtype), jnp.asarray(weight_var, x1.dtype), depth=int(depth),
                      activation=activation, diag=bool(diag), same=same, method=method,
                      quad_points=int(quad_points), every_layer=every_layer)


@partial(jax.jit, static_argnames=("depth", "activation", "diag", "same", "method", "quad_points", "every_layer"))
def _recursion(x1, x2, beta, weight_var, *, depth, activation, diag, same, method, quad_points, every_layer):
    n0 = x1.shape[1]
    sw2, b2 = weight_var, beta**2

    def expect(v1, v2, c):
        return gaussian_expectations(activation, v1, v2, c, method=method, quad_points=quad_points)

    # the variances k(x, x) of both sides: a correlation of exactly 1 on the diagonal
    var1 = sw2 * jnp.sum(x1 * x1, axis=1) / n0 + b2  # Sigma^(1)(x, x)
    var2 = var1 if same else sw2 * jnp.sum(x2 * x2, axis=1) / n0 + b2
    if diag:
        sigma = var1
    else:
        sigma = sw2 * (x1 @ x2.T) / n0 + b2  # Sigma^(1) = sw2 x.x'/n0 + beta^2
    theta = sigma  # Theta^(1) = Sigma^(1)
    eye = None if (diag or not same) else jnp.eye(x1.shape[0], dtype=bool)

    def layer(carry, _):  # layer l -> l + 1 (a scan: compile time does not grow with depth)
        sigma, theta, var1, var2 = carry
        # diagonals first (exact: cov == var), then the cross terms
        e1, d1 = expect(var1, var1, var1)
        e2, d2 = (e1, d1) if same else expect(var2, var2, var2)
        if diag:
            e, d = e1, d1
        else:
            e, d = expect(var1[:, None], var2[None, :], sigma)
            if eye is not None:
                e, d = jnp.where(eye, jnp.diag(e1), e), jnp.where(eye, jnp.diag(d1), d)
        sigma_dot = sw2 * d  # SigmaDot^(l+1) = sw2 E[act'(u) act'(v)]
        sigma = sw2 * e + b2  # Sigma^(l+1) = sw2 E[act(u) act(v)] + beta^2
        theta = theta * sigma_dot + sigma  # Theta^(l+1) = Theta^(l) SigmaDot^(l+1) + Sigma^(l+1)
        carry = (sigma, theta, sw2 * e1 + b2, sw2 * e2 + b2)
        return carry, ((sigma, sigma_dot, theta) if every_layer else None)

    last, stacked = jax.lax.scan(layer, (sigma, theta, var1, var2), None, length=depth - 1)
    if every_layer:
        sigmas, dots, thetas = stacked
        out = KernelLayers(nngp=jnp.concatenate([sigma[None], sigmas]), sigma_dot=dots,
                           ntk=jnp.concatenate([theta[None], thetas]))
    else:
        out = (last[0], last[1])  # (Sigma^(L), Theta^(L)) only: no per-layer copies of big Gram matrices
    if eye is not None:  # a Gram matrix: symmetric to the last bit ((i, j) and (j, i) may round apart)
        out = jax.tree_util.tree_map(lambda k: 0.5 * (k + jnp.swapaxes(k, -1, -2)), out)
    return out


def nngp_ntk(x1, x2=None, depth: int = 2, activation: str | Callable = "relu", beta: float = 0.1,
             weight_var: float = 1.0, *, diag: bool = False, method: str = "auto",
             quad_points: int = 128) -> tuple[jax.Array, jax.Array]:
    """``(nngp, ntk)``: the output-layer kernels ``Sigma^(L)`` and ``Theta^(L)`` of a depth-L MLP.

    Shapes ``(n1, n2)`` (``(n1, n1)`` with ``x2=None``, exactly symmetric with an exact diagonal) or
    ``(n1,)`` with ``diag=True``. ``depth`` counts weight layers (``depth=4``: three hidden layers).
    """
    return _run_recursion(x1, x2, depth, activation, beta, weight_var, diag, method, quad_points, every_layer=False)


# -- function-space dynamics of the squared loss (NumPy float64) -------------------------------------
def _sym_eig(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    k = np.asarray(k, dtype=np.float64)
    lam, vec = np.linalg.eigh(0.5 * (k + k.T))
    return lam[::-1], vec[:, ::-1]  # descending


def gd_decay(lam: np.ndarray, lr: float, n: int, steps: int | float | None, *, flow: bool = False) -> np.ndarray:
    """Factor by which the residual along a kernel eigenvector of eigenvalue ``lam`` shrinks.

    Gradient descent on ``1/(2n) ||f(X) - Y||^2`` with a constant kernel moves the training residual as
    ``r_{k+1} = (I - lr Theta / n) r_k``, so each eigen-component is multiplied by ``(1 - lr lam / n)``
    per step; gradient flow for time ``t = lr * steps`` gives ``exp(-lr lam steps / n)`` (Jacot et al.
    Sec. 5). ``steps=None`` means converged (factor 0).
    """
    lam = np.asarray(lam, dtype=np.float64)
    if steps is None:
        return np.zeros_like(lam)
    if flow:
        return np.exp(-lr * lam * steps / n)
    return np.power(1.0 - lr * lam / n, steps)


def gd_inverse(ntk_train, lr: float = 1.0, steps: int | float | None = None, *, flow: bool = False) -> np.ndarray:
    """``Theta^-1 (I - D)`` with ``D`` the residual decay after ``steps`` (``Theta^-1`` when ``steps=None``).

    Built from the eigen-decomposition, so it stays finite for ill-conditioned Gram matrices (a
    direction with ``lam -> 0`` contributes ``lr * steps / n`` instead of ``1/lam``).
    """
    n = np.shape(ntk_train)[0]
    lam, vec = _sym_eig(ntk_train)
    decay = gd_decay(lam, lr, n, steps, flow=flow)
    tiny = 1e-14 * max(lam[0], 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = np.where(np.abs(lam) > tiny, (1.0 - decay) / lam,
                          0.0 if steps is None else lr * float(steps) / n)
    return (vec * weight) @ vec.T


def ntk_linearized_prediction(f0_test, f0_train, ntk_cross, ntk_train, y_train, *, lr: float = 1.0,
                              steps: int | float | None = None, flow: bool = False) -> np.ndarray:
    """Output of the linearized network after training, given its own initial outputs ``f0``.

    ``f_T(x) = f0(x) + Theta(x, X) Theta^-1 (I - D_T) (Y - f0(X))`` (Jacot et al. Sec. 5, discrete steps
    unless ``flow``); with the limiting NTK this is what an infinitely wide network does.
    ``f0_test``: (m,) or (m, k); ``ntk_cross``: (m, N); ``y_train``/``f0_train``: (N,) or (N, k).
    """
    q = gd_inverse(ntk_train, lr, steps, flow=flow)
    resid = np.asarray(y_train, np.float64) - np.asarray(f0_train, np.float64)
    return np.asarray(f0_test, np.float64) + np.asarray(ntk_cross, np.float64) @ (q @ resid)


def ntk_predictive(nngp_train, nngp_cross, nngp_test, ntk_train, ntk_cross, y_train, *, lr: float = 1.0,
                   steps: int | float | None = None, flow: bool = False, full_cov: bool = True) -> gp.GPPosterior:
    """Distribution over random initializations of an infinitely wide network trained by GD.

    The outputs at init are the NNGP ``f0 ~ GP(0, Sigma)``; training is linear in ``f0``, so the trained
    network is Gaussian with (``Q = Theta^-1 (I - D_T)``, ``Q = Theta^-1`` at convergence):

        mean(x)    = Theta(x, X) Q Y
        cov(x, x') = Sigma(x, x') + Theta(x, X) Q Sigma(X, X) Q Theta(X, x')
                     - Theta(x, X) Q Sigma(X, x') - Sigma(x, X) Q Theta(X, x')

    (Jacot et al. Sec. 5; Lee et al. 2019 Eq. 16). ``nngp_test`` is (m, m), or its diagonal when
    ``full_cov=False``. Returns a :class:`repro.core.gp.GPPosterior`.
    """
    q = gd_inverse(ntk_train, lr, steps, flow=flow)
    k_xx = np.asarray(nngp_train, np.float64)
    k_sx = np.asarray(nngp_cross, np.float64)  # (m, N)
    t_sx = np.asarray(ntk_cross, np.float64)  # (m, N)
    a = t_sx @ q  # (m, N)
    mean = a @ np.asarray(y_train, np.float64)
    k_ss = np.asarray(nngp_test, np.float64)
    if full_cov:
        if k_ss.ndim != 2:
            raise ValueError("full_cov=True needs the full (m, m) nngp_test")
        cov = k_ss + a @ k_xx @ a.T - a @ k_sx.T - k_sx @ a.T
        cov = 0.5 * (cov + cov.T)
        return gp.GPPosterior(mean=mean, cov=cov, var=np.clip(np.diag(cov), 0.0, None))
    diag = np.diag(k_ss) if k_ss.ndim == 2 else k_ss
    var = diag + np.einsum("ij,jk,ik->i", a, k_xx, a) - 2 * np.einsum("ij,ij->i", a, k_sx)
    return gp.GPPosterior(mean=mean, cov=None, var=np.clip(var, 0.0, None))


def kernel_regression(x_train, y_train, x_test, depth: int, *, kernel: str = "ntk", activation: str | Callable = "relu",
                      beta: float = 0.1, weight_var: float = 1.0, ridge: float = 0.0, full_cov: bool = False,
                      method: str = "auto", quad_points: int = 128) -> gp.GPPosterior:
    """Kernel (ridge) regression with the NNGP or NTK of a depth-L MLP, via :func:`repro.core.gp.gp_posterior`.

    ``kernel="nngp"`` is the exact Bayesian posterior of the infinitely wide network (``ridge`` = noise
    variance); ``kernel="ntk"`` gives the mean an infinitely wide network converges to under GD from a
    zero-output init (its ``var`` treats the NTK as a prior covariance; for the distribution of trained
    networks use :func:`ntk_predictive`).
    """
    if kernel not in ("ntk", "nngp"):
        raise ValueError(f"kernel must be 'ntk' or 'nngp', got {kernel!r}")
    pick = 1 if kernel == "ntk" else 0
    kw = dict(depth=depth, activation=activation, beta=beta, weight_var=weight_var, method=method,
              quad_points=quad_points)
    k_train = nngp_ntk(x_train, None, **kw)[pick]
    k_cross = nngp_ntk(x_test, x_train, **kw)[pick]
    k_test = nngp_ntk(x_test, None, **kw)[pick] if full_cov else nngp_ntk(x_test, None, diag=True, **kw)[pick]
    return gp.gp_posterior(np.asarray(k_train), np.asarray(k_cross), np.asarray(k_test), np.asarray(y_train),
                           noise_var=ridge, full_cov=full_cov)

