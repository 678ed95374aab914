"""Gaussian inputs with planted hierarchical polynomial targets ``h(x) = g(p(x))``, with exact moments.

The inputs are ``x ~ N(0, I_d)``. The hidden *feature* ``p: R^d -> R`` is a polynomial of degree ``k``, normalised
to ``E p = 0`` and ``E p^2 = 1``; the *link* ``g: R -> R`` is a one-dimensional polynomial. ``k = 1`` is the
single-index model ``g(w.x)``, ``k = 2`` a function of a quadratic feature, and so on. Three features are built in:

- :class:`LinearFeature`: ``p = w.x / |w|`` (degree 1);
- :class:`QuadraticFeature`: ``p = (x^T A x - tr A) / sqrt(2 |A|_F^2)`` for a symmetric ``A`` (degree 2);
- :class:`HermiteSumFeature`: ``p = sum_i c_i h_k(x_i) / |c|`` with ``h_k`` the orthonormal Hermite polynomial
  (degree ``k``; :mod:`repro.core.hermite`).

Each is a sum of independent one-dimensional terms in some orthonormal coordinates (the eigenbasis of ``A`` for
the quadratic form), so its cumulants add up: ``kappa_r(p) = sum_i w_i^r kappa_r(f(z))``. From them
:func:`moments_from_cumulants` gives every moment ``E p^n`` exactly, and a :class:`HierarchicalTarget` knows
``E[g(p)^2]`` (to normalise ``h`` to ``E h^2 = 1`` without Monte Carlo), ``E[g(p)]`` and ``E[g'(p)]``, the
quantity whose non-vanishing lets a network find ``p`` from the degree-``k`` part of ``h``.

Everything is NumPy float64; samples come from an explicit ``numpy.random.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from repro.core import hermite


# -- moments and cumulants ------------------------------------------------------------------------------
def moments_from_cumulants(cumulants: Sequence[float]) -> np.ndarray:
    """Raw moments ``m_0 .. m_N`` from cumulants ``kappa_1 .. kappa_N``.

    ``m_n = sum_{j=1}^{n} C(n-1, j-1) kappa_j m_{n-j}``, ``m_0 = 1``.
    """
    k = np.asarray(cumulants, dtype=np.float64)
    m = np.zeros(k.size + 1)
    m[0] = 1.0
    for n in range(1, k.size + 1):
        m[n] = sum(math.comb(n - 1, j - 1) * k[j - 1] * m[n - j] for j in range(1, n + 1))
    return m


def cumulants_from_moments(moments: Sequence[float]) -> np.ndarray:
    """Cumulants ``kappa_1 .. kappa_N`` from raw moments ``m_0 = 1, m_1 .. m_N`` (the inverse recursion)."""
    m = np.asarray(moments, dtype=np.float64)
    if m.size < 2 or abs(m[0] - 1.0) > 1e-12:
        raise ValueError("moments must start with m_0 = 1 and hold at least m_1")
    k = np.zeros(m.size - 1)
    for n in range(1, m.size):
        k[n - 1] = m[n] - sum(math.comb(n - 1, j - 1) * k[j - 1] * m[n - j] for j in range(1, n))
    return k


def gaussian_function_cumulants(fn, order: int, *, quad_points: int = 120) -> np.ndarray:
    """Cumulants ``kappa_1 .. kappa_order`` of ``fn(z)``, ``z ~ N(0, 1)``, by Gauss-Hermite quadrature.

    Exact for a polynomial ``fn`` of degree ``q`` when ``q * order < 2 * quad_points``.
    """
    z, w = hermite.gaussian_rule(quad_points)
    f = np.asarray(fn(z), dtype=np.float64)
    return cumulants_from_moments([float(w @ f**n) for n in range(order + 1)])


def _check_order(order: int) -> int:
    if int(order) < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    return int(order)


# -- features p(x) ----------------------------------------------------------------------------------------
class Feature:
    """A polynomial feature ``p(x)`` of degree ``degree`` with ``E p = 0``, ``E p^2 = 1`` under ``N(0, I_d)``."""

    dim: int
    degree: int

    def __call__(self, x) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def cumulants(self, order: int) -> np.ndarray:  # pragma: no cover - abstract
        """``kappa_1 .. kappa_order`` of ``p(x)``, exactly."""
        raise NotImplementedError

    def moments(self, order: int) -> np.ndarray:
        """``E p^0 .. E p^order``, exactly."""
        return moments_from_cumulants(self.cumulants(order))

    def _check_x(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (n, {self.dim}), got {x.shape}")
        return x


@dataclass(frozen=True, eq=False)
class LinearFeature(Feature):
    """``p(x) = w.x / |w|``: a standard Gaussian (the single-index model's feature)."""

    w: np.ndarray

    def __post_init__(self):
        w = np.asarray(self.w, dtype=np.float64).reshape(-1)
        if w.size == 0 or not np.any(w):
            raise ValueError("w must be a non-zero vector")
        object.__setattr__(self, "w", w / np.linalg.norm(w))

    @property
    def dim(self) -> int:
        return self.w.size

    degree = 1

    @classmethod
    def random(cls, dim: int, rng: np.random.Generator) -> "LinearFeature":
        return cls(rng.standard_normal(int(dim)))

    def __call__(self, x) -> np.ndarray:
        return self._check_x(x) @ self.w

    def cumulants(self, order: int) -> np.ndarray:
        k = np.zeros(_check_order(order))
        if k.size >= 2:
            k[1] = 1.0
        return k


@dataclass(frozen=True, eq=False)
class QuadraticFeature(Feature):
    """``p(x) = (x^T A x - tr A) / sqrt(2 |A|_F^2)`` for a symmetric non-zero ``A``.

    With ``A = Q diag(mu) Q^T`` and ``z = Q^T x ~ N(0, I)``, ``p = sum_i w_i (z_i^2 - 1)`` with
    ``w = mu / sqrt(2 |mu|^2)``, and ``kappa_r(z^2) = 2^(r-1) (r-1)!`` gives
    ``kappa_r(p) = 2^(r-1) (r-1)! sum_i w_i^r`` for ``r >= 2`` (``kappa_1 = 0``).
    """

    A: np.ndarray
    eigenvalues: np.ndarray = field(init=False, repr=False)
    scale: float = field(init=False, repr=False)

    def __post_init__(self):
        A = np.asarray(self.A, dtype=np.float64)
        if A.ndim != 2 or A.shape[0] != A.shape[1] or A.shape[0] == 0:
            raise ValueError(f"A must be a square matrix, got shape {A.shape}")
        if not np.allclose(A, A.T, atol=1e-12 * max(1.0, np.abs(A).max())):
            raise ValueError("A must be symmetric")
        A = 0.5 * (A + A.T)
        norm2 = float(np.sum(A * A))
        if norm2 == 0.0:
            raise ValueError("A must be non-zero")
        object.__setattr__(self, "A", A)
        object.__setattr__(self, "scale", 1.0 / math.sqrt(2.0 * norm2))
        object.__setattr__(self, "eigenvalues", np.linalg.eigvalsh(A))

    @property
    def dim(self) -> int:
        return self.A.shape[0]

    degree = 2

    @classmethod
    def random_signs(cls, dim: int, rng: np.random.Generator) -> "QuadraticFeature":
        """``A = Q diag(+1, .., +1, -1, .., -1) Q^T / sqrt(2 d)`` with ``Q`` Haar-orthogonal and half the signs
        negative (``tr A = 0`` for even ``d``): ``E p^4 = 3 + 12/d``, ``E p^6 = 15 + 180/d + 480/d^2``."""
        d = int(dim)
        if d < 2:
            raise ValueError(f"dim must be >= 2, got {dim}")
        g = rng.standard_normal((d, d))
        q, r = np.linalg.qr(g)
        q = q * np.sign(np.diag(r))  # Haar: fix the signs of the QR factor
        signs = np.where(np.arange(d) < (d + 1) // 2, 1.0, -1.0)
        return cls((q * signs) @ q.T / math.sqrt(2 * d))

    def __call__(self, x) -> np.ndarray:
        x = self._check_x(x)
        return (np.einsum("ni,ij,nj->n", x, self.A, x) - np.trace(self.A)) * self.scale

    def cumulants(self, order: int) -> np.ndarray:
        w = self.eigenvalues * self.scale
        k = np.zeros(_check_order(order))
        for r in range(2, k.size + 1):
            k[r - 1] = 2.0 ** (r - 1) * math.factorial(r - 1) * np.sum(w**r)
        return k


@dataclass(frozen=True, eq=False)
class HermiteSumFeature(Feature):
    """``p(x) = sum_i c_i h_k(x_i) / |c|`` with ``h_k`` the orthonormal Hermite polynomial of degree ``k >= 1``."""

    coefficients: np.ndarray
    hermite_degree: int

    def __post_init__(self):
        c = np.asarray(self.coefficients, dtype=np.float64).reshape(-1)
        if c.size == 0 or not np.any(c):
            raise ValueError("coefficients must be a non-zero vector")
        if int(self.hermite_degree) < 1:
            raise ValueError(f"hermite_degree must be >= 1, got {self.hermite_degree}")
        object.__setattr__(self, "coefficients", c / np.linalg.norm(c))
        object.__setattr__(self, "hermite_degree", int(self.hermite_degree))

    @property
    def dim(self) -> int:
        return self.coefficients.size

    @property
    def degree(self) -> int:
        return self.hermite_degree

    @classmethod
    def random_signs(cls, dim: int, hermite_degree: int, rng: np.random.Generator) -> "HermiteSumFeature":
        """``c_i`` independent uniform signs: ``p = sum_i (+-1) h_k(x_i) / sqrt(d)``."""
        return cls(rng.choice([-1.0, 1.0], size=int(dim)), hermite_degree)

    def __call__(self, x) -> np.ndarray:
        x = self._check_x(x)
        return hermite.hermite_basis(x, self.hermite_degree)[..., -1] @ self.coefficients

    def cumulants(self, order: int) -> np.ndarray:
        order = _check_order(order)
        k = self.hermite_degree
        one = gaussian_function_cumulants(lambda z: hermite.hermite_basis(z, k)[..., -1], order,
                                          quad_points=max(20, (k * order) // 2 + 2))
        return np.array([one[r - 1] * np.sum(self.coefficients**r) for r in range(1, order + 1)])


# -- targets h = g(p) --------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class HierarchicalTarget:
    """``h(x) = C g(p(x))`` with ``g(z) = sum_j a_j z^j`` (``link`` holds ``a_0, a_1, ...``).

    ``normalize=True`` sets ``C = E[g(p)^2]^(-1/2)`` from the exact moments of ``p``, so that ``E h^2 = 1``.
    """

    feature: Feature
    link: tuple[float, ...]
    normalize: bool = True
    constant: float = field(init=False)

    def __post_init__(self):
        a = np.trim_zeros(np.asarray(self.link, dtype=np.float64), "b")
        if a.size == 0:
            raise ValueError("the link polynomial must be non-zero")
        object.__setattr__(self, "link", tuple(float(v) for v in a))
        c = 1.0 / math.sqrt(self._raw_second_moment()) if self.normalize else 1.0
        object.__setattr__(self, "constant", c)

    @property
    def dim(self) -> int:
        return self.feature.dim

    @property
    def link_degree(self) -> int:
        return len(self.link) - 1

    def _raw_second_moment(self) -> float:
        a = np.asarray(self.link)
        m = self.feature.moments(2 * (a.size - 1) if a.size > 1 else 1)
        return float(sum(a[i] * a[j] * m[i + j] for i in range(a.size) for j in range(a.size)))

    def link_values(self, z) -> np.ndarray:
        """``C g(z)``."""
        return self.constant * np.polynomial.polynomial.polyval(np.asarray(z, dtype=np.float64), self.link)

    def __call__(self, x) -> np.ndarray:
        return self.link_values(self.feature(x))

    def expectation(self, power: int = 1) -> float:
        """``E[h^power]`` for ``power`` in {1, 2}, exactly."""
        if power == 1:
            m = self.feature.moments(max(1, self.link_degree))
            return float(self.constant * np.dot(self.link, m[: len(self.link)]))
        if power == 2:
            return float(self.constant**2 * self._raw_second_moment())
        raise ValueError(f"power must be 1 or 2, got {power}")

    def link_slope(self) -> float:
        """``E[C g'(p)]``: zero means the degree-``k`` part of ``h`` carries no ``p`` when ``p`` is Gaussian."""
        d = np.polynomial.polynomial.polyder(np.asarray(self.link))
        m = self.feature.moments(max(1, d.size - 1))
        return float(self.constant * np.dot(d, m[: d.size]))

    def feature_coefficient(self) -> float:
        """``E[h p]``: the coefficient of ``p`` in the best linear-in-``p`` approximation of ``h``."""
        m = self.feature.moments(len(self.link))
        return float(self.constant * np.dot(self.link, m[1 : len(self.link) + 1]))

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(x, p, h)``: ``n`` inputs ``x ~ N(0, I_d)``, their feature ``p(x)`` and target ``h(x)``."""
        if int(n) < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        x = rng.standard_normal((int(n), self.dim))
        p = self.feature(x)
        return x, p, self.link_values(p)
