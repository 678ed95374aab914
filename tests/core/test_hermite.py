import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from repro.core import hermite, kernels

jax.config.update("jax_enable_x64", True)

H1H3 = hermite.DualActivation.from_hermite([0, 1, 0, 1])  # (h1 + h3) / sqrt(2): c = 1/2, g = 2
RELU = hermite.DualActivation.relu()


def test_hermite_basis_is_orthonormal_under_the_gaussian():
    z, w = hermite.gaussian_rule(40)
    h = hermite.hermite_basis(z, 12)
    np.testing.assert_allclose((h * w[:, None]).T @ h, np.eye(13), atol=1e-12)


def test_low_degree_hermite_polynomials_have_their_explicit_forms():
    x = np.linspace(-3, 3, 7)
    h = hermite.hermite_basis(x, 4)
    np.testing.assert_allclose(h[:, 2], (x**2 - 1) / math.sqrt(2))
    np.testing.assert_allclose(h[:, 3], (x**3 - 3 * x) / math.sqrt(6))
    np.testing.assert_allclose(h[:, 4], (x**4 - 6 * x**2 + 3) / math.sqrt(24))


def test_hermite_coefficients_recover_the_coefficients_of_a_series():
    a = np.array([0.3, -0.5, 0.2, 0.0, 0.7, -0.1])
    got = hermite.hermite_coefficients(lambda z: hermite.hermite_series(a, z), 8)
    np.testing.assert_allclose(got, np.r_[a, 0.0, 0.0, 0.0], atol=1e-12)


def test_polynomial_dual_is_the_gaussian_expectation_and_its_derivative_the_dual_of_phi_prime():
    def phi(z):
        return (z + (z**3 - 3 * z) / math.sqrt(6)) / math.sqrt(2)

    xi = np.array([-0.9, -0.3, 0.0, 0.4, 0.95])
    e, d = kernels.quadrature_expectations(phi, jnp.ones(5), jnp.ones(5), jnp.asarray(xi), quad_points=32)
    value, deriv = H1H3(xi)
    np.testing.assert_allclose(value, np.asarray(e), atol=1e-12)
    np.testing.assert_allclose(deriv, np.asarray(d), atol=1e-12)
    np.testing.assert_allclose(value, (xi + xi**3) / 2)


def test_relu_and_erf_duals_are_normalized_and_match_their_hermite_expansions():
    xi = np.linspace(-0.9, 0.9, 7)
    for dual, fn in ((RELU, lambda z: np.sqrt(2) * np.maximum(z, 0)), (hermite.DualActivation.erf(), None)):
        assert dual(np.array([1.0]))[0][0] == pytest.approx(1.0, abs=1e-14)
        series = hermite.DualActivation.from_activation(fn or "erf", degree=30, quad_points=300) if fn is None else \
            hermite.DualActivation.from_hermite(hermite.hermite_coefficients(fn, 30, quad_points=300))
        np.testing.assert_allclose(series(xi)[0], dual(xi)[0], atol=2e-3)
    assert RELU.slope_at_one == pytest.approx(1.0)


def test_quadrature_dual_of_a_named_activation_matches_the_closed_form():
    quad = hermite.DualActivation.from_activation("erf", quad_points=64)
    xi = np.array([-0.7, 0.1, 0.8])
    np.testing.assert_allclose(quad(xi)[0], hermite.DualActivation.erf()(xi)[0], rtol=1e-6)


def test_fixed_points_and_slopes_of_the_three_regimes():
    assert RELU.fixed_point() == (1.0, pytest.approx(1.0))  # correlations -> 1
    xi_star, c = H1H3.fixed_point()
    assert xi_star == 0.0 and c == pytest.approx(0.5) and H1H3.slope_at_one == pytest.approx(2.0)
    assert hermite.DualActivation.from_hermite([0, 0, 1]).fixed_point() == (0.0, 0.0)  # h2: superexponential


@pytest.mark.parametrize("name", ["relu", "h1h3"])
def test_depth_kernels_match_the_gaussian_recursion_of_core_kernels(name):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    L = 4
    if name == "relu":  # sqrt(2) relu <=> weight variance 2; Sigma^(1) = 2 x.x'/n0 = xi
        _, theta = kernels.nngp_ntk(x * np.sqrt(3 / 2), None, L + 1, "relu", beta=0.0, weight_var=2.0)
        dual = RELU
    else:
        def phi(z):
            return (z + (z**3 - 3 * z) / math.sqrt(6)) / math.sqrt(2)

        _, theta = kernels.nngp_ntk(x * np.sqrt(3), None, L + 1, phi, beta=0.0, weight_var=1.0, method="quadrature",
                                    quad_points=32)
        dual = H1H3
    theta = np.asarray(theta)
    xi = x @ x.T
    np.fill_diagonal(xi, 1.0)  # as documented: Gram matrices get an exact unit diagonal
    ours = hermite.depth_kernels(xi, dual, [L])
    np.testing.assert_allclose(ours.values[0], theta / theta[0, 0], rtol=1e-10, atol=1e-12)
    assert ours.log_diag[0] == pytest.approx(math.log(theta[0, 0]), rel=1e-10)


