"""Scale mixtures of NNGPs: kernels, priors, inference, readout training and the benchmark plumbing."""

import math

import jax
import numpy as np
import pytest
from scipy import integrate, stats

jax.config.update("jax_enable_x64", True)

from repro.core import kernels  # noqa: E402
from repro.core import scale_mixture as sm  # noqa: E402
from repro.infinite_width import scale_mixture_nngp as smn  # noqa: E402
from repro.profiles import PROFILES, ConfigError  # noqa: E402


def test_every_profile_builds_a_valid_config_and_none_means_the_profile_value():
    for profile in PROFILES:
        cfg = smn.config(profile)
        assert cfg.profile == profile and cfg.table_activations[0] == cfg.activation
    assert smn.config("cpu", gd_nets=None).gd_nets == smn.Config.__dataclass_fields__["gd_nets"].default


@pytest.mark.parametrize("overrides, knob", [
    (dict(gd_alpha=1.0), "gd_alpha"), (dict(activation="tanh"), "activation"),
    (dict(table_activations=("relu", "erf")), "table_activations"), (dict(reg_settings=("diabetes-tilt",)), "reg_settings"),
    (dict(prior_nets=5), "prior_nets"), (dict(gd_train=2000), "gd_train"), (dict(prior_width=-3), "prior_width"),
    (dict(uci_datasets=("yacht",)), "uci_datasets"), (dict(prior_nets=10**7), "prior_nets"),
    (dict(noise_bounds=(1.0, 0.1)), "noise_bounds"), (dict(digits_train=1700), "digits_train"),
])
def test_bad_knobs_are_errors_that_name_the_knob(overrides, knob):
    with pytest.raises(ConfigError, match=knob):
        smn.config("cpu", **overrides)
    with pytest.raises(ConfigError, match="unknown knob"):
        smn.config("cpu", widht=3)


def test_nngp_kernel_matches_the_erf_closed_form_with_a_unit_readout():
    """One hidden erf layer: K(x, x') = sigma_v^2 (2/pi) arcsin(2 S12 / sqrt((1 + 2 S11)(1 + 2 S22)))."""
    x = np.array([[0.3, -1.2, 0.5], [1.0, 0.4, -0.7]])
    arch = smn.Architecture(depth=2, activation="erf", weight_var=4.0, bias_var=0.2, readout_var=1.7)
    S = 4.0 * x @ x.T / 3 + 0.2
    expected = 1.7 * 2 / np.pi * np.arcsin(2 * S / np.sqrt(np.outer(1 + 2 * np.diag(S), 1 + 2 * np.diag(S))))
    np.testing.assert_allclose(smn.nngp_kernel(x, None, arch), expected, rtol=1e-12)
    np.testing.assert_allclose(smn.nngp_kernel(x, None, arch, diag=True), np.diag(expected), rtol=1e-12)


def test_wide_finite_networks_have_the_nngp_kernel_on_average():
    cfg = smn.config("smoke")
    arch = cfg.architecture()
    x = np.random.default_rng(0).normal(size=(3, 5))
    out = sm.sample_mlp_readout(x, np.ones(200), width=512, depth=arch.depth, activation=arch.activation,
                                weight_var=arch.weight_var, bias_var=arch.bias_var, readout_var=arch.readout_var,
                                rng=np.random.default_rng(1))
    np.testing.assert_allclose(out.gram.mean(0), smn.nngp_kernel(x, None, arch), atol=0.01)


def test_inverse_gamma_mixture_of_the_nngp_is_the_t_marginal_of_eq_3():
    prior, kxx = sm.InverseGamma(2.0, 1.5), 0.8
    df, scale = smn.t_process_prior_scale(kxx, prior)
    for f in (0.0, 0.7, 3.0):
        dens, _ = integrate.quad(lambda s: stats.norm.pdf(f, 0, math.sqrt(s * kxx)) * math.exp(prior.logpdf(s)), 0, np.inf)
        assert dens == pytest.approx(stats.t.pdf(f, df, scale=scale), rel=1e-7)


def test_prior_at_init_draws_heavy_tails_with_the_mixed_scale_only():
    res = smn.prior_at_init(smn.config("smoke"), seed=0)
    assert res["mixed"].shape == res["fixed"].shape == (200,)
    assert res["kurtosis_mixed"] > res["kurtosis_fixed"]
    assert res["t_df"] == 4.0 and res["t_scale"] == pytest.approx(math.sqrt(res["kxx"] / 2.0))


def test_shift_split_tests_on_the_highest_principal_component_scores_and_splits_partition_the_data():
    cfg = smn.config("smoke")
    x = np.random.default_rng(2).normal(size=(200, 4)) * [3.0, 1.0, 0.5, 0.1]
    idx = smn.split_indices(x, "shift", 0, cfg)
    pc = smn.first_principal_component(x)
    assert pc[idx["test"]].min() >= pc[np.concatenate([idx["fit"], idx["val"]])].max()
    for split in smn.SPLITS:
        idx = smn.split_indices(x, split, 1, cfg)
        everything = np.concatenate([idx["fit"], idx["val"], idx["test"]])
        assert np.array_equal(np.sort(everything), np.arange(200)) and idx["test"].size == 40


def test_inference_check_closed_form_and_importance_sampling_agree():
    res = smn.inference_check(smn.config("smoke"), seed=0)
    assert res["n_train"] == 100 and res["kernel_min_eig"] > 0
    assert res["mean_rel_err"] < 1e-8 and abs(res["weights_sum"] - 1) < 1e-9
    assert res["var_max_rel_err"] < 0.05  # M = 500 prior draws of s
    assert res["nll_is"] == pytest.approx(res["nll_closed"], abs=0.02)


