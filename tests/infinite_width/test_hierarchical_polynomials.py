"""The hierarchical-polynomials module: Hermite features, Algorithm 1's two stages, the network, measures, config."""

import math

import numpy as np
import pytest
import torch

from repro.core import hermite
from repro.infinite_width import hierarchical_polynomials as hp
from repro.profiles import PROFILES, ConfigError


def tensor_rule(dim: int, points: int):
    z, w = hermite.gaussian_rule(points)
    grids = np.meshgrid(*([z] * dim), indexing="ij")
    weights = np.prod(np.meshgrid(*([w] * dim), indexing="ij"), axis=0)
    return np.stack([g.ravel() for g in grids], 1), weights.ravel()


@pytest.mark.parametrize("dim,degree", [(3, 1), (3, 2), (3, 3), (4, 2)])
def test_hermite_features_are_orthonormal_under_the_gaussian(dim, degree):
    x, w = tensor_rule(dim, degree + 2)
    psi = hp.hermite_features(x, degree)
    assert psi.shape == (x.shape[0], hp.feature_dimension(dim, degree))
    assert hp.feature_dimension(dim, degree) == math.comb(dim + degree - 1, degree)
    np.testing.assert_allclose((psi * w[:, None]).T @ psi, np.eye(psi.shape[1]), atol=1e-12)


def test_degree_two_features_are_h2_of_each_coordinate_and_the_pairwise_products():
    x = np.random.default_rng(0).standard_normal((5, 4))
    psi = hp.hermite_features(x, 2)
    expected = [(x[:, i] ** 2 - 1) / math.sqrt(2) for i in range(4)] + [x[:, i] * x[:, j] for i in range(4)
                                                                        for j in range(i + 1, 4)]
    got = sorted(map(tuple, np.round(psi.T, 12)))
    assert got == sorted(map(tuple, np.round(np.array(expected), 12)))


@pytest.mark.parametrize("dim", [2, 4, 6])
def test_degree_two_projection_of_p_cubed_is_exactly_proportional_to_p(dim):
    """For p = x^T A x with A's eigenvalues +-1/sqrt(2d), P_2(p^3) = (3 + 12/d) p = E[p^4] p: the feature the first
    stage should find (computed here with an exact product Gauss-Hermite rule)."""
    target = hp.make_target(2, dim, seed=dim)
    x, w = tensor_rule(dim, 6)
    psi, p, h = hp.hermite_features(x, 2), target.feature(x), target(x)
    coef = (psi * w[:, None]).T @ h  # E[h psi]
    np.testing.assert_allclose(psi @ coef, target.constant * (3 + 12 / dim) * p, atol=1e-10)
    assert target.feature.moments(4)[4] == pytest.approx(3 + 12 / dim)


def test_stage_one_is_ridge_regression_on_the_features_and_the_single_step_their_correlation():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 4))
    y = rng.standard_normal(300)
    u = hp.inner_feature_weights(x, y, 2, ridge=0.01)
    psi = hp.hermite_features(x, 2)
    np.testing.assert_allclose(u["ridge"], np.linalg.solve(psi.T @ psi + 0.01 * 300 * np.eye(10), psi.T @ y), rtol=1e-9)
    np.testing.assert_allclose(u["one_step"], psi.T @ y / 300, rtol=1e-12)
    np.testing.assert_allclose(hp.feature_values(x, u["ridge"], 2), psi @ u["ridge"], rtol=1e-12)


def test_stage_one_recovers_a_quadratic_feature_exactly_when_it_is_the_target():
    target = hp.make_target(2, 5, seed=3)
    data = hp.make_data(target, 400, 0, 200, seed=3)
    u = hp.inner_feature_weights(data["x_train"], data["p_train"], 2, ridge=1e-12)
    assert hp.feature_correlation(hp.feature_values(data["x_test"], u["ridge"], 2), data["p_test"]) > 1 - 1e-10


def test_cubic_outer_neurons_span_exactly_the_cubic_polynomials_of_the_feature():
    rng = np.random.default_rng(2)
    phi = rng.standard_normal(200)
    cubic = lambda z: 0.5 - z + 0.3 * z**2 + 0.2 * z**3  # noqa: E731
    outer = hp.fit_outer_layer(phi, cubic(phi), width=16, ridge=1e-12, rng=rng)
    new = rng.standard_normal(50) * 2
    np.testing.assert_allclose(outer(new), cubic(new), atol=1e-6)
    # a quartic is not in their span
    quartic = hp.fit_outer_layer(phi, phi**4, width=16, ridge=1e-12, rng=rng)
    assert hp.nmse(quartic(phi), phi**4) > 0.05


def test_layerwise_fit_learns_the_feature_and_the_oracle_is_exact():
    cfg = hp.config("smoke")
    target = hp.make_target(2, 6, seed=0)
    data = hp.make_data(target, 4000, 0, 1000, seed=0)
    out = hp.layerwise_fit(data, 4000, 2, cfg, seed=0)
    assert out["oracle"]["nmse"] < 1e-8
    assert out["ridge"]["corr"] > 0.85 and out["ridge"]["nmse"] < 0.6
    small = hp.layerwise_fit(data, 40, 2, cfg, seed=0)
    assert small["ridge"]["corr"] < out["ridge"]["corr"]


