"""Marchenko–Pastur utilities, exact least-squares GD dynamics and student–teacher generators."""

from __future__ import annotations

import math

import numpy as np
import pytest

from repro.core import random_matrix as rm

ALPHAS = (0.25, 0.5, 0.9, 1.0, 1.1, 2.0, 4.0)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_mp_law_has_unit_mass_including_the_null_delta(alpha):
    assert rm.mp_expect(lambda lam: 1.0, alpha) == pytest.approx(1.0, abs=1e-9)
    lam, w = rm.mp_quadrature(alpha, 100)
    assert w.sum() == pytest.approx(1.0, abs=1e-9)
    assert (lam[0] == 0.0) == (alpha < 1)
    assert rm.mp_null_mass(alpha) == pytest.approx(max(0.0, 1 - alpha))


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("scale", (1.0, 2.5))
def test_mp_moments_match_their_closed_forms(alpha, scale):
    # E[lam] = alpha * scale and E[lam^2] = alpha (1 + alpha) scale^2 for X^T X with N(0, scale/N) entries
    assert rm.mp_expect(lambda lam: lam, alpha, scale) == pytest.approx(alpha * scale, rel=1e-9)
    assert rm.mp_expect(lambda lam: lam**2, alpha, scale) == pytest.approx(alpha * (1 + alpha) * scale**2, rel=1e-9)
    lam, w = rm.mp_quadrature(alpha, 64, scale)
    assert np.sum(w * lam**2) == pytest.approx(alpha * (1 + alpha) * scale**2, rel=1e-9)


def test_mp_density_integrates_to_the_nonzero_fraction_and_vanishes_outside_the_edges():
    from scipy.integrate import quad

    for alpha in (0.3, 2.0):
        lo, hi = rm.mp_edges(alpha)
        mass, _ = quad(lambda lam: rm.mp_density(lam, alpha), lo, hi, limit=200)
        assert mass == pytest.approx(min(1.0, alpha), abs=1e-6)
        assert rm.mp_density([lo * 0.5, hi * 1.5, -1.0], alpha).tolist() == [0.0, 0.0, 0.0]


def test_mp_expect_integrates_vector_valued_functions_elementwise():
    ts = np.array([0.0, 0.5, 3.0])
    vec = rm.mp_expect(lambda lam: np.exp(-lam * ts), 0.5)
    one = [rm.mp_expect(lambda lam, t=t: math.exp(-lam * t), 0.5) for t in ts]
    np.testing.assert_allclose(vec, one, rtol=1e-9)
    assert vec[0] == pytest.approx(1.0)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_mp_stieltjes_closed_form_matches_quadrature(alpha):
    for gamma in (1e-3, 0.2, 5.0):
        num = rm.mp_expect(lambda lam: 1.0 / (lam + gamma), alpha, 1.7)
        assert rm.mp_stieltjes(gamma, alpha, 1.7) == pytest.approx(num, rel=1e-7)
    assert rm.mp_stieltjes(0.0, alpha) == (1 / (alpha - 1) if alpha > 1 else math.inf)


def test_mp_law_describes_the_spectrum_of_a_large_gaussian_gram_matrix():
    rng = np.random.default_rng(0)
    n, alpha = 400, 0.5
    x = rng.standard_normal((int(alpha * n), n)) / math.sqrt(n)
    eig = np.linalg.eigvalsh(x.T @ x)
    for cut in (0.1, 0.5, 1.0, 2.0):
        cdf = rm.mp_expect(lambda lam, c=cut: float(lam <= c), alpha, epsabs=1e-7, epsrel=1e-7)
        assert np.mean(eig <= cut) == pytest.approx(cdf, abs=0.02)
    assert np.mean(1.0 / (eig + 0.3)) == pytest.approx(rm.mp_stieltjes(0.3, alpha), rel=0.01)


