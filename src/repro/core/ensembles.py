"""Monte-Carlo ensembles of random MLPs at initialization, and the finite-width corrections they test.

**The ensemble.** A fully connected network with layer widths ``n_1, ..., n_L`` in the convention of
Roberts, Yaida & Hanin ("The Principles of Deep Learning Theory", 2022) computes, at inputs ``x`` (rows),

    z^(1) = W^(1) x + b^(1),        z^(l+1) = W^(l+1) act(z^(l)) + b^(l+1),
    W^(l)_ij ~ N(0, weight_var / n_(l-1)),   b^(l)_i ~ N(0, bias_var),

(the "standard" parametrization of :mod:`repro.core.mlp_torch` with ``weight_var = C_W``, ``bias_var = C_b``).
Ensemble statistics are expectations over *independent networks*: every network gets its own weights,
so averaging over the neurons of one network does not estimate them (its neurons share the layer below).

**Two samplers with the same law** (``method=``):

- ``"weights"``: draws each network's weight matrices and multiplies (one batched ``einsum`` per layer);
  cost ``n_l * n_(l-1)`` random numbers per layer and network. Any number of inputs.
- ``"conditional"``: given layer ``l`` of a network at ``P`` inputs, each row ``i`` of the next
  pre-activations, ``(z^(l+1)_i(x_1), ..., z^(l+1)_i(x_P))``, is a sum of independent Gaussian weights times
  fixed numbers, so the rows are i.i.d. ``N(0, G^(l+1))`` with the ``P x P`` matrix
  ``G^(l+1) = bias_var + weight_var / n_l * act(z^(l)) act(z^(l))^T``. Sampling ``z^(l+1) = chol(G) xi`` is
  therefore *exactly* the same joint law of all layers at those ``P`` inputs, at a cost of ``n_l * P``
  random numbers per layer instead of ``n_l * n_(l-1)``: what makes ensembles of ``10^5``-``10^6`` networks
  cheap when ``P`` is small (one input: ``G`` is a scalar).

Both return ``G`` for every layer (the conditional covariance of a row given the layer below), which gives
Rao-Blackwellized moments: ``E[z^2] = E[G]`` and ``E[z^4] = 3 E[G^2]`` (a Gaussian given ``G``).

**Moments and finite-width theory.**

- :func:`layer_moments` streams an ensemble in chunks and returns, per layer and input, the second and fourth
  moments pooled over neurons and networks (plain and Rao-Blackwellized), with standard errors from the
  spread between networks; :meth:`LayerMoments.excess_kurtosis` gives ``E[z^4] / (3 E[z^2]^2) - 1``.
- :func:`scale_invariant_kurtosis`: the *exact* single-input excess kurtosis of bias-free networks with a
  scale-invariant activation (``a_+ z`` for ``z > 0``, ``a_- z`` otherwise: linear, ReLU, leaky ReLU) at any
  width. Given the layer below, ``z^(l+1)_i ~ N(0, G^(l+1))`` with ``G^(l+1) = G^(l) chi_l`` and i.i.d. factors
  ``chi_l = (weight_var / n_l) sum_j act(g_j)^2`` of ``g_j ~ N(0, 1)``, so ``E[G^2] / E[G]^2`` is a product of
  ``1 + (m4 / m2^2 - 1) / n_l`` with ``m2 = E act(g)^2``, ``m4 = E act(g)^4``: ``1 + 2/n`` for linear networks,
  ``1 + 5/n`` for ReLU.
- :func:`four_point_vertex`: the leading-order (in ``1/n``) single-input recursion of the kernel ``K`` and the
  four-point vertex ``V`` for any activation, by Gauss-Hermite quadrature. The connected four-point function
  is ``E[z^4] - 3 E[z^2]^2 = 3 V^(l) / n_(l-1)`` and

      K^(l+1) = bias_var + weight_var <act^2>_K,
      V^(l+1) = weight_var^2 (<act^4>_K - <act^2>_K^2) + (n_l / n_(l-1)) chi_par(K)^2 V^(l),   V^(1) = 0,
      chi_par(K) = d K^(l+1) / d K^(l) = weight_var / (2 K^2) <act^2 (z^2 - K)>_K,

  with ``<.>_K`` the average over ``z ~ N(0, K)``; the excess kurtosis is ``V^(l) / (n_(l-1) (K^(l))^2)`` to
  leading order. (For ReLU at ``weight_var = 2``, ``bias_var = 0``: ``V^(l) = 5 (l - 1) K^2``; for tanh at
  ``weight_var = 1``: ``V^(l) / (n K^2) -> (2/3) l / n`` at large ``l``.)

Everything here runs in torch (``float64`` by default, any device); the quadrature helpers in NumPy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch

from repro.core.hermite import gaussian_rule
from repro.core.mlp_torch import ACTIVATIONS

METHODS: tuple[str, ...] = ("conditional", "weights")
ESTIMATORS: tuple[str, ...] = ("plain", "rao_blackwell")


def _activation(activation: str | Callable) -> Callable[[torch.Tensor], torch.Tensor]:
    if callable(activation):
        return activation
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)} or a callable")
    return ACTIVATIONS[activation]


def _check_sizes(widths: Sequence[int], weight_var: float, bias_var: float) -> tuple[int, ...]:
    widths = tuple(int(w) for w in widths)
    if not widths or min(widths) < 1:
        raise ValueError(f"widths must list at least one layer, every width >= 1; got {widths}")
    if weight_var <= 0 or bias_var < 0:
        raise ValueError(f"need weight_var > 0 and bias_var >= 0, got {weight_var}, {bias_var}")
    return widths


class EnsembleSample(NamedTuple):
    """Pre-activations of ``n_nets`` independent networks at ``P`` inputs, layer by layer."""

    preactivations: list[torch.Tensor]  # layer l = 1..L: (n_nets, P, n_l)
    covariances: list[torch.Tensor]  # layer l: (n_nets, P, P), covariance of each row of z^(l) given layer l-1


def _psd_factor(g: torch.Tensor) -> torch.Tensor:
    """A batched ``A`` with ``A A^T = g`` for PSD ``g`` (..., P, P); singular matrices allowed."""
    if g.shape[-1] == 1:
        return g.clamp_min(0.0).sqrt()
    lam, vec = torch.linalg.eigh(0.5 * (g + g.transpose(-1, -2)))
    return vec * lam.clamp_min(0.0).sqrt().unsqueeze(-2)


def sample_preactivations(x, n_nets: int, widths: Sequence[int], *, activation: str | Callable = "relu",
                          weight_var: float = 1.0, bias_var: float = 0.0, method: str = "conditional",
                          generator: torch.Generator | None = None, device: torch.device | str | None = None,
                          dtype: torch.dtype = torch.float64) -> EnsembleSample:
    """Pre-activations of ``n_nets`` networks with fresh weights each, at the rows of ``x`` (``(P, n0)``).

    ``widths = (n_1, ..., n_L)`` are the sizes of the recorded layers (the last one can be the output).
    ``method`` is ``"conditional"`` (exact law at the ``P`` inputs, cheap) or ``"weights"`` (explicit weight
    matrices); see the module docstring. ``generator`` must live on ``device`` (default: a fresh CPU one).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    widths = _check_sizes(widths, weight_var, bias_var)
    if int(n_nets) < 1:
        raise ValueError(f"n_nets must be >= 1, got {n_nets}")
    act = _activation(activation)
    device = torch.device(device) if device is not None else torch.device("cpu")
    x = torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=dtype, device=device)
    x = x[None, :] if x.ndim == 1 else x
    n0, P, B = x.shape[1], x.shape[0], int(n_nets)

    def normal(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype, device=device)

    zs, gs = [], []
    # layer 1: rows i.i.d. N(0, G1), the same G1 = C_b + C_W x x^T / n0 for every network
    g = (bias_var + weight_var * (x @ x.T) / n0).expand(B, P, P)
    inputs, fan_in = x.expand(B, P, n0), n0
    for width in widths:
        if method == "conditional":
            xi = normal(B, P, width)
            # rows of z^(l): i.i.d. N(0, G^(l)); one input needs no matrix product
            z = _psd_factor(g) * xi if P == 1 else _psd_factor(g) @ xi
        else:
            w = normal(B, width, fan_in) * math.sqrt(weight_var / fan_in)  # W_ij ~ N(0, C_W / n_(l-1))
            b = normal(B, 1, width) * math.sqrt(bias_var)
            z = torch.einsum("bij,bpj->bpi", w, inputs) + b  # z^(l) = W^(l) act(z^(l-1)) + b^(l)
        zs.append(z)
        gs.append(g)
        inputs, fan_in = act(z), width
        gram = (inputs * inputs).sum(-1, keepdim=True) if P == 1 else inputs @ inputs.transpose(1, 2)
        g = bias_var + weight_var * gram / width  # G^(l+1) = C_b + C_W act(z) act(z)^T / n_l, given layer l
    return EnsembleSample(preactivations=zs, covariances=gs)


