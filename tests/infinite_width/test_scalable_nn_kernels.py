import math

import numpy as np
import pytest
import torch
from torch import nn

from repro.core import random_features as rf
from repro.infinite_width import scalable_nn_kernels as snnk
from repro.profiles import PROFILES, ConfigError


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _sphere(n, d, r, seed):
    return snnk.sphere_pairs(n, d, r, generator=_gen(seed))


def test_every_profile_builds_a_valid_config_and_none_means_from_the_profile():
    for profile in PROFILES:
        cfg = snnk.config(profile)
        assert cfg.profile == profile and cfg.claim_features in cfg.snnk_features
    assert snnk.config("cpu", pairs=None).pairs == snnk.Config.pairs


@pytest.mark.parametrize("overrides, knob", [
    (dict(rf_counts=(64, 16)), "rf_counts"), (dict(draws=1), "draws"), (dict(ranks=(512,)), "ranks"),
    (dict(cos_norms=("batchnorm",)), "cos_norms"), (dict(claim_features=48), "claim_features"),
    (dict(ridges=(0.0, 1.0)), "ridges"), (dict(mnist_n=1000), "mnist_n"), (dict(epochs=500), "epochs"),
    (dict(radii=(-1.0,)), "radii"),
])
def test_bad_knobs_and_over_budget_configs_are_errors_that_name_the_knob(overrides, knob):
    with pytest.raises(ConfigError, match=knob):
        snnk.config("cpu", **overrides)
    with pytest.raises(ConfigError, match="unknown knob"):
        snnk.config("cpu", width=3)


def test_trigonometric_snnk_estimates_cos_and_sin_of_a_biased_dot_product_without_bias():
    # Eq. (2): Re / Im of Phi(x)^T Psi(w, b) are unbiased for cos / sin(w.x + b)
    x = torch.tensor([[0.3, -0.2, 0.1], [0.0, 0.4, 0.2]], dtype=torch.float64)
    w = torch.tensor([[0.5, 0.1, -0.3], [-0.2, 0.3, 0.4], [0.1, 0.1, 0.1]], dtype=torch.float64)
    b = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    g = rf.projection_matrix(300_000, 3, generator=_gen(1))
    for kind, f in (("cos", torch.cos), ("sin", torch.sin)):
        est = snnk.snnk_estimate(x, w, g, kind, b)
        assert est.shape == (2, 3) and est.dtype == torch.float64
        assert torch.allclose(est, f(x @ w.T + b), atol=0.01)
    assert torch.allclose(snnk.snnk_estimate(x, w, g, "exp", b), torch.exp(x @ w.T + b), atol=0.01)
    with pytest.raises(ValueError, match="no bias"):
        snnk.parameter_features(w, g, "relu", b)


@pytest.mark.parametrize("kind", snnk.TARGETS)
def test_closed_form_feature_variance_matches_the_monte_carlo_variance_of_one_feature(kind):
    x, w = _sphere(3, 6, 0.8, seed=2)
    m = 200_000
    g = rf.projection_matrix(m, 6, generator=_gen(3))
    phi, psi = snnk.input_features(x, g, kind), snnk.parameter_features(w, g, kind)
    one = snnk._take(phi.to(psi.dtype) * psi * m, kind)  # (pairs, m): m independent one-feature estimates
    assert torch.allclose(one.mean(1), snnk.exact_value(x, w, kind, pairs=True), atol=5 * one.std(1).max().item() / math.sqrt(m))
    assert torch.allclose(one.var(1), snnk.feature_variance(x, w, kind), rtol=0.06)


def test_estimation_error_variance_grows_with_the_norms_for_exponential_features():
    # Var of the trig estimator is e^{|x|^2+|w|^2} - 1 in total (Re + Im): larger spheres, noisier estimates
    small, large = _sphere(5, 8, 0.5, 0), _sphere(5, 8, 1.0, 0)
    for kind in ("cos", "sin", "exp"):
        assert (snnk.feature_variance(*large, kind) > snnk.feature_variance(*small, kind)).all()
    total = snnk.feature_variance(*large, "cos") + snnk.feature_variance(*large, "sin")
    assert torch.allclose(total, torch.full((5,), math.exp(2.0) - 1, dtype=torch.float64))


def test_universal_random_features_recover_cos_sin_and_a_gaussian_of_the_dot_product():
    x = torch.tensor([[0.3, -0.2, 0.1, 0.2]], dtype=torch.float64)
    w = torch.tensor([[0.4, 0.1, -0.3, 0.2], [-0.2, 0.3, 0.1, -0.1]], dtype=torch.float64)
    b = torch.tensor([0.5, -0.4], dtype=torch.float64)
    m = 300_000
    g = rf.projection_matrix(m, 4, generator=_gen(5))
    z = x @ w.T + b
    for name, f in (("cos", torch.cos), ("sin", torch.sin), ("gaussian", lambda t: torch.exp(-t**2 / 2))):
        xis, coef = snnk.urf_spectrum(name, m, generator=_gen(6))
        assert torch.allclose(snnk.urf_estimate(x, w, g, xis, coef, b), f(z), atol=0.015), name
    with pytest.raises(ValueError, match="unknown spectrum"):
        snnk.urf_spectrum("tanh", 4)


def test_asymmetric_m_variant_keeps_the_cos_estimate_unbiased():
    x, w = _sphere(2, 4, 0.7, seed=7)
    g = rf.projection_matrix(300_000, 4, generator=_gen(8))
    for M in (-0.1, 0.3):
        assert torch.allclose(snnk.snnk_estimate(x, w, g, "cos", M=M).diagonal(), torch.cos((x * w).sum(1)), atol=0.015)


