"""Advani & Saxe's linear-student theory against closed forms and brute-force simulation; the C4 students."""

from __future__ import annotations

import math

import numpy as np
import pytest

from repro.core import random_matrix as rm
from repro.infinite_width import high_dim_generalization_dynamics as hdg
from repro.profiles import ConfigError

KW = dict(init_var=0.5, teacher_var=1.0, noise_var=0.2)


def test_mode_error_starts_at_the_initial_error_and_relaxes_to_the_noise_fit():
    t = np.array([0.0, 1.0, np.inf])
    e = hdg.mode_error(2.0, t, **KW)
    assert e[0] == pytest.approx(1.5)
    assert e[1] == pytest.approx(1.5 * math.exp(-4.0) + 0.2 * (1 - math.exp(-2.0)) ** 2 / 2.0)
    assert e[2] == pytest.approx(0.2 / 2.0)
    np.testing.assert_allclose(hdg.mode_error(0.0, t, **KW), 1.5)  # frozen: never learns, never sees noise


@pytest.mark.parametrize("alpha", (0.3, 0.5, 1.0, 2.0, 4.0))
def test_errors_at_time_zero_are_initial_plus_teacher_plus_noise(alpha):
    assert hdg.generalization_error(alpha, [0.0], **KW)[0] == pytest.approx(1.7, rel=1e-9)
    assert hdg.training_error(alpha, [0.0], **KW)[0] == pytest.approx(1.7, rel=1e-9)


@pytest.mark.parametrize("alpha", (0.25, 0.5, 0.75, 1.5, 2.0, 4.0))
def test_long_time_error_reaches_the_closed_form_asymptote(alpha):
    late = hdg.generalization_error(alpha, [1e7], **KW)[0]
    assert late == pytest.approx(hdg.asymptotic_error(alpha, **KW), rel=1e-6)
    assert hdg.generalization_error(alpha, [np.inf], **KW)[0] == hdg.asymptotic_error(alpha, **KW)
    assert hdg.training_error(alpha, [1e7], **KW)[0] == pytest.approx(0.2 * max(0.0, 1 - 1 / alpha), abs=1e-9)


def test_asymptote_diverges_only_at_alpha_one_with_noise_and_frozen_subspace_adds_initial_variance():
    assert hdg.asymptotic_error(1.0, **KW) == math.inf
    assert hdg.asymptotic_error(1.0, init_var=0.0, teacher_var=1.0, noise_var=0.0) == 0.0
    for alpha in (0.2, 0.5, 0.8):
        diff = hdg.asymptotic_error(alpha, init_var=1.0, teacher_var=1.0, noise_var=0.2) - \
            hdg.asymptotic_error(alpha, init_var=0.0, teacher_var=1.0, noise_var=0.2)
        assert diff == pytest.approx(1 - alpha)
    # alpha = 1 at finite time stays finite and grows without bound
    e = hdg.generalization_error(1.0, [10.0, 1e3, 1e5], init_var=0.0, teacher_var=1.0, noise_var=0.2)
    assert np.all(np.isfinite(e)) and e[0] < e[1] < e[2]


def _simulate(alpha, n, draws, times, init_var, noise_var, seed=0):
    eg = []
    p = int(alpha * n)
    for d in range(draws):
        rng = np.random.default_rng([seed, d])
        teacher = rm.LinearTeacher.draw(n, rng, noise_var=noise_var)
        x, y = teacher.sample(p, rng)
        w = rm.gd_weights(x, y, rng.standard_normal(n) * math.sqrt(init_var), times)
        eg.append(teacher.population_error(w))
    return np.mean(eg, axis=0)


def _spectral_average(lam, n, times):
    """Eq. (5) averaged over the N modes of one design (zero eigenvalues for the missing ones) + noise."""
    lam = np.concatenate([lam, np.zeros(n - lam.size)])
    return np.mean([hdg.mode_error(v, times, **KW) for v in lam], axis=0) + KW["noise_var"]


