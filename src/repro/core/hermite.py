"""Hermite polynomials, dual activations and the depth recursion of dot-product NNGP / NTK kernels.

**Hermite polynomials.** ``h_k = He_k / sqrt(k!)`` are the probabilists' Hermite polynomials normalized to
be orthonormal under the standard Gaussian, ``E[h_j(z) h_k(z)] = delta_jk`` for ``z ~ N(0, 1)``:
``h_0 = 1``, ``h_1 = x``, ``h_2 = (x^2 - 1)/sqrt(2)``, ``h_3 = (x^3 - 3x)/sqrt(6)``, ... They obey
``h_{k+1} = (x h_k - sqrt(k) h_{k-1}) / sqrt(k+1)`` and ``h_k' = sqrt(k) h_{k-1}``.

**Dual activations** (Daniely, Frostig & Singer 2016). For an activation ``phi = sum_k a_k h_k`` and a pair
``(u, v)`` of standard Gaussians with correlation ``xi``, ``E[h_j(u) h_k(v)] = delta_jk xi^k``, so

    dual(xi)  = E[phi(u) phi(v)]   = sum_k a_k^2 xi^k
    dual'(xi) = E[phi'(u) phi'(v)] = sum_k k a_k^2 xi^(k-1)

(the dual of the derivative is the derivative of the dual). ``phi`` is *normalized* when
``sum_k a_k^2 = E[phi(z)^2] = 1``, i.e. ``dual(1) = 1``; :class:`DualActivation` always is.

**Depth recursion.** For unit-norm inputs with ``xi = x.x'``, a bias-free fully connected network with ``L``
hidden layers of a normalized activation (weight variance 1, NTK parametrization), infinitely wide, has

    xi_0 = xi,   xi_l = dual(xi_{l-1})                          (NNGP: the output covariance is xi_L)
    K_0  = xi,   K_l  = dual(xi_{l-1}) + K_{l-1} dual'(xi_{l-1})   (NTK: K_L)

This is :mod:`repro.core.kernels`' recursion with ``beta = 0``, ``weight_var = 1``, inputs of norm
``sqrt(n0)`` and ``depth = L + 1`` weight layers, specialised to kernels that depend on ``xi`` alone (a test
checks the two agree). Because ``dual(1) = 1`` the NNGP diagonal stays 1, while the NTK diagonal obeys
``K_l(1) = 1 + g K_{l-1}(1)`` with ``g = dual'(1)`` and grows like ``g^l``. :func:`depth_kernels` therefore
rescales every layer by that exact diagonal (a common positive scalar per layer) and returns ``K_L / K_L(1)``,
which lies in ``[-1, 1]`` and never overflows, together with ``log K_L(1)``.

Also here: the ``L -> infinity`` limit of these kernels when correlations contract to 0
(:func:`limit_kernel`), and interpolation tables of the recursion in the angle between inputs for kernels
that are costly per element (ReLU's arc-cosine needs ~35 ns per element and layer; :func:`tabulate_depth_kernels`).

All array work runs in JAX in float64 (inside ``jax.enable_x64``, whatever the global setting); results
come back as NumPy float64 arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from repro.core import kernels

KERNELS: tuple[str, ...] = ("ntk", "nngp")
DUAL_KINDS: tuple[str, ...] = ("hermite", "relu", "erf", "quadrature")


# -- Hermite polynomials ------------------------------------------------------------------------------
def hermite_basis(x, degree: int) -> np.ndarray:
    """``(..., degree + 1)`` array of the normalized Hermite polynomials ``h_0 .. h_degree`` at ``x``."""
    if int(degree) < 0:
        raise ValueError(f"degree must be >= 0, got {degree}")
    x = np.asarray(x, dtype=np.float64)
    out = np.empty(x.shape + (int(degree) + 1,))
    out[..., 0] = 1.0
    if degree >= 1:
        out[..., 1] = x
    for k in range(1, int(degree)):  # h_{k+1} = (x h_k - sqrt(k) h_{k-1}) / sqrt(k + 1)
        out[..., k + 1] = (x * out[..., k] - math.sqrt(k) * out[..., k - 1]) / math.sqrt(k + 1)
    return out


def hermite_series(coefficients: Sequence[float], x) -> np.ndarray:
    """``sum_k a_k h_k(x)`` for coefficients ``a_0, a_1, ...``."""
    a = np.asarray(coefficients, dtype=np.float64)
    return hermite_basis(x, a.size - 1) @ a


def gaussian_rule(quad_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and probability weights of the Gauss-Hermite rule for ``E[f(z)]``, ``z ~ N(0, 1)``.

    Exact for polynomials of degree ``< 2 quad_points``.
    """
    if not 2 <= int(quad_points) <= 300:  # NumPy's weights underflow beyond ~350 nodes
        raise ValueError(f"quad_points must be in [2, 300], got {quad_points}")
    z, w = kernels._hermite_rule(int(quad_points))  # the rule repro.core.kernels already caches
    return z.copy(), w.copy()