def test_cos_snnk_layer_at_initialisation_computes_the_cosine_layer_it_replaces():
    d_in, d_out = 6, 3
    ref = nn.Linear(d_in, d_out)
    layer = snnk.SNNKLayer(d_in, d_out, 200_000, "cos", init_weight=ref.weight, init_bias=ref.bias,
                           input_norm="sphere", radius=0.8, generator=_gen(9))
    x = torch.randn(4, d_in)
    xs = 0.8 * nn.functional.normalize(x, dim=1)
    ws = 0.8 * nn.functional.normalize(ref.weight.detach(), dim=1)
    with torch.no_grad():
        assert torch.allclose(layer(x), torch.cos(xs @ ws.T + ref.bias), atol=0.03)


def test_relu_snnk_layer_computes_the_arccos_kernel_and_keeps_its_projection_fixed():
    d_in, d_out, m = 5, 4, 100_000
    w0 = torch.randn(d_out, d_in)
    layer = snnk.SNNKLayer(d_in, d_out, m, "relu", init_weight=w0, generator=_gen(10))
    x = torch.randn(3, d_in)
    with torch.no_grad():
        assert torch.allclose(layer(x), rf.arccos_kernel(x, w0).float(), rtol=0.05, atol=0.03)
    assert [n for n, _ in layer.named_parameters()] == ["psi", "bias"]
    assert layer.psi.shape == (m, d_out) and snnk.trainable_parameters(layer) == m * d_out + d_out
    proj = layer.proj.clone()
    opt = torch.optim.Adam(layer.parameters(), lr=0.1)
    layer(x).pow(2).sum().backward()
    opt.step()
    assert torch.equal(layer.proj, proj)  # G is a buffer: never trained, never resampled


def test_replaced_layers_report_exact_weight_counts():
    cfg = snnk.config("smoke")
    dense = snnk.middle_layer("dense", None, cfg)
    low = snnk.middle_layer("lowrank", 32, cfg)
    relu = snnk.middle_layer("relu-snnk", 64, cfg, generator=_gen())
    cos = snnk.middle_layer("cos-snnk", 64, cfg, norm="layernorm", generator=_gen())
    assert snnk.replaced_layer_weights(dense) == (512 * 512, 512 * 512 + 512)
    assert snnk.replaced_layer_weights(low) == (2 * 32 * 512, 2 * 32 * 512 + 512)
    assert snnk.replaced_layer_weights(relu) == (64 * 512, 64 * 512 + 512)
    assert snnk.replaced_layer_weights(cos) == (64 * 512, 64 * 512 + 512 + 2 * 512)  # + LayerNorm
    with pytest.raises(ValueError, match="unknown variant"):
        snnk.middle_layer("sparse", 8, cfg)


def test_adapters_start_as_the_identity_and_are_the_only_trainable_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(5, 6)
    before = model(x).detach()
    names = snnk.add_adapters(model, lambda name, mod: isinstance(mod, nn.Linear) and mod.out_features == 8,
                              lambda name, mod: snnk.SNNKAdapter(8, 16, 4, generator=_gen()))
    assert names == ["0", "2"]
    assert torch.allclose(model(x), before)  # zero-initialised up-projection
    assert snnk.trainable_parameters(model) == 2 * (16 * 4 + 4 + 4 * 8 + 8)


def test_fully_bundled_closed_form_recovers_a_target_in_the_feature_span():
    cfg = snnk.config("smoke")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5))
    g = rf.projection_matrix(64, 5, generator=_gen(0))
    true = torch.tensor(rng.normal(size=(64, 2)))
    y = (rf.relu_features(torch.tensor(x), g) @ true).numpy()
    fit = snnk.bundled_fit(x[:200], y[:200], 64, cfg, seed=0)  # same seed -> same G
    assert fit["readout"].shape == (64, 2) and fit["ridge"] == min(cfg.ridges)
    pred = snnk.bundled_predict(fit, x[200:])
    assert snnk.r2_score(y[200:, 0], pred[:, 0]) > 0.999
    assert snnk.r2_score(y[:, 0], y[:, 0]) == 1.0


def test_kernel_estimation_smoke_run_is_unbiased_and_shrinks_with_m():
    cfg = snnk.config("smoke", pairs=30, draws=6)
    out = snnk.kernel_estimation(cfg, seed=0)
    table = out["table"]
    assert len(table) == len(snnk.TARGETS) * len(cfg.radii) * len(cfg.rf_counts)
    assert np.isfinite(table[["mse", "bias", "bias_se", "theory_mse"]].to_numpy()).all()
    for (target, radius, _), errors in out["errors"].items():
        assert errors.shape == (len(cfg.rf_counts), cfg.draws, cfg.pairs)
    small = table[table.m == 16].set_index(["target", "radius"]).mse
    large = table[table.m == 64].set_index(["target", "radius"]).mse
    assert (large < small).mean() >= 0.75  # 4x the features: about 4x smaller error


def test_uptraining_smoke_run_returns_one_row_per_model_with_finite_accuracy():
    cfg = snnk.config("smoke")
    df = snnk.uptraining(cfg, seed=0)
    assert list(df.label) == [run[3] for run in snnk.uptraining_runs(cfg)]
    assert df.test_acc.between(0, 1).all() and df.weights.gt(0).all()
