"""Finite Bayesian mixtures over sampled classes of Boolean functions, in log space.

A *function class* here is a finite set of distinct Boolean functions on ``P`` fixed inputs, each with a
prior weight. It is usually obtained by sampling many random networks and merging those that compute the
same function (their weights add up), which turns a network weight prior into an exact finite mixture:

    cls = sample_mlp_functions(boolean_cube(6), hidden=(256,), n_nets=100_000, generator=g)
    cls.size, cls.prior[:3]             # distinct functions and their prior masses

Each function ``f`` is a hypothesis for labelled data through a *binary symmetric channel* (label noise
``delta``): ``P_f(y | x) = 1 - delta`` if ``y = f(x)`` else ``delta``. Then a hypothesis' likelihood depends on
the data only through its number of mistakes ``m_f`` and

    log Q(y^n | x^n) = n log(1 - delta) + logsumexp_f [log w_f + m_f log(delta / (1 - delta))]

is the Bayes mixture's evidence, which by the chain rule is also minus its cumulative sequential log-loss
(:func:`log_evidence`). Mistake counts for a whole batch of data sets are one matrix product of the
function table with per-input label counts, so millions of hypotheses and thousands of data sets cost a
few GEMMs (chunked over hypotheses, on any torch device).

Pieces:

- :func:`boolean_cube`, :func:`pack_bits`, :func:`unpack_bits`: inputs and 64-outputs-per-word codes;
- :func:`sample_mlp_functions`: i.i.d. random MLPs (``N(0, weight_var/fan_in)`` weights, ``N(0, bias_std^2)``
  biases, the prior of :class:`repro.core.mlp_torch.MLP` with ``parametrization="ntk"``, ``beta=bias_std``),
  thresholded at 0 and deduplicated into a :class:`FunctionClass`;
- :class:`FiniteMixture`: the plain sequential Bayes learner with log-space posterior updates (any
  finite class, any likelihood), used as the reference implementation;
- :func:`label_counts`, :func:`mistakes`, :func:`log_evidence`, :func:`posterior_weights`,
  :func:`posterior_predictive`: the fast path for noisy-label classes;
- :func:`uniform_labelings_log_evidence`: the closed form for the uniform prior over all ``2^P`` functions;
- :func:`channel_kl`, :func:`hamming_distances`, :func:`ball_weights`, :func:`weight_bound`: the KL geometry
  of the class and the "weight of the hypothesis" bound ``min_eps [-log W_eps + n eps]``;
- :func:`expected_log_loss`: the test log-loss of a predictor against a noisy truth, in closed form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

WORD = 64  # outputs packed per int64 code word
_SHIFTS = torch.arange(WORD, dtype=torch.int64)


# -- inputs and codes --------------------------------------------------------------------------------
def boolean_cube(d: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """All ``2^d`` points of ``{0,1}^d`` as rows; row ``i`` holds the binary digits of ``i``, ``x_1`` first
    (most significant), so row 0 is all zeros and row ``2^d - 1`` all ones."""
    if d < 1:
        raise ValueError(f"d must be >= 1, got {d}")
    idx = torch.arange(2**d, dtype=torch.int64)
    return ((idx[:, None] >> torch.arange(d - 1, -1, -1)) & 1).to(dtype)


def n_words(n_bits: int) -> int:
    return -(-int(n_bits) // WORD)


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """``(..., P)`` booleans -> ``(..., ceil(P/64))`` int64 codes; output ``x`` sits in bit ``x % 64`` of word
    ``x // 64`` (bit 63 makes a word negative, which is harmless)."""
    bits = torch.as_tensor(bits)
    p = bits.shape[-1]
    pad = n_words(p) * WORD - p
    b = bits.to(torch.int64)
    if pad:
        b = torch.nn.functional.pad(b, (0, pad))
    b = b.reshape(*bits.shape[:-1], n_words(p), WORD)
    return (b << _SHIFTS.to(b.device)).sum(-1)