def hermite_coefficients(fn: Callable | str, degree: int, *, quad_points: int = 200) -> np.ndarray:
    """``a_k = E[fn(z) h_k(z)]``, ``k = 0 .. degree``, by Gauss-Hermite quadrature.

    ``fn`` is a NumPy/JAX-compatible elementwise function or a name of :data:`repro.core.mlp_jax.ACTIVATIONS`.
    Exact for polynomials of degree ``< 2 quad_points - degree``; kinked functions (ReLU) converge slowly in
    ``quad_points``, so their high coefficients carry quadrature error.
    """
    from repro.core.mlp_jax import get_activation

    z, w = gaussian_rule(quad_points)
    f = np.asarray(get_activation(fn)(jnp.asarray(z)) if isinstance(fn, str) else fn(z), dtype=np.float64)
    return (w * f) @ hermite_basis(z, degree)


# -- dual activations ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DualActivation:
    """The dual ``xi -> (dual(xi), dual'(xi))`` of a normalized activation (see the module docstring).

    Build one with :meth:`from_hermite`, :meth:`relu`, :meth:`erf` or :meth:`from_activation`. Instances are
    hashable (they key compiled code) and compare equal when they describe the same activation.
    """

    name: str
    kind: str  # one of DUAL_KINDS
    coefficients: tuple[float, ...] = ()  # normalized Hermite coefficients a_k ("hermite")
    activation: Callable | str | None = field(default=None, compare=True)  # "quadrature" only
    scale: float = 1.0  # E[phi(z)^2] of the raw activation ("quadrature" only)
    quad_points: int = 64

    def __post_init__(self):
        if self.kind not in DUAL_KINDS:
            raise ValueError(f"unknown dual kind {self.kind!r}; choose one of {', '.join(DUAL_KINDS)}")
        if self.kind == "hermite":
            total = sum(a * a for a in self.coefficients)
            if not self.coefficients or abs(total - 1.0) > 1e-12:
                raise ValueError(f"{self.name}: Hermite coefficients must have sum a_k^2 = 1, got {total}")

    # constructors
    @classmethod
    def from_hermite(cls, coefficients: Sequence[float], name: str | None = None, *,
                     normalize: bool = True) -> "DualActivation":
        """``phi = sum_k a_k h_k`` (``a_0, a_1, ...``), rescaled to ``sum a_k^2 = 1`` unless ``normalize=False``."""
        a = np.asarray(coefficients, dtype=np.float64)
        if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)) or not np.any(a):
            raise ValueError(f"need a non-zero finite 1-D list of Hermite coefficients, got {coefficients!r}")
        if normalize:
            a = a / np.sqrt(np.sum(a * a))
        nz = np.flatnonzero(a)
        a = a[: nz[-1] + 1]
        if name is None:
            name = " + ".join(f"{v:.3g} h{k}" for k, v in enumerate(a) if v != 0)
        return cls(name=name, kind="hermite", coefficients=tuple(float(v) for v in a))

    @classmethod
    def relu(cls) -> "DualActivation":
        """``sqrt(2) relu``: ``dual(xi) = (sqrt(1 - xi^2) + (pi - arccos xi) xi) / pi``,
        ``dual'(xi) = 1 - arccos(xi) / pi``."""
        return cls(name="relu", kind="relu")

    @classmethod
    def erf(cls) -> "DualActivation":
        """``erf / ||erf||``: ``dual(xi) = arcsin(2 xi / 3) / arcsin(2 / 3)`` (Williams 1997)."""
        return cls(name="erf", kind="erf")

    @classmethod
    def from_activation(cls, activation: Callable | str, name: str | None = None, *, degree: int | None = None,
                        quad_points: int = 64) -> "DualActivation":
        """The dual of any elementwise activation, normalized by ``E[phi(z)^2]``.

        With ``degree`` set: its Hermite expansion truncated at that degree (fast polynomial dual). Otherwise
        the Gaussian expectations of :func:`repro.core.kernels.quadrature_expectations`, per element (slow,
        exact up to the quadrature).
        """
        label = name or (activation if isinstance(activation, str) else getattr(activation, "__name__", "phi"))
        if degree is not None:
            return cls.from_hermite(hermite_coefficients(activation, degree), name=label)
        with jax.enable_x64(True):
            e, _ = kernels.quadrature_expectations(activation, jnp.float64(1.0), jnp.float64(1.0), jnp.float64(1.0),
                                                   quad_points=quad_points)
        return cls(name=label, kind="quadrature", activation=activation, scale=float(e), quad_points=quad_points)

    # evaluation (JAX-traceable)
    def value_and_derivative(self, xi):
        """``(dual(xi), dual'(xi))`` elementwise, JAX-traceable."""
        if self.kind == "hermite":
            a2 = [a * a for a in self.coefficients]
            value = jnp.zeros_like(xi) + a2[-1]
            for c in reversed(a2[:-1]):  # Horner
                value = value * xi + c
            deriv = jnp.zeros_like(xi)
            for k in range(len(a2) - 1, 0, -1):
                deriv = deriv * xi + k * a2[k]
            return value, deriv
        one = jnp.ones_like(xi)
        if self.kind == "relu":
            e, d = kernels.relu_expectations(one, one, xi)
            return 2.0 * e, 2.0 * d  # E[relu(z)^2] = 1/2
        if self.kind == "erf":
            e, d = kernels.erf_expectations(one, one, xi)
            norm = 2.0 / math.pi * math.asin(2.0 / 3.0)
            return e / norm, d / norm
        e, d = kernels.quadrature_expectations(self.activation, one, one, xi, quad_points=self.quad_points)
        return e / self.scale, d / self.scale

    def __call__(self, xi) -> tuple[np.ndarray, np.ndarray]:
        """``(dual(xi), dual'(xi))`` as NumPy float64 arrays."""
        xi = np.asarray(xi, dtype=np.float64)
        if self.kind == "hermite":
            a2 = np.square(self.coefficients)
            k = np.arange(a2.size)
            return np.polyval(a2[::-1], xi), np.polyval((k * a2)[:0:-1], xi) if a2.size > 1 else np.zeros_like(xi)
        if self.kind == "relu":
            theta = np.arccos(np.clip(xi, -1.0, 1.0))
            return (np.sqrt(np.clip(1 - xi * xi, 0.0, None)) + (np.pi - theta) * xi) / np.pi, 1.0 - theta / np.pi
        with jax.enable_x64(True):
            v, d = _dual_eval(self, jnp.asarray(xi))
            return np.asarray(v), np.asarray(d)

    def compiled_form(self) -> tuple["DualActivation | int", np.ndarray]:
        """``(static, weights)`` for compiled code: Hermite duals become ``(length, a_k^2 padded to length)`` so
        that one compilation serves every polynomial dual of that length; others are ``(self, [])``."""
        if self.kind != "hermite":
            return self, np.zeros(1)
        length = max(4, 1 << (len(self.coefficients) - 1).bit_length())
        w = np.zeros(length)
        w[: len(self.coefficients)] = np.square(self.coefficients)
        return length, w

    @property
    def slope_at_one(self) -> float:
        """``g = dual'(1)``: the growth factor of the NTK diagonal, and whether correlation 1 repels (``g > 1``)."""
        return float(self(np.array([1.0]))[1][0])

    def fixed_point(self, start: float = 0.5) -> tuple[float, float]:
        """``(xi_star, c)``: where ``xi_l`` goes from ``xi_0 = start`` and the slope ``c = dual'(xi_star)``.

        With ``g = dual'(1) <= 1`` the fixed point 1 attracts every correlation (slowly, e.g. ``1 - O(1/l^2)``
        for ReLU): ``(1.0, g)`` is returned without iterating.
        """
        return _fixed_point(self, float(start))


