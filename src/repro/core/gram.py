"""Gram-matrix building blocks (torch, differentiable, batched over leading axes, any dtype and device).

Models that work with Gram matrices instead of features (deep kernel machines, deep kernel processes,
NNGP-style layer recursions, Wishart/deep-GP posteriors) need the same few pieces:

- **Kernel maps from a Gram matrix** ``K(G)``: a kernel whose value on two points depends only on their
  second moments ``G_ii, G_jj, G_ij``, so that it can be applied to a learned Gram matrix as well as to
  inputs. ``relu``: the arc-cosine (order 1) map of a ReLU layer,
  ``K_ij = weight_var * sqrt(G_ii G_jj) / (2 pi) * (sin t + (pi - t) cos t) + bias_var`` with
  ``cos t = G_ij / sqrt(G_ii G_jj)`` (Cho & Saul 2009); ``weight_var = 2`` keeps the diagonal
  (``K_ii = G_ii``). ``se``: the squared exponential of the feature distance,
  ``K_ij = outputscale * exp(-(G_ii + G_jj - 2 G_ij) / (2 lengthscale^2))``.
  :func:`kernel_map` (square, exact diagonal, optional jitter), :func:`kernel_cross` (a rectangular block)
  and :func:`kernel_diag`.
- **Gaussian KL between zero-mean Gaussians** from Cholesky factors, :func:`gaussian_kl_chol`
  (``KL(N(0, A) || N(0, B)) = 1/2 [tr(B^-1 A) - P + log|B| - log|A|]``), and :func:`gaussian_logpdf_chol`
  (``sum_c log N(y_c; 0, L L^T)`` over the columns of ``Y``).
- **Cholesky-parametrized PSD matrices**: :func:`raw_to_cholesky` / :func:`cholesky_to_raw` map an
  unconstrained square tensor to a lower-triangular factor with positive diagonal and back, and
  :class:`CholeskyPSD` holds one (or a batch) as an ``nn.Parameter``. :func:`jittered_cholesky` factorizes
  with growing jitter when a matrix is only numerically PSD.
- **The inducing-point (GP-conditional) map of a Gram matrix**, :func:`conditional_gram`: given a kernel
  ``K`` on inducing points ``Z`` and other points ``X`` and a Gram matrix ``G_ZZ`` on the inducing points,
  ``G_XZ = K_XZ K_ZZ^-1 G_ZZ`` and ``G_XX = K_XX - K_XZ K_ZZ^-1 K_ZX + K_XZ K_ZZ^-1 G_ZZ K_ZZ^-1 K_ZX``
  (the features at ``X`` are the GP regression of the features at ``Z``; this is also the optimum of a
  Gaussian KL over the extra points, see :func:`conditional_gram`).
- :func:`linear_gram` (the input layer ``x x^T / d + bias``) and :func:`kernel_alignment`.

Everything here is plain torch: use float64 for anything that is factorized.
"""

from __future__ import annotations

import math

import torch
from torch import nn

KERNEL_MAPS: tuple[str, ...] = ("relu", "se")


# -- kernel maps from second moments -------------------------------------------------------------------
class _ArcCosJ(torch.autograd.Function):
    """``J(rho) = sqrt(1 - rho^2) + (pi - arccos rho) rho`` with its exact derivative ``pi - arccos rho``.

    Autograd through ``sqrt`` and ``arccos`` separately meets ``1 / sin t`` terms that cancel analytically but
    are infinite at ``rho = +-1`` (the diagonal, duplicated points); the derivative itself is bounded.
    """

    @staticmethod
    def forward(ctx, rho):
        ctx.save_for_backward(rho)
        return torch.sqrt(torch.clamp(1.0 - rho * rho, min=0.0)) + (math.pi - torch.arccos(rho)) * rho

    @staticmethod
    def backward(ctx, grad):
        (rho,) = ctx.saved_tensors
        return grad * (math.pi - torch.arccos(rho))