def unpack_bits(codes: torch.Tensor, n_bits: int, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``(..., words)`` int64 -> ``(..., n_bits)`` of ``dtype``."""
    codes = torch.as_tensor(codes)
    bits = (codes.unsqueeze(-1) >> _SHIFTS.to(codes.device)) & 1
    return bits.reshape(*codes.shape[:-1], -1)[..., :n_bits].to(dtype)


# -- the function class ------------------------------------------------------------------------------
@dataclass
class FunctionClass:
    """Distinct Boolean functions on ``n_inputs`` points and how often each was drawn.

    ``codes``: ``(K, words)`` int64 (sorted, distinct); ``counts``: ``(K,)`` int64, summing to ``n_samples``.
    The prior weight of function ``k`` is ``counts[k] / n_samples`` (exact for the empirical prior, an
    unbiased estimate of the mass the sampling distribution puts on that function).
    """

    codes: torch.Tensor
    counts: torch.Tensor
    n_inputs: int

    def __post_init__(self):
        if self.codes.ndim != 2 or self.codes.shape[1] != n_words(self.n_inputs):
            raise ValueError(f"codes must be (K, {n_words(self.n_inputs)}), got {tuple(self.codes.shape)}")
        if self.counts.shape != self.codes.shape[:1] or bool((self.counts <= 0).any()):
            raise ValueError("counts must be (K,) positive integers")

    @property
    def size(self) -> int:
        return int(self.codes.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.counts.sum())

    @property
    def device(self) -> torch.device:
        return self.codes.device

    @property
    def prior(self) -> torch.Tensor:
        """``(K,)`` float64 prior masses, summing to 1."""
        return self.counts.double() / self.n_samples

    @property
    def log_prior(self) -> torch.Tensor:
        return torch.log(self.counts.double()) - math.log(self.n_samples)

    def bits(self, start: int = 0, stop: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The truth tables of functions ``start:stop`` as a ``(k, n_inputs)`` 0/1 tensor."""
        return unpack_bits(self.codes[start:stop], self.n_inputs, dtype)

    def chunks(self, chunk: int) -> Iterable[tuple[int, int]]:
        for start in range(0, self.size, chunk):
            yield start, min(start + chunk, self.size)

    def to(self, device) -> "FunctionClass":
        return FunctionClass(self.codes.to(device), self.counts.to(device), self.n_inputs)

    def index_of(self, bits: torch.Tensor) -> int:
        """Row of the function with truth table ``bits`` (``-1`` if it was never drawn)."""
        code = pack_bits(torch.as_tensor(bits, dtype=torch.bool).to(self.device))
        hit = (self.codes == code).all(dim=1).nonzero()
        return int(hit[0, 0]) if len(hit) else -1

    @classmethod
    def from_bits(cls, bits: torch.Tensor, counts: torch.Tensor | None = None) -> "FunctionClass":
        """A class from truth tables (rows), merging duplicates; ``counts`` default to one per row."""
        bits = torch.as_tensor(bits)
        codes = pack_bits(bits.bool())
        if counts is None:
            counts = torch.ones(codes.shape[0], dtype=torch.int64, device=codes.device)
        codes, counts = _unique_with_counts(codes, torch.as_tensor(counts, dtype=torch.int64, device=codes.device))
        return cls(codes, counts, int(bits.shape[-1]))


def _unique_with_counts(codes: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct rows of ``codes`` (sorted) with the summed ``counts`` of their copies."""
    if codes.shape[1] == 1:  # one word: the 1-d unique is much faster than the row-wise one
        uniq, inverse = torch.unique(codes[:, 0], return_inverse=True)
        uniq = uniq[:, None]
    else:
        uniq, inverse = torch.unique(codes, dim=0, return_inverse=True)
    total = torch.zeros(uniq.shape[0], dtype=torch.int64, device=codes.device)
    total.index_add_(0, inverse, counts)
    return uniq, total


def batched_mlp_outputs(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor], *,
                        weight_var: float = 1.0, bias_std: float = 1.0) -> torch.Tensor:
    """Readouts ``(b, n_points)`` of ``b`` ReLU MLPs on the shared inputs ``x`` (``(n_points, d)``).

    ``weights[l]``: ``(b, fan_out, fan_in)`` and ``biases[l]``: ``(b, fan_out)`` raw parameters; layer ``l`` computes
    ``h_{l+1} = sqrt(weight_var / fan_in) W_l a_l + bias_std b_l`` (the NTK parametrization of
    :class:`repro.core.mlp_torch.MLP` with ``beta = bias_std``); ReLU between layers, none on the readout.
    The first layer is one GEMM over all units of all networks; later layers are batched products.
    """
    b, h1, d = weights[0].shape
    n_points = x.shape[0]
    a = torch.addmm(biases[0].reshape(b * h1, 1), weights[0].reshape(b * h1, d), x.T,
                    beta=bias_std, alpha=math.sqrt(weight_var / d)).view(b, h1, n_points)
    for w, bias in zip(weights[1:], biases[1:]):
        a = torch.baddbmm(bias.unsqueeze(-1), w, a.relu(), beta=bias_std, alpha=math.sqrt(weight_var / w.shape[-1]))
    return a[:, 0, :]


def sample_mlp_functions(x: torch.Tensor, hidden: Sequence[int], n_nets: int, *, weight_var: float = 1.0,
                         bias_std: float = 1.0, chunk_units: int = 2**12,
                         generator: torch.Generator | None = None, device: torch.device | str | None = None,
                         progress: bool = False) -> FunctionClass:
    """Draw ``n_nets`` i.i.d. ReLU MLPs ``x -> hidden -> 1`` and keep the functions ``1[f(x) > 0]`` on the rows of ``x``.

    Weights ``N(0, weight_var/fan_in)``, biases ``N(0, bias_std^2)`` (see :func:`batched_mlp_outputs`): the
    prior of the NTK-parametrized :class:`repro.core.mlp_torch.MLP` with ``beta=bias_std``. Networks go through
    in chunks of ``max(1, chunk_units // max(hidden))`` nets, so a chunk's activations take about
    ``chunk_units * len(x)`` floats; the result depends on ``chunk_units`` only through the order in which the
    random numbers are drawn. ``generator`` must live on ``device``.
    """
    device = torch.device(device) if device is not None else (generator.device if generator is not None
                                                                 else torch.device("cpu"))
    if n_nets < 1 or not hidden or min(hidden) < 1:
        raise ValueError("need n_nets >= 1 and at least one hidden layer of width >= 1")
    x = torch.as_tensor(x, dtype=torch.float32, device=device)
    sizes = (x.shape[1], *[int(h) for h in hidden], 1)
    per_chunk = max(1, int(chunk_units) // max(sizes[1:-1]))
    codes, counts, pending, merge_every = [], [], 0, 2**20
    from tqdm.auto import tqdm

    bar = tqdm(total=n_nets, desc=f"random MLPs {sizes}", disable=not progress, mininterval=1.0, leave=False)
    for start in range(0, n_nets, per_chunk):
        b = min(per_chunk, n_nets - start)
        weights, biases = [], []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            weights.append(torch.randn(b, fan_out, fan_in, generator=generator, device=device))
            biases.append(torch.randn(b, fan_out, generator=generator, device=device))
        out = batched_mlp_outputs(x, weights, biases, weight_var=weight_var, bias_std=bias_std)
        codes.append(pack_bits(out > 0))
        counts.append(torch.ones(b, dtype=torch.int64, device=device))
        pending += b
        if pending > merge_every:  # merge duplicates as we go: memory stays bounded by the distinct functions
            merged = _unique_with_counts(torch.cat(codes), torch.cat(counts))
            codes, counts, pending = [merged[0]], [merged[1]], 0
        bar.update(b)
    bar.close()
    uniq, total = _unique_with_counts(torch.cat(codes), torch.cat(counts))
    return FunctionClass(uniq, total, x.shape[0])


# -- the generic sequential learner ------------------------------------------------------------------
class FiniteMixture:
    """Bayes mixture over ``K`` hypotheses with log-space posterior updates.

    ``predict(loglik)`` with ``loglik[k, o] = log P_k(o)`` for the outcomes ``o`` of the next observation gives
    the mixture's log-probabilities ``log sum_k w_k P_k(o)``; ``update(loglik_observed)`` multiplies each weight by
    its likelihood of what was seen and renormalizes (Bayes' rule), so weights never underflow.
    """

    def __init__(self, log_prior: torch.Tensor):
        lp = torch.as_tensor(log_prior, dtype=torch.float64)
        self.log_w = lp - torch.logsumexp(lp, 0)

    @property
    def weights(self) -> torch.Tensor:
        return self.log_w.exp()

    def predict(self, loglik: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(self.log_w[:, None] + torch.as_tensor(loglik, dtype=torch.float64), 0)

    def update(self, loglik: torch.Tensor) -> "FiniteMixture":
        lw = self.log_w + torch.as_tensor(loglik, dtype=torch.float64)
        self.log_w = lw - torch.logsumexp(lw, 0)
        return self


# -- noisy-label classes: the fast path --------------------------------------------------------------
def channel_kl(delta: float) -> float:
    """``D(Bern(1-delta) || Bern(delta)) = (1 - 2 delta) log((1 - delta)/delta)``: the KL between two noisy-label
    hypotheses at an input where they disagree (zero where they agree)."""
    return (1 - 2 * delta) * math.log((1 - delta) / delta)


def label_counts(xs: torch.Tensor, ys: torch.Tensor, n_inputs: int, checkpoints: Sequence[int]) -> torch.Tensor:
    """Counts ``c[s, j, x, y]`` of the pairs ``(x, y)`` among the first ``checkpoints[j]`` observations of data set ``s``.

    ``xs``: ``(S, n)`` input indices, ``ys``: ``(S, n)`` labels in {0, 1}.
    """
    xs, ys = torch.as_tensor(xs, dtype=torch.int64), torch.as_tensor(ys, dtype=torch.int64)
    s, n = xs.shape
    cps = [int(c) for c in checkpoints]
    if any(c < 0 or c > n for c in cps):
        raise ValueError(f"checkpoints must lie in [0, {n}], got {cps}")
    onehot = torch.zeros(s, n, n_inputs * 2, dtype=torch.int32, device=xs.device)
    onehot.scatter_(2, (xs * 2 + ys).unsqueeze(-1), 1)
    cum = torch.cat([torch.zeros_like(onehot[:, :1]), onehot.cumsum(1)], 1)  # cum[:, t] = counts of the first t
    return cum[:, cps].reshape(s, len(cps), n_inputs, 2).to(torch.int64)


def mistakes(bits: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mistakes of each function on each data set: ``(k, *batch)`` from ``bits (k, P)`` and ``counts (*batch, P, 2)``.

    ``m_f = sum_x c(x,1) [f(x)=0] + c(x,0) [f(x)=1] = sum_x c(x,1) + sum_x f(x) (c(x,0) - c(x,1))`` (one GEMM).
    """
    batch = counts.shape[:-2]
    c = counts.reshape(-1, counts.shape[-2], 2).to(bits.dtype)
    base = c[..., 1].sum(-1)  # (B,)
    d = (c[..., 0] - c[..., 1]).T  # (P, B)
    return (base + bits @ d).reshape(bits.shape[0], *batch)


def _chunk_rows(n_cols: int, budget: int = 2**22) -> int:
    return max(1, budget // max(1, n_cols))


def log_evidence(cls: FunctionClass, counts: torch.Tensor, delta: float, *, dtype: torch.dtype = torch.float32,
                 chunk: int | None = None) -> torch.Tensor:
    """``log Q(y^n | x^n)`` of the Bayes mixture over ``cls`` for each data set in ``counts`` (``(*batch, P, 2)``).

    Equal to minus the cumulative log-loss of the sequential predictive ``Q(y_t | x_t, S_{t-1})`` (chain rule).
    Chunked over functions with a running log-sum-exp; ``dtype`` is that of the GEMM and the exponentials
    (mistake counts are exact integers in float32 up to 2^24), the result is float64.
    """
    counts = counts.to(cls.device)
    batch = counts.shape[:-2]
    flat = counts.reshape(-1, counts.shape[-2], 2)
    n = flat.sum((-1, -2)).double()  # (B,)
    log_r = math.log(delta / (1 - delta))
    chunk = chunk or _chunk_rows(flat.shape[0])
    run_max = torch.full((flat.shape[0],), -math.inf, dtype=torch.float64, device=cls.device)
    run_sum = torch.zeros(flat.shape[0], dtype=torch.float64, device=cls.device)
    log_prior = cls.log_prior.to(dtype)
    for start, stop in cls.chunks(chunk):
        m = mistakes(cls.bits(start, stop, dtype), flat)  # (k, B)
        val = m.mul_(log_r).add_(log_prior[start:stop, None])
        cmax = val.max(0).values
        new_max = torch.maximum(run_max, cmax.double())
        csum = (val - cmax).exp_().sum(0).double()
        run_sum = run_sum * torch.exp(run_max - new_max) + csum * torch.exp(cmax.double() - new_max)
        run_max = new_max
    return (n * math.log(1 - delta) + run_max + torch.log(run_sum)).reshape(batch)


def truth_log_likelihood(truth_bits: torch.Tensor, counts: torch.Tensor, delta: float) -> torch.Tensor:
    """``log P_f0(y^n | x^n)`` of one noisy-label function ``f0`` for each data set in ``counts``."""
    f0 = torch.as_tensor(truth_bits, dtype=torch.float64, device=counts.device)[None]
    m0 = mistakes(f0, counts.double())[0]
    n = counts.sum((-1, -2)).double()
    return m0 * math.log(delta) + (n - m0) * math.log(1 - delta)


def uniform_labelings_log_evidence(counts: torch.Tensor, delta: float) -> torch.Tensor:
    """``log Q(y^n | x^n)`` for the uniform prior over all ``2^P`` labelings: inputs are learned independently,
    ``Q = prod_x [ (1/2) d^c1 (1-d)^c0 + (1/2) d^c0 (1-d)^c1 ]`` with ``c_y`` the count of label ``y`` at ``x``."""
    c = counts.double()
    a = c[..., 0] * math.log(1 - delta) + c[..., 1] * math.log(delta)  # the function "0" at x
    b = c[..., 1] * math.log(1 - delta) + c[..., 0] * math.log(delta)  # the function "1" at x
    return (torch.logaddexp(a, b) - math.log(2)).sum(-1)


def posterior_weights(cls: FunctionClass, counts: torch.Tensor, delta: float) -> torch.Tensor:
    """Posterior masses (float64, ``(K,)``) of the functions after one data set ``counts`` (``(P, 2)``)."""
    m = mistakes(cls.bits(dtype=torch.float64), counts.to(cls.device).double())
    lw = cls.log_prior + m * math.log(delta / (1 - delta))
    return torch.softmax(lw, 0)


def posterior_predictive(cls: FunctionClass, counts: torch.Tensor, delta: float, *,
                         chunk: int = 2**16) -> torch.Tensor:
    """``Q(y = 1 | x, S)`` at every input for each data set in ``counts`` (``(*batch, P, 2)``): ``(*batch, P)``.

    ``Q(1 | x) = delta + (1 - 2 delta) sum_f post(f) f(x)``, accumulated over chunks of functions in float64.
    """
    counts = counts.to(cls.device)
    batch = counts.shape[:-2]
    flat = counts.reshape(-1, cls.n_inputs, 2)
    log_r = math.log(delta / (1 - delta))
    lw_all = []
    for start, stop in cls.chunks(chunk):  # pass 1: the normalizer of each data set
        m = mistakes(cls.bits(start, stop, torch.float64), flat.double())
        lw_all.append(torch.logsumexp(m * log_r + cls.log_prior[start:stop, None], 0))
    log_z = torch.logsumexp(torch.stack(lw_all), 0)  # (B,)
    mean_f = torch.zeros(flat.shape[0], cls.n_inputs, dtype=torch.float64, device=cls.device)
    for start, stop in cls.chunks(chunk):  # pass 2: posterior-weighted truth tables
        bits = cls.bits(start, stop, torch.float64)
        post = torch.exp(mistakes(bits, flat.double()) * log_r + cls.log_prior[start:stop, None] - log_z)  # (k, B)
        mean_f += post.T @ bits
    return (delta + (1 - 2 * delta) * mean_f).reshape(*batch, cls.n_inputs)


def expected_log_loss(q1: torch.Tensor, truth_bits: torch.Tensor, delta: float) -> torch.Tensor:
    """Expected test log-loss ``E_x E_{y ~ P_f0(.|x)} [-log q(y | x)]`` with ``x`` uniform over the inputs.

    ``q1``: ``(..., P)`` predicted ``P(y = 1 | x)``. The truth's own loss is the binary entropy ``h(delta)``; the
    excess over it is ``E_x KL(P_f0(.|x) || q(.|x))``.
    """
    q1 = torch.as_tensor(q1, dtype=torch.float64)
    f0 = torch.as_tensor(truth_bits, dtype=torch.float64, device=q1.device)
    p1 = delta + (1 - 2 * delta) * f0  # the truth's P(y = 1 | x)
    return -(p1 * torch.log(q1) + (1 - p1) * torch.log1p(-q1)).mean(-1)


def binary_entropy(delta: float) -> float:
    return -(delta * math.log(delta) + (1 - delta) * math.log(1 - delta))


# -- the weight of a hypothesis ----------------------------------------------------------------------
def hamming_distances(cls: FunctionClass, truth_bits: torch.Tensor, *, chunk: int = 2**16) -> torch.Tensor:
    """``(K,)`` int64 number of inputs where each function differs from ``truth_bits`` (``(P,)``)."""
    f0 = torch.as_tensor(truth_bits, dtype=torch.float32, device=cls.device)
    out = []
    for start, stop in cls.chunks(chunk):
        bits = cls.bits(start, stop)
        out.append((bits @ (1 - 2 * f0) + f0.sum()).round().to(torch.int64))  # |f| + |f0| - 2 f.f0
    return torch.cat(out)


def ball_weights(cls: FunctionClass, truth_bits: torch.Tensor) -> np.ndarray:
    """``W(r)`` for ``r = 0..P``: prior mass of the functions within Hamming distance ``r`` of the truth.

    With label noise ``delta`` the per-sample KL from the truth to a function at distance ``r`` is
    ``eps(r) = r * channel_kl(delta) / P``, so ``W(r)`` is the weight of the hypothesis ``W_eps`` at ``eps(r)``.
    """
    dist = hamming_distances(cls, truth_bits)
    mass = torch.zeros(cls.n_inputs + 1, dtype=torch.float64, device=cls.device)
    mass.index_add_(0, dist, cls.prior)
    return mass.cumsum(0).cpu().numpy()


def weight_bound(ball_w: np.ndarray, ns: Sequence[int] | np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """The bound ``min_eps [-log W_eps + n eps]`` on the expected cumulative regret at each ``n``, and the
    minimizing radius (in flipped inputs). ``ball_w`` is :func:`ball_weights`' output (length ``P + 1``)."""
    ball_w = np.asarray(ball_w, dtype=np.float64)
    p = len(ball_w) - 1
    radii = np.arange(p + 1)
    eps = radii * channel_kl(delta) / p
    with np.errstate(divide="ignore"):
        neg_log_w = -np.log(ball_w)
    ns = np.asarray(ns, dtype=np.float64)
    table = neg_log_w[None, :] + ns[:, None] * eps[None, :]  # (len(ns), P+1), inf where the ball is empty
    best = table.argmin(1)
    return table[np.arange(len(ns)), best], best
