import math

import numpy as np
import pytest
import torch

from repro.core import random_features as rf


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _unit(v, r):
    v = torch.as_tensor(v, dtype=torch.float64)
    return r * v / v.norm()


def test_projections_are_reproducible_and_orthogonal_blocks_have_orthogonal_gaussian_norm_rows():
    g1 = rf.projection_matrix(10, 4, "orthogonal", generator=_gen(3))
    g2 = rf.projection_matrix(10, 4, "orthogonal", generator=_gen(3))
    assert g1.shape == (10, 4) and g1.dtype == torch.float64 and torch.equal(g1, g2)
    for start in (0, 4):  # full blocks of d = 4 rows: exactly orthogonal directions
        block = g1[start:start + 4]
        gram = block @ block.T
        assert torch.allclose(gram - torch.diag(torch.diagonal(gram)), torch.zeros(4, 4, dtype=torch.float64), atol=1e-10)
    # row norms follow the chi_d law of a Gaussian row: E|g|^2 = d, for both kinds
    for kind in rf.PROJECTIONS:
        g = rf.projection_matrix(8000, 8, kind, generator=_gen(1))
        assert abs((g**2).sum(1).mean().item() - 8.0) < 0.25
        assert abs(g.mean().item()) < 0.02 and abs(g.var().item() - 1.0) < 0.03
    with pytest.raises(ValueError, match="unknown projection"):
        rf.projection_matrix(4, 4, "uniform")


@pytest.mark.parametrize("a, b, M", [(1.0, 1.0, 0.0), (1.0, 1j, 0.0), (1j, 1.0, 0.0), (1.0, 1.0, 0.2), (1.0, 1j, -0.1)])
def test_exp_features_inner_product_is_unbiased_for_exp_of_ab_dot(a, b, M):
    # E[phi_a(x) phi_b(w)] = exp(a b x.w) for real and complex scales, with or without the M-reweighting
    x, w = _unit([0.3, -0.2, 0.5], 0.6), _unit([0.1, 0.4, -0.3], 0.7)
    m = 200_000
    g = rf.projection_matrix(m, 3, generator=_gen(2))
    terms = (rf.exp_features(x[None], g, a, M=M)[0] * rf.exp_features(w[None], g, b, M=M)[0] * m).to(torch.complex128)
    est, se = terms.mean(), terms.real.std() / math.sqrt(m) + terms.imag.std() / math.sqrt(m)
    exact = torch.exp(torch.tensor(a * b, dtype=torch.complex128) * (x @ w))
    assert abs(complex(est) - complex(exact)) < 5 * float(se)


def test_exp_features_validate_their_arguments_and_use_coefficients():
    g = rf.projection_matrix(8, 3, generator=_gen())
    x = torch.randn(5, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="M must be"):
        rf.exp_features(x, g, M=-0.3)
    with pytest.raises(ValueError, match="features"):
        rf.exp_features(torch.randn(5, 4, dtype=torch.float64), g)
    base = rf.exp_features(x, g, 1.0)
    assert base.shape == (5, 8) and (base > 0).all()  # positive random features
    assert torch.allclose(rf.exp_features(x, g, 1.0, coef=2.5), 2.5 * base)
    assert rf.exp_features(x, g, 1j).dtype == torch.complex128


def test_arccos_kernel_closed_form_at_known_angles_and_as_the_limit_of_relu_features():
    x = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    w = torch.tensor([[3.0, 0.0], [0.0, 3.0], [-3.0, 0.0]], dtype=torch.float64)
    k = rf.arccos_kernel(x, w)[0]
    # theta = 0: |x||w| E[relu(z)^2] = 6/2; theta = pi/2: 6/(2 pi); theta = pi: 0
    assert torch.allclose(k, torch.tensor([3.0, 6 / (2 * math.pi), 0.0], dtype=torch.float64), atol=1e-5)
    xs, ws = torch.randn(4, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    g = rf.projection_matrix(100_000, 5, generator=_gen(4))
    est = rf.relu_features(xs, g) @ rf.relu_features(ws, g).T
    assert torch.allclose(est, rf.arccos_kernel(xs, ws), rtol=0.05, atol=0.02)


def test_activation_features_apply_bias_and_scale_and_reject_unknown_activations():
    g = torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    x = torch.tensor([[0.5, 2.0]], dtype=torch.float64)
    out = rf.activation_features(x, g, torch.tensor([0.0, 1.0], dtype=torch.float64), "identity", normalize=False)
    assert torch.allclose(out, torch.tensor([[0.5, -1.0]], dtype=torch.float64))
    assert torch.allclose(rf.activation_features(x, g, activation=torch.square), torch.tensor([[0.25, 4.0]], dtype=torch.float64) / math.sqrt(2))
    with pytest.raises(ValueError, match="unknown activation"):
        rf.activation_features(x, g, activation="swishy")


def test_fit_readout_primal_dual_and_svd_agree_with_numpy_least_squares():
    rng = np.random.default_rng(0)
    tall = torch.tensor(rng.normal(size=(30, 6)))
    wide = torch.tensor(rng.normal(size=(6, 30)))
    for f in (tall, wide):
        y = torch.tensor(rng.normal(size=(f.shape[0], 2)))
        w = rf.fit_readout(f, y, 0.3)
        direct = np.linalg.solve(f.numpy().T @ f.numpy() + 0.3 * np.eye(f.shape[1]), f.numpy().T @ y.numpy())
        assert w.shape == (f.shape[1], 2) and np.allclose(w.numpy(), direct, atol=1e-10)
        lstsq = np.linalg.lstsq(f.numpy(), y.numpy(), rcond=None)[0]  # minimum-norm solution when wide
        assert np.allclose(rf.fit_readout(f, y).numpy(), lstsq, atol=1e-10)
    vec = rf.fit_readout(tall, torch.tensor(rng.normal(size=30)), 0.1)
    assert vec.shape == (6,)
    with pytest.raises(ValueError, match="ridge"):
        rf.fit_readout(tall, torch.zeros(30), -1.0)


def test_ridge_loo_errors_equal_brute_force_leave_one_out():
    rng = np.random.default_rng(1)
    for n, m in ((12, 5), (8, 20)):  # both branches: n > m and n <= m
        f = torch.tensor(rng.normal(size=(n, m)))
        y = torch.tensor(rng.normal(size=(n, 2)))
        ridges = [0.05, 1.0]
        fast = rf.ridge_loo_errors(f, y, ridges)
        for j, ridge in enumerate(ridges):
            errs = []
            for i in range(n):
                keep = torch.arange(n) != i
                w = rf.fit_readout(f[keep], y[keep], ridge)
                errs.append(((f[i] @ w - y[i]) ** 2).mean())
            assert abs(fast[j].item() - torch.stack(errs).mean().item()) < 1e-8
