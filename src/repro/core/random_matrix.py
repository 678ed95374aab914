"""Random-matrix tools for high-dimensional linear learning (NumPy / SciPy, float64).

Conventions. A design matrix ``X`` is ``(P, N)``: ``P`` examples (rows) of ``N`` features with i.i.d.
``N(0, scale / N)`` entries, and ``alpha = P / N``. With this scaling the Gram matrix ``W = X^T X`` has mean
eigenvalue ``alpha * scale`` (no ``1/P`` in front), which is the convention of the high-dimensional learning
dynamics literature (Advani, Saxe & Sompolinsky 2020): gradient flow ``tau dw/dt = X^T (y - X w)`` on
``1/2 ||y - X w||^2`` relaxes mode ``i`` at rate ``lambda_i / tau``.

- Marchenko–Pastur law of ``W`` as ``N, P -> infinity`` at fixed ``alpha``: :func:`mp_edges`,
  :func:`mp_null_mass` (the delta mass ``(1 - alpha)_+`` at zero), :func:`mp_density` (the continuous part),
  :func:`mp_expect` (adaptive quadrature of ``E_rho[f(lambda)]``, delta mass included, vector-valued ``f``
  allowed), :func:`mp_quadrature` (fixed nodes and weights, for vectorised sweeps) and :func:`mp_stieltjes`
  (closed form of ``E_rho[1 / (lambda + gamma)]``, e.g. the error of ridge regression).
- Exact gradient descent on least squares through the thin SVD of ``X``: :class:`LinearModes`,
  :func:`gd_decay`, :func:`gd_weights` (gradient flow at any times, or discrete GD after any numbers of steps,
  ``inf`` included) and :func:`ridge_weights` (``gamma = 0``: the minimum-norm least-squares solution, which
  is where GD from zero converges).
- Student–teacher data: :func:`gaussian_inputs`, :class:`LinearTeacher` (``y = w . x + noise``) and
  :class:`TwoLayerTeacher` (``y = a . act(V x) / sqrt(K) + noise``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Callable

import numpy as np

# -- Marchenko–Pastur law ----------------------------------------------------------------------------


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha = P/N must be a positive finite number, got {alpha!r}")
    return alpha


def mp_edges(alpha: float, scale: float = 1.0) -> tuple[float, float]:
    """Edges ``scale * (1 -+ sqrt(alpha))^2`` of the continuous part of the spectrum of ``X^T X``."""
    alpha = _check_alpha(alpha)
    r = math.sqrt(alpha)
    return scale * (1.0 - r) ** 2, scale * (1.0 + r) ** 2


def mp_null_mass(alpha: float) -> float:
    """Fraction ``(1 - alpha)_+`` of zero eigenvalues of ``X^T X``: weight directions no example reaches."""
    return max(0.0, 1.0 - _check_alpha(alpha))


def mp_density(lam, alpha: float, scale: float = 1.0) -> np.ndarray:
    """Continuous part of the Marchenko–Pastur density of ``X^T X`` at ``lam`` (zero outside the edges).

    ``rho(lam) = sqrt((lam_+ - lam)(lam - lam_-)) / (2 pi scale lam)``; it integrates to ``min(1, alpha)``,
    the rest being the delta mass :func:`mp_null_mass` at zero.
    """
    lo, hi = mp_edges(alpha, scale)
    lam = np.asarray(lam, dtype=np.float64)
    inside = (lam > lo) & (lam < hi) & (lam > 0)
    safe = np.where(inside, lam, 1.0)
    val = np.sqrt(np.clip((hi - safe) * (safe - lo), 0.0, None)) / (2 * np.pi * scale * safe)
    return np.where(inside, val, 0.0)


def _theta_integrand(f: Callable, alpha: float, scale: float) -> Callable[[float], np.ndarray]:
    """``f(lam) rho(lam) dlam`` after ``lam = m - h cos(theta)``, theta in [0, pi].

    The substitution turns the square-root edges into ``h^2 sin^2(theta) / (2 pi lam)``, smooth on the whole
    interval (even at alpha = 1, where ``lam_- = 0``: there ``sin^2 / (1 - cos) = 1 + cos``).
    """
    r = math.sqrt(alpha)
    m, h = 1.0 + alpha, 2.0 * r  # centre and half-width of the unit-scale support

    def g(theta):
        c, s = np.cos(theta), np.sin(theta)
        lam = m - h * c
        if alpha == 1.0:
            dens = h * (1.0 + c) / (2 * np.pi)  # h^2 sin^2 / (2 pi h (1 - cos)) without the 0/0
        else:
            dens = h * h * s * s / (2 * np.pi * lam)
        return np.asarray(f(scale * lam), dtype=np.float64) * dens

    return g


def mp_expect(f: Callable, alpha: float, scale: float = 1.0, *, epsabs: float = 1e-11, epsrel: float = 1e-10,
              limit: int = 2000):
    """``E_rho[f(lambda)]`` under the full Marchenko–Pastur law of ``X^T X``: continuous part plus the delta mass.

    ``f`` takes a float and returns a float or an array (integrated elementwise with ``scipy.integrate.quad_vec``);
    when ``alpha < 1`` it is also called at ``lambda = 0.0`` and must be finite there (write removable
    singularities such as ``(1 - exp(-lam t))^2 / lam`` with their limit at 0).
    """
    from scipy.integrate import quad_vec

    alpha = _check_alpha(alpha)
    value, _ = quad_vec(_theta_integrand(f, alpha, scale), 0.0, np.pi, epsabs=epsabs, epsrel=epsrel, limit=limit)
    null = mp_null_mass(alpha)
    if null > 0:
        value = value + null * np.asarray(f(0.0), dtype=np.float64)
    return float(value) if np.ndim(value) == 0 else np.asarray(value)


@lru_cache(maxsize=16)
def _legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.legendre.leggauss(n)
    x.setflags(write=False)
    w.setflags(write=False)
    return x, w


def mp_quadrature(alpha: float, n: int = 400, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights with ``sum(w * f(lam)) ~= E_rho[f]`` (delta mass included as a node at 0 when alpha < 1).

    Gauss–Legendre in ``theta`` on the smooth integrand of :func:`mp_expect`: exact for polynomials of moderate
    degree, fast to converge for smooth ``f``; use :func:`mp_expect` for sharply varying ``f``.
    """
    alpha = _check_alpha(alpha)
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    x, wx = _legendre(int(n))
    theta = 0.5 * np.pi * (x + 1.0)
    r = math.sqrt(alpha)
    m, h = 1.0 + alpha, 2.0 * r
    lam = m - h * np.cos(theta)
    if alpha == 1.0:
        dens = h * (1.0 + np.cos(theta)) / (2 * np.pi)
    else:
        dens = h * h * np.sin(theta) ** 2 / (2 * np.pi * lam)
    weights = 0.5 * np.pi * wx * dens
    null = mp_null_mass(alpha)
    if null > 0:
        return np.concatenate([[0.0], scale * lam]), np.concatenate([[null], weights])
    return scale * lam, weights


