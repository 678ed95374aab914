"""Random feature maps and closed-form linear readouts, in torch (any device, float64 by default).

A random feature map sends an input ``x`` (shape ``(..., d)``) to ``m`` features built from a random
projection matrix ``G`` (shape ``(m, d)``, rows ``g_k``), so that inner products of features estimate a
kernel, or so that a linear readout on top of them is a trainable model with frozen hidden weights.

- Projections: :func:`projection_matrix` draws ``G`` with i.i.d. N(0, 1) entries (``"gaussian"``) or
  block-orthogonal rows with Gaussian-distributed norms (``"orthogonal"``: every row is still marginally
  N(0, I), rows within a block of ``d`` are exactly orthogonal, which lowers the variance of most
  estimators). Any other matrix (uniform weights, scaled bands ...) can be passed to the feature maps.
- :func:`exp_features`: ``phi_k(x) = c_k exp(s_k g_k.x - s_k^2 |x|^2 / 2) / sqrt(m)`` with real or complex
  scales ``s_k``. For independent maps with scales ``a`` and ``b`` (same ``G``),
  ``E[phi_a(x) phi_b(w)] = exp(a b x.w)``: ``a = b = 1`` gives positive random features of ``exp(x.w)``
  (Performer's FAVOR+), ``a = 1, b = i`` gives ``exp(i x.w)``, i.e. ``cos`` and ``sin`` of ``x.w``.
  The optional ``M > -1/4`` rescales ``g`` by ``sqrt(1 + 4M)`` and damps large ``|g|`` (same expectation,
  different variance).
- :func:`activation_features`: ``act(x G^T + bias) / sqrt(m)`` for any activation (random ReLU / sigmoid /
  cos networks); :func:`relu_features` is the ReLU case, whose inner products estimate
  :func:`arccos_kernel`, ``E_g[relu(g.x) relu(g.w)] = |x||w| (sin t + (pi - t) cos t) / (2 pi)``.
- :func:`fit_readout`: the least-squares readout ``(F^T F + ridge I)^-1 F^T Y`` (primal or dual form,
  whichever system is smaller), or for ``ridge = 0`` the minimum-norm least-squares solution from an SVD
  with a relative cut-off ``rcond``; :func:`ridge_loo_errors` gives the exact leave-one-out error of
  every ridge in a grid from one eigen-decomposition, to choose the ridge without a validation split.

Shapes: inputs ``(..., d)``, features ``(..., m)``, readout weights ``(m, k)``. Randomness comes only
from the ``generator`` (a CPU ``torch.Generator``): the same seed gives the same matrix on every device.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import torch

from repro.core.mlp_torch import ACTIVATIONS

PROJECTIONS: tuple[str, ...] = ("gaussian", "orthogonal")


# -- projections --------------------------------------------------------------------------------------
def projection_matrix(m: int, d: int, kind: str = "gaussian", *, generator: torch.Generator | None = None,
                      dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
    """A random ``(m, d)`` matrix whose rows are marginally N(0, I_d).

    ``"orthogonal"`` stacks ``ceil(m / d)`` independent Haar-random orthogonal ``d x d`` blocks (QR of a
    Gaussian matrix with the signs of ``R``'s diagonal fixed), keeps the first ``m`` rows and gives every row
    the norm of an independent N(0, I_d) vector (a chi_d variable), so each row has the Gaussian law while
    rows of one block are exactly orthogonal.
    """
    if int(m) < 1 or int(d) < 1:
        raise ValueError(f"need m >= 1 features and d >= 1 input dimensions, got m={m}, d={d}")
    if kind not in PROJECTIONS:
        raise ValueError(f"unknown projection {kind!r}; choose one of {', '.join(PROJECTIONS)}")
    m, d = int(m), int(d)
    if kind == "gaussian":
        g = torch.randn(m, d, generator=generator, dtype=torch.float64)
    else:
        blocks = []
        for _ in range(math.ceil(m / d)):
            q, r = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
            blocks.append((q * torch.sign(torch.diagonal(r))).T)  # rows of a Haar-orthogonal matrix
        rows = torch.cat(blocks)[:m]
        norms = torch.linalg.vector_norm(torch.randn(m, d, generator=generator, dtype=torch.float64), dim=1)
        g = rows * norms[:, None]
    return g.to(dtype=dtype, device=device)


# -- feature maps -------------------------------------------------------------------------------------
def _complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype in (torch.float64, torch.complex128) else torch.complex64


def exp_features(x: torch.Tensor, proj: torch.Tensor, scale: complex | torch.Tensor = 1.0, *,
                 coef: torch.Tensor | complex | None = None, M: float = 0.0) -> torch.Tensor:
    """Exponential random features ``phi_k(x) = c_k exp(s_k g_k.x - s_k^2 |x|^2 / 2) / sqrt(m)``.

    ``scale`` (``s``) is a number or an ``(m,)`` tensor, real or complex; ``coef`` (``c``) likewise
    (default 1). With ``M != 0`` (``M > -1/4``) each feature is
    ``c_k (1 + 4M)^(d/4) exp(sqrt(1 + 4M) s_k g_k.x - s_k^2 |x|^2 / 2 - M |g_k|^2) / sqrt(m)``; for two
    such maps with scales ``a`` and ``b`` and the same ``G ~ N(0, I)``, ``E[phi_a(x) phi_b(w)] = exp(a b x.w)``
    for every ``M`` (the Gaussian integral of ``exp(sqrt(1+4M) g.u - 2M|g|^2)`` is ``(1+4M)^(-d/2) e^(|u|^2/2)``).
    The result is complex when ``scale`` or ``coef`` is.
    """
    if M <= -0.25:
        raise ValueError(f"M must be > -1/4, got {M}")
    m, d = proj.shape
    if x.shape[-1] != d:
        raise ValueError(f"x has {x.shape[-1]} features but the projection expects {d}")
    is_complex = (torch.is_tensor(scale) and scale.is_complex()) or isinstance(scale, complex) or (
        coef is not None and ((torch.is_tensor(coef) and coef.is_complex()) or isinstance(coef, complex)))
    real = x.dtype if x.dtype.is_floating_point else torch.get_default_dtype()
    dtype = _complex_dtype(real) if is_complex else real
    s = torch.as_tensor(scale, device=x.device).to(dtype)
    proj = proj.to(device=x.device, dtype=real)
    dots = x.to(real) @ proj.T  # (..., m): g_k . x
    sq = (x.to(real) ** 2).sum(-1, keepdim=True)  # |x|^2
    expo = math.sqrt(1.0 + 4.0 * M) * s * dots.to(dtype) - 0.5 * s**2 * sq.to(dtype)
    if M != 0.0:  # the damping of large |g_k| and the normalizer, in log space (no overflow for large d)
        expo = expo - M * (proj**2).sum(-1).to(dtype) + 0.25 * d * math.log1p(4.0 * M)
    # exp(re + i im) as polar(e^re, im): about twice as fast as a complex exp on CPU
    out = (torch.polar(torch.exp(expo.real), expo.imag) if is_complex else torch.exp(expo)) / math.sqrt(m)
    if coef is not None:
        out = out * torch.as_tensor(coef, device=x.device).to(dtype)
    return out


def activation_features(x: torch.Tensor, proj: torch.Tensor, bias: torch.Tensor | None = None,
                        activation: str | Callable[[torch.Tensor], torch.Tensor] = "relu", *,
                        normalize: bool = True) -> torch.Tensor:
    """``act(x G^T + bias)``, divided by ``sqrt(m)`` when ``normalize`` (so inner products average over features).

    ``activation`` is a name of :data:`repro.core.mlp_torch.ACTIVATIONS` or any elementwise callable;
    ``bias`` is an ``(m,)`` tensor or ``None``.
    """
    act = activation if callable(activation) else ACTIVATIONS.get(activation)
    if act is None:
        raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)} or pass a callable")
    m, d = proj.shape
    if x.shape[-1] != d:
        raise ValueError(f"x has {x.shape[-1]} features but the projection expects {d}")
    pre = x @ proj.to(device=x.device, dtype=x.dtype).T
    if bias is not None:
        pre = pre + bias.to(device=x.device, dtype=x.dtype)
    out = act(pre)
    return out / math.sqrt(m) if normalize else out


def relu_features(x: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """``relu(x G^T) / sqrt(m)``: with Gaussian ``G``, ``E[<phi(x), phi(w)>]`` is :func:`arccos_kernel`."""
    return activation_features(x, proj, None, "relu")


@lru_cache(maxsize=1)
def _relu_kernel_fn():
    import os
    import sys

    if "jax" not in sys.modules:  # torch callers on a GPU: keep JAX from preallocating most of its memory
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    from repro.core.kernels import relu_expectations

    return jax.jit(lambda var1, var2, cov: relu_expectations(var1, var2, cov)[0])


def arccos_kernel(x: torch.Tensor, w: torch.Tensor, *, pairs: bool = False) -> torch.Tensor:
    """``E_{g ~ N(0, I)}[relu(g.x) relu(g.w)] = |x||w| (sin t + (pi - t) cos t) / (2 pi)``.

    ``x``: ``(n, d)``, ``w``: ``(k, d)``; returns the ``(n, k)`` matrix over all row pairs, or with
    ``pairs=True`` (``k = n``) the ``(n,)`` values for matched rows. This is the first-order arc-cosine
    kernel of Cho and Saul, halved, computed by :func:`repro.core.kernels.relu_expectations` (compiled once
    per power-of-two size bucket, in JAX's precision: float32 unless x64 is on).
    """
    x64 = x.detach().to("cpu", torch.float64).numpy()
    w64 = w.detach().to("cpu", torch.float64).numpy()
    sq_x, sq_w = (x64**2).sum(1), (w64**2).sum(1)
    if pairs:
        if x64.shape != w64.shape:
            raise ValueError(f"pairs=True needs x and w of the same shape, got {x64.shape} and {w64.shape}")
        var1, var2, cov = sq_x, sq_w, (x64 * w64).sum(1)
    else:
        var1, var2 = np.repeat(sq_x, len(sq_w)), np.tile(sq_w, len(sq_x))
        cov = (x64 @ w64.T).reshape(-1)
    n = cov.size
    size = max(256, 1 << max(n - 1, 1).bit_length())  # bucketed lengths: few compilations
    pad = lambda v, fill: np.concatenate([v, np.full(size - n, fill)])  # noqa: E731
    out = np.asarray(_relu_kernel_fn()(pad(var1, 1.0), pad(var2, 1.0), pad(cov, 0.0)), dtype=np.float64)[:n]
    shape = (len(sq_x),) if pairs else (len(sq_x), len(sq_w))
    return torch.as_tensor(out.reshape(shape), dtype=x.dtype, device=x.device)


# -- closed-form readouts -----------------------------------------------------------------------------
def fit_readout(features: torch.Tensor, targets: torch.Tensor, ridge: float = 0.0, *,
                rcond: float = 1e-12) -> torch.Tensor:
    """Weights ``W`` (``(m, k)``, or ``(m,)`` for 1-D targets) minimising ``|F W - Y|^2 + ridge |W|^2``.

    ``ridge > 0``: ``(F^T F + ridge I)^-1 F^T Y`` by a Cholesky solve, in the dual form
    ``F^T (F F^T + ridge I)^-1 Y`` when there are fewer rows than features. ``ridge = 0``: the minimum-norm
    least-squares solution from the SVD of ``F``, singular values below ``rcond * s_max`` treated as zero
    (never the normal equations, which square the condition number).
    """
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    if features.ndim != 2 or targets.shape[0] != features.shape[0]:
        raise ValueError(f"need features (n, m) and targets (n, ...) with the same n, got {tuple(features.shape)} "
                         f"and {tuple(targets.shape)}")
    vector = targets.ndim == 1
    y = targets[:, None] if vector else targets
    f = features
    y = y.to(f.dtype)
    n, m = f.shape
    if ridge > 0:
        if m <= n:
            gram = f.T @ f
            gram.diagonal().add_(ridge)
            chol = torch.linalg.cholesky(gram)
            w = torch.cholesky_solve(f.T @ y, chol)
        else:
            gram = f @ f.T
            gram.diagonal().add_(ridge)
            chol = torch.linalg.cholesky(gram)
            w = f.T @ torch.cholesky_solve(y, chol)
    else:
        u, s, vh = torch.linalg.svd(f, full_matrices=False)
        keep = s > rcond * s.max()
        w = vh[keep].T @ ((u[:, keep].T @ y) / s[keep, None])
    return w[:, 0] if vector else w


def ridge_loo_errors(features: torch.Tensor, targets: torch.Tensor, ridges: Sequence[float]) -> torch.Tensor:
    """Exact leave-one-out mean squared error of the ridge readout for each ridge in ``ridges``.

    With ``F = U S V^T``, the hat matrix is ``H = U diag(s^2 / (s^2 + ridge)) U^T`` and the leave-one-out
    residual of row ``i`` is ``(y_i - (H y)_i) / (1 - H_ii)``; one eigen-decomposition of the smaller Gram
    matrix serves the whole grid. Returns a ``(len(ridges),)`` tensor (averaged over rows and outputs).
    """
    if any(r <= 0 for r in ridges):
        raise ValueError("leave-one-out needs ridges > 0")
    y = targets[:, None] if targets.ndim == 1 else targets
    f = features
    y = y.to(f.dtype)
    n, m = f.shape
    if n <= m:
        s2, u = torch.linalg.eigh(f @ f.T)
        s2 = s2.clamp_min(0)
    else:
        s2, v = torch.linalg.eigh(f.T @ f)
        s2 = s2.clamp_min(0)
        keep = s2 > 1e-12 * s2.max()
        s2, v = s2[keep], v[:, keep]
        u = (f @ v) / s2.sqrt()
    uty = u.T @ y  # (r, k)
    errors = []
    for ridge in ridges:
        shrink = s2 / (s2 + ridge)
        fitted = u @ (shrink[:, None] * uty)
        h_diag = (u**2 @ shrink).clamp(max=1 - 1e-12)
        errors.append((((y - fitted) / (1 - h_diag)[:, None]) ** 2).mean())
    return torch.stack(errors)