def relu_from_moments(var1, var2, cov, *, weight_var: float = 2.0, bias_var: float = 0.0):
    """``weight_var * E[relu(u) relu(v)] + bias_var`` for ``(u, v) ~ N(0, [[var1, cov], [cov, var2]])``."""
    norm = torch.sqrt(torch.clamp(var1 * var2, min=torch.finfo(torch.as_tensor(cov).dtype).tiny))
    rho = torch.clamp(cov / norm, -1.0, 1.0)
    return weight_var * norm / (2 * math.pi) * _ArcCosJ.apply(rho) + bias_var


class _ReluGram(torch.autograd.Function):
    """``K(G)`` of the ReLU map for a square Gram matrix in one fused function (forward and backward in a handful
    of tensor operations instead of several dozen: this map dominates small Gram-level models).

    ``K_ij = c s_ij J(rho_ij)`` with ``c = weight_var / (2 pi)``, ``s_ij = sqrt(G_ii G_jj)``, ``rho_ij = G_ij / s_ij``
    off the diagonal and ``K_ii = weight_var G_ii / 2``. Derivatives: ``dK_ij / dG_ij = c J'(rho_ij)`` and
    ``dK_ij / dG_ii = c s_ij (J - rho J') / (2 G_ii)``, with ``J' = pi - arccos rho``.
    """

    @staticmethod
    def forward(ctx, G, weight_var):
        g = torch.diagonal(G, dim1=-2, dim2=-1).clamp_min(torch.finfo(G.dtype).tiny)
        s = torch.sqrt(g[..., :, None] * g[..., None, :])
        rho = torch.clamp(G / s, -1.0, 1.0)
        dJ = math.pi - torch.arccos(rho)
        J = torch.sqrt(torch.clamp(1.0 - rho * rho, min=0.0)) + dJ * rho
        c = weight_var / (2 * math.pi)
        K = c * s * J
        K.diagonal(dim1=-2, dim2=-1).copy_(0.5 * weight_var * g)
        ctx.save_for_backward(g, s, rho, J, dJ)
        ctx.c, ctx.weight_var = c, weight_var
        return K

    @staticmethod
    def backward(ctx, grad):
        g, s, rho, J, dJ = ctx.saved_tensors
        c = ctx.c
        eye = torch.eye(g.shape[-1], dtype=g.dtype, device=g.device)
        off = 1.0 - eye
        grad_G = grad * (c * dJ) * off
        M = (0.5 * c) * s * (J - rho * dJ) * off
        d_diag = ((grad + grad.transpose(-1, -2)) * M).sum(-1) / g
        d_diag = d_diag + 0.5 * ctx.weight_var * torch.diagonal(grad, dim1=-2, dim2=-1)
        return grad_G + torch.diag_embed(d_diag), None


def se_from_moments(var1, var2, cov, *, lengthscale: float = 1.0, outputscale: float = 1.0):
    """``outputscale * exp(-|f - f'|^2 / (2 lengthscale^2))`` with ``|f - f'|^2 = var1 + var2 - 2 cov``."""
    d2 = torch.clamp(var1 + var2 - 2.0 * cov, min=0.0)
    return outputscale * torch.exp(-0.5 * d2 / lengthscale**2)


def _moments_fn(kind: str):
    if kind == "relu":
        return relu_from_moments
    if kind == "se":
        return se_from_moments
    raise ValueError(f"unknown kernel map {kind!r}; choose one of {', '.join(KERNEL_MAPS)}")


def kernel_diag(var, kind: str = "relu", **params):
    """``K(G)_ii`` from the diagonal ``var = G_ii`` alone (shape ``(..., P)``)."""
    fn = _moments_fn(kind)
    if kind == "relu":  # rho = 1: J(1) = pi
        return params.get("weight_var", 2.0) * var / 2.0 + params.get("bias_var", 0.0)
    return fn(var, var, var, **params)


def kernel_cross(cov, var1, var2, kind: str = "relu", **params):
    """A rectangular block ``K_ab`` from ``cov = G_ab`` (``(..., n, m)``), ``var1 = G_aa`` diag (``(..., n)``)
    and ``var2 = G_bb`` diag (``(..., m)``)."""
    return _moments_fn(kind)(var1[..., :, None], var2[..., None, :], cov, **params)