def test_mode_solution_averages_correctly_over_teacher_noise_and_initialization_for_a_fixed_design():
    rng = np.random.default_rng(2)
    n, p, times = 20, 12, np.array([0.5, 5.0, np.inf])
    x = rng.standard_normal((p, n)) / math.sqrt(n)
    modes = rm.LinearModes.of(x)
    errors = []
    for _ in range(4000):
        teacher = rm.LinearTeacher.draw(n, rng, weight_var=1.0, noise_var=0.2)
        y = teacher.mean(x) + rng.standard_normal(p) * math.sqrt(0.2)
        w = rm.gd_weights(modes, y, rng.standard_normal(n) * math.sqrt(0.5), times)
        errors.append(teacher.population_error(w))
    np.testing.assert_allclose(np.mean(errors, axis=0), _spectral_average(modes.eigenvalues, n, times), rtol=0.03)


@pytest.mark.parametrize("alpha", (0.5, 2.0))
def test_marchenko_pastur_theory_matches_the_spectral_average_of_one_large_design(alpha):
    n = 500
    rng = np.random.default_rng(3)
    x = rng.standard_normal((int(alpha * n), n)) / math.sqrt(n)
    lam = np.linalg.svd(x, compute_uv=False) ** 2
    times = np.array([0.3, 1.0, 3.0])  # later times are dominated by the few edge eigenvalues of a finite design
    np.testing.assert_allclose(_spectral_average(lam, n, times), hdg.generalization_error(alpha, times, **KW),
                               rtol=0.02)
    # Eq. (8): residual along each data mode plus the unfittable noise directions
    p = x.shape[0]
    train = np.array([np.sum((lam * 1.5 + 0.2) * np.exp(-2 * lam * t)) / p for t in times]) + 0.2 * max(0, p - n) / p
    np.testing.assert_allclose(train, hdg.training_error(alpha, times, **KW), rtol=0.02)


def test_finite_size_asymptote_is_the_exact_mean_for_gaussian_inputs():
    # E[tr (X^T X)^-1] = N^2 / (P - N - 1) for N(0, 1/N) entries: checked by brute force at small N
    n, p = 10, 25
    eg = _simulate(p / n, n, 3000, [np.inf], init_var=0.0, noise_var=0.2, seed=7)
    exact = hdg.finite_size_asymptotic_error(p, n, init_var=0.0, teacher_var=1.0, noise_var=0.2)
    assert eg[0] == pytest.approx(exact, rel=0.03)
    assert exact > hdg.asymptotic_error(p / n, init_var=0.0, teacher_var=1.0, noise_var=0.2)
    assert hdg.finite_size_asymptotic_error(10, 10, **KW) == math.inf


@pytest.mark.parametrize("alpha", (0.3, 0.9, 1.0, 2.0))
def test_optimal_ridge_closed_form_equals_quadrature_and_beats_other_penalties(alpha):
    best = hdg.optimal_ridge_error(alpha, teacher_var=1.0, noise_var=0.2)
    assert best == pytest.approx(hdg.ridge_error(alpha, 0.2, teacher_var=1.0, noise_var=0.2), rel=1e-7)
    for gamma in (0.05, 0.1, 0.4, 1.0):
        assert hdg.ridge_error(alpha, gamma, teacher_var=1.0, noise_var=0.2) > best


@pytest.mark.parametrize("alpha", (0.5, 1.0, 2.0))
def test_early_stopping_from_zero_is_never_better_than_bayes_optimal_ridge(alpha):
    t_star, e_star = hdg.optimal_stopping(alpha, init_var=0.0, teacher_var=1.0, noise_var=0.2)
    ridge = hdg.optimal_ridge_error(alpha, teacher_var=1.0, noise_var=0.2)
    assert 0 < t_star < math.inf
    assert ridge <= e_star < 1.1 * ridge
    grid = hdg.generalization_error(alpha, np.logspace(-1, 3, 41), init_var=0.0, teacher_var=1.0, noise_var=0.2)
    assert e_star <= grid.min() + 1e-12


def test_overtraining_is_largest_next_to_alpha_one_and_vanishes_without_noise():
    kw = dict(init_var=0.0, teacher_var=1.0, noise_var=0.2)
    alphas = (0.5, 0.8, 0.95, 1.05, 1.3, 2.0)
    over = [hdg.asymptotic_error(a, **kw) - hdg.optimal_stopping(a, **kw)[1] for a in alphas]
    assert alphas[int(np.argmax(over))] in (0.95, 1.05)
    assert min(over) > 0
    t, e = hdg.optimal_stopping(2.0, init_var=0.0, teacher_var=1.0, noise_var=0.0)
    assert t == math.inf and e == pytest.approx(0.0, abs=1e-12)


