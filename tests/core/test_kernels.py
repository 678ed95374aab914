"""Analytic NNGP / NTK kernels against closed forms, quadrature, Monte Carlo and brute-force dynamics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

from repro.core import kernels, mlp_jax  # noqa: E402
from repro.core import tangent_kernel as tk  # noqa: E402
from repro.core.data import unit_circle  # noqa: E402

RNG = np.random.default_rng(0)
X = RNG.normal(size=(5, 3))
X_CIRCLE = unit_circle([-2.0, -0.5, 0.7, 2.2])


def test_relu_expectations_match_two_dimensional_monte_carlo():
    var1, var2, cov = 1.3, 0.7, -0.4
    z = np.random.default_rng(1).multivariate_normal([0, 0], [[var1, cov], [cov, var2]], size=2_000_000)
    e_act, e_dact = kernels.relu_expectations(var1, var2, cov)
    relu = np.maximum(z, 0)
    assert float(e_act) == pytest.approx(np.mean(relu[:, 0] * relu[:, 1]), rel=1e-2)
    assert float(e_dact) == pytest.approx(np.mean((z[:, 0] > 0) & (z[:, 1] > 0)), rel=1e-2)


def test_gauss_hermite_quadrature_converges_to_the_erf_closed_form():
    nngp, ntk = kernels.nngp_ntk(X, None, 4, "erf", beta=0.3, weight_var=2.0)
    nngp_q, ntk_q = kernels.nngp_ntk(X, None, 4, "erf", beta=0.3, weight_var=2.0, method="quadrature")
    np.testing.assert_allclose(nngp_q, nngp, rtol=1e-6)  # default 128 nodes
    np.testing.assert_allclose(ntk_q, ntk, rtol=1e-5)
    nngp_q, ntk_q = kernels.nngp_ntk(X, None, 4, "erf", beta=0.3, weight_var=2.0, method="quadrature",
                                     quad_points=256)
    np.testing.assert_allclose(nngp_q, nngp, rtol=1e-10)
    np.testing.assert_allclose(ntk_q, ntk, rtol=1e-10)


def test_relu_closed_form_matches_quadrature_up_to_the_kink_error():
    nngp, ntk = kernels.nngp_ntk(X_CIRCLE, None, 3)
    errors = []
    for q in (64, 200):
        nngp_q, ntk_q = kernels.nngp_ntk(X_CIRCLE, None, 3, method="quadrature", quad_points=q)
        errors.append(max(np.abs(nngp_q - nngp).max() / np.abs(nngp).max(),
                          np.abs(ntk_q - ntk).max() / np.abs(ntk).max()))
    assert errors[1] < 2e-3 and errors[1] < errors[0] / 2  # converges, slowly (the kink of ReLU)


def test_quadrature_is_exact_for_a_polynomial_activation():
    # act(z) = z^2: E[u^2 v^2] = a b + 2 c^2 and E[2u 2v] = 4 c (Isserlis)
    a, b, c = 0.8, 1.7, 0.5
    e_act, e_dact = kernels.quadrature_expectations(lambda z: z**2, a, b, c, quad_points=8)
    assert float(e_act) == pytest.approx(a * b + 2 * c**2, rel=1e-12)
    assert float(e_dact) == pytest.approx(4 * c, rel=1e-12)


def test_identity_network_kernels_are_linear_with_accumulated_bias():
    depth, beta = 4, 0.3
    nngp, ntk = kernels.nngp_ntk(X, None, depth, "identity", beta=beta)
    lin = X @ X.T / X.shape[1]
    # Sigma^(l) = lin + l beta^2 and Theta^(L) = sum_l Sigma^(l) for the identity activation
    np.testing.assert_allclose(nngp, lin + depth * beta**2, rtol=1e-12)
    np.testing.assert_allclose(ntk, sum(lin + l * beta**2 for l in range(1, depth + 1)), rtol=1e-12)


def test_two_layer_relu_ntk_matches_the_textbook_formula():
    x1, x2 = X[:3], X[3:]
    beta = 0.2
    n0 = X.shape[1]
    s12 = x1 @ x2.T / n0 + beta**2
    s11 = np.sum(x1**2, 1)[:, None] / n0 + beta**2
    s22 = np.sum(x2**2, 1)[None, :] / n0 + beta**2
    angle = np.arccos(np.clip(s12 / np.sqrt(s11 * s22), -1, 1))
    e_act = np.sqrt(s11 * s22) / (2 * np.pi) * (np.sin(angle) + (np.pi - angle) * np.cos(angle))
    expected_nngp = e_act + beta**2
    expected_ntk = s12 * (np.pi - angle) / (2 * np.pi) + expected_nngp
    nngp, ntk = kernels.nngp_ntk(x1, x2, 2, beta=beta)
    np.testing.assert_allclose(nngp, expected_nngp, rtol=1e-12)
    np.testing.assert_allclose(ntk, expected_ntk, rtol=1e-12)


def test_gram_is_exactly_symmetric_with_the_exact_relu_diagonal():
    beta = 0.1
    nngp, ntk = kernels.nngp_ntk(X_CIRCLE, None, 4, beta=beta)
    assert np.array_equal(np.asarray(ntk), np.asarray(ntk).T)
    d_nngp, d_ntk = kernels.nngp_ntk(X_CIRCLE, None, 4, beta=beta, diag=True)
    assert np.array_equal(np.diag(np.asarray(ntk)), np.asarray(d_ntk))
    # on the unit circle with n0 = 2: Sigma^(1)(x, x) = 1/2 + beta^2, then Sigma <- Sigma/2 + beta^2 and
    # Theta <- Theta / 2 + Sigma (the ReLU correlation is exactly 1 on the diagonal)
    sigma = theta = 0.5 + beta**2
    for _ in range(3):
        sigma = sigma / 2 + beta**2
        theta = theta / 2 + sigma
    np.testing.assert_allclose(np.asarray(d_nngp), sigma, rtol=1e-15)
    np.testing.assert_allclose(np.asarray(d_ntk), theta, rtol=1e-15)
    assert np.linalg.eigvalsh(np.asarray(ntk)).min() > 0


def test_cross_kernel_is_a_block_of_the_gram_matrix():
    for activation, rtol in (("relu", 1e-12), ("tanh", 1e-8)):  # quadrature sums in shape-dependent order
        full_nngp, full_ntk = kernels.nngp_ntk(X, None, 3, activation)
        nngp, ntk = kernels.nngp_ntk(X[:2], X[2:], 3, activation)
        np.testing.assert_allclose(nngp, full_nngp[:2, 2:], rtol=rtol)
        np.testing.assert_allclose(ntk, full_ntk[:2, 2:], rtol=rtol)


def test_nngp_matches_output_covariance_of_wide_random_networks():
    depth, width, n_nets = 3, 64, 4000
    net = mlp_jax.make_mlp((2,) + (width,) * (depth - 1) + (1,), activation="erf", beta=0.2)
    keys = jax.random.split(jax.random.PRNGKey(0), n_nets)
    outs = jax.jit(jax.vmap(lambda k: net.apply(net.init(k), X_CIRCLE)[:, 0]))(keys)  # (nets, 4)
    empirical = np.asarray(outs).T @ np.asarray(outs) / n_nets  # the outputs have mean zero
    nngp, _ = kernels.nngp_ntk(X_CIRCLE, None, depth, "erf", beta=0.2)
    # Monte Carlo error ~ sqrt(2 / n_nets) = 2% of the variances, finite-width bias ~ 1/width
    np.testing.assert_allclose(empirical, nngp, atol=0.08 * float(np.max(nngp)))


def test_limit_ntk_matches_the_average_empirical_ntk_of_wide_networks():
    depth, width, n_nets = 3, 1024, 12
    net = mlp_jax.make_mlp((2,) + (width,) * (depth - 1) + (1,))
    grams = [tk.mlp_ntk(net.init(jax.random.PRNGKey(s)), X_CIRCLE) for s in range(n_nets)]
    mean = np.mean(np.asarray(grams), axis=0)
    _, limit = kernels.nngp_ntk(X_CIRCLE, None, depth)
    assert np.linalg.norm(mean - limit) / np.linalg.norm(limit) < 0.03


def test_kernels_are_differentiable_in_beta_and_weight_variance():
    def trace_ntk(beta, weight_var):
        return jnp.trace(kernels.nngp_ntk(X_CIRCLE, None, 3, "relu", beta, weight_var)[1])

    g_beta, g_var = jax.grad(trace_ntk, argnums=(0, 1))(0.3, 1.2)
    eps = 1e-6
    fd_beta = (trace_ntk(0.3 + eps, 1.2) - trace_ntk(0.3 - eps, 1.2)) / (2 * eps)
    fd_var = (trace_ntk(0.3, 1.2 + eps) - trace_ntk(0.3, 1.2 - eps)) / (2 * eps)
    assert float(g_beta) == pytest.approx(float(fd_beta), rel=1e-6)
    assert float(g_var) == pytest.approx(float(fd_var), rel=1e-6)


def _kernel_gd(theta_all, n_train, f0, y, lr, steps):
    """Brute force: GD in function space, f <- f - lr/N Theta(., X) (f(X) - Y), on train and test."""
    f = f0.copy()
    for _ in range(steps):
        f = f - lr / n_train * theta_all[:, :n_train] @ (f[:n_train] - y)
    return f


def test_linearized_prediction_matches_explicit_kernel_gradient_descent():
    pts = np.concatenate([X_CIRCLE, unit_circle(np.linspace(-3, 3, 7))])
    _, theta = kernels.nngp_ntk(pts, None, 4)
    theta = np.asarray(theta)
    y = np.array([-0.4, 0.2, 0.6, -0.3])
    f0 = np.random.default_rng(2).normal(size=pts.shape[0])
    brute = _kernel_gd(theta, 4, f0, y, lr=1.0, steps=37)
    pred = kernels.ntk_linearized_prediction(f0[4:], f0[:4], theta[4:, :4], theta[:4, :4], y, lr=1.0, steps=37)
    np.testing.assert_allclose(pred, brute[4:], rtol=1e-10, atol=1e-12)
    # gradient flow is the small-step limit of the same dynamics
    fine = _kernel_gd(theta, 4, f0, y, lr=0.01, steps=3700)
    flow = kernels.ntk_linearized_prediction(f0[4:], f0[:4], theta[4:, :4], theta[:4, :4], y, lr=1.0, steps=37,
                                             flow=True)
    np.testing.assert_allclose(flow, fine[4:], atol=1e-3)


def test_ntk_predictive_matches_monte_carlo_over_initial_functions():
    pts = np.concatenate([X_CIRCLE, unit_circle([0.1, 1.5, -2.9])])
    sigma, theta = (np.asarray(k) for k in kernels.nngp_ntk(pts, None, 4))
    y = np.array([-0.4, 0.2, 0.6, -0.3])
    f0 = np.random.default_rng(3).multivariate_normal(np.zeros(len(pts)), sigma, size=200_000)
    trained = kernels.ntk_linearized_prediction(f0[:, 4:].T, f0[:, :4].T, theta[4:, :4], theta[:4, :4], y[:, None],
                                                lr=1.0, steps=25).T
    pred = kernels.ntk_predictive(sigma[:4, :4], sigma[4:, :4], sigma[4:, 4:], theta[:4, :4], theta[4:, :4], y,
                                  lr=1.0, steps=25)
    np.testing.assert_allclose(trained.mean(0), pred.mean, atol=5e-3)
    np.testing.assert_allclose(np.cov(trained.T), pred.cov, atol=5e-3)
    assert np.all(pred.var >= 0)


def test_kernel_regression_with_ntk_interpolates_and_matches_converged_dynamics():
    x_test = unit_circle([0.3, -1.0])
    y = np.array([-0.4, 0.2, 0.6, -0.3])
    post = kernels.kernel_regression(X_CIRCLE, y, np.concatenate([X_CIRCLE, x_test]), 4, kernel="ntk")
    np.testing.assert_allclose(post.mean[:4], y, atol=1e-8)
    pts = np.concatenate([X_CIRCLE, x_test])
    _, theta = (np.asarray(k) for k in kernels.nngp_ntk(pts, None, 4))
    converged = kernels.ntk_linearized_prediction(np.zeros(2), np.zeros(4), theta[4:, :4], theta[:4, :4], y)
    np.testing.assert_allclose(post.mean[4:], converged, rtol=1e-8)
    nngp_post = kernels.kernel_regression(X_CIRCLE, y, x_test, 4, kernel="nngp", ridge=1e-2)
    assert np.all(np.isfinite(nngp_post.mean)) and np.all(nngp_post.var > 0)


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="depth"):
        kernels.nngp_ntk(X, None, 0)
    with pytest.raises(ValueError, match="activation"):
        kernels.nngp_ntk(X, None, 2, "nope")
    with pytest.raises(ValueError, match="no closed form"):
        kernels.gaussian_expectations("tanh", 1.0, 1.0, 0.5, method="closed")
    with pytest.raises(ValueError, match="x2"):
        kernels.nngp_ntk(X, X[:, :2], 2)