def mp_stieltjes(gamma, alpha: float, scale: float = 1.0):
    """``E_rho[1 / (lambda + gamma)]`` in closed form, for ``gamma >= 0`` (``inf`` at 0 when ``alpha <= 1``).

    With ``g = E[1/(lambda + gamma)]`` at unit scale, the Marchenko–Pastur law gives
    ``gamma g^2 + (alpha - 1 + gamma) g - 1 = 0``, whose positive root is taken.
    """
    alpha = _check_alpha(alpha)
    gam = np.asarray(gamma, dtype=np.float64) / scale
    if np.any(gam < 0):
        raise ValueError("gamma must be >= 0")
    b = alpha - 1.0 + gam
    with np.errstate(divide="ignore", invalid="ignore"):
        # (sqrt(b^2 + 4 gam) - b) / (2 gam) rewritten as 2 / (sqrt(b^2 + 4 gam) + b): no cancellation for b > 0
        root = np.sqrt(b * b + 4.0 * gam)
        g = np.where(b > 0, 2.0 / (root + b), (root - b) / (2.0 * gam))
        at_zero = 1.0 / (alpha - 1.0) if alpha > 1 else np.inf
        g = np.where(gam == 0, at_zero, g)
    g = g / scale
    return float(g) if np.ndim(g) == 0 else g


