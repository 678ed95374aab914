"""Bandlimited random nets: the parameter law, the least-squares readout, the spectral tail and the experiments."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

from repro.infinite_width import bandlimited_random_weights as brw
from repro.profiles import PROFILES, ConfigError

TINY = dict(n_train=120, lams=(1, 50), widths=(5, 20, 80), seeds=2, plateau_lams=(1,), reference_width=80,
            sine_freqs=(1, 8), fft_samples=256, baseline_width=8, baseline_steps=40, dim2_side=6, dim2_widths=(4, 12),
            dim2_seeds=1)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_every_profile_has_a_valid_config_and_overrides_apply():
    for profile in PROFILES:
        cfg = brw.config(profile)
        assert cfg.profile == profile and cfg.bias_modes[0] == "centred" and cfg.activations[0] == "sigmoid"
    cpu = brw.config("cpu")
    assert cpu.lams == (1, 5, 10, 50, 100, 200) and cpu.widths == (50, 200, 1000) and cpu.seeds == 2
    cfg = brw.config("cpu", lams=[1, 10], plateau_lams=[1], seeds=None)
    assert cfg.lams == (1.0, 10.0) and cfg.seeds == cpu.seeds


@pytest.mark.parametrize("knob, value", [("lams", (-1, 5)), ("lams", (5, 1)), ("widths", (0, 10)), ("seeds", 0),
                                         ("bias_modes", ("centred", "gaussian")), ("activations", ("swish3",)),
                                         ("plateau_lams", (3,)), ("rcond", 0.0), ("baseline_width", -1),
                                         ("reference_width", 300), ("dim2_side", 2)])
def test_bad_knobs_raise_errors_that_name_them(knob, value):
    with pytest.raises(ConfigError, match=knob):
        brw.config("cpu", **{knob: value})


def test_configs_beyond_the_cpu_budget_are_refused_naming_the_costly_knob():
    with pytest.raises(ConfigError, match="unknown knob"):
        brw.config("cpu", band=3)
    with pytest.raises(ConfigError, match="widths"):
        brw.config("cpu", widths=(50, 200, 1000, 5000))
    with pytest.raises(ConfigError, match="dim2_side"):
        brw.config("cpu", dim2_side=100)
    brw.config("full", widths=(50, 200, 1000, 5000))  # the full profile has no CPU budget


def test_band_parameters_lie_in_the_band_and_centred_units_switch_inside_the_domain():
    draws = brw.draw_units(2000, 2, generator=_gen(1))
    for lam in (0.5, 7.0):
        a, b = brw.band_parameters(draws, lam, "centred")
        assert a.shape == (2000, 2) and b.shape == (2000,) and a.abs().max() <= lam
        assert a.abs().max() > 0.99 * lam and abs(a.mean()) < 0.05 * lam  # U[-lam, lam]: fills the band
        # sigma(a . x - b) switches on the hyperplane through the drawn centre c in [0, 1]^2
        assert torch.allclose(b, (a * draws.centre).sum(1)) and draws.centre.min() >= 0 and draws.centre.max() <= 1
        a_u, b_u = brw.band_parameters(draws, lam, "uniform")
        assert torch.equal(a_u, a) and b_u.abs().max() <= lam
    # common random numbers: the band only rescales the same draws
    a1, _ = brw.band_parameters(draws, 1.0)
    a9, _ = brw.band_parameters(draws, 9.0)
    assert torch.allclose(a9, 9.0 * a1)
    with pytest.raises(ValueError, match="bias"):
        brw.band_parameters(draws, 1.0, "gaussian")
    with pytest.raises(ValueError, match="band"):
        brw.band_parameters(draws, 0.0)


def test_random_net_features_are_activations_of_the_affine_maps():
    x = torch.tensor([[0.0], [0.3], [1.0]], dtype=torch.float64)
    a = torch.tensor([[2.0], [-5.0]], dtype=torch.float64)
    b = torch.tensor([1.0, -0.5], dtype=torch.float64)
    phi = brw.random_net_features(x, a, b, "sigmoid")
    brute = torch.tensor([[1 / (1 + math.exp(-(a[j, 0].item() * x[i, 0].item() - b[j].item()))) for j in range(2)]
                          for i in range(3)], dtype=torch.float64)
    assert torch.allclose(phi, brute, atol=1e-15)
    assert torch.allclose(brw.random_net_features(x, a, b, "relu"), torch.relu(x @ a.T - b))


def test_least_squares_readout_recovers_a_target_in_the_span_of_the_frozen_units():
    x_tr, x_te = brw.grid_1d(200)
    a, b = brw.band_parameters(brw.draw_units(15, generator=_gen(2)), 20.0)
    c_true = torch.randn(15, generator=_gen(3), dtype=torch.float64)
    y = brw.random_net_features(x_tr, a, b) @ c_true
    c = brw.fit_output_weights(brw.random_net_features(x_tr, a, b), y)
    assert float(brw.rmse(brw.random_net_features(x_te, a, b) @ c, brw.random_net_features(x_te, a, b) @ c_true)) < 1e-9


def test_a_narrow_band_cannot_fit_a_high_frequency_sine_however_many_units_but_a_wide_band_can():
    x_tr, _ = brw.grid_1d(300)
    y = torch.sin(2 * math.pi * 8 * x_tr[:, 0])
    draws = brw.draw_units(300, generator=_gen(4))
    narrow, wide = [], []
    for d in (20, 100, 300):
        for lam, out in ((1.0, narrow), (200.0, wide)):
            a, b = brw.band_parameters(draws, lam)
            phi = brw.random_net_features(x_tr, a[:d], b[:d])
            out.append(float(brw.rmse(phi @ brw.fit_output_weights(phi, y), y)))
    assert min(narrow) > 0.3  # the plateau: more units in the band [-1, 1] do not help
    assert wide[-1] < 1e-4 and wide[-1] < 1e-2 * wide[0]  # a band wide enough for the frequency 2 pi 8 ~ 50


def test_spectral_tail_of_a_gaussian_matches_its_closed_form():
    # f = exp(-x^2 / (2 s^2)): |f_hat(omega)|^2 ~ exp(-s^2 omega^2), so T(W) = erfc(s W)
    s, dx = 0.05, 1e-3
    x = np.arange(-1.0, 1.0, dx)
    cut = np.array([0.0, 5.0, 10.0, 20.0, 40.0])
    tail = brw.spectral_tail(np.exp(-(x**2) / (2 * s**2)), dx, cut)
    np.testing.assert_allclose(tail, special.erfc(s * cut), atol=2e-3)
    assert np.all(np.diff(tail) <= 0) and tail[0] == pytest.approx(1.0, abs=1e-2)


def test_a_sigmoid_unit_of_slope_a_has_almost_no_energy_beyond_a_few_times_a():
    # d/dx sigma(a x) = a sigma'(a x): its Fourier transform is phi(omega / a) with phi(w) = pi w / sinh(pi w),
    # the reason a band |a| <= lambda acts as a frequency cut-off near lambda
    a, dx = 8.0, 1e-3
    x = np.arange(-4.0, 4.0, dx)
    sig = 1 / (1 + np.exp(-a * x))
    deriv = a * sig * (1 - sig)
    phi2 = lambda w: (np.pi * w / np.sinh(np.pi * w)) ** 2 if w > 0 else 1.0  # noqa: E731
    total = integrate.quad(phi2, 0, 50)[0]
    for w_over_a in (0.5, 1.0, 3.0):
        expected = integrate.quad(phi2, w_over_a, 50)[0] / total
        assert brw.spectral_tail(deriv, dx, [w_over_a * a])[0] == pytest.approx(expected, rel=2e-2, abs=1e-6)
    assert brw.spectral_tail(deriv, dx, [6 * a])[0] < 1e-12


def test_fit_band_constant_recovers_the_scale_of_a_tail_that_generated_the_plateau():
    s, dx = 0.05, 1e-3
    x = np.arange(-1.0, 1.0, dx)
    omega, power = brw.power_spectrum(np.exp(-(x**2) / (2 * s**2)), dx, 2**16)
    lams = np.array([1.0, 5.0, 10.0, 20.0, 40.0])
    kappa0 = brw.KAPPAS[20]
    plateau = 0.1 * np.sqrt(brw.tail_fraction(omega, power, kappa0 * lams))
    fit = brw.fit_band_constant(lams, plateau, omega, power)
    assert fit["spearman"] == pytest.approx(1.0) and fit["kappa"] == pytest.approx(kappa0)
    assert fit["pearson_log"] == pytest.approx(1.0)


def test_rank_correlation_and_minimal_band_follow_their_definitions():
    assert brw.rank_correlation([1, 2, 3, 4], [10, 9, 3, 1]) == pytest.approx(-1.0)
    assert brw.rank_correlation([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)  # 1 - 6 * 2 / (3 * 8)
    assert math.isnan(brw.rank_correlation([1, 2, 3], [5, 5, 5]))
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 30), rng.normal(size=30)  # ties on one side: average ranks, as scipy does
    assert brw.rank_correlation(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, rel=1e-12)
    lams = [1, 5, 10, 50]
    assert brw.minimal_band(lams, [0.5, 0.2, 1e-3, 1e-5], 1e-2) == 10
    assert brw.minimal_band(lams, [0.5, 1e-3, 0.2, 1e-5], 1e-2) == 5  # the smallest band that works
    assert brw.minimal_band(lams, [0.5, 0.5, 0.5, 0.5], 1e-2) == math.inf


def test_band_grid_on_a_tiny_config_returns_consistent_nested_results():
    cfg = brw.config("smoke", **TINY)
    g = brw.band_grid(cfg, seed=0)
    assert g["targets"] == ("bumps", "sin1", "sin8")
    assert g["rmse"].shape == (2, 1, 2, 3, 2, 3) and np.all(np.isfinite(g["rmse"])) and np.all(g["rmse"] >= 0)
    # nested spans (the first d units of the widest draw): the training error cannot grow with d
    tr = g["train_rmse"]
    assert np.all(np.diff(tr, axis=3) <= 1e-7 + 1e-6 * tr[:, :, :, :-1])
    # the guard re-fits the widest primary net: its entry at the main cut-off is the grid's own value
    main = list(g["rconds"]).index(cfg.rcond)
    np.testing.assert_allclose(g["guard"][0, :, main], g["rmse"][0, 0, 0, -1, :, 0])
    assert np.all(np.isfinite(g["guard"])) and g["fits"].shape == (2, cfg.n_train - 1)
    # same seed, same numbers
    np.testing.assert_array_equal(brw.band_grid(cfg, seed=0)["rmse"], g["rmse"])
    assert not np.array_equal(brw.band_grid(cfg, seed=1)["rmse"], g["rmse"])


def test_target_spectra_put_a_sine_energy_at_its_frequency():
    cfg = brw.config("smoke", **TINY)
    spec = brw.target_spectra(cfg)
    t = lambda name, w: brw.tail_fraction(spec["omega"], spec["power"][name], [w])[0]  # noqa: E731
    k = 2 * math.pi * 8
    assert t("sin8", 0.5 * k) > 0.9 and t("sin8", 2 * k) < 0.05
    assert spec["rms"]["sin8"] == pytest.approx(math.sqrt(0.5), rel=0.02)


def test_trained_baseline_and_the_2d_grid_run_on_tiny_configs():
    cfg = brw.config("smoke", **TINY)
    base = brw.trained_baseline(cfg, seed=0)
    assert base["losses"].shape == (40,) and base["losses"][-5:].mean() < base["losses"][:5].mean()
    assert np.abs(base["a_init"]).max() <= cfg.baseline_band and np.isfinite(base["rmse"]) and base["rmse_frozen"] > 0
    two = brw.band_grid_2d(cfg, seed=0)
    assert two["available"] and two["rmse"].shape == (2, 2, 1) and np.all(np.isfinite(two["rmse"]))
    assert two["n_train"] == 36
    assert brw.band_grid_2d(brw.config("smoke"))["available"] is False