def test_three_layer_network_computes_eq_1_and_has_mup_adam_learning_rates():
    net = hp.ThreeLayerNet(3, 7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = torch.randn(4, 3, dtype=torch.float64)
    (V, u), (s, s_out) = net.inner.weights, net.inner.biases
    (c, a), (b, b_out) = net.outer.weights, net.outer.biases
    phi = torch.relu(x @ V.T + s) @ u[0] + s_out[0]
    f = ((phi[:, None] * c[:, 0] + b) ** 3) @ a[0] + b_out[0]
    torch.testing.assert_close(net.feature(x)[:, 0], phi)
    torch.testing.assert_close(net(x), f)
    lrs = {id(g["params"][0]): g["lr"] for g in net.optimizer(0.1).param_groups}
    assert lrs[id(V)] == pytest.approx(0.1) and lrs[id(c)] == pytest.approx(0.1) and lrs[id(s)] == pytest.approx(0.1)
    assert lrs[id(u)] == pytest.approx(0.1 / 7) and lrs[id(a)] == pytest.approx(0.1 / 5)  # read-outs: lr / fan_in


def test_joint_training_reduces_the_training_loss():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3))
    y = (x[:, 0] * x[:, 1]) ** 3 / 3
    net, hist = hp.train_joint(x, y, inner_width=16, outer_width=8, steps=60, lr=1e-2, seed=0)
    assert np.all(np.isfinite(hist.losses)) and hist.losses[-5:].mean() < hist.losses[:5].mean()
    f, phi = hp.evaluate_net(net, x, chunk=10)
    assert f.shape == phi.shape == (64,)


def test_measures_nmse_correlation_and_transition():
    h = np.random.default_rng(3).standard_normal(100)
    assert hp.nmse(np.full(100, h.mean()), h) == pytest.approx(1.0)
    assert hp.feature_correlation(-3 * h + 1, h) == pytest.approx(-1.0)
    assert math.isnan(hp.feature_correlation(np.ones(100), h))
    ns = [100, 200, 400, 800]
    assert hp.transition_sample_size(ns, [0.5, 0.8, 1.0, 1.0]) == pytest.approx(200 * 2**0.5)
    assert math.isnan(hp.transition_sample_size(ns, [0.1, 0.2, 0.3, 0.4]))
    assert math.isnan(hp.transition_sample_size(ns, [0.95, 0.99, 1.0, 1.0]))  # not bracketed
    dims = [8, 16, 32]
    assert hp.scaling_exponent(dims, [3 * d**2 for d in dims]) == pytest.approx(2.0)
    assert math.isnan(hp.scaling_exponent(dims, [1.0, float("nan"), 2.0]))


def test_every_profile_has_a_valid_config_and_overrides_apply():
    for profile in PROFILES:
        cfg = hp.config(profile)
        assert cfg.profile == profile and set(cfg.joint_n) <= set(cfg.n_train) and cfg.krr_tune_n in cfg.n_train
    cfg = hp.config("cpu", n_train="[500, 4000]", joint_n=[4000], seeds=None, scaling_dims=())
    assert cfg.n_train == (500, 4000) and cfg.seeds == hp.config("cpu").seeds and cfg.scaling_dims == ()
    assert hp.config("smoke").paper_dims == () and hp.config("full").paper_dims


def test_bad_knobs_raise_errors_that_name_them():
    with pytest.raises(ConfigError, match="unknown knob"):
        hp.config("cpu", width=3)
    with pytest.raises(ConfigError, match="n_train"):
        hp.config("cpu", n_train=(1000, 500))
    with pytest.raises(ConfigError, match="joint_n"):
        hp.config("cpu", joint_n=(3000,))
    with pytest.raises(ConfigError, match="outer_width"):
        hp.config("cpu", outer_width=3)
    with pytest.raises(ConfigError, match="krr_tune_n"):
        hp.config("smoke", krr_tune_n=4000)
    with pytest.raises(ConfigError, match="n_train"):  # beyond the cpu profile's time budget
        hp.config("cpu", n_train=(1000, 20000), krr_tune_n=1000, joint_n=(1000,))
    with pytest.raises(ConfigError, match="paper_dims"):
        hp.config("cpu", paper_dims=(16, 24))


def test_tiny_pipeline_returns_consistent_results():
    cfg = hp.config("smoke", joint_n=(800,), joint_seeds=1, joint_steps=30, joint_inner_width=16,
                    joint_outer_width=8, paper_dims=(3, 4), paper_ratios=(2.0, 8.0), paper_steps=20,
                    paper_inner_width=16, n_test=300)
    res = hp.sample_complexity(cfg)
    for key in ("nmse_layerwise", "corr_layerwise", "nmse_one_step", "nmse_krr", "nmse_oracle"):
        assert res[key].shape == (1, 2) and np.all(np.isfinite(res[key]))
    assert np.all(res["nmse_oracle"] < 1e-8) and res["krr_search"].val_mse.shape == (2, 2)
    assert res["scatter"]["phi"].shape == (300,) and res["feature_dim"] == 21
    assert res["moments"][0]["E_h2"] == pytest.approx(1.0)
    joint = hp.joint_training(cfg)
    assert joint["corr"].shape == (1, 1) and np.isfinite(joint["nmse"][0, 0]) and (0, 800) in joint["losses"]
    sc = hp.scaling(cfg)
    assert set(sc["per_dim"]) == {4, 6} and sc["per_dim"][4]["corr"].shape == (1, 3) and sc["n_star"].shape == (2,)
    paper = hp.paper_setting(cfg)
    assert paper["per_dim"][3]["n"].tolist() == [54, 216] and paper["per_dim"][4]["corr"].shape == (1, 2)
    assert hp.paper_setting(hp.config("smoke")) is None