# -- exact gradient descent on least squares ---------------------------------------------------------
@dataclass(frozen=True)
class LinearModes:
    """Thin SVD ``X = U diag(s) V^T`` of a ``(P, N)`` design, keeping the modes with ``s > rtol * max(s)``.

    ``s**2`` are the nonzero eigenvalues of ``X^T X``; the dropped directions (the null space of ``X``) are the
    *frozen subspace*: gradient descent on ``1/2 ||y - X w||^2`` never moves the weights there.
    """

    u: np.ndarray  # (P, r)
    s: np.ndarray  # (r,)
    vt: np.ndarray  # (r, N)

    @classmethod
    def of(cls, x, rtol: float = 1e-10, method: str = "svd") -> "LinearModes":
        """``method="svd"``: LAPACK's SVD (most accurate); ``"gram"``: eigendecomposition of the smaller of
        ``X^T X`` and ``X X^T`` (2-3x faster for tall or wide ``X``; singular values below about
        ``1e-7 * s_max`` lose relative accuracy, so keep ``rtol`` above that)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"x must be a (P, N) matrix, got shape {x.shape}")
        if method == "svd":
            u, s, vt = np.linalg.svd(x, full_matrices=False)
        elif method == "gram":
            p, n = x.shape
            lam, vec = np.linalg.eigh(x.T @ x if p >= n else x @ x.T)
            lam, vec = lam[::-1], vec[:, ::-1]
            s = np.sqrt(np.clip(lam, 0.0, None))
            ok = s > max(rtol, 1e-7) * (s[0] if s.size else 0.0)
            s, vec = s[ok], vec[:, ok]
            if p >= n:
                vt, u = vec.T, (x @ vec) / s
            else:
                u, vt = vec, (vec.T @ x) / s[:, None]
        else:
            raise ValueError(f"method must be 'svd' or 'gram', got {method!r}")
        keep = s > rtol * (s[0] if s.size else 0.0)
        return cls(u=u[:, keep], s=s[keep], vt=vt[keep])

    @property
    def eigenvalues(self) -> np.ndarray:
        """Nonzero eigenvalues of ``X^T X``, descending."""
        return self.s**2

    @property
    def rank(self) -> int:
        return int(self.s.size)

    @property
    def shape(self) -> tuple[int, int]:
        return self.u.shape[0], self.vt.shape[1]


def _modes(x) -> LinearModes:
    return x if isinstance(x, LinearModes) else LinearModes.of(x)


def gd_decay(eigenvalues, times, *, lr: float | None = None, tau: float = 1.0) -> np.ndarray:
    """Factor by which each mode's distance to its fixed point has shrunk, shape ``(len(times), r)``.

    Gradient flow (``lr=None``): ``exp(-lambda t / tau)`` at times ``t``. Discrete GD with learning rate ``lr``:
    ``(1 - lr lambda)^k`` after ``k`` steps (``times`` are step counts). ``inf`` gives the converged limit
    (0 for every mode, which requires ``0 < lr * lambda < 2`` for discrete GD).
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)[None, :]
    t = np.atleast_1d(np.asarray(times, dtype=np.float64))[:, None]
    if np.any(t < 0):
        raise ValueError("times must be >= 0")
    with np.errstate(invalid="ignore", over="ignore"):
        if lr is None:
            if tau <= 0:
                raise ValueError(f"tau must be > 0, got {tau}")
            out = np.exp(-lam * np.where(np.isinf(t), np.inf, t) / tau)
            return np.where(np.isinf(t), 0.0, out)
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        factor = 1.0 - lr * lam
        if np.isinf(t).any() and np.any(np.abs(factor) >= 1):
            raise ValueError("discrete GD does not converge: lr * lambda_max must be in (0, 2)")
        finite = np.where(np.isinf(t), 0.0, t)
        if np.any(finite != np.round(finite)):
            raise ValueError("discrete GD needs integer step counts in times")
        return np.where(np.isinf(t), 0.0, factor**finite)


def gd_weights(x, y, w0, times, *, lr: float | None = None, tau: float = 1.0) -> np.ndarray:
    """Weights of GD on ``1/2 ||y - X w||^2`` from ``w0``, exactly, at each of ``times``: ``(len(times), N)``.

    In the row space of ``X`` each coordinate ``c_i = v_i . w`` moves to ``u_i . y / s_i`` along
    ``c_i(t) = c_i(0) d_i(t) + (u_i . y / s_i)(1 - d_i(t))`` with ``d`` from :func:`gd_decay`; the null-space
    part of ``w0`` stays (frozen subspace). ``x`` may be a :class:`LinearModes` to reuse one SVD.
    """
    modes = _modes(x)
    y = np.asarray(y, dtype=np.float64)
    w0 = np.asarray(w0, dtype=np.float64)
    p, n = modes.shape
    if y.shape != (p,) or w0.shape != (n,):
        raise ValueError(f"expected y of shape ({p},) and w0 of shape ({n},), got {y.shape} and {w0.shape}")
    c0 = modes.vt @ w0
    target = (modes.u.T @ y) / modes.s
    d = gd_decay(modes.eigenvalues, times, lr=lr, tau=tau)  # (T, r)
    return w0[None, :] + ((1.0 - d) * (target - c0)[None, :]) @ modes.vt


