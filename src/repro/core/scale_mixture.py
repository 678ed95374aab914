"""Scale mixtures of Gaussian processes: a random scale ``s ~ H`` multiplies a GP's whole covariance.

The model (Lee et al. 2022, "Scale mixtures of NNGPs"; Shah et al. 2014 for the Student-t case) is

    s ~ H,      f | s ~ GP(0, s K),      y | f, s ~ N(f(X), s * noise_var * I),

so that, with ``A = K(X, X) + noise_var I``, the labels are ``y | s ~ N(0, s A)`` and each test point's
predictive given ``s`` is ``N(mu_*, s V_*)`` with the usual GP mean ``mu_* = K_*X A^-1 y`` (which does not
depend on ``s``) and variance ``V_*`` (latent, or plus ``noise_var`` for a noisy label). Everything about
``s`` enters through two numbers of the training data: ``q = y^T A^-1 y`` and ``log|A|``.

Pieces (NumPy, float64), for every paper that needs a random output scale:

- scale priors :class:`FixedScale` (the plain GP), :class:`InverseGamma` (gives a Student-t process) and
  :class:`BurrXII` (heavy-tailed, no closed form), all with ``sample``, ``logpdf`` and ``mean``;
- :class:`SpectralGram`: one eigendecomposition of ``K(X, X)`` gives ``q``, ``log|A|`` and ``A^-1 b`` for any
  noise variance in O(n) / O(n^2), which makes marginal-likelihood fits of the noise cheap
  (:func:`fit_noise_variance`);
- :func:`log_marginal_likelihood`: ``log p(y)`` in closed form for the fixed and inverse-gamma scales and by
  importance sampling (log-sum-exp, prior as proposal) otherwise;
- predictives with ``logpdf``, ``mean``, ``variance`` and ``sample``: :class:`StudentT`
  (:func:`student_t_predictive`, conjugate) and :class:`GaussianScaleMixture`
  (:func:`importance_sampled_predictive`; :func:`gaussian_predictive` is its one-component special case);
  :func:`scale_mixture_predictive` builds the right one for any prior;
- :func:`sample_mlp_readout`: an *exact* sampler of finite-width MLP features and outputs at a few inputs,
  with a per-network output scale (below).

Multiple outputs (e.g. one-hot targets) share one ``s``: pass ``y`` of shape ``(n, k)``; ``q`` sums over the
columns and the number of observations is ``n * k``.

Exact finite-width sampling. For a fully connected net in standard parametrization
(``W_l ~ N(0, weight_var / fan_in)``, ``b_l ~ N(0, bias_var)``), given the post-activations ``a_l`` of layer
``l`` at ``P`` inputs, the ``width`` rows of the next pre-activations are i.i.d. ``N(0, C_l)`` with
``C_l = weight_var * a_l a_l^T / fan_in + bias_var`` (a ``P x P`` matrix). Sampling layer by layer from these
``P``-dimensional Gaussians therefore gives exactly the joint law of a finite network's hidden features at
the ``P`` inputs, at a cost of ``width * P^2`` per layer instead of ``width^2`` weights per layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
from scipy import special, stats

from repro.core import gp

LOG_2PI = float(np.log(2.0 * np.pi))


# -- scale priors -------------------------------------------------------------------------------------
class ScalePrior:
    """A distribution of the positive scale ``s`` (subclasses are frozen dataclasses)."""

    name = "scale prior"

    def sample(self, rng: np.random.Generator, size: int | tuple[int, ...]) -> np.ndarray:
        raise NotImplementedError

    def logpdf(self, s) -> np.ndarray:
        raise NotImplementedError

    def mean(self) -> float:
        raise NotImplementedError

    def label(self) -> str:
        return self.name


@dataclass(frozen=True)
class FixedScale(ScalePrior):
    """A point mass at ``value``: the plain Gaussian process ``GP(0, value * K)``."""

    value: float = 1.0
    name = "fixed"

    def __post_init__(self):
        if not self.value > 0:
            raise ValueError(f"FixedScale: value must be > 0, got {self.value}")

    def sample(self, rng, size):
        return np.full(size, float(self.value))

    def logpdf(self, s):
        raise ValueError("a point mass has no density; FixedScale is handled in closed form")

    def mean(self) -> float:
        return float(self.value)

    def label(self) -> str:
        return f"fixed s={self.value:g}"


@dataclass(frozen=True)
class InverseGamma(ScalePrior):
    """``p(s) = beta^alpha / Gamma(alpha) * s^(-alpha-1) * exp(-beta / s)``; mixes a GP into a Student-t process."""

    alpha: float
    beta: float
    name = "inverse-gamma"

    def __post_init__(self):
        if not (self.alpha > 0 and self.beta > 0):
            raise ValueError(f"InverseGamma: need alpha > 0 and beta > 0, got ({self.alpha}, {self.beta})")

    def sample(self, rng, size):
        return 1.0 / rng.gamma(self.alpha, 1.0 / self.beta, size=size)

    def logpdf(self, s):
        s = np.asarray(s, dtype=np.float64)
        return (self.alpha * np.log(self.beta) - special.gammaln(self.alpha)
                - (self.alpha + 1.0) * np.log(s) - self.beta / s)

    def mean(self) -> float:
        return self.beta / (self.alpha - 1.0) if self.alpha > 1 else float("inf")

    def variance(self) -> float:
        if self.alpha <= 2:
            return float("inf")
        return self.beta**2 / ((self.alpha - 1.0) ** 2 * (self.alpha - 2.0))

    def label(self) -> str:
        return f"IG({self.alpha:g}, {self.beta:g})"


@dataclass(frozen=True)
class BurrXII(ScalePrior):
    """Burr type XII: ``p(s) = c d / l * (s/l)^(c-1) * (1 + (s/l)^c)^(-d-1)`` (scipy's ``burr12(c, d, scale=l)``).

    Its tail falls like ``s^(-c d - 1)``: the mixed process has heavy tails without a closed form.
    """

    c: float
    d: float
    scale: float = 1.0
    name = "Burr XII"

    def __post_init__(self):
        if not (self.c > 0 and self.d > 0 and self.scale > 0):
            raise ValueError(f"BurrXII: need c, d, scale > 0, got ({self.c}, {self.d}, {self.scale})")

    def sample(self, rng, size):
        u = rng.uniform(size=size)
        # inverse CDF: F(s) = 1 - (1 + (s/l)^c)^(-d)
        return self.scale * np.expm1(-np.log1p(-u) / self.d) ** (1.0 / self.c)

    def logpdf(self, s):
        z = np.asarray(s, dtype=np.float64) / self.scale
        return (np.log(self.c) + np.log(self.d) - np.log(self.scale) + (self.c - 1.0) * np.log(z)
                - (self.d + 1.0) * np.log1p(z**self.c))

    def mean(self) -> float:
        if self.c * self.d <= 1:
            return float("inf")
        return float(self.scale * self.d * special.beta(self.d - 1.0 / self.c, 1.0 + 1.0 / self.c))

    def label(self) -> str:
        return f"Burr({self.c:g}, {self.d:g})"


# -- the training data enter through q = y^T A^-1 y and log|A| ----------------------------------------
@dataclass(frozen=True)
class SpectralGram:
    """``K = U diag(lam) U^T`` once; then ``A = K + noise_var I`` is cheap for every noise variance."""

    eigenvalues: np.ndarray  # (n,), clipped at 0
    eigenvectors: np.ndarray  # (n, n)

    @classmethod
    def from_kernel(cls, K: np.ndarray) -> "SpectralGram":
        K = np.asarray(K, dtype=np.float64)
        lam, vec = np.linalg.eigh(0.5 * (K + K.T))
        return cls(eigenvalues=np.clip(lam, 0.0, None), eigenvectors=vec)

    @property
    def n(self) -> int:
        return self.eigenvalues.shape[0]

    def _check_noise(self, noise_var: float) -> np.ndarray:
        d = self.eigenvalues + noise_var
        if not noise_var >= 0 or d.min() <= 0:
            raise ValueError(f"K + noise_var I must be positive definite; noise_var={noise_var}")
        return d

    def project(self, y: np.ndarray) -> np.ndarray:
        """``U^T y`` (reuse it across noise variances with ``quad(..., projected=...)``)."""
        return self.eigenvectors.T @ np.asarray(y, dtype=np.float64)

    def quad(self, noise_var: float, y: np.ndarray | None = None, *, projected: np.ndarray | None = None) -> float:
        """``y^T (K + noise_var I)^-1 y``, summed over the columns of ``y``."""
        d = self._check_noise(noise_var)
        z = self.project(y) if projected is None else projected
        z2 = z**2 if z.ndim == 1 else np.sum(z**2, axis=1)
        return float(np.sum(z2 / d))

    def logdet(self, noise_var: float) -> float:
        """``log |K + noise_var I|``."""
        return float(np.sum(np.log(self._check_noise(noise_var))))

    def solve(self, noise_var: float, b: np.ndarray) -> np.ndarray:
        """``(K + noise_var I)^-1 b``."""
        d = self._check_noise(noise_var)
        z = self.project(b)
        z = z / d if z.ndim == 1 else z / d[:, None]
        return self.eigenvectors @ z

    def posterior(self, K_cross: np.ndarray, K_test_diag: np.ndarray, y: np.ndarray, noise_var: float, *,
                  cross_projected: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """GP posterior mean ``K_*X A^-1 y`` and latent variance ``k_** - diag(K_*X A^-1 K_X*)`` at scale 1.

        The same numbers as :func:`repro.core.gp.gp_posterior`, in O(m n) per noise variance once
        ``cross_projected = K_cross @ U`` is known (pass it to reuse it across noise variances).
        """
        d = self._check_noise(noise_var)
        B = np.asarray(K_cross, np.float64) @ self.eigenvectors if cross_projected is None else cross_projected
        z = self.project(y)
        mean = B @ (z / d if z.ndim == 1 else z / d[:, None])
        var = np.asarray(K_test_diag, np.float64) - (B**2) @ (1.0 / d)
        return mean, np.clip(var, 0.0, None)


def _logsumexp(a: np.ndarray, axis=None, keepdims: bool = False) -> np.ndarray:
    """``log sum exp(a)`` (plain NumPy: scipy's version is slow for the many small calls made here)."""
    a = np.asarray(a, dtype=np.float64)
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    out = np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


def gaussian_scale_loglik(s, quad: float, logdet: float, n_obs: int) -> np.ndarray:
    """``log N(y; 0, s A) = -n/2 log(2 pi s) - 1/2 log|A| - q / (2 s)`` for every scale in ``s``."""
    s = np.asarray(s, dtype=np.float64)
    return -0.5 * n_obs * (LOG_2PI + np.log(s)) - 0.5 * logdet - 0.5 * quad / s


def log_normalize(log_w: np.ndarray) -> np.ndarray:
    """Weights ``exp(log_w) / sum exp(log_w)``, computed with log-sum-exp."""
    log_w = np.asarray(log_w, dtype=np.float64)
    return np.exp(log_w - _logsumexp(log_w))


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's ``(sum w)^2 / sum w^2`` of importance weights."""
    w = np.asarray(weights, dtype=np.float64)
    return float(w.sum() ** 2 / np.sum(w**2))


def inverse_gamma_posterior(prior: InverseGamma, quad: float, n_obs: int) -> InverseGamma:
    """``s | y ~ IG(alpha + n/2, beta + q/2)``: the inverse gamma is conjugate to ``y | s ~ N(0, s A)``."""
    return InverseGamma(prior.alpha + 0.5 * n_obs, prior.beta + 0.5 * quad)


def log_marginal_likelihood(prior: ScalePrior, quad: float, logdet: float, n_obs: int, *,
                            scales: np.ndarray | None = None) -> float:
    """``log p(y) = log E_s[N(y; 0, s A)]``.

    Closed form for :class:`FixedScale` and :class:`InverseGamma` (a multivariate Student-t density with
    ``2 alpha`` degrees of freedom and scale ``beta / alpha * A``); otherwise the importance-sampling estimate
    ``log mean_m N(y; 0, s_m A)`` over ``scales`` drawn from the prior (pass the same draws to compare values).
    """
    if isinstance(prior, FixedScale):
        return float(gaussian_scale_loglik(prior.value, quad, logdet, n_obs))
    if isinstance(prior, InverseGamma):
        a, b = prior.alpha, prior.beta
        return float(special.gammaln(a + 0.5 * n_obs) - special.gammaln(a) + a * np.log(b)
                     - (a + 0.5 * n_obs) * np.log(b + 0.5 * quad) - 0.5 * n_obs * LOG_2PI - 0.5 * logdet)
    if scales is None:
        raise ValueError(f"{prior.label()}: no closed form; pass scales drawn from the prior")
    return importance_log_marginal(scales, quad, logdet, n_obs)


def importance_log_marginal(scales: np.ndarray, quad: float, logdet: float, n_obs: int) -> float:
    """``log mean_m N(y; 0, s_m A)``: the importance-sampling estimate of ``log p(y)`` from prior draws ``s_m``."""
    ll = gaussian_scale_loglik(scales, quad, logdet, n_obs)
    return float(_logsumexp(ll) - np.log(len(ll)))


def _best_log_noise(neg_loglik: Callable[[float], float], bounds, grid: int) -> tuple[float, float]:
    """Minimise ``neg_loglik(log noise_var)``: a log-spaced grid in ``bounds``, then a bounded 1-D refinement
    between the best grid point's neighbours. Returns ``(noise_var, -minimum)``."""
    from scipy.optimize import minimize_scalar

    if not 0 < bounds[0] < bounds[1]:
        raise ValueError(f"bounds must satisfy 0 < low < high, got {bounds}")
    logs = np.linspace(np.log(bounds[0]), np.log(bounds[1]), grid)
    values = np.array([neg_loglik(float(v)) for v in logs])
    i = int(np.argmin(values))
    best_log, best = float(logs[i]), float(values[i])
    left, right = logs[max(i - 1, 0)], logs[min(i + 1, grid - 1)]
    if right > left:
        res = minimize_scalar(neg_loglik, bounds=(left, right), method="bounded", options={"xatol": 1e-4})
        if res.fun < best:
            best_log, best = float(res.x), float(res.fun)
    return float(np.exp(best_log)), -best


def fit_noise_variance(gram: SpectralGram, y: np.ndarray, prior: ScalePrior, *, bounds=(1e-4, 10.0),
                       grid: int = 41, scales: np.ndarray | None = None) -> tuple[float, float]:
    """Type-II maximum likelihood of ``noise_var`` for one scale prior: ``(noise_var, log p(y))``.

    A log-spaced grid inside ``bounds`` then a bounded 1-D refinement around its best point. ``scales``:
    prior draws for priors without a closed form (kept fixed, so the objective is smooth).
    """
    y = np.asarray(y, dtype=np.float64)
    z, k = gram.project(y), (1 if y.ndim == 1 else y.shape[1])

    def neg(log_nv: float) -> float:
        nv = float(np.exp(log_nv))
        return -log_marginal_likelihood(prior, gram.quad(nv, projected=z), k * gram.logdet(nv), y.size,
                                        scales=scales)

    return _best_log_noise(neg, bounds, grid)


# -- predictives --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StudentT:
    """Elementwise Student-t: ``loc + sqrt(scale2) * T_df``."""

    loc: np.ndarray
    scale2: np.ndarray
    df: float

    def logpdf(self, y) -> np.ndarray:
        return stats.t.logpdf(np.asarray(y, np.float64), self.df, loc=self.loc, scale=np.sqrt(self.scale2))

    def cdf(self, y) -> np.ndarray:
        return stats.t.cdf(np.asarray(y, np.float64), self.df, loc=self.loc, scale=np.sqrt(self.scale2))

    @property
    def mean(self) -> np.ndarray:
        return np.asarray(self.loc)

    @property
    def variance(self) -> np.ndarray:
        if self.df <= 2:
            return np.full(np.shape(self.scale2), np.inf)
        return np.asarray(self.scale2) * self.df / (self.df - 2.0)

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``(size, *loc.shape)`` draws; one chi-square per draw, shared by all coordinates (a t *process*)."""
        g = rng.chisquare(self.df, size=size) / self.df
        z = rng.standard_normal((size,) + np.shape(self.loc))
        g = g.reshape((size,) + (1,) * np.ndim(self.loc))
        return self.loc + np.sqrt(self.scale2) * z / np.sqrt(g)


@dataclass(frozen=True)
class GaussianScaleMixture:
    """``sum_m w_m N(loc, s_m * base_var)`` elementwise (one shared scale per component)."""

    loc: np.ndarray
    base_var: np.ndarray
    scales: np.ndarray  # (M,)
    weights: np.ndarray  # (M,), summing to 1

    def logpdf(self, y) -> np.ndarray:
        y = np.asarray(y, np.float64)
        var = self.scales.reshape((-1,) + (1,) * np.ndim(self.base_var)) * self.base_var  # (M, ...)
        comp = -0.5 * (LOG_2PI + np.log(var) + (y - self.loc) ** 2 / var)
        keep = self.weights > 0
        logw = np.log(self.weights[keep]).reshape((-1,) + (1,) * np.ndim(self.base_var))
        return _logsumexp(comp[keep] + logw, axis=0)

    def cdf(self, y) -> np.ndarray:
        y = np.asarray(y, np.float64)
        sd = np.sqrt(self.scales.reshape((-1,) + (1,) * np.ndim(self.base_var)) * self.base_var)
        w = self.weights.reshape((-1,) + (1,) * np.ndim(self.base_var))
        return np.sum(w * stats.norm.cdf((y - self.loc) / sd), axis=0)

    @property
    def mean(self) -> np.ndarray:
        # sum_m w_m loc: every component shares the location
        return np.asarray(self.loc) * float(np.sum(self.weights))

    @property
    def mean_scale(self) -> float:
        return float(np.sum(self.weights * self.scales))

    @property
    def variance(self) -> np.ndarray:
        return self.mean_scale * np.asarray(self.base_var)

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``(size, *loc.shape)`` draws; each draw picks one component for all coordinates."""
        idx = rng.choice(len(self.scales), size=size, p=self.weights)
        z = rng.standard_normal((size,) + np.shape(self.loc))
        s = self.scales[idx].reshape((size,) + (1,) * np.ndim(self.loc))
        return self.loc + np.sqrt(s * self.base_var) * z


def gaussian_predictive(mean, var, scale: float = 1.0) -> GaussianScaleMixture:
    """``N(mean, scale * var)`` as a one-component mixture (the plain GP predictive)."""
    return GaussianScaleMixture(loc=np.asarray(mean, np.float64), base_var=np.asarray(var, np.float64),
                                scales=np.array([float(scale)]), weights=np.array([1.0]))


def student_t_predictive(mean, var, prior: InverseGamma, quad: float, n_obs: int) -> StudentT:
    """Conjugate predictive: ``t_{2 alpha + n}(mean, (beta + q/2) / (alpha + n/2) * var)``.

    ``var`` is the GP predictive variance at scale 1 (latent ``V_*``, or ``V_* + noise_var`` for labels).
    """
    post = inverse_gamma_posterior(prior, quad, n_obs)
    return StudentT(loc=np.asarray(mean, np.float64), scale2=post.beta / post.alpha * np.asarray(var, np.float64),
                    df=2.0 * post.alpha)


def importance_weights(scales: np.ndarray, quad: float, logdet: float, n_obs: int) -> np.ndarray:
    """Self-normalized weights ``w_m ∝ N(y; 0, s_m A)`` of prior draws ``s_m`` (the prior is the proposal)."""
    return log_normalize(gaussian_scale_loglik(scales, quad, logdet, n_obs))


def importance_sampled_predictive(mean, var, prior: ScalePrior, quad: float, logdet: float, n_obs: int, *,
                                  num_samples: int = 5000, rng: np.random.Generator | None = None,
                                  scales: np.ndarray | None = None) -> GaussianScaleMixture:
    """Posterior predictive for any scale prior: ``sum_m w_m N(mean, s_m var)`` with ``s_m ~ prior``."""
    if scales is None:
        rng = rng if rng is not None else np.random.default_rng(0)
        scales = prior.sample(rng, num_samples)
    scales = np.asarray(scales, dtype=np.float64)
    w = importance_weights(scales, quad, logdet, n_obs)
    return GaussianScaleMixture(loc=np.asarray(mean, np.float64), base_var=np.asarray(var, np.float64),
                                scales=scales, weights=w)


def scale_mixture_predictive(mean, var, prior: ScalePrior, quad: float, logdet: float, n_obs: int, *,
                             num_samples: int = 5000, rng: np.random.Generator | None = None,
                             scales: np.ndarray | None = None):
    """The posterior predictive for ``prior``: Gaussian (fixed), Student-t (inverse gamma) or an IS mixture."""
    if isinstance(prior, FixedScale):
        return gaussian_predictive(mean, var, prior.value)
    if isinstance(prior, InverseGamma):
        return student_t_predictive(mean, var, prior, quad, n_obs)
    return importance_sampled_predictive(mean, var, prior, quad, logdet, n_obs, num_samples=num_samples, rng=rng,
                                         scales=scales)


@dataclass(frozen=True)
class ScaleMixtureFit:
    """A scale-mixture GP conditioned on training data: the scale-1 GP posterior plus ``q`` and ``log|A|``."""

    prior: ScalePrior
    noise_var: float
    quad: float
    logdet: float
    n_obs: int
    mean: np.ndarray  # (m,) or (m, k)
    latent_var: np.ndarray  # (m,) GP posterior variance of f at scale 1
    log_marginal: float

    def predictive(self, *, latent: bool = False, num_samples: int = 5000, rng=None, scales=None):
        var = self.latent_var if latent else self.latent_var + self.noise_var
        if self.mean.ndim == 2:
            var = var[:, None]
        return scale_mixture_predictive(self.mean, var, self.prior, self.quad, self.logdet, self.n_obs,
                                        num_samples=num_samples, rng=rng, scales=scales)


def fit_scale_mixture_gp(K_train, K_cross, K_test_diag, y, prior: ScalePrior, *, noise_var: float | None = None,
                         gram: SpectralGram | None = None, cross_projected: np.ndarray | None = None,
                         bounds=(1e-4, 10.0), scales: np.ndarray | None = None) -> ScaleMixtureFit:
    """Condition ``y = f + eps`` (``f | s ~ GP(0, s K)``, ``eps | s ~ N(0, s noise_var)``) on training data.

    ``noise_var=None`` fits it by the prior's own marginal likelihood (:func:`fit_noise_variance`). Without
    ``gram`` the scale-1 GP posterior comes from :func:`repro.core.gp.gp_posterior` (one Cholesky of ``A``);
    with a :class:`SpectralGram` of ``K_train`` it comes from the eigendecomposition (the same numbers,
    cheap for many noise variances and priors; ``cross_projected = K_cross @ gram.eigenvectors`` may be
    passed to reuse it). ``K_train`` may be ``None`` when ``gram`` is given.
    """
    y = np.asarray(y, dtype=np.float64)
    use_gram = gram is not None
    gram = gram if use_gram else SpectralGram.from_kernel(K_train)
    if noise_var is None:
        noise_var, _ = fit_noise_variance(gram, y, prior, bounds=bounds, scales=scales)
    k = 1 if y.ndim == 1 else y.shape[1]
    quad, logdet = gram.quad(noise_var, y), k * gram.logdet(noise_var)
    if use_gram:
        mean, var = gram.posterior(K_cross, K_test_diag, y, noise_var, cross_projected=cross_projected)
    else:
        post = gp.gp_posterior(K_train, K_cross, K_test_diag, y, noise_var=noise_var)
        mean, var = post.mean, post.var
    return ScaleMixtureFit(prior=prior, noise_var=float(noise_var), quad=quad, logdet=logdet, n_obs=y.size,
                           mean=mean, latent_var=var,
                           log_marginal=log_marginal_likelihood(prior, quad, logdet, y.size, scales=scales))


def fit_scale_and_noise(gram: SpectralGram, y: np.ndarray, *, bounds=(1e-4, 10.0),
                        grid: int = 41) -> tuple[float, float, float]:
    """Type-II maximum likelihood of a plain GP's output scale ``c`` and noise: ``y ~ N(0, c (K + noise_var I))``.

    For each noise variance the best scale is ``c = q / n``; the profile likelihood is maximised over
    the noise like :func:`fit_noise_variance`. Returns ``(c, noise_var, log p(y))``; the fitted model is
    ``FixedScale(c)`` with that ``noise_var``.
    """
    y = np.asarray(y, dtype=np.float64)
    z, k = gram.project(y), (1 if y.ndim == 1 else y.shape[1])

    def profile(nv: float) -> tuple[float, float]:
        q = gram.quad(nv, projected=z)
        c = q / y.size
        return c, float(gaussian_scale_loglik(c, q, k * gram.logdet(nv), y.size))

    nv, _ = _best_log_noise(lambda v: -profile(float(np.exp(v)))[1], bounds, grid)
    c, ll = profile(nv)
    return float(c), nv, ll


def posterior_scale_draws(prior: ScalePrior, quad: float, logdet: float, n_obs: int, u: np.ndarray, *,
                          scales: np.ndarray | None = None) -> np.ndarray:
    """Draws of ``s | y`` by inverse CDF at the uniforms ``u`` (pass the same ``u`` to compare priors).

    Fixed scale: its value; inverse gamma: the conjugate ``IG(alpha + n/2, beta + q/2)``; otherwise the
    weighted empirical quantiles of the importance-sampled prior draws ``scales``.
    """
    u = np.asarray(u, dtype=np.float64)
    if isinstance(prior, FixedScale):
        return np.full(u.shape, float(prior.value))
    if isinstance(prior, InverseGamma):
        post = inverse_gamma_posterior(prior, quad, n_obs)
        return stats.invgamma.ppf(u, post.alpha, scale=post.beta)
    if scales is None:
        raise ValueError(f"{prior.label()}: pass the prior draws used for importance sampling")
    order = np.argsort(scales)
    cum = np.cumsum(importance_weights(scales, quad, logdet, n_obs)[order])
    return np.asarray(scales, np.float64)[order][np.minimum(np.searchsorted(cum, u * cum[-1]), len(cum) - 1)]


# -- exact finite-width network sampler --------------------------------------------------------------
NUMPY_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "erf": special.erf,
    "relu": lambda z: np.maximum(z, 0.0),
    "tanh": np.tanh,
    "identity": lambda z: z,
}


def _psd_factor(C: np.ndarray) -> np.ndarray:
    """``L`` with ``L L^T = C`` for a stack of symmetric PSD matrices (eigen-based: safe when singular)."""
    lam, vec = np.linalg.eigh(0.5 * (C + np.swapaxes(C, -1, -2)))
    return vec * np.sqrt(np.clip(lam, 0.0, None))[..., None, :]


@dataclass(frozen=True)
class ReadoutSample:
    outputs: np.ndarray  # (nets, P): f(x_p) = a_L(x_p) . v with v ~ N(0, s * readout_var / width)
    gram: np.ndarray | None  # (nets, P, P): readout_var * a_L a_L^T / width, the empirical NNGP kernel
    scales: np.ndarray  # (nets,) the output scale s of each network


def _readout_chunk_numpy(rng, L0, scales, width, depth, act, weight_var, bias_var, readout_var):
    b, P = scales.shape[0], L0.shape[0]
    L = np.broadcast_to(L0, (b, P, P))
    for layer in range(depth - 1):
        h = rng.standard_normal((b, width, P)) @ np.swapaxes(L, 1, 2)  # rows ~ N(0, C_l)
        a = act(h)
        G = np.swapaxes(a, 1, 2) @ a / width  # (b, P, P): a_l a_l^T / width
        if layer < depth - 2:
            L = _psd_factor(weight_var * G + bias_var)
    v = rng.standard_normal((b, width)) * np.sqrt(scales[:, None] * readout_var / width)
    return np.einsum("bwp,bw->bp", a, v), readout_var * G


@lru_cache(maxsize=16)
def _readout_chunk_jax(width: int, depth: int, activation: str):
    """The same layer recursion compiled with JAX (used on accelerators, where it is much faster)."""
    import jax
    import jax.numpy as jnp

    from repro.core.mlp_jax import get_activation

    act = get_activation(activation)

    @jax.jit
    def run(key, L0, scales, weight_var, bias_var, readout_var):
        b, P = scales.shape[0], L0.shape[0]
        keys = jax.random.split(key, depth)
        L = jnp.broadcast_to(L0, (b, P, P))
        for layer in range(depth - 1):
            h = jax.random.normal(keys[layer], (b, width, P), L0.dtype) @ jnp.swapaxes(L, 1, 2)
            a = act(h)
            G = jnp.swapaxes(a, 1, 2) @ a / width
            if layer < depth - 2:
                lam, vec = jnp.linalg.eigh(weight_var * G + bias_var)
                L = vec * jnp.sqrt(jnp.clip(lam, 0.0, None))[..., None, :]
        v = jax.random.normal(keys[-1], (b, width), L0.dtype) * jnp.sqrt(scales[:, None] * readout_var / width)
        return jnp.einsum("bwp,bw->bp", a, v), readout_var * G

    return run


def sample_mlp_readout(x: np.ndarray, scales: np.ndarray, *, width: int, depth: int, activation: str = "erf",
                       weight_var: float = 1.0, bias_var: float = 0.0, readout_var: float = 1.0,
                       rng: np.random.Generator | None = None, return_gram: bool = True, chunk: int | None = None,
                       backend: str = "auto", progress: bool = False) -> ReadoutSample:
    """Outputs of ``len(scales)`` independent finite-width MLPs at the rows of ``x`` (``P`` inputs), exactly.

    ``depth`` counts weight layers (``depth - 1`` hidden layers of ``width`` units, standard
    parametrization, see the module docstring). The readout of network ``m`` has weights
    ``v ~ N(0, scales[m] * readout_var / width)`` and no bias, so ``f | s`` tends to ``GP(0, s K)`` with ``K``
    the NNGP kernel of last-layer variance ``readout_var``. With ``return_gram`` the empirical kernel of the
    last hidden layer is returned too (what readout-only training sees). ``backend``: ``"numpy"``, ``"jax"``
    (random numbers from JAX keys drawn from ``rng``; runs on JAX's default device, in its precision), or
    ``"auto"`` (JAX when its default backend is an accelerator, NumPy on CPU).
    """
    if activation not in NUMPY_ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(NUMPY_ACTIVATIONS)}")
    if width < 1 or depth < 2:
        raise ValueError(f"need width >= 1 and depth >= 2 (at least one hidden layer), got {width}, {depth}")
    if backend not in ("auto", "numpy", "jax"):
        raise ValueError(f"backend must be auto, numpy or jax, got {backend!r}")
    if backend == "auto":
        import jax

        backend = "numpy" if jax.default_backend() == "cpu" else "jax"
    x = np.asarray(x, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    scales = np.asarray(scales, dtype=np.float64).reshape(-1)
    rng = rng if rng is not None else np.random.default_rng(0)
    n_nets, P = scales.shape[0], x.shape[0]
    per_chunk = 4e6 if backend == "numpy" else 1.6e8  # features held at once: 32 MB on CPU, ~1.3 GB on a GPU
    chunk = chunk or max(1, min(n_nets, int(per_chunk // (width * P))))
    C0 = weight_var * (x @ x.T) / x.shape[1] + bias_var  # covariance of the first pre-activations
    L0 = _psd_factor(C0)
    outputs = np.empty((n_nets, P))
    grams = np.empty((n_nets, P, P)) if return_gram else None
    starts = range(0, n_nets, chunk)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="finite networks", leave=False)
    for start in starts:
        stop = min(start + chunk, n_nets)
        if backend == "numpy":
            out, G = _readout_chunk_numpy(rng, L0, scales[start:stop], width, depth, NUMPY_ACTIVATIONS[activation],
                                          weight_var, bias_var, readout_var)
        else:
            import jax

            key = jax.random.PRNGKey(int(rng.integers(2**31)))
            out, G = _readout_chunk_jax(width, depth, activation)(key, L0, scales[start:stop], weight_var, bias_var,
                                                                  readout_var)
            out, G = np.asarray(out, np.float64), np.asarray(G, np.float64)
        outputs[start:stop] = out
        if return_gram:
            grams[start:stop] = G
    return ReadoutSample(outputs=outputs, gram=grams, scales=scales)