def test_config_validates_knobs_and_the_cpu_budget():
    cfg = hdg.config("cpu")
    assert cfg.n_features == 200 and cfg.draws == 20 and len(cfg.times) == 30
    assert hdg.config("smoke", draws=None).draws == 2
    with pytest.raises(ConfigError, match="n_features"):
        hdg.config("cpu", n_features=-5)
    with pytest.raises(ConfigError, match="alphas"):
        hdg.config("cpu", alphas=(0.5, -1.0))
    with pytest.raises(ConfigError, match="rf_lr_scale"):
        hdg.config("cpu", rf_lr_scale=2.5)
    with pytest.raises(ConfigError, match="mlp_widths"):
        hdg.config("cpu", mlp_widths=(10, 4096))  # too slow for the cpu budget, and the error names the knob
    with pytest.raises(ConfigError, match="unknown knob"):
        hdg.config("cpu", widths=(1, 2))
    assert hdg.config("full", mlp_widths=(10, 4096)).mlp_widths == (10, 4096)


def test_linear_experiment_shapes_and_agreement_at_smoke_scale():
    cfg = hdg.config("smoke")
    lin = hdg.linear_experiment(cfg, seed=1)
    shape = (2, 3, 2, cfg.draws, cfg.n_times)
    assert lin["eg_sim"].shape == shape and lin["etrain_sim"].shape == shape
    assert np.isfinite(lin["eg_sim"]).all() and np.isfinite(lin["eg_theory"]).all()
    summary = hdg.linear_summary(lin, snr=5.0, init_var=0.0)
    assert list(summary.index) == [0.5, 2.0]
    assert (summary.c1_max_rel_dev < 0.5).all()
    # without noise, ridge (gamma* = 0) is the min-norm solution, i.e. where GD from zero converges
    np.testing.assert_allclose(lin["ridge_sim"][:, 2], lin["eg_sim_inf"][:, 2, 0], rtol=1e-8, atol=1e-12)


def test_random_features_students_interpolate_when_wider_than_the_data():
    cfg = hdg.config("smoke", rf_widths=(5, 300), nl_train=(60,), nl_seeds=1, rf_steps=50)
    out = hdg.random_features_experiment(cfg)
    r = out["by_P"][60]
    assert r["test"].shape == (1, 2, len(out["steps"]))
    assert r["test"][0, 0, 0] == r["test"][0, 1, 0]  # step 0: the zero readout, whatever the width
    assert r["train_final"][0, 0] > 0.1
    conv_train = hdg.random_features_experiment(cfg)["by_P"][60]
    assert np.isfinite(conv_train["test_converged"]).all()


def test_packed_students_train_each_width_as_if_alone():
    rng = np.random.default_rng(0)
    widths, d, p = (2, 3), 4, 6
    x = rng.standard_normal((1, p, d))
    y = rng.standard_normal((1, p, 1))
    run = hdg.train_packed_students(widths, x, y, x, y, steps=3, lr=0.1, init=1.0, records=3,
                                    rng=np.random.default_rng(5))
    params = hdg._init_packed(widths, 1, d, 1, 1.0, np.random.default_rng(5))
    start = 0
    for k, width in enumerate(widths):  # plain NumPy GD on one student, same initial weights
        w = params["w"][0, start:start + width].astype(np.float64)
        a = params["a"][0, start:start + width, 0].astype(np.float64)
        start += width
        for step in range(3):
            pre = x[0] @ w.T
            h = np.maximum(pre, 0)
            r = h @ a - y[0, :, 0]
            np.testing.assert_allclose(run["train"][step, 0, k], np.mean(r**2), rtol=1e-4)
            grad_a = h.T @ r / p
            grad_w = ((r[:, None] * a[None, :]) * (pre > 0)).T @ x[0] / p
            a, w = a - 0.1 * grad_a, w - 0.1 * grad_w
        r = np.maximum(x[0] @ w.T, 0) @ a - y[0, :, 0]
        np.testing.assert_allclose(run["train"][3, 0, k], np.mean(r**2), rtol=1e-4)
        np.testing.assert_allclose(run["test"][3, 0, k], np.mean(r**2), rtol=1e-4)