def ridge_weights(x, y, gamma: float) -> np.ndarray:
    """``argmin 1/2 ||y - X w||^2 + gamma/2 ||w||^2 = V diag(s / (s^2 + gamma)) U^T y``.

    ``gamma = 0`` gives the minimum-norm least-squares solution (the limit of GD started from zero).
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    modes = _modes(x)
    y = np.asarray(y, dtype=np.float64)
    return modes.vt.T @ ((modes.s / (modes.s**2 + gamma)) * (modes.u.T @ y))


# -- student–teacher data ----------------------------------------------------------------------------
ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda z: np.maximum(z, 0.0),
    "tanh": np.tanh,
    "identity": lambda z: z,
}


def _erf(z):
    from scipy.special import erf

    return erf(z)


ACTIVATIONS["erf"] = _erf


def gaussian_inputs(n: int, dim: int, rng: np.random.Generator, var: float = 1.0) -> np.ndarray:
    """``(n, dim)`` inputs with i.i.d. ``N(0, var)`` coordinates."""
    if n < 0 or dim < 1 or var < 0:
        raise ValueError(f"need n >= 0, dim >= 1, var >= 0; got n={n}, dim={dim}, var={var}")
    return rng.standard_normal((n, dim)) * math.sqrt(var)


@dataclass(frozen=True)
class LinearTeacher:
    """``y = w . x + noise`` with ``x_i ~ N(0, input_var)`` (default ``1/N``) and ``noise ~ N(0, noise_var)``.

    With the default input variance the teacher's signal variance is ``||w||^2 / N``, i.e. ``weight_var`` on
    average, and the signal-to-noise ratio is ``weight_var / noise_var``.
    """

    w: np.ndarray
    noise_var: float = 0.0
    input_var: float | None = None  # None: 1 / N

    @classmethod
    def draw(cls, n_features: int, rng: np.random.Generator, *, weight_var: float = 1.0, noise_var: float = 0.0,
             input_var: float | None = None) -> "LinearTeacher":
        if n_features < 1 or weight_var < 0 or noise_var < 0:
            raise ValueError("need n_features >= 1, weight_var >= 0 and noise_var >= 0")
        return cls(w=rng.standard_normal(n_features) * math.sqrt(weight_var), noise_var=float(noise_var),
                   input_var=input_var)

    @property
    def n_features(self) -> int:
        return int(self.w.shape[0])

    @property
    def x_var(self) -> float:
        return 1.0 / self.n_features if self.input_var is None else float(self.input_var)

    def mean(self, x) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) @ self.w

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)``: ``n`` inputs and their noisy labels."""
        x = gaussian_inputs(n, self.n_features, rng, self.x_var)
        return x, self.mean(x) + rng.standard_normal(n) * math.sqrt(self.noise_var)

    def population_error(self, w) -> np.ndarray:
        """Expected squared error ``E_x,noise[(y - w . x)^2] = x_var ||w - w_teacher||^2 + noise_var``.

        ``w`` may be ``(N,)`` or ``(..., N)``.
        """
        d = np.asarray(w, dtype=np.float64) - self.w
        return self.x_var * np.sum(d * d, axis=-1) + self.noise_var

    def with_noise(self, noise_var: float) -> "LinearTeacher":
        return replace(self, noise_var=float(noise_var))


@dataclass(frozen=True)
class TwoLayerTeacher:
    """``y = sum_k a_k act(v_k . x) / sqrt(K) + noise``, inputs ``x ~ N(0, input_var I_d)``.

    ``draw`` samples ``v_k ~ N(0, first_var I_d)`` (default ``1/d``, so that ``v_k . x`` has unit variance for
    unit inputs) and ``a_k ~ N(0, readout_var)``.
    """

    v: np.ndarray  # (K, d)
    a: np.ndarray  # (K,)
    activation: str = "relu"
    noise_var: float = 0.0
    input_var: float = 1.0

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}")

    @classmethod
    def draw(cls, n_in: int, n_hidden: int, rng: np.random.Generator, *, activation: str = "relu",
             first_var: float | None = None, readout_var: float = 1.0, noise_var: float = 0.0,
             input_var: float = 1.0) -> "TwoLayerTeacher":
        if n_in < 1 or n_hidden < 1:
            raise ValueError("need n_in >= 1 and n_hidden >= 1")
        fv = 1.0 / n_in if first_var is None else float(first_var)
        v = rng.standard_normal((n_hidden, n_in)) * math.sqrt(fv)
        a = rng.standard_normal(n_hidden) * math.sqrt(readout_var)
        return cls(v=v, a=a, activation=activation, noise_var=float(noise_var), input_var=float(input_var))

    @property
    def n_in(self) -> int:
        return int(self.v.shape[1])

    def mean(self, x) -> np.ndarray:
        h = ACTIVATIONS[self.activation](np.asarray(x, dtype=np.float64) @ self.v.T)
        return h @ self.a / math.sqrt(self.a.shape[0])

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        x = gaussian_inputs(n, self.n_in, rng, self.input_var)
        return x, self.mean(x) + rng.standard_normal(n) * math.sqrt(self.noise_var)

    def signal_variance(self, rng: np.random.Generator, n: int = 100_000) -> float:
        """Monte-Carlo estimate of ``Var_x[mean(x)]`` (what a signal-to-noise ratio divides)."""
        return float(np.var(self.mean(gaussian_inputs(n, self.n_in, rng, self.input_var))))

    def with_noise(self, noise_var: float) -> "TwoLayerTeacher":
        return replace(self, noise_var=float(noise_var))