def evaluate(form: "DualActivation | int", weights, xi):
    """``(dual(xi), dual'(xi))`` from :meth:`DualActivation.compiled_form`; JAX-traceable, ``weights`` may be traced."""
    if not isinstance(form, int):
        return form.value_and_derivative(xi)
    value = jnp.zeros_like(xi) + weights[form - 1]
    deriv = jnp.zeros_like(xi) + (form - 1) * weights[form - 1]
    for k in range(form - 2, -1, -1):  # Horner
        value = value * xi + weights[k]
        if k > 0:
            deriv = deriv * xi + k * weights[k]
    return value, deriv


@lru_cache(maxsize=256)
def _fixed_point(dual: DualActivation, start: float, steps: int = 100_000, tol: float = 1e-15) -> tuple[float, float]:
    g = dual.slope_at_one
    if g <= 1.0 + 1e-12:
        return 1.0, g
    x = np.array([start])
    for _ in range(steps):
        nxt = np.clip(dual(x)[0], -1.0, 1.0)
        done = abs(nxt[0] - x[0]) <= tol * max(1.0, abs(x[0])) or abs(nxt[0]) < 1e-300
        x = nxt
        if done:
            break
    xi_star = 0.0 if abs(x[0]) < 1e-12 else float(x[0])
    return xi_star, float(dual(np.array([xi_star]))[1][0])


