"""The Principles of Deep Learning Theory module: recursions against closed forms, the Monte-Carlo pipeline
against exact finite-width results, the NTK against brute-force autodiff, and the learning-rate bisection."""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from repro.core.hermite import gaussian_rule  # noqa: E402
from repro.infinite_width import principles_dl_theory as pdl  # noqa: E402
from repro.profiles import PROFILES, ConfigError  # noqa: E402


def test_every_profile_has_a_valid_config_and_overrides_apply():
    for profile in PROFILES:
        cfg = pdl.config(profile)
        assert cfg.profile == profile and 2.0 in cfg.relu_weight_vars and 1.0 in cfg.tanh_weight_vars
    cfg = pdl.config("cpu", mc_widths=[16, 48], mc_nets=None)
    assert cfg.mc_widths == (16, 48) and cfg.mc_nets == pdl.config("cpu").mc_nets
    assert pdl.config("cpu", ntk_depths=(8, 2, 4)).ntk_depths == (2, 4, 8)


def test_bad_knobs_raise_errors_that_name_them():
    with pytest.raises(ConfigError, match="unknown knob"):
        pdl.config("cpu", widths=3)
    with pytest.raises(ConfigError, match="mc_method"):
        pdl.config("cpu", mc_method="exact")
    with pytest.raises(ConfigError, match="quad_points"):
        pdl.config("cpu", quad_points=63)
    with pytest.raises(ConfigError, match="mc_widths"):
        pdl.config("cpu", mc_widths=(32, -1))
    with pytest.raises(ConfigError, match="mnist_points"):
        pdl.config("cpu", mnist_points=64)
    with pytest.raises(ConfigError, match="mc_nets"):  # beyond the cpu profile's time budget
        pdl.config("cpu", mc_nets=10**7)
    with pytest.raises(ConfigError, match="train_widths"):
        pdl.config("cpu", train_widths=(1024,))


def test_relu_kernel_recursion_is_exactly_geometric_by_quadrature():
    for cw in (1.8, 2.0, 2.2):
        k = pdl.single_input_kernel("relu", cw, 50, input_norm2=0.7)  # depth 50: the compiled code of the smoke run
        np.testing.assert_allclose(k, cw * 0.7 * (cw / 2) ** np.arange(50), rtol=1e-12)


def test_tanh_kernel_recursion_matches_a_direct_one_dimensional_quadrature():
    z, w = gaussian_rule(200)
    k = [1.3 * 0.8]
    for _ in range(9):
        k.append(1.3 * (np.tanh(np.sqrt(k[-1]) * z) ** 2) @ w)  # K' = C_W <tanh^2>_K
    ours = pdl.single_input_kernel("tanh", 1.3, 10, input_norm2=0.8)
    np.testing.assert_allclose(ours, k, rtol=1e-7)  # 64 nodes against 200


def test_susceptibilities_equal_one_exactly_at_criticality():
    chi = pdl.susceptibilities("relu", np.array([0.1, 1.0, 7.0]), 2.0)
    np.testing.assert_allclose(chi["chi_par"], 1.0, rtol=1e-12)
    np.testing.assert_allclose(chi["chi_perp"], 1.0, rtol=1e-12)
    chi = pdl.susceptibilities("tanh", np.array([1e-4]), 1.0)  # K* = 0 class: both -> C_W as K -> 0
    np.testing.assert_allclose([chi["chi_par"][0], chi["chi_perp"][0]], 1.0, atol=1e-3)
    # chi_par is the derivative of the recursion: a finite difference of K -> C_W <tanh^2>_K
    z, w = gaussian_rule(200)

    def step(kk):
        return 1.3 * (np.tanh(np.sqrt(kk) * z) ** 2) @ w

    h = 1e-6
    fd = (step(0.5 + h) - step(0.5 - h)) / (2 * h)
    assert pdl.susceptibilities("tanh", np.array([0.5]), 1.3)["chi_par"][0] == pytest.approx(fd, rel=1e-6)


def test_criticality_statistics_and_the_tanh_power_law_on_a_short_run():
    cfg = pdl.config("smoke", tanh_depth=600, relu_weight_vars=(2.0, 2.2), tanh_weight_vars=(0.9, 1.0, 1.1))
    r1 = pdl.criticality(cfg)
    assert r1["relu"][2.0]["ratio_last_first"] == pytest.approx(1.0, abs=1e-12)
    assert r1["relu"][2.2]["ratio_last_first"] == pytest.approx(r1["relu"][2.2]["geometric_prediction"], rel=1e-12)
    crit = r1["tanh"][1.0]
    assert 600 * crit["kernel"][-1] == pytest.approx(0.5, rel=0.05)  # K ~ 1 / (2 l)
    assert crit["l_times_k"] == 600 * crit["kernel"][-1]
    assert crit["loglog_slope"] == pytest.approx(-1.0, abs=0.1)
    assert crit["kernel"][-1] > 100 * crit["geometric_extrapolation"]  # slower than any fitted geometric decay
    assert r1["tanh"][0.9]["log_linear"]["factor"] == pytest.approx(0.9, rel=1e-3)
    assert r1["tanh"][1.1]["kernel"][-1] > 0.05 and r1["tanh"][1.1]["relative_change_last"] < 1e-10