def test_normalized_kernels_have_unit_diagonal_stay_in_range_and_track_the_exact_diagonal():
    xi = np.array([1.0, 0.999999, 0.5, 0.0, -0.7])
    depths = [0, 3, 40, 300]
    res = hermite.depth_kernels(xi, H1H3, depths)
    np.testing.assert_allclose(res.values[:, 0], 1.0)
    assert np.all(np.isfinite(res.values)) and np.all(np.abs(res.values) <= 1.0)
    s = [1.0]
    for _ in range(300):
        s.append(1.0 + 2.0 * s[-1])  # K_l(1) = 1 + g K_{l-1}(1)
    np.testing.assert_allclose(res.log_diag, np.log([s[d] for d in depths]), rtol=1e-12)
    np.testing.assert_allclose(res.values[0], xi)  # depth 0 is the input kernel


def test_monomial_dual_makes_the_normalized_ntk_equal_the_nngp():
    h2 = hermite.DualActivation.from_hermite([0, 0, 1])
    xi = np.linspace(-0.99, 0.99, 9)
    ntk = hermite.depth_kernels(xi, h2, [1, 3, 5]).values
    nngp = hermite.depth_kernels(xi, h2, [1, 3, 5], kernel="nngp").values
    np.testing.assert_allclose(ntk, nngp, atol=1e-15)
    np.testing.assert_allclose(nngp[2], xi**32)


def test_limit_kernel_is_the_large_depth_limit_of_ntk_ratios():
    dual = hermite.DualActivation.from_hermite([0, math.sqrt(0.8), math.sqrt(0.2)])  # c = 0.8, g = 1.2
    xi = np.array([0.2, 0.5, 0.7])
    psi = hermite.limit_kernel(xi, dual).values
    target = psi / psi[0]
    errs = []
    for L in (100, 1000):
        k = hermite.depth_kernels(xi, dual, [L]).values[0]
        errs.append(np.max(np.abs(k / k[0] - target) / target))
    assert errs[1] < 0.03 and errs[1] < 0.2 * errs[0]  # K_L ~ L c^L Psi: the error falls like 1/L


def test_limit_kernel_is_a_power_of_distance_with_exponent_two_log_c_over_log_g():
    r = np.geomspace(1e-4, 1e-2, 9)
    psi = hermite.limit_kernel(1 - r**2 / 2, H1H3).values
    slope = np.polyfit(np.log(r), np.log(psi), 1)[0]
    assert slope == pytest.approx(-2 * math.log(2) / math.log(2), abs=2e-3)  # alpha = 2 log(1/c) / log g = 2


def test_limit_kernel_rejects_duals_that_do_not_contract_to_zero():
    with pytest.raises(ValueError, match="contract"):
        hermite.limit_kernel(np.array([0.5]), RELU)


def test_table_matches_the_direct_recursion():
    table = hermite.tabulate_depth_kernels(RELU, [3, 60], n_nodes=3000)
    theta = np.random.default_rng(1).uniform(1e-3, np.pi, 400)
    assert table.max_error(theta, 3) < 1e-7
    assert table.max_error(theta, 60) < 1e-7
    assert table(np.array([0.0]), 60)[0] == 1.0


def test_compiled_form_evaluates_like_the_dual():
    form, weights = H1H3.compiled_form()
    xi = np.linspace(-1, 1, 11)
    with jax.enable_x64(True):
        v, d = hermite.evaluate(form, jnp.asarray(weights), jnp.asarray(xi))
    np.testing.assert_allclose(np.asarray(v), H1H3(xi)[0], atol=1e-15)
    np.testing.assert_allclose(np.asarray(d), H1H3(xi)[1], atol=1e-15)


def test_from_hermite_normalizes_and_rejects_a_zero_activation():
    dual = hermite.DualActivation.from_hermite([0, 3, 0, 3])
    np.testing.assert_allclose(dual.coefficients, H1H3.coefficients, rtol=1e-15)
    again = hermite.DualActivation.from_hermite([0, 1, 0, 1])
    assert again == H1H3 and hash(again) == hash(H1H3)  # equal duals share compiled code
    with pytest.raises(ValueError):
        hermite.DualActivation.from_hermite([0, 0, 0])
    with pytest.raises(ValueError):
        hermite.DualActivation(name="bad", kind="hermite", coefficients=(0.5, 0.5))