@partial(jax.jit, static_argnames=("dual",))
def _dual_eval(dual: DualActivation, xi):
    return dual.value_and_derivative(xi)


# -- the depth recursion ------------------------------------------------------------------------------
class DepthKernels(NamedTuple):
    """Kernels after each requested depth, divided by their diagonal value."""

    depths: tuple[int, ...]
    values: np.ndarray  # (len(depths), *xi.shape): K_L(xi) / K_L(1) (NTK) or xi_L (NNGP)
    log_diag: np.ndarray  # (len(depths),): log K_L(1) (0 for the NNGP)


def diagonal_schedule(dual: DualActivation, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-layer rescaling of the NTK recursion, from the exact diagonal ``s_l = K_l(1) = 1 + g s_{l-1}``.

    Returns ``a`` and ``b`` (length ``depth``; entry ``l - 1`` is layer ``l``) such that the normalized kernel
    ``k_l = K_l / s_l`` obeys ``k_l = a_l dual(xi_{l-1}) + b_l k_{l-1} dual'(xi_{l-1})``, i.e. ``a_l = 1/s_l``
    and ``b_l = s_{l-1}/s_l``, and ``log s_l`` (length ``depth + 1``, from ``s_0 = 1``). Computed from
    ``t_l = 1/s_l = t_{l-1} / (t_{l-1} + g)`` so nothing overflows.
    """
    g = dual.slope_at_one
    a, b, log_s = np.empty(depth), np.empty(depth), np.zeros(depth + 1)
    t = 1.0
    for l in range(depth):
        b[l] = 1.0 / (t + g)
        t = t * b[l]
        a[l] = t
        log_s[l + 1] = log_s[l] - math.log(b[l])
    return a, b, log_s


SNAPSHOT_BUCKET = 6  # depth_kernels compiles once per dual form for every list of up to this many depths


def _chunks(flat: np.ndarray, block: int | None):
    """``(start, padded piece)`` pairs covering ``flat`` in pieces of one fixed size (a multiple of ``block``):
    every array size reuses the same compiled code."""
    size = (1 << 18) if block is not None else (1 << 24)
    for start in range(0, max(flat.size, 1), size):
        part = flat[start : start + size]
        yield start, np.pad(part, (0, size - part.size))


def _default_block() -> int | None:
    # on CPU, running all layers on a cache-sized block before the next is ~4x faster than whole-array sweeps
    return 4096 if jax.default_backend() == "cpu" else None


@partial(jax.jit, static_argnames=("form", "kernel", "block"))
def _recursion(xi, stops, weights, *, form, kernel, block):
    g = evaluate(form, weights, jnp.ones((), xi.dtype))[1]  # dual'(1)

    def layer(_, carry):
        x, k, t = carry  # t = 1 / K_{l-1}(1)
        v, d = evaluate(form, weights, x)
        v = jnp.where(x >= 1.0, 1.0, v)  # dual(1) = 1 exactly: a rounded sum a_k^2 must not move xi = 1 (g > 1 repels)
        b = 1.0 / (t + g)  # K_{l-1}(1) / K_l(1), from K_l(1) = 1 + g K_{l-1}(1)
        if kernel == "ntk":
            k = t * b * v + b * k * d  # Eq.: K_l = dual(xi_{l-1}) + K_{l-1} dual'(xi_{l-1}), divided by K_l(1)
        return jnp.clip(v, -1.0, 1.0), k, t * b  # xi_l = dual(xi_{l-1}); rounding must never push it past 1

    def run(x):
        x = jnp.clip(x, -1.0, 1.0)
        carry, outs, start = (x, x, jnp.ones((), x.dtype)), [], 0
        for i in range(stops.shape[0]):  # snapshots after each requested depth (values traced: any depths)
            carry = jax.lax.fori_loop(start, stops[i], layer, carry)
            outs.append(carry[1] if kernel == "ntk" else carry[0])
            start = stops[i]
        return jnp.stack(outs)

    if block is None:
        return run(xi)
    return jnp.moveaxis(jax.lax.map(run, xi.reshape(-1, block)), 1, 0).reshape(stops.shape[0], -1)


def depth_kernels(xi, dual: DualActivation, depths: Sequence[int], *, kernel: str = "ntk",
                  block: int | None = 0) -> DepthKernels:
    """Normalized NTK ``K_L(xi) / K_L(1)`` (or NNGP ``xi_L``) of a depth-``L`` network for each ``L`` in ``depths``.

    ``xi``: any array of correlations (clipped to ``[-1, 1]``; give Gram matrices an exact unit diagonal).
    ``depths``: numbers of hidden layers (``0`` is the input kernel ``xi``). One pass up to the largest depth,
    compiled once per dual and number of depths; ``block`` elements at a time on CPU (``0`` = default, ``None`` =
    whole array).
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    depths = tuple(int(d) for d in depths)
    if not depths or min(depths) < 0:
        raise ValueError(f"depths must be non-negative integers, got {depths}")
    order = sorted(set(depths))
    # pad the list to a multiple of SNAPSHOT_BUCKET (zero-length segments): one compilation for 1..6 depths
    stops = np.array(order + [order[-1]] * (-len(order) % SNAPSHOT_BUCKET), dtype=np.int32)
    xi = np.asarray(xi, dtype=np.float64)  # clipped to [-1, 1] in the compiled code
    shape = xi.shape
    _, _, log_s = diagonal_schedule(dual, order[-1])
    block = _default_block() if block == 0 else block
    flat = xi.reshape(-1)
    values = np.empty((len(order), flat.size))
    form, weights = dual.compiled_form()
    with jax.enable_x64(True):
        sj, wj = jnp.asarray(stops), jnp.asarray(weights)
        pending = [(start, _recursion(jnp.asarray(part), sj, wj, form=form, kernel=kernel, block=block))
                   for start, part in _chunks(flat, block)]  # dispatched asynchronously, then collected
        for start, out in pending:
            stop = min(start + out.shape[1], flat.size)
            values[:, start:stop] = np.asarray(out)[: len(order), : stop - start]
    pick = [order.index(d) for d in depths]
    log_diag = log_s[np.array(depths)] if kernel == "ntk" else np.zeros(len(depths))
    return DepthKernels(depths=depths, values=values[pick].reshape((len(depths),) + shape), log_diag=log_diag)


# -- the infinite-depth limit -------------------------------------------------------------------------
@partial(jax.jit, static_argnames=("form", "steps", "block"))
def _iterate(xi, weights, *, form, steps, block):
    xi = jnp.clip(xi, -1.0, 1.0)

    def run(x):
        return jax.lax.fori_loop(0, steps, lambda _, z: jnp.clip(evaluate(form, weights, z)[0], -1.0, 1.0), x)

    if block is None:
        return run(xi)
    return jax.lax.map(run, xi.reshape(-1, block)).reshape(-1)


@jax.jit
def _max_abs(x):
    return jnp.max(jnp.abs(x))


class LimitKernel(NamedTuple):
    values: np.ndarray  # xi_N: the limit kernel Psi up to the common positive factor c^N (inf where xi = 1)
    steps: int  # N
    log_scale: float  # N log(1/c): Psi = values * exp(log_scale)
    c: float


def limit_kernel(xi, dual: DualActivation, *, tol: float = 1e-13, max_steps: int = 100_000,
                 block: int | None = 0) -> LimitKernel:
    """The ``L -> infinity`` limit ``Psi(xi) = lim c^-l xi_l`` when correlations contract to ``xi* = 0``, ``0 < c < 1``.

    Both kernels converge to it up to scalars that do not depend on ``xi``: ``xi_L ~ c^L Psi(xi)`` and
    ``K_L(xi) ~ L c^L Psi(xi)`` (each NTK layer after the correlation has left 1 adds one ``c^L Psi`` term), while
    ``K_L(1)`` grows like ``g^L``; so ``K_L(x, X) K_L(X, X)^-1 y`` has the sign of ``Psi(x, X) y`` in the limit.
    The NTK reaches it only for ``L >> 1 / (1 - xi)`` (before that its ``g^l`` growth near ``xi = 1`` adds a
    factor ``(1 - xi)^-1``). Iterates the dual map until every ``|xi_N| <= tol`` (linear regime: relative error
    ``O(tol)``); entries with ``xi = 1`` never leave the repelling fixed point and get ``+inf``.
    """
    xi_star, c = dual.fixed_point()
    if abs(xi_star) > 1e-12 or not 0.0 < c < 1.0:
        raise ValueError(f"{dual.name}: limit_kernel needs correlations that contract to 0 at a rate 0 < c < 1; "
                         f"got xi* = {xi_star:.3g}, c = {c:.3g}")
    xi = np.asarray(xi, dtype=np.float64)
    shape, flat = xi.shape, xi.reshape(-1)
    ones = flat >= 1.0  # clipped to [-1, 1] in the compiled code
    block = _default_block() if block == 0 else block
    every = 16  # iterations between convergence checks
    parts, counts = [], []
    form, weights = dual.compiled_form()
    with jax.enable_x64(True):
        wj = jnp.asarray(weights)
        for start, part in _chunks(np.where(ones, 0.0, flat), block):
            xj, steps = jnp.asarray(part), 0
            while float(_max_abs(xj)) > tol:
                if steps >= max_steps:
                    raise RuntimeError(f"limit_kernel: correlations still above {tol} after {max_steps} steps")
                xj, steps = _iterate(xj, wj, form=form, steps=every, block=block), steps + every
            parts.append(xj)
            counts.append(steps)
        total = max(counts)
        for i, (xj, steps) in enumerate(zip(parts, counts)):  # bring every piece to the same N
            while steps < total:
                xj, steps = _iterate(xj, wj, form=form, steps=every, block=block), steps + every
            parts[i] = np.asarray(xj)
    values = np.concatenate(parts)[: flat.size]
    values = np.where(ones, np.inf, values).reshape(shape)
    return LimitKernel(values=values, steps=total, log_scale=total * math.log(1.0 / c), c=c)


# -- interpolation tables in the angle ----------------------------------------------------------------
ANGLE_OFFSET = 1e-7  # nodes are uniform in log(theta + ANGLE_OFFSET): dense near 0, where deep kernels vary fastest


def _angle_nodes(n_nodes: int) -> np.ndarray:
    u = np.linspace(math.log(ANGLE_OFFSET), math.log(math.pi + ANGLE_OFFSET), n_nodes)
    nodes = np.exp(u) - ANGLE_OFFSET
    nodes[0], nodes[-1] = 0.0, math.pi
    return nodes


@partial(jax.jit, static_argnames=("form", "depths", "kernel"))
def _recursion_with_slope(theta, a, b, weights, *, form, depths, kernel):
    """Normalized kernels at ``xi = cos(theta)`` and their derivative in ``theta`` (forward mode)."""

    def layer(l, carry):
        x, k, dx, dk = carry
        v, d = evaluate(form, weights, x)
        dd = jax.jvp(lambda z: evaluate(form, weights, z)[1], (x,), (dx,))[1]  # dual''(x) dx
        if kernel == "ntk":
            k, dk = a[l] * v + b[l] * k * d, a[l] * d * dx + b[l] * (dk * d + k * dd)
        return jnp.clip(v, -1.0, 1.0), k, d * dx, dk

    x, dx = jnp.cos(theta), -jnp.sin(theta)
    carry, outs, start = (x, x, dx, dx), [], 0
    for stop in depths:
        carry = jax.lax.fori_loop(start, stop, layer, carry)
        outs.append((carry[1], carry[3]) if kernel == "ntk" else (carry[0], carry[2]))
        start = stop
    return jnp.stack([o[0] for o in outs]), jnp.stack([o[1] for o in outs])


@jax.jit
def _hermite_interp(nodes, values, slopes, theta):
    theta = jnp.clip(theta, 0.0, jnp.pi)
    u0, du = math.log(ANGLE_OFFSET), math.log((math.pi + ANGLE_OFFSET) / ANGLE_OFFSET) / (nodes.shape[0] - 1)
    j = jnp.clip(jnp.floor((jnp.log(theta + ANGLE_OFFSET) - u0) / du).astype(jnp.int32), 0, nodes.shape[0] - 2)
    last = nodes.shape[0] - 2  # rounding in the log may put theta one interval off: step back or forward
    j = jnp.where(theta < nodes[j], jnp.maximum(j - 1, 0),
                  jnp.where(theta >= nodes[j + 1], jnp.minimum(j + 1, last), j))
    h = nodes[j + 1] - nodes[j]
    t = (theta - nodes[j]) / h
    h00, h10 = (1 + 2 * t) * (1 - t) ** 2, t * (1 - t) ** 2
    h01, h11 = t * t * (3 - 2 * t), t * t * (t - 1)
    return (h00 * values[:, j] + h10 * h * slopes[:, j] + h01 * values[:, j + 1] + h11 * h * slopes[:, j + 1])


@dataclass(frozen=True)
class KernelTable:
    """Normalized depth kernels tabulated on angles ``theta = arccos(xi)`` in ``[0, pi]``; cubic Hermite in ``theta``.

    Meant for kernels that stay of order one on ``[0, pi]`` (``dual'(1) <= 1``: ReLU, erf), where it matches the
    direct recursion to about 1e-10 (measure it with :meth:`max_error`). Give angles, not correlations: for
    nearby inputs ``theta = 2 arcsin(|x - x'| / 2)`` keeps digits that ``arccos(x.x')`` loses.
    """

    dual: DualActivation
    depths: tuple[int, ...]
    kernel: str
    nodes: np.ndarray
    values: np.ndarray  # (len(depths), n_nodes)
    slopes: np.ndarray
    log_diag: np.ndarray

    def __call__(self, theta, depth: int | Sequence[int]) -> np.ndarray:
        """The normalized kernel at angles ``theta`` (any shape) for one tabulated ``depth``, or stacked over a
        list of depths (one interval search serves them all)."""
        many = not isinstance(depth, (int, np.integer))
        wanted = list(depth) if many else [depth]
        missing = [d for d in wanted if d not in self.depths]
        if missing:
            raise ValueError(f"depths {missing} were not tabulated; tabulated: {self.depths}")
        rows = [self.depths.index(d) for d in wanted]
        flat = np.asarray(theta, dtype=np.float64).reshape(-1)  # clipped to [0, pi] in the compiled code
        out = np.empty((len(rows), flat.size))
        with jax.enable_x64(True):
            nodes = jnp.asarray(self.nodes)
            vals, slopes = jnp.asarray(self.values[rows]), jnp.asarray(self.slopes[rows])
            pending = [(start, _hermite_interp(nodes, vals, slopes, jnp.asarray(part)))
                       for start, part in _chunks(flat, 1)]
            for start, res in pending:
                stop = min(start + res.shape[1], flat.size)
                out[:, start:stop] = np.asarray(res)[:, : stop - start]
        shape = np.shape(theta)
        return out.reshape((len(rows),) + shape) if many else out[0].reshape(shape)

    def max_error(self, theta, depths: int | Sequence[int] | None = None) -> float:
        """Largest relative difference between the table and the direct recursion at angles ``theta``, over
        ``depths`` (default: every tabulated depth)."""
        if depths is None:
            depths = list(self.depths)
        depths = [depths] if isinstance(depths, (int, np.integer)) else list(depths)
        theta = np.asarray(theta, dtype=np.float64).reshape(-1)
        direct = np.concatenate([self._direct(theta[s : s + self.nodes.size])
                                 for s in range(0, theta.size, self.nodes.size)], axis=1)
        direct = direct[[self.depths.index(d) for d in depths]]
        return float(np.max(np.abs(self(theta, depths) - direct) / np.maximum(np.abs(direct), 1e-300)))

    def _direct(self, theta: np.ndarray) -> np.ndarray:
        # the recursion that built the table, at other angles (padded to the table's size: no new compilation)
        a, b, _ = diagonal_schedule(self.dual, self.depths[-1])
        form, weights = self.dual.compiled_form()
        padded = np.pad(theta, (0, self.nodes.size - theta.size), constant_values=1.0)
        with jax.enable_x64(True):
            v, _ = _recursion_with_slope(jnp.asarray(padded), jnp.asarray(a), jnp.asarray(b), jnp.asarray(weights),
                                         form=form, depths=self.depths, kernel=self.kernel)
            return np.asarray(v)[:, : theta.size]


def tabulate_depth_kernels(dual: DualActivation, depths: Sequence[int], *, kernel: str = "ntk",
                           n_nodes: int = 8000) -> KernelTable:
    """A :class:`KernelTable` of :func:`depth_kernels` on ``n_nodes`` angles (values and exact slopes)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    depths = tuple(sorted(set(int(d) for d in depths)))
    if not depths or depths[0] < 0:
        raise ValueError(f"depths must be non-negative integers, got {depths}")
    nodes = _angle_nodes(int(n_nodes))
    a, b, log_s = diagonal_schedule(dual, depths[-1])
    # kernels of xi = cos(theta) can have one-sided slopes at theta = 0 and pi (ReLU's dual' = 1 - theta/pi):
    # the end slopes are taken just inside the interval, and the value at 0 is exactly 1
    at = nodes.copy()
    at[0], at[-1] = 0.5 * nodes[1], np.pi - 1e-6  # inside, yet far enough for cos(theta) to differ from +-1
    values_at_end_fix = np.pi - at[-1]
    with jax.enable_x64(True):
        form, weights = dual.compiled_form()
        v, s = _recursion_with_slope(jnp.asarray(at), jnp.asarray(a), jnp.asarray(b), jnp.asarray(weights),
                                     form=form, depths=depths, kernel=kernel)
        values, slopes = np.array(v), np.array(s)
    values[:, 0] = 1.0
    values[:, -1] += slopes[:, -1] * values_at_end_fix
    log_diag = log_s[np.array(depths)] if kernel == "ntk" else np.zeros(len(depths))
    return KernelTable(dual=dual, depths=depths, kernel=kernel, nodes=nodes, values=values, slopes=slopes,
                       log_diag=log_diag)


@lru_cache(maxsize=8)
def _cached_table(dual: DualActivation, depths: tuple[int, ...], kernel: str, n_nodes: int) -> KernelTable:
    return tabulate_depth_kernels(dual, depths, kernel=kernel, n_nodes=n_nodes)


def cached_table(dual: DualActivation, depths: Sequence[int], *, kernel: str = "ntk",
                 n_nodes: int = 8000) -> KernelTable:
    """:func:`tabulate_depth_kernels`, memoized on its arguments (tables are reused across data sets)."""
    return _cached_table(dual, tuple(sorted(set(int(d) for d in depths))), kernel, int(n_nodes))