def test_tiny_monte_carlo_pipeline_matches_the_exact_relu_formula():
    cfg = pdl.config("smoke", mc_nets=20000, mc_chunk=5000, mc_widths=(12,), relu_mc_depth=4, tanh_mc_depth=7)
    r2 = pdl.finite_width_kurtosis(cfg, seed=1)
    relu = r2["relu"][12]
    np.testing.assert_allclose(relu["exact"], (1 + 5 / 12) ** np.arange(4) - 1, rtol=1e-12)
    np.testing.assert_allclose(relu["leading_order"], 5 * np.arange(4) / 12, rtol=1e-10, atol=1e-14)
    rb = relu["rao_blackwell"]
    assert np.all(np.abs(rb["kurtosis"] - relu["exact"]) <= 4 * rb["stderr"] + 0.02)
    assert abs(relu["kurtosis"][0]) < 0.1 and abs(r2["tanh"][12]["kurtosis"][0]) < 0.1
    tanh = r2["tanh"][12]
    assert np.all(np.diff(tanh["leading_order"]) > 0) and "fit" in tanh  # window 5..25 holds layers 5 to 7


def test_empirical_ntk_diagonal_equals_brute_force_gradient_norms():
    net = pdl.network(16, 3, 5)
    params = pdl.init_params(16, 3, 5, seed=2)
    x = pdl.sphere_points(4, 5, seed=1)
    diag = np.diag(np.asarray(pdl.empirical_ntk(params, x)))
    grad = jax.jit(jax.grad(lambda p, xi: net.apply(p, xi[None])[0, 0]))
    brute = [sum(float(jnp.sum(leaf**2)) for leaf in jax.tree_util.tree_leaves(grad(params, jnp.asarray(xi))))
             for xi in x]
    np.testing.assert_allclose(diag, brute, rtol=1e-10)


def test_bisection_brackets_a_known_threshold():
    found = pdl.bisect_max_stable_lr(lambda lr: lr > 3.7, 0.1, 1.0, 10)
    assert found["lo"] <= 3.7 < found["hi"] and found["hi"] / found["lo"] < 1.01
    assert found["trials"][0] == (0.1, False)
    with pytest.raises(RuntimeError, match="still diverging"):
        pdl.bisect_max_stable_lr(lambda lr: True, 1.0, 2.0, 3, max_expand=3)


def test_gd_divergence_test_stops_early_and_agrees_with_linear_stability_of_a_one_layer_model():
    # depth 1 does not exist in the config, but the network builder allows a linear model (depth 1: f = m x.w)
    x = jnp.asarray(pdl.sphere_points(6, 4, seed=0), jnp.float32)
    y = jnp.linspace(-1, 1, 6, dtype=jnp.float32)
    net = pdl.network(1, 1, 4, "float32")
    params = pdl.init_params(1, 1, 4, seed=0, dtype="float32")
    # f(x) = sqrt(2/4) x.w: the loss Hessian in w is (1/N) (2/4) X^T X, stable iff lr < 2 / lambda_max
    lam = np.linalg.eigvalsh(0.5 * np.asarray(x).T @ np.asarray(x) / 6)[-1]
    stable = pdl.gd_diverges(net, params, x, y, 0.9 * 2 / lam, steps=100, factor=10.0)
    assert not stable["diverged"] and stable["steps"] == 100 and stable["losses"][-1] < stable["losses"][0]
    blown = pdl.gd_diverges(net, params, x, y, 1.5 * 2 / lam, steps=100, factor=10.0)
    assert blown["diverged"] and blown["steps"] < 100


def test_tiny_ntk_and_learning_rate_pipeline():
    cfg = pdl.config("smoke", ntk_depths=(2, 3), ntk_nets=2, ntk_points=4, train_steps=10, bisection_steps=1)
    r3 = pdl.ntk_depth_scaling(cfg, seed=0)
    assert r3["diagonal"].shape == (2, cfg.ntk_nets, cfg.ntk_points) and np.all(r3["diagonal"] > 0)
    # Theta^(L)(x, x) = L C_W x.x / n0 for unit-norm inputs at criticality
    np.testing.assert_allclose(r3["limit"], 2.0 * np.array(cfg.ntk_depths) / cfg.input_dim, rtol=1e-12)
    lr = pdl.max_stable_lr(cfg, seed=0)
    entry = lr["widths"][cfg.train_widths[0]]
    assert entry["lr_nets"].shape == (2, cfg.train_nets) and np.all(entry["lo"] < entry["hi"])
    np.testing.assert_allclose(entry["lr"], np.median(entry["lr_nets"], axis=1))
    np.testing.assert_allclose(entry["lr_times_depth"], entry["lr"] * np.array(cfg.ntk_depths))
    assert np.all(entry["lr_lin"] > 0)
    assert lr["lr_inf"][0] > lr["lr_inf"][1]  # the infinite-width stability edge shrinks with depth
    assert np.all((lr["offdiag_ratio_inf"] > 0) & (lr["offdiag_ratio_inf"] < 1))  # ReLU kernels: 0 < rho < 1