def kernel_map(G, kind: str = "relu", *, jitter: float = 0.0, **params):
    """``K(G)`` for a square Gram matrix ``G`` (``(..., P, P)``): exactly symmetric, exact diagonal, with the
    diagonal multiplied by ``1 + jitter`` (so that ``K(G)`` stays invertible when ``G`` has rank below ``P``).

    The jitter is relative to each point's own variance, so the map stays *elementwise* (``K(G)_ij`` depends on
    ``G_ii, G_jj, G_ij`` only): ``K`` of a subset of points is the subset of ``K``, which inducing-point and
    train/test extensions rely on (a jitter proportional to the mean diagonal would change with the set).

    ``kind="relu"`` takes ``weight_var`` (default 2, which keeps the diagonal) and ``bias_var`` (default 0);
    ``kind="se"`` takes ``lengthscale`` and ``outputscale`` (default 1).
    """
    G = 0.5 * (G + G.transpose(-1, -2))
    var = torch.diagonal(G, dim1=-2, dim2=-1)
    eye = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    diag = kernel_diag(var, kind, **params)
    if kind == "relu":
        K = _ReluGram.apply(G, float(params.get("weight_var", 2.0))) + params.get("bias_var", 0.0)
    else:
        K = kernel_cross(G, var, var, kind, **params)
        K = K * (1 - eye) + torch.diag_embed(diag)
    if jitter:
        K = K + jitter * torch.diag_embed(diag)
    return K


def linear_gram(x, x2=None, *, bias_var: float = 0.0):
    """Input-layer Gram ``x x2^T / d + bias_var`` for ``x`` of shape ``(..., n, d)``."""
    x2 = x if x2 is None else x2
    return x @ x2.transpose(-1, -2) / x.shape[-1] + bias_var


# -- Cholesky factors, KL divergences, log densities ---------------------------------------------------
def jittered_cholesky(A, jitter: float = 0.0, *, max_tries: int = 6):
    """Lower Cholesky factor of ``A + eps * mean(diag A) * I``, starting at ``eps = jitter`` (0: none first)
    and growing tenfold (from 1e-10 if ``jitter`` is 0) until the factorization succeeds."""
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    scale = torch.diagonal(A, dim1=-2, dim2=-1).mean(-1)[..., None, None].abs().clamp_min(1e-300)
    eps = jitter
    for _ in range(max_tries):
        L, info = torch.linalg.cholesky_ex(A + eps * scale * eye if eps else A)
        if not bool((info > 0).any()):
            return L
        eps = 1e-10 if eps == 0 else eps * 10
    raise torch.linalg.LinAlgError(f"matrix is not positive definite even with jitter {eps / 10:g} x mean diagonal")


def logdet_chol(L):
    """``log|L L^T|`` from a lower Cholesky factor ``L`` (positive diagonal)."""
    return 2.0 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)


def gaussian_kl_chol(L_a, L_b):
    """``KL(N(0, A) || N(0, B))`` for ``A = L_a L_a^T``, ``B = L_b L_b^T`` (lower factors, ``(..., P, P)``):
    ``1/2 [||L_b^-1 L_a||_F^2 - P + log|B| - log|A|]``, using ``tr(B^-1 A) = ||L_b^-1 L_a||_F^2``."""
    M = torch.linalg.solve_triangular(L_b, L_a, upper=False)
    P = L_a.shape[-1]
    return 0.5 * ((M * M).sum((-1, -2)) - P + logdet_chol(L_b) - logdet_chol(L_a))


def gaussian_kl(A, B, *, jitter: float = 0.0):
    """``KL(N(0, A) || N(0, B))`` from the covariance matrices (factorized with :func:`jittered_cholesky`)."""
    return gaussian_kl_chol(jittered_cholesky(A, jitter), jittered_cholesky(B, jitter))


