"""Exact Gaussian-process regression from kernel matrices (NumPy, float64).

Works for any kernel: RBF for prior-fitted networks, NNGP / NTK limits for the infinite-width papers.
With ``noise_var=0`` the posterior mean is kernel (ridge-less) regression.

Also: the RBF kernel, the exact posterior predictive of noisy labels and its NLL, type-II maximum
likelihood (MLE-II) of the RBF hyperparameters, and a batched torch sampler of GP prior datasets
(Cholesky with jitter) for training prior-data fitted networks on any device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg


@dataclass(frozen=True)
class GPPosterior:
    mean: np.ndarray  # (m,) or (m, k) for k outputs
    cov: np.ndarray | None  # (m, m) latent covariance, or None if only the variance was asked for
    var: np.ndarray  # (m,) latent variance (add the noise variance for the predictive of y)


def _cholesky(K: np.ndarray, jitter: float) -> np.ndarray:
    K = np.asarray(K, dtype=np.float64)
    scale = max(float(np.mean(np.diag(K))), 1e-300)
    eye = np.eye(K.shape[0])
    for attempt in range(6):
        try:
            return linalg.cholesky(K + jitter * scale * 10**attempt * eye, lower=True)
        except linalg.LinAlgError:
            continue
    raise linalg.LinAlgError("kernel matrix is not positive definite even with added jitter")


def gp_posterior(K_train: np.ndarray, K_cross: np.ndarray, K_test: np.ndarray, y: np.ndarray, *,
                 noise_var: float = 0.0, jitter: float = 1e-10, full_cov: bool = False) -> GPPosterior:
    """Posterior of f at test points given y = f(X) + eps, eps ~ N(0, noise_var).

    ``K_train``: (n, n) k(X, X); ``K_cross``: (m, n) k(X*, X); ``K_test``: (m, m) k(X*, X*) if
    ``full_cov`` else either that matrix or just its diagonal (m,). ``y``: (n,) or (n, k).
    mean = K*x (Kxx + s2 I)^-1 y,  cov = K** - K*x (Kxx + s2 I)^-1 Kx*.
    """
    K_train = np.asarray(K_train, dtype=np.float64)
    K_cross = np.asarray(K_cross, dtype=np.float64)
    K_test = np.asarray(K_test, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = K_train.shape[0]
    if K_train.shape != (n, n) or K_cross.shape[1] != n or y.shape[0] != n:
        raise ValueError(f"shape mismatch: K_train {K_train.shape}, K_cross {K_cross.shape}, y {y.shape}")
    L = _cholesky(K_train + noise_var * np.eye(n), jitter)
    alpha = linalg.cho_solve((L, True), y)
    mean = K_cross @ alpha
    V = linalg.solve_triangular(L, K_cross.T, lower=True)  # (n, m)
    if full_cov:
        if K_test.ndim != 2:
            raise ValueError("full_cov=True needs the full (m, m) K_test")
        cov = K_test - V.T @ V
        return GPPosterior(mean=mean, cov=cov, var=np.clip(np.diag(cov), 0.0, None))
    diag = np.diag(K_test) if K_test.ndim == 2 else K_test
    return GPPosterior(mean=mean, cov=None, var=np.clip(diag - np.sum(V**2, axis=0), 0.0, None))


def gp_log_marginal_likelihood(K_train: np.ndarray, y: np.ndarray, noise_var: float = 0.0,
                               jitter: float = 1e-10) -> float:
    """log p(y) = -1/2 y^T (K + s2 I)^-1 y - 1/2 log|K + s2 I| - n/2 log 2 pi, for y of shape (n,)."""
    y = np.asarray(y, dtype=np.float64)
    n = y.shape[0]
    L = _cholesky(np.asarray(K_train, dtype=np.float64) + noise_var * np.eye(n), jitter)
    alpha = linalg.cho_solve((L, True), y)
    return float(-0.5 * y @ alpha - np.sum(np.log(np.diag(L))) - 0.5 * n * np.log(2 * np.pi))


# ---------------------------------------------------------------------------------------------------
# RBF kernel, GP prior sampling (torch), predictive NLL and type-II maximum likelihood (NumPy)
# ---------------------------------------------------------------------------------------------------

LOG_2PI = float(np.log(2 * np.pi))


@dataclass(frozen=True)
class RBFHyperparameters:
    """k(x, x') = outputscale * exp(-|x - x'|^2 / (2 lengthscale^2)), y = f(x) + N(0, noise_var)."""

    lengthscale: float
    outputscale: float
    noise_var: float

    def as_log_array(self) -> np.ndarray:
        return np.log([self.lengthscale, self.outputscale, self.noise_var])

    @classmethod
    def from_log_array(cls, log_params) -> "RBFHyperparameters":
        ell, s2, sn2 = np.exp(np.asarray(log_params, dtype=np.float64))
        return cls(lengthscale=float(ell), outputscale=float(s2), noise_var=float(sn2))


def _as_points(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x[:, None] if x.ndim == 1 else x


def squared_distances(x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """(n, m) matrix of squared Euclidean distances between the rows of x1 (n, d) and x2 (m, d)."""
    x1, x2 = _as_points(x1), _as_points(x2)
    d2 = np.sum(x1**2, 1)[:, None] + np.sum(x2**2, 1)[None, :] - 2.0 * x1 @ x2.T
    return np.clip(d2, 0.0, None)


def rbf_kernel(x1: np.ndarray, x2: np.ndarray, lengthscale: float = 1.0, outputscale: float = 1.0) -> np.ndarray:
    """Squared-exponential kernel s^2 exp(-|x - x'|^2 / 2 l^2) between rows of x1 (n, d) and x2 (m, d)."""
    return outputscale * np.exp(-0.5 * squared_distances(x1, x2) / lengthscale**2)


def gp_predictive(x_ctx: np.ndarray, y_ctx: np.ndarray, x_qry: np.ndarray,
                  hp: RBFHyperparameters) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the posterior predictive of *noisy* y at x_qry (latent variance + noise)."""
    x_ctx, x_qry = _as_points(x_ctx), _as_points(x_qry)
    y_ctx = np.asarray(y_ctx, dtype=np.float64)
    if x_ctx.shape[0] == 0:  # no data: the prior predictive
        return np.zeros(x_qry.shape[0]), np.full(x_qry.shape[0], hp.outputscale + hp.noise_var)
    post = gp_posterior(rbf_kernel(x_ctx, x_ctx, hp.lengthscale, hp.outputscale),
                        rbf_kernel(x_qry, x_ctx, hp.lengthscale, hp.outputscale),
                        np.full(x_qry.shape[0], hp.outputscale), y_ctx, noise_var=hp.noise_var)
    return post.mean, post.var + hp.noise_var


def gaussian_nll(y: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Elementwise -log N(y; mean, var) in nats."""
    y, mean, var = (np.asarray(a, dtype=np.float64) for a in (y, mean, var))
    return 0.5 * (LOG_2PI + np.log(var) + (y - mean) ** 2 / var)


def gp_predictive_nll(x_ctx: np.ndarray, y_ctx: np.ndarray, x_qry: np.ndarray, y_qry: np.ndarray,
                      hp: RBFHyperparameters) -> np.ndarray:
    """Per-query NLL of y_qry under the exact GP posterior predictive (observation noise included)."""
    mean, var = gp_predictive(x_ctx, y_ctx, x_qry, hp)
    return gaussian_nll(y_qry, mean, var)


# -- type-II maximum likelihood ---------------------------------------------------------------------

#: log-space box for (lengthscale, outputscale, noise_var) searched by :func:`fit_mle_ii`
MLE_II_BOUNDS = ((1e-2, 10.0), (1e-3, 100.0), (1e-5, 10.0))


def rbf_neg_log_marginal_likelihood(log_params: np.ndarray, x: np.ndarray, y: np.ndarray,
                                    d2: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """-log p(y | x, theta) for theta = log(lengthscale, outputscale, noise_var), and its gradient in theta.

    With A = K + s_n^2 I and alpha = A^-1 y:  d(-log p)/d theta_j = -1/2 tr((alpha alpha^T - A^-1) dA/d theta_j),
    dA/d log l = K * d2 / l^2,  dA/d log s^2 = K,  dA/d log s_n^2 = s_n^2 I  (Rasmussen & Williams, Eq. 5.9).
    """
    x = _as_points(x)
    y = np.asarray(y, dtype=np.float64)
    n = y.shape[0]
    ell, s2, sn2 = np.exp(log_params)
    d2 = squared_distances(x, x) if d2 is None else d2
    K = s2 * np.exp(-0.5 * d2 / ell**2)
    A = K + sn2 * np.eye(n)
    try:
        L = np.linalg.cholesky(A)
    except np.linalg.LinAlgError:
        return 1e25, np.zeros(3)
    L_inv = linalg.solve_triangular(L, np.eye(n), lower=True, check_finite=False)
    A_inv = L_inv.T @ L_inv
    alpha = A_inv @ y
    nll = 0.5 * y @ alpha + np.sum(np.log(np.diag(L))) + 0.5 * n * LOG_2PI
    W = np.outer(alpha, alpha) - A_inv
    WK = W * K
    grad = -0.5 * np.array([np.sum(WK * d2) / ell**2, np.sum(WK), sn2 * np.trace(W)])
    return float(nll), grad


@dataclass(frozen=True)
class MLEIIFit:
    hyperparameters: RBFHyperparameters
    log_marginal_likelihood: float
    restarts: int


def fit_mle_ii(x: np.ndarray, y: np.ndarray, *, restarts: int = 2, rng: np.random.Generator | None = None,
               init: RBFHyperparameters | None = None, bounds=MLE_II_BOUNDS, maxiter: int = 200) -> MLEIIFit:
    """Type-II maximum likelihood (empirical Bayes) of an RBF GP's lengthscale, outputscale and noise.

    L-BFGS-B on the log-hyperparameters with analytic gradients, inside ``bounds``. The first start is
    ``init`` (default: the geometric centre of the box); each further restart is log-uniform in the box.
    The best of the starts is returned.
    """
    from scipy.optimize import minimize

    if restarts < 1:
        raise ValueError("restarts must be >= 1")
    x = _as_points(x)
    y = np.asarray(y, dtype=np.float64)
    rng = rng if rng is not None else np.random.default_rng(0)
    log_bounds = np.log(np.asarray(bounds, dtype=np.float64))
    d2 = squared_distances(x, x)
    starts = [init.as_log_array() if init is not None else log_bounds.mean(1)]
    starts += [rng.uniform(log_bounds[:, 0], log_bounds[:, 1]) for _ in range(restarts - 1)]
    best = None
    for theta0 in starts:
        res = minimize(rbf_neg_log_marginal_likelihood, np.clip(theta0, log_bounds[:, 0], log_bounds[:, 1]),
                       args=(x, y, d2), jac=True, method="L-BFGS-B", bounds=log_bounds,
                       options={"maxiter": maxiter})
        if best is None or res.fun < best.fun:
            best = res
    return MLEIIFit(RBFHyperparameters.from_log_array(best.x), float(-best.fun), restarts)


# -- torch: batched kernels and prior samples (used to generate PFN training data on any device) ----

def rbf_kernel_torch(x1, x2, lengthscale, outputscale):
    """Batched RBF kernel: x1 (B, n, d), x2 (B, m, d); lengthscale/outputscale floats or (B,) tensors."""
    import torch

    ell = torch.as_tensor(lengthscale, dtype=x1.dtype, device=x1.device).reshape(-1, 1, 1)
    s2 = torch.as_tensor(outputscale, dtype=x1.dtype, device=x1.device).reshape(-1, 1, 1)
    d2 = torch.cdist(x1 / ell, x2 / ell).pow(2)
    return s2 * torch.exp(-0.5 * d2)


def sample_gp_prior(x, lengthscale, outputscale, noise_var, *, generator=None, jitter: float = 1e-6):
    """Draw y ~ N(0, K(x, x) + noise_var I) for each of the B datasets in x (B, N, d); returns (B, N).

    Works in float64 (Cholesky of K + (noise_var + jitter * outputscale) I; the jitter grows tenfold
    until the factorisation succeeds) and returns y in x's dtype on x's device. Hyperparameters may be
    floats or per-dataset (B,) tensors.
    """
    import torch

    x64 = x.to(torch.float64)
    B, N, _ = x64.shape
    K = rbf_kernel_torch(x64, x64, lengthscale, outputscale)
    s2 = torch.as_tensor(outputscale, dtype=torch.float64, device=x.device).reshape(-1, 1, 1)
    sn2 = torch.as_tensor(noise_var, dtype=torch.float64, device=x.device).reshape(-1, 1, 1)
    eye = torch.eye(N, dtype=torch.float64, device=x.device)
    for attempt in range(6):
        L, info = torch.linalg.cholesky_ex(K + (sn2 + jitter * 10**attempt * s2) * eye)
        if not bool((info > 0).any()):
            break
    else:
        raise RuntimeError("GP prior covariance is not positive definite even with added jitter")
    z = torch.randn(B, N, 1, dtype=torch.float64, device=x.device, generator=generator)
    return (L @ z).squeeze(-1).to(x.dtype)