def iter_ensemble(x, n_nets: int, widths: Sequence[int], *, chunk: int | None = None, seed: int = 0,
                  device: torch.device | str | None = None, progress: bool = False, desc: str = "networks",
                  **kwargs) -> Iterator[EnsembleSample]:
    """:func:`sample_preactivations` in chunks of at most ``chunk`` networks (default: about 4 million numbers, 32 MB
    in float64, of pre-activations and weights per chunk), from one generator seeded with ``seed`` on ``device``."""
    widths = _check_sizes(widths, kwargs.get("weight_var", 1.0), kwargs.get("bias_var", 0.0))
    n_nets = int(n_nets)
    P, n0 = np.atleast_2d(np.asarray(x)).shape
    fan = (n0,) + widths[:-1]  # the weight sampler holds one (n_l, n_(l-1)) matrix per network at a time
    per_net = P * sum(widths) + (max(a * b for a, b in zip(widths, fan)) if kwargs.get("method") == "weights" else 0)
    chunk = int(chunk or max(1, min(n_nets, 4_000_000 // max(per_net, 1))))
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    gen = torch.Generator(device=dev)
    gen.manual_seed(int(seed))
    starts = range(0, n_nets, chunk)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=desc, leave=False)
    for start in starts:
        yield sample_preactivations(x, min(chunk, n_nets - start), widths, generator=gen, device=dev, **kwargs)


@dataclass(frozen=True)
class LayerMoments:
    """Second and fourth moments of pre-activations per layer and input, pooled over neurons and networks.

    Arrays are ``(L, P)``. ``plain``: averages of ``z^2`` and ``z^4`` over neurons then networks;
    ``rao_blackwell``: ``E[G]`` and ``3 E[G^2]`` from each network's conditional variance ``G``. Each network
    contributes one pair (``a``, ``b``) per layer and input; ``cov`` holds the between-network
    ``(var a, var b, cov(a, b))`` of each estimator, from which standard errors follow.
    """

    n_nets: int
    widths: tuple[int, ...]
    m2: dict[str, np.ndarray]  # estimator -> (L, P)
    m4: dict[str, np.ndarray]
    cov: dict[str, np.ndarray]  # estimator -> (3, L, P): var(a), var(b), cov(a, b) between networks

    def moments(self, estimator: str = "plain") -> tuple[np.ndarray, np.ndarray]:
        _check_estimator(estimator)
        return self.m2[estimator], self.m4[estimator]

    def excess_kurtosis(self, estimator: str = "plain") -> tuple[np.ndarray, np.ndarray]:
        """``E[z^4] / (3 E[z^2]^2) - 1`` and its standard error (delta method over networks), ``(L, P)`` each.

        The standard error describes the spread between networks; with heavy-tailed ``G`` (deep ReLU
        networks at ``l / n`` of order one) the sample spread itself is unreliable and so is this error.
        """
        m2, m4 = self.moments(estimator)
        var_a, var_b, cov_ab = self.cov[estimator]
        kurt = m4 / (3.0 * m2**2) - 1.0
        d_b, d_a = 1.0 / (3.0 * m2**2), -2.0 * m4 / (3.0 * m2**3)
        var = (d_b**2 * var_b + d_a**2 * var_a + 2 * d_a * d_b * cov_ab) / self.n_nets
        return kurt, np.sqrt(np.clip(var, 0.0, None))


def _check_estimator(estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")


def layer_moments(x, n_nets: int, widths: Sequence[int], *, activation: str | Callable = "relu",
                  weight_var: float = 1.0, bias_var: float = 0.0, method: str = "conditional",
                  chunk: int | None = None, seed: int = 0, device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float64, progress: bool = False) -> LayerMoments:
    """Moments of every layer's pre-activations over ``n_nets`` independent networks (see :class:`LayerMoments`).

    Streams the ensemble in chunks (:func:`iter_ensemble`), so memory does not grow with ``n_nets``.
    """
    widths = _check_sizes(widths, weight_var, bias_var)
    P = np.atleast_2d(np.asarray(x)).shape[0]
    sums = {e: np.zeros((5, len(widths), P)) for e in ESTIMATORS}  # sum a, sum b, sum a^2, sum b^2, sum ab
    for sample in iter_ensemble(x, n_nets, widths, chunk=chunk, seed=seed, device=device, progress=progress,
                                activation=activation, weight_var=weight_var, bias_var=bias_var, method=method,
                                dtype=dtype):
        for layer, (z, g) in enumerate(zip(sample.preactivations, sample.covariances)):
            z2 = z * z
            var = torch.diagonal(g, dim1=-2, dim2=-1)  # (B, P): conditional variance of each neuron
            pairs = {"plain": (z2.mean(dim=2), (z2 * z2).mean(dim=2)), "rao_blackwell": (var, 3.0 * var * var)}
            for est, (a, b) in pairs.items():
                a, b = a.double(), b.double()
                stats = torch.stack([a.sum(0), b.sum(0), (a * a).sum(0), (b * b).sum(0), (a * b).sum(0)])
                sums[est][:, layer] += stats.cpu().numpy()
    n = int(n_nets)
    m2, m4, cov = {}, {}, {}
    for est, s in sums.items():
        mean_a, mean_b = s[0] / n, s[1] / n
        ddof = n / max(n - 1, 1)
        cov[est] = np.stack([(s[2] / n - mean_a**2) * ddof, (s[3] / n - mean_b**2) * ddof,
                             (s[4] / n - mean_a * mean_b) * ddof])
        m2[est], m4[est] = mean_a, mean_b
    return LayerMoments(n_nets=n, widths=widths, m2=m2, m4=m4, cov=cov)


def excess_kurtosis(m2, m4) -> np.ndarray:
    """``E[z^4] / (3 E[z^2]^2) - 1``: zero for a centred Gaussian."""
    m2, m4 = np.asarray(m2, dtype=np.float64), np.asarray(m4, dtype=np.float64)
    return m4 / (3.0 * m2**2) - 1.0


# -- finite-width theory ------------------------------------------------------------------------------
def scale_invariant_kurtosis(widths: Sequence[int], slopes: tuple[float, float] = (1.0, 0.0)) -> np.ndarray:
    """Exact single-input excess kurtosis of layers ``1..L`` for ``act(z) = a_+ z (z > 0), a_- z (z <= 0)``.

    Bias-free networks (``bias_var = 0``) of any ``weight_var``; ``widths = (n_1, ..., n_L)``. Layer 1 is exactly
    Gaussian; layer ``l`` has ``prod_{j < l} (1 + c / n_j) - 1`` with ``c = m4 / m2^2 - 1``,
    ``m2 = (a_+^2 + a_-^2) / 2``, ``m4 = 3 (a_+^4 + a_-^4) / 2`` (``c = 5`` for ReLU, ``2`` for a linear network).
    """
    widths = _check_sizes(widths, 1.0, 0.0)
    a_plus, a_minus = (float(s) for s in slopes)
    m2 = 0.5 * (a_plus**2 + a_minus**2)
    if m2 <= 0:
        raise ValueError(f"slopes {slopes} give a zero activation")
    c = 1.5 * (a_plus**4 + a_minus**4) / m2**2 - 1.0
    factors = 1.0 + c / np.asarray(widths[:-1], dtype=np.float64)
    return np.concatenate([[0.0], np.cumprod(factors)]) - np.concatenate([[0.0], np.ones(len(widths) - 1)])


class VertexRecursion(NamedTuple):
    kernel: np.ndarray  # (L,): K^(1..L)
    vertex: np.ndarray  # (L,): V^(1..L)
    kurtosis: np.ndarray  # (L,): V^(l) / (n_(l-1) K^(l)^2), leading-order excess kurtosis (0 at layer 1)
    chi_parallel: np.ndarray  # (L,): chi_par(K^(l))


@lru_cache(maxsize=8)
def _rule(quad_points: int) -> tuple[np.ndarray, np.ndarray]:
    return gaussian_rule(quad_points)


def gaussian_moments(activation: str | Callable, k, *, quad_points: int = 64) -> dict[str, np.ndarray]:
    """``<act^2>_K``, ``<act^4>_K`` and ``<act^2 (z^2 - K)>_K`` over ``z ~ N(0, K)`` by Gauss-Hermite quadrature.

    ``k``: any array of variances. Exact for polynomial integrands of degree ``< 2 quad_points``; for ReLU
    with an even number of (symmetric) nodes also exact, since ``relu(z)^p + relu(-z)^p = |z|^p``.
    """
    act = _activation(activation)
    nodes, weights = _rule(int(quad_points))
    k = np.asarray(k, dtype=np.float64)
    z = np.sqrt(np.clip(k, 0.0, None))[..., None] * nodes  # (..., q)
    a = act(torch.as_tensor(z, dtype=torch.float64)).numpy()
    a2 = a * a
    return {"act2": a2 @ weights, "act4": (a2 * a2) @ weights, "act2_z2": (a2 * (z * z - k[..., None])) @ weights}


def four_point_vertex(activation: str | Callable, widths: Sequence[int], *, k1: float, weight_var: float = 1.0,
                      bias_var: float = 0.0, quad_points: int = 64) -> VertexRecursion:
    """Leading-order single-input kernel ``K`` and four-point vertex ``V`` of layers ``1..L`` (module docstring).

    ``k1 = K^(1) = bias_var + weight_var * x.x / n0`` is the first layer's variance; ``widths = (n_1, ..., n_L)``
    (the ratio ``n_l / n_(l-1)`` multiplies the inherited vertex, and ``kurtosis[l]`` divides by ``n_(l-1)``).
    """
    widths = _check_sizes(widths, weight_var, bias_var)
    if k1 <= 0:
        raise ValueError(f"k1 must be > 0, got {k1}")
    n = np.asarray(widths, dtype=np.float64)
    L = len(widths)
    kern, vert, chi = np.zeros(L), np.zeros(L), np.zeros(L)
    kern[0] = k1
    for l in range(L):
        mom = gaussian_moments(activation, kern[l], quad_points=quad_points)
        chi[l] = weight_var * mom["act2_z2"] / (2.0 * kern[l] ** 2)  # chi_par = dK^(l+1)/dK^(l)
        if l + 1 < L:
            kern[l + 1] = bias_var + weight_var * mom["act2"]  # K^(l+1) = C_b + C_W <act^2>_K
            ratio = n[l] / n[l - 1] if l > 0 else 1.0  # V^(1) = 0, so the first ratio never matters
            vert[l + 1] = weight_var**2 * (mom["act4"] - mom["act2"] ** 2) + ratio * chi[l] ** 2 * vert[l]
    fan_in = np.concatenate([[np.inf], n[:-1]])  # layer 1 is exactly Gaussian
    return VertexRecursion(kernel=kern, vertex=vert, kurtosis=vert / (fan_in * kern**2), chi_parallel=chi)
