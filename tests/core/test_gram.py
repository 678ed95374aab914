"""Gram-matrix building blocks: kernel maps against closed forms and wide random features, Gaussian KL and log
densities against torch.distributions, Cholesky parametrization, and the inducing-point map's KL optimality."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from repro.core import gp, gram

DT = torch.float64


def _gram(P, d, seed=0, batch=()):
    g = torch.Generator().manual_seed(seed)
    F = torch.randn(*batch, P, d, dtype=DT, generator=g)
    return F @ F.transpose(-1, -2) / d, F


def test_relu_map_is_the_wide_limit_of_relu_features():
    # K(G) = 2 E[relu(w.f) relu(w.f')] over w ~ N(0, I/d): compare with 400k random ReLU features of the inputs F
    G, F = _gram(5, 3, seed=1)
    W = torch.randn(3, 400_000, dtype=DT, generator=torch.Generator().manual_seed(2)) / math.sqrt(3)
    H = torch.relu(F @ W)
    mc = 2 * H @ H.T / W.shape[1]
    K = gram.kernel_map(G, "relu")
    np.testing.assert_allclose(K.numpy(), mc.numpy(), atol=0.02 * float(K.diagonal().mean()))
    np.testing.assert_allclose(K.diagonal().numpy(), G.diagonal().numpy(), rtol=1e-12)  # weight_var 2 keeps G_ii


def test_relu_map_matches_the_arc_cosine_formula_and_its_special_angles():
    v1, v2 = torch.tensor(1.7, dtype=DT), torch.tensor(0.6, dtype=DT)
    norm = math.sqrt(1.7 * 0.6)
    j03 = math.sqrt(1 - 0.09) + (math.pi - math.acos(0.3)) * 0.3
    for rho, J in ((1.0, math.pi), (0.0, 1.0), (-1.0, 0.0), (0.3, j03)):
        k = gram.relu_from_moments(v1, v2, torch.tensor(rho * norm, dtype=DT), weight_var=1.0, bias_var=0.25)
        assert float(k) == pytest.approx(norm / (2 * math.pi) * J + 0.25, rel=1e-12)


def test_fused_relu_map_gradient_is_exact_and_matches_the_generic_path():
    G, _ = _gram(6, 4, seed=3, batch=(2,))
    G.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda A: gram.kernel_map(A, "relu", jitter=1e-3, bias_var=0.2), (G,))
    # the same values and gradients through the unfused moments function
    W = torch.randn(2, 6, 6, dtype=DT, generator=torch.Generator().manual_seed(4))
    fused = (gram.kernel_map(G, "relu") * W).sum()
    (g_fused,) = torch.autograd.grad(fused, G)
    Gs = 0.5 * (G + G.transpose(-1, -2))
    var = torch.diagonal(Gs, dim1=-2, dim2=-1)
    generic = gram.kernel_cross(Gs, var, var, "relu")
    (g_generic,) = torch.autograd.grad((generic * W).sum(), G)
    np.testing.assert_allclose(fused.item(), (generic * W).sum().item(), rtol=1e-12)
    np.testing.assert_allclose(g_fused.numpy(), g_generic.numpy(), rtol=1e-7, atol=1e-10)


def test_relu_map_gradient_is_finite_for_duplicated_points():
    F = torch.tensor([[1.0, 0.5], [1.0, 0.5], [-0.3, 2.0]], dtype=DT)
    G = (F @ F.T).requires_grad_(True)  # rows 0 and 1 identical: correlation exactly 1
    K = gram.kernel_map(G, "relu", jitter=1e-6)
    (g,) = torch.autograd.grad(K.sum(), G)
    assert torch.all(torch.isfinite(g))


def test_se_map_of_a_feature_gram_is_the_rbf_kernel_of_the_features():
    G, F = _gram(7, 3, seed=5)  # G = F F^T / 3: the features are F / sqrt(3)
    K = gram.kernel_map(G, "se", lengthscale=0.8)
    f = F.numpy() / math.sqrt(3)
    np.testing.assert_allclose(K.numpy(), gp.rbf_kernel(f, f, 0.8, 1.0), rtol=1e-10, atol=1e-12)


def test_jitter_is_per_point_so_the_map_of_a_subset_is_the_subset_of_the_map():
    G, _ = _gram(6, 4, seed=6)
    G = G * torch.linspace(0.5, 3.0, 6, dtype=DT)[:, None] * torch.linspace(0.5, 3.0, 6, dtype=DT)[None, :]
    for kind in gram.KERNEL_MAPS:
        full = gram.kernel_map(G, kind, jitter=1e-2)
        sub = gram.kernel_map(G[:3, :3], kind, jitter=1e-2)
        np.testing.assert_allclose(full[:3, :3].numpy(), sub.numpy(), rtol=1e-13)
        expected = 1.01 * gram.kernel_diag(G.diagonal(), kind).numpy()
        np.testing.assert_allclose(full.diagonal().numpy(), expected, rtol=1e-13)


def test_gaussian_kl_and_log_density_match_torch_distributions():
    A, _ = _gram(5, 8, seed=7)
    B, _ = _gram(5, 9, seed=8)
    zero = torch.zeros(5, dtype=DT)
    ref = kl_divergence(MultivariateNormal(zero, A), MultivariateNormal(zero, B))
    assert float(gram.gaussian_kl(A, B)) == pytest.approx(float(ref), rel=1e-10)
    assert float(gram.gaussian_kl(A, A)) == pytest.approx(0.0, abs=1e-10)
    Y = torch.randn(5, 3, dtype=DT, generator=torch.Generator().manual_seed(9))
    ref_lp = MultivariateNormal(torch.zeros(5, dtype=DT), B).log_prob(Y.T).sum()
    assert float(gram.gaussian_logpdf_chol(torch.linalg.cholesky(B), Y)) == pytest.approx(float(ref_lp), rel=1e-12)
    assert float(gram.gaussian_logpdf_chol(torch.linalg.cholesky(B), Y[:, 0])) == pytest.approx(
        float(MultivariateNormal(torch.zeros(5, dtype=DT), B).log_prob(Y[:, 0])), rel=1e-12)


def test_cholesky_parametrization_round_trips_and_stays_positive_definite():
    A, _ = _gram(4, 6, seed=10, batch=(3,))
    L = torch.linalg.cholesky(A)
    np.testing.assert_allclose(gram.raw_to_cholesky(gram.cholesky_to_raw(L)).numpy(), L.numpy(), rtol=1e-12)
    module = gram.CholeskyPSD(A)
    np.testing.assert_allclose(module().detach().numpy(), A.numpy(), rtol=1e-10)
    with torch.no_grad():
        module.raw.add_(torch.randn(3, 4, 4, dtype=DT, generator=torch.Generator().manual_seed(11)) * 3)
    assert float(torch.linalg.eigvalsh(module().detach()).min()) > 0


def test_jittered_cholesky_factorizes_a_singular_matrix():
    G, _ = _gram(6, 2, seed=12)  # rank 2
    L = gram.jittered_cholesky(G)
    assert torch.all(torch.isfinite(L)) and float((L @ L.T - G).abs().max()) < 1e-6 * float(G.diagonal().mean())


def test_conditional_gram_returns_the_kernel_when_g_is_the_kernel():
    G, _ = _gram(7, 5, seed=13)
    K = gram.kernel_map(G, "relu", jitter=1e-6)
    z, x = slice(0, 4), slice(4, 7)
    G_xz, G_xx = gram.conditional_gram(K[z, z], K[x, z], K[x, x], K[z, z])
    np.testing.assert_allclose(G_xz.numpy(), K[x, z].numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(G_xx.numpy(), K[x, x].numpy(), rtol=1e-9, atol=1e-12)
    _, g_xx = gram.conditional_gram(K[z, z], K[x, z], K[x, x].diagonal(), K[z, z])
    np.testing.assert_allclose(g_xx.numpy(), K[x, x].diagonal().numpy(), rtol=1e-9)


def test_conditional_gram_minimizes_the_joint_kl_over_the_new_rows():
    K, _ = _gram(7, 12, seed=14)
    z, x = slice(0, 4), slice(4, 7)
    G_zz, _ = _gram(4, 9, seed=15)
    G_xz, G_xx = gram.conditional_gram(K[z, z], K[x, z], K[x, x], G_zz)
    joint = torch.cat([torch.cat([G_zz, G_xz.T], 1), torch.cat([G_xz, G_xx], 1)], 0)
    best = float(gram.gaussian_kl(joint, K))
    # the joint KL at the conditional extension equals the KL of the Z block alone (the conditional term is 0) ...
    assert best == pytest.approx(float(gram.gaussian_kl(G_zz, K[z, z])), rel=1e-9)
    # ... and any other extension with the same Z block is worse
    gen = torch.Generator().manual_seed(16)
    L = torch.linalg.cholesky(joint)
    for _ in range(5):
        E = torch.tril(torch.randn(7, 7, dtype=DT, generator=gen)) * 0.05
        E[z, :] = 0  # keep the Z rows of the factor, hence G_ZZ
        M = L + E
        assert float(gram.gaussian_kl(M @ M.T, K)) > best


def test_kernel_alignment_is_one_for_the_target_outer_product_and_scale_free():
    y = torch.tensor([1.0, -2.0, 0.5], dtype=DT)
    assert float(gram.kernel_alignment(torch.outer(y, y), y)) == pytest.approx(1.0)
    K, _ = _gram(3, 4, seed=17)
    assert float(gram.kernel_alignment(5 * K, y)) == pytest.approx(float(gram.kernel_alignment(K, y)))


def test_unknown_kernel_map_is_an_error():
    with pytest.raises(ValueError, match="unknown kernel map"):
        gram.kernel_map(torch.eye(2, dtype=DT), "matern")