def gaussian_logpdf_chol(L, Y):
    """``sum_c log N(Y[:, c]; 0, L L^T)`` over the columns of ``Y`` (``(..., P)`` or ``(..., P, C)``)."""
    Y = Y[..., None] if Y.dim() == L.dim() - 1 else Y
    W = torch.linalg.solve_triangular(L, Y, upper=False)
    P, C = Y.shape[-2], Y.shape[-1]
    return -0.5 * (W * W).sum((-1, -2)) - 0.5 * C * logdet_chol(L) - 0.5 * P * C * math.log(2 * math.pi)


def raw_to_cholesky(raw):
    """Lower-triangular factor with positive diagonal from an unconstrained square tensor: the strictly lower
    part as is, the diagonal through ``exp``."""
    return torch.tril(raw, diagonal=-1) + torch.diag_embed(torch.exp(torch.diagonal(raw, dim1=-2, dim2=-1)))


def cholesky_to_raw(L):
    """Inverse of :func:`raw_to_cholesky` (the upper triangle of the result is zero)."""
    return torch.tril(L, diagonal=-1) + torch.diag_embed(torch.log(torch.diagonal(L, dim1=-2, dim2=-1)))


class CholeskyPSD(nn.Module):
    """A (batch of) positive-definite matrix ``G = L L^T``, learned through the unconstrained ``raw`` of
    :func:`raw_to_cholesky`. Initialized at ``init`` (``(..., P, P)``, factorized with jitter if needed)."""

    def __init__(self, init, *, jitter: float = 0.0):
        super().__init__()
        self.raw = nn.Parameter(cholesky_to_raw(jittered_cholesky(init.detach(), jitter)))

    def factor(self):
        return raw_to_cholesky(self.raw)

    def forward(self):
        L = self.factor()
        return L @ L.transpose(-1, -2)


# -- the inducing-point map ----------------------------------------------------------------------------
def conditional_gram(K_zz, K_xz, k_xx, G_zz, *, chol_zz=None):
    """Extend a Gram matrix ``G_ZZ`` on inducing points to other points ``X`` through the GP conditional of
    the kernel ``K``: returns ``(G_XZ, G_XX)`` with

        A    = K_XZ K_ZZ^-1
        G_XZ = A G_ZZ
        G_XX = K_XX - A K_ZX + A G_ZZ A^T

    ``k_xx`` is either the full ``(..., n, n)`` block ``K_XX`` (then ``G_XX`` is full) or its diagonal
    ``(..., n)`` (then only the diagonal of ``G_XX`` is returned, all a kernel map needs for ``K(G)_XZ`` and
    ``K(G)_XX`` diagonal). With ``G_ZZ = K_ZZ`` it returns ``K_XZ`` and ``K_XX`` unchanged.

    This is the minimizer over the X-rows of ``KL(N(0, G) || N(0, K))`` on the joint set ``Z u X`` with
    ``G_ZZ`` held fixed (the KL splits into the ZZ-marginal term and an expected conditional term, which is
    zero exactly when G's conditional of X given Z equals K's).
    """
    L = jittered_cholesky(K_zz) if chol_zz is None else chol_zz
    A = torch.cholesky_solve(K_xz.transpose(-1, -2), L).transpose(-1, -2)  # (..., n, m): K_XZ K_ZZ^-1
    G_xz = A @ G_zz
    if k_xx.dim() == K_xz.dim():
        G_xx = k_xx - A @ K_xz.transpose(-1, -2) + G_xz @ A.transpose(-1, -2)
        return G_xz, 0.5 * (G_xx + G_xx.transpose(-1, -2))
    return G_xz, k_xx - (A * K_xz).sum(-1) + (G_xz * A).sum(-1)


def kernel_alignment(K, y):
    """Kernel-target alignment ``<K, y y^T>_F / (||K||_F ||y||^2) = y^T K y / (||K||_F ||y||^2)`` (in [-1, 1])."""
    y = y.reshape(*K.shape[:-1])
    num = (y[..., :, None] * K * y[..., None, :]).sum((-1, -2))
    return num / (torch.linalg.matrix_norm(K) * (y * y).sum(-1))