def _problem(p=30, n=20, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((p, n)) / math.sqrt(n)
    return x, rng.standard_normal(p), rng.standard_normal(n)


def test_discrete_gd_weights_equal_iterated_gradient_steps():
    x, y, w0 = _problem()
    lr = 0.3 / np.linalg.eigvalsh(x.T @ x).max()
    w, brute = w0.copy(), {}
    for k in range(1, 41):
        w = w + lr * x.T @ (y - x @ w)
        brute[k] = w.copy()
    exact = rm.gd_weights(x, y, w0, [0, 7, 40], lr=lr)
    np.testing.assert_allclose(exact, np.stack([w0, brute[7], brute[40]]), atol=1e-12)


def test_gradient_flow_weights_match_a_fine_euler_integration():
    x, y, w0 = _problem(12, 20)
    dt, t_end = 1e-4, 0.5
    w = w0.copy()
    for _ in range(int(t_end / dt)):
        w = w + dt * x.T @ (y - x @ w)  # tau = 1
    np.testing.assert_allclose(rm.gd_weights(x, y, w0, [t_end])[0], w, atol=1e-4)
    # tau rescales time
    np.testing.assert_allclose(rm.gd_weights(x, y, w0, [2 * t_end], tau=2.0)[0], w, atol=1e-4)


def test_gd_from_zero_converges_to_min_norm_and_never_moves_the_null_space():
    x, y, w0 = _problem(12, 20)  # P < N: an 8-dimensional frozen subspace
    modes = rm.LinearModes.of(x)
    assert modes.rank == 12 and modes.shape == (12, 20)
    np.testing.assert_allclose(rm.gd_weights(modes, y, np.zeros(20), [np.inf])[0], np.linalg.pinv(x) @ y, atol=1e-10)
    null = np.eye(20) - modes.vt.T @ modes.vt
    w = rm.gd_weights(modes, y, w0, [0.0, 3.0, np.inf])
    np.testing.assert_allclose(w @ null, np.tile(null @ w0, (3, 1)), atol=1e-12)
    np.testing.assert_allclose(x @ w[-1], y, atol=1e-10)  # interpolates


def test_ridge_weights_solve_the_regularized_normal_equations():
    x, y, _ = _problem(30, 20)
    gamma = 0.7
    np.testing.assert_allclose(rm.ridge_weights(x, y, gamma), np.linalg.solve(x.T @ x + gamma * np.eye(20), x.T @ y),
                               atol=1e-10)
    np.testing.assert_allclose(rm.ridge_weights(x, y, 0.0), np.linalg.lstsq(x, y, rcond=None)[0], atol=1e-10)


def test_gd_decay_refuses_unstable_learning_rates_and_fractional_steps():
    with pytest.raises(ValueError, match="converge"):
        rm.gd_decay([1.0, 4.0], [np.inf], lr=0.6)
    with pytest.raises(ValueError, match="integer"):
        rm.gd_decay([1.0], [1.5], lr=0.1)
    np.testing.assert_allclose(rm.gd_decay([2.0], [0.0, 1.0, np.inf]), [[1.0], [math.exp(-2.0)], [0.0]])


def test_linear_teacher_population_error_matches_a_monte_carlo_test_set():
    rng = np.random.default_rng(3)
    teacher = rm.LinearTeacher.draw(50, rng, weight_var=2.0, noise_var=0.3)
    assert teacher.x_var == pytest.approx(1 / 50)
    w = rng.standard_normal(50)
    x, y = teacher.sample(200_000, rng)
    assert np.mean((y - x @ w) ** 2) == pytest.approx(teacher.population_error(w), rel=0.02)
    assert teacher.with_noise(0.0).population_error(teacher.w) == 0.0


def test_two_layer_teacher_output_and_signal_variance():
    rng = np.random.default_rng(4)
    teacher = rm.TwoLayerTeacher.draw(20, 10, rng, noise_var=0.1)
    x = rm.gaussian_inputs(5, 20, rng)
    manual = np.maximum(x @ teacher.v.T, 0) @ teacher.a / math.sqrt(10)
    np.testing.assert_allclose(teacher.mean(x), manual)
    xs, ys = teacher.sample(100_000, rng)
    var_signal = teacher.signal_variance(rng, 100_000)
    assert np.var(ys) == pytest.approx(var_signal + 0.1, rel=0.03)
    big = rm.TwoLayerTeacher.draw(20, 2000, rng)
    assert np.mean(np.sum(big.v**2, axis=1)) == pytest.approx(1.0, rel=0.02)  # v_k . x has unit variance
    with pytest.raises(ValueError, match="activation"):
        rm.TwoLayerTeacher(v=teacher.v, a=teacher.a, activation="swish")


@pytest.mark.parametrize("shape", ((40, 20), (20, 20), (12, 20)))
def test_gram_and_svd_modes_give_the_same_dynamics(shape):
    x, y, w0 = _problem(*shape, seed=9)
    times = [0.1, 10.0, np.inf]
    svd, gram = rm.LinearModes.of(x), rm.LinearModes.of(x, method="gram")
    assert gram.rank == svd.rank == min(shape)
    np.testing.assert_allclose(gram.s, svd.s, rtol=1e-9)
    np.testing.assert_allclose(rm.gd_weights(gram, y, w0, times), rm.gd_weights(svd, y, w0, times),
                               rtol=1e-7, atol=1e-9)
    with pytest.raises(ValueError, match="method"):
        rm.LinearModes.of(x, method="qr")
