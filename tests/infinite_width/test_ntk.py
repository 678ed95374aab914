"""The NTK paper module: config validation, the circle limits, and a tiny end-to-end pipeline."""

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

from repro.core import kernels  # noqa: E402
from repro.infinite_width import ntk  # noqa: E402
from repro.profiles import PROFILES, ConfigError  # noqa: E402

TINY = dict(widths=(8, 256), seeds=2, train_widths=(8, 256), train_seeds=3, train_steps=30, band_widths=(8, 256),
            n_test=6, digits_n=16, digits_width=32, digits_steps=12, n_eigs=3)


def test_every_profile_has_a_valid_config_and_overrides_apply():
    for profile in PROFILES:
        cfg = ntk.config(profile)
        assert cfg.profile == profile and cfg.depth == 4 and cfg.beta == 0.1
    cfg = ntk.config("cpu", widths=[64, 128], seeds=None)
    assert cfg.widths == (64, 128) and cfg.seeds == ntk.config("cpu").seeds
    assert ntk.config("cpu", widths="[64, 128]", train_widths=1024, band_widths=[1024]).train_widths == (1024,)


def test_bad_knobs_raise_errors_that_name_them():
    with pytest.raises(ConfigError, match="unknown knob"):
        ntk.config("cpu", width=3)
    with pytest.raises(ConfigError, match="band_widths"):
        ntk.config("cpu", band_widths=(64, 512))
    with pytest.raises(ConfigError, match="activation"):
        ntk.config("cpu", activation="swish3")
    with pytest.raises(ConfigError, match="train_widths"):  # beyond the 3-minute budget of the cpu profile
        ntk.config("cpu", train_widths=(64, 4096))
    with pytest.raises(ConfigError, match="train_seeds"):
        ntk.config("smoke", train_seeds=1)


def test_circle_limits_are_the_blocks_of_direct_kernel_evaluations():
    cfg = ntk.config("smoke", n_test=6)
    lim = ntk.circle_limits(cfg)
    task = ntk.circle_task(cfg)
    assert task["x_test"].shape == (6, 2) and len(np.unique(task["gamma_test"])) == 6  # distinct angles
    sigma, theta = kernels.nngp_ntk(task["x_test"], task["x_train"], cfg.depth, cfg.activation, cfg.beta)
    np.testing.assert_allclose(lim["theta_st"], theta, rtol=1e-12)
    np.testing.assert_allclose(lim["sigma_st"], sigma, rtol=1e-12)
    assert lim["theta_tt"].shape == (4, 4) and np.array_equal(lim["theta_ss"], lim["theta_ss"].T)


@pytest.mark.slow  # compiles a dozen functions: about 10 s on one CPU core
def test_tiny_pipeline_returns_consistent_results():
    cfg = ntk.config("smoke", **TINY)
    key = jax.random.PRNGKey(0)
    c1 = ntk.init_concentration(cfg, key)
    assert c1["deviation"].shape == (2, 2) and np.all(c1["deviation"] > 0)
    circle = ntk.train_circle(cfg, key)
    for width, run in circle["runs"].items():
        assert run["fT_test"].shape == (3, 6) and run["gram0"].shape == (3, 4, 4)
        assert np.all(run["lossT"] < run["loss0"])  # training reduced every network's loss
        # the same networks as C1: identical initial Gram matrices for the seeds both use
        np.testing.assert_allclose(run["gram0"][:2], c1["grams"][width], rtol=1e-12)
    lazy = ntk.lazy_training(circle, cfg)
    assert lazy["mean_drift"][1] < lazy["mean_drift"][0]  # wider moves less
    fs = ntk.function_space(circle, cfg)
    band = fs["band"]
    assert np.all(band["lower"] < band["median"]) and np.all(band["median"] < band["upper"])
    dev = {w: fs["widths"][w]["median_max_deviation"] for w in (8, 256)}
    assert dev[256] < 0.1 and dev[256] < dev[8]  # the wide network follows its linearized prediction
    pd = ntk.limit_positive_definite(cfg)
    assert pd["min"] > 0 and pd["eigenvalues"].shape == (6,)
    spec = ntk.spectral_ordering(cfg, key)
    assert spec["available"] and spec["projection"].shape == (13, 3)
    assert spec["theory_rate"][0] == pytest.approx(1.0)  # eta = N / lambda_max
    assert np.all(np.diff(spec["top_eigenvalues"]) <= 0)


@pytest.mark.slow
def test_accelerator_ensemble_path_trains_exactly_like_the_cpu_loop(monkeypatch):
    net = ntk.network(16, 4, 0.1, "relu")
    task = ntk.circle_task(ntk.config("smoke"))
    x, y = task["x_train"], task["y_train"]
    stack = ntk.init_networks(net, jax.random.PRNGKey(1), [0, 1, 2])
    cpu_params, cpu_before, cpu_after = ntk._train_stack(net, stack, x, y, 25, 1.0)
    monkeypatch.setattr(ntk.jax, "default_backend", lambda: "gpu")  # take the vmapped-ensemble branch
    acc_params, acc_before, acc_after = ntk._train_stack(net, stack, x, y, 25, 1.0)
    np.testing.assert_allclose(acc_before, cpu_before, rtol=1e-12)
    np.testing.assert_allclose(acc_after, cpu_after, rtol=1e-9)
    for a, b in zip(jax.tree_util.tree_leaves(acc_params), jax.tree_util.tree_leaves(cpu_params)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    gpu_stack = ntk.init_networks(net, jax.random.PRNGKey(1), [0, 1, 2])  # JAX's generator on accelerators
    assert jax.tree_util.tree_leaves(gpu_stack)[0].shape == jax.tree_util.tree_leaves(stack)[0].shape