def test_converged_readout_training_interpolates_and_matches_explicit_gradient_descent():
    """The closed form used for readout-only GD against explicit GD iterations on the readout weights."""
    rng = np.random.default_rng(3)
    n_train, n_test, width = 6, 3, 40
    phi = np.tanh(rng.normal(size=(n_train + n_test, width)))  # fixed last-hidden features
    w0 = rng.normal(size=width)
    y = rng.normal(size=n_train)
    # NTK-parametrized readout f = phi @ w / sqrt(width): its tangent kernel is phi phi^T / width
    G = phi @ phi.T / width
    lr, steps = 0.5 * n_train / np.linalg.eigvalsh(G[:n_train, :n_train])[-1], 300
    w = w0.copy()
    for _ in range(steps):
        resid = phi[:n_train] @ w / math.sqrt(width) - y
        w -= lr * phi[:n_train].T @ resid / math.sqrt(width) / n_train
    f0 = phi @ w0 / math.sqrt(width)
    tr, te = slice(0, n_train), slice(n_train, None)
    closed = kernels.ntk_linearized_prediction(f0[te], f0[tr], G[te, tr], G[tr, tr], y, lr=lr, steps=steps)
    np.testing.assert_allclose(closed, phi[te] @ w / math.sqrt(width), rtol=1e-9, atol=1e-12)
    res = smn.readout_training(smn.config("smoke"), seed=0)
    assert res["train_max_residual"] < 1e-8
    assert res["trained"].shape == (50, 5) and np.all(res["sigma_gd"] > 0)


def test_student_t_and_nngp_share_the_predictive_mean_for_a_shared_noise_variance():
    x = np.random.default_rng(4).normal(size=(30, 3))
    y = np.sin(x[:, 0]) + 0.1 * x[:, 1]
    arch = smn.config("smoke").architecture()
    K_train, K_cross, K_diag = smn.kernel_blocks(x[:20], x[20:], arch)
    g = sm.fit_scale_mixture_gp(K_train, K_cross, K_diag, y[:20], sm.FixedScale(1.0), noise_var=0.1).predictive()
    t = sm.fit_scale_mixture_gp(K_train, K_cross, K_diag, y[:20], sm.InverseGamma(2, 1), noise_var=0.1).predictive()
    np.testing.assert_allclose(t.mean, g.mean, rtol=1e-12)
    ratio = t.variance / g.variance
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-10)  # only the scale differs


def test_expected_calibration_error_and_sampled_softmax_on_known_cases():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4], [0.6, 0.4]])
    labels = np.array([0, 1, 0, 0, 1])
    # bins: conf 0.9 (2 points, accuracy 0.5) and 0.6 (3 points, accuracy 2/3)
    assert smn.expected_calibration_error(probs, labels, 15) == pytest.approx(0.4 * 0.4 + 0.6 * abs(2 / 3 - 0.6))
    mean = np.array([[1.0, 0.0, -1.0], [0.2, 0.1, 0.0]])
    p = smn.sampled_softmax(mean, np.zeros(2), np.ones(4), np.random.default_rng(5).normal(size=(4, 2, 3)), 0.5)
    expected = np.exp(mean / 0.5) / np.exp(mean / 0.5).sum(1, keepdims=True)
    np.testing.assert_allclose(p, expected, rtol=1e-6)


def test_image_corruptions_rotate_and_stay_in_range():
    img = np.arange(64, dtype=float)[None] / 4.0
    rot = img
    for _ in range(4):
        rot = smn.corrupt_images(rot, "rotate", None, noise=0, side=8, max_value=16)
    np.testing.assert_array_equal(rot, img)
    noisy = smn.corrupt_images(np.repeat(img, 50, 0), "noise", np.random.default_rng(6), noise=4.0, side=8, max_value=16)
    assert noisy.min() >= 0 and noisy.max() <= 16 and not np.allclose(noisy[0], img[0])


def test_regression_benchmark_selects_one_member_per_family_and_shares_the_corrupt_split():
    cfg = smn.config("smoke", is_samples=200)
    df = smn.regression_benchmark(cfg, settings=("diabetes-random", "diabetes-corrupt"))
    sel = df[df.selected]
    assert set(sel.family) == {"NNGP", "NNGP (fitted scale)", "Student-t", "Burr XII"}
    assert sel.groupby(["setting", "seed", "activation", "family"]).size().max() == 1
    random, corrupt = (df[df.setting == s].set_index("model") for s in ("diabetes-random", "diabetes-corrupt"))
    np.testing.assert_allclose(random.noise_var, corrupt.noise_var)  # one training set, two test sets
    assert np.isfinite(df[["val_nll", "test_nll", "test_rmse"]].to_numpy()).all()
    gaps = smn.robustness_gaps(df, cfg.activation)
    assert set(gaps) == {"diabetes-random", "diabetes-corrupt"}


def test_uci_loader_says_where_the_file_should_be(tmp_path):
    from repro.core.data import DataUnavailable

    with pytest.raises(DataUnavailable, match="yacht"):
        smn.load_uci("yacht", root=tmp_path)
    (tmp_path / "uci" / "concrete").mkdir(parents=True)
    (tmp_path / "uci" / "concrete" / "concrete.csv").write_text("a,b,target\n1,2,3\n4,5,6\n")
    x, y = smn.load_uci("concrete", root=tmp_path)
    assert x.shape == (2, 2) and np.array_equal(y, [3.0, 6.0])
