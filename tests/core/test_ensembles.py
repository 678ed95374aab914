"""Monte-Carlo ensembles of random MLPs against exact finite-width results and each other."""

import math

import numpy as np
import pytest
import torch

from repro.core import ensembles as en
from repro.core.hermite import gaussian_rule


def within(measured, expected, stderr, n_sigma=4.0, floor=0.0):
    return np.all(np.abs(np.asarray(measured) - np.asarray(expected)) <= n_sigma * np.asarray(stderr) + floor)


def test_both_samplers_have_the_exact_relu_second_moment_at_any_width():
    # bias-free ReLU: E[G^(l+1)] = (C_W / 2) E[G^(l)] exactly, whatever the width
    x = np.array([[1.0, -0.5, 2.0]])  # x.x / n0 = 1.75
    for method in en.METHODS:
        mom = en.layer_moments(x, 6000, (5, 5, 5, 5), activation="relu", weight_var=1.6, method=method, seed=3)
        expected = 1.6 * 1.75 * 0.8 ** np.arange(4)
        m2 = mom.m2["plain"][:, 0]
        se = np.sqrt(mom.cov["plain"][0][:, 0] / 6000)
        assert within(m2, expected, se), (method, m2, expected)
        assert within(mom.m2["rao_blackwell"][:, 0], expected, np.sqrt(mom.cov["rao_blackwell"][0][:, 0] / 6000))


def test_conditional_and_weight_samplers_agree_on_two_input_covariances():
    x = np.array([[1.0, 0.0], [0.6, 0.8]])
    kw = dict(activation="tanh", weight_var=1.5, bias_var=0.1)
    out = {}
    for method in en.METHODS:
        samples = en.iter_ensemble(x, 8000, (6, 6, 6), chunk=2000, seed=1, method=method, **kw)
        zs = [s.preactivations[-1] for s in samples]
        z = torch.cat(zs)  # (nets, 2, 6)
        cross = (z[:, 0] * z[:, 1]).mean(dim=1).numpy()
        fourth = (z[:, 0] ** 4).mean(dim=1).numpy()
        n = math.sqrt(cross.size)
        out[method] = (cross.mean(), cross.std() / n, fourth.mean(), fourth.std() / n)
    a, b = out["conditional"], out["weights"]
    assert abs(a[0] - b[0]) <= 4 * math.hypot(a[1], b[1])
    assert abs(a[2] - b[2]) <= 4 * math.hypot(a[3], b[3])


def test_first_layer_is_exactly_gaussian_and_later_layers_are_not():
    mom = en.layer_moments(np.ones((1, 1)), 20000, (8, 8, 8), activation="relu", weight_var=2.0, seed=0)
    kurt_rb, _ = mom.excess_kurtosis("rao_blackwell")
    assert kurt_rb[0, 0] == pytest.approx(0.0, abs=1e-12)  # G^(1) is the same for every network
    kurt, err = mom.excess_kurtosis("plain")
    assert abs(kurt[0, 0]) <= 4 * err[0, 0]
    assert en.excess_kurtosis(2.0, 12.0) == 0.0  # a centred Gaussian of variance 2 has E[z^4] = 3 * 2^2
    assert kurt[2, 0] > 10 * err[2, 0]


@pytest.mark.parametrize("activation,slopes", [("relu", (1.0, 0.0)), ("identity", (1.0, 1.0))])
def test_monte_carlo_kurtosis_matches_the_exact_scale_invariant_product(activation, slopes):
    widths = (6, 6, 6, 6)
    exact = en.scale_invariant_kurtosis(widths, slopes)
    c = 5.0 if activation == "relu" else 2.0
    np.testing.assert_allclose(exact, (1 + c / 6) ** np.arange(4) - 1, rtol=1e-12)
    weight_var = 2.0 / sum(s * s for s in slopes)  # critical: E[G] constant in depth
    mom = en.layer_moments(np.ones((1, 1)), 40000, widths, activation=activation, weight_var=weight_var, seed=7)
    kurt, err = mom.excess_kurtosis("rao_blackwell")
    assert within(kurt[:, 0], exact, err[:, 0], floor=0.02)


def test_scale_invariant_kurtosis_handles_unequal_widths_and_leaky_slopes():
    widths = (3, 7, 11)
    k = en.scale_invariant_kurtosis(widths, slopes=(1.0, 0.2))
    # brute force: c = E[act^4] / E[act^2]^2 - 1 for act = leaky ReLU, by quadrature
    z, w = gaussian_rule(100)
    act = np.where(z > 0, z, 0.2 * z)
    c = (w @ act**4) / (w @ act**2) ** 2 - 1
    np.testing.assert_allclose(k, [0.0, c / 3, (1 + c / 3) * (1 + c / 7) - 1], rtol=1e-10)


def test_gaussian_moments_are_exact_for_relu_and_accurate_for_tanh():
    k = np.array([0.3, 1.0, 4.0])
    m = en.gaussian_moments("relu", k, quad_points=8)
    np.testing.assert_allclose(m["act2"], k / 2, rtol=1e-12)
    np.testing.assert_allclose(m["act4"], 1.5 * k**2, rtol=1e-12)
    np.testing.assert_allclose(m["act2_z2"], k**2, rtol=1e-12)  # <relu^2 (z^2 - K)> = (3K^2 - K^2) / 2
    z, w = gaussian_rule(300)
    ref = (np.tanh(np.sqrt(0.7) * z) ** 2) @ w
    assert en.gaussian_moments("tanh", 0.7)["act2"] == pytest.approx(ref, rel=1e-9)


def test_four_point_vertex_is_the_first_order_of_the_exact_products():
    for act, cw, c in (("relu", 2.0, 5.0), ("identity", 1.0, 2.0)):
        rec = en.four_point_vertex(act, (16,) * 12, k1=0.8, weight_var=cw)
        layers = np.arange(1, 13)
        np.testing.assert_allclose(rec.kernel, 0.8, rtol=1e-12)  # critical: K is constant
        np.testing.assert_allclose(rec.vertex, c * (layers - 1) * 0.8**2, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(rec.kurtosis, c * (layers - 1) / 16, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(rec.chi_parallel, 1.0, rtol=1e-12)


def test_tanh_vertex_approaches_two_thirds_of_depth_over_width():
    rec = en.four_point_vertex("tanh", (100,) * 4000, k1=1.0, weight_var=1.0)
    nu = rec.kurtosis[-1] * 100 / 4000
    assert nu == pytest.approx(2 / 3, rel=0.05)
    assert rec.kernel[-1] * 4000 == pytest.approx(0.5, rel=0.03)  # K ~ 1/(2l)


def test_tanh_vertex_matches_a_wide_ensemble():
    widths = (128,) * 5
    rec = en.four_point_vertex("tanh", widths, k1=1.0, weight_var=1.0)
    mom = en.layer_moments(np.ones((1, 1)), 10000, widths, activation="tanh", weight_var=1.0, seed=2)
    kurt, err = mom.excess_kurtosis("rao_blackwell")
    assert within(kurt[:, 0], rec.kurtosis, err[:, 0], floor=2e-3)  # O(1/n^2) corrections ~ (l/n)^2
    np.testing.assert_allclose(mom.m2["rao_blackwell"][:, 0], rec.kernel, rtol=0.01)


def test_ensembles_are_reproducible_and_validate_their_arguments():
    a = en.layer_moments(np.ones((1, 1)), 300, (4, 4), seed=5, chunk=100)
    b = en.layer_moments(np.ones((1, 1)), 300, (4, 4), seed=5, chunk=100)
    np.testing.assert_array_equal(a.m4["plain"], b.m4["plain"])
    assert sum(s.preactivations[0].shape[0] for s in en.iter_ensemble(np.ones((1, 2)), 250, (3,), chunk=100)) == 250
    with pytest.raises(ValueError, match="method"):
        en.sample_preactivations(np.ones((1, 1)), 2, (3,), method="exact")
    with pytest.raises(ValueError, match="activation"):
        en.sample_preactivations(np.ones((1, 1)), 2, (3,), activation="swish9")
    with pytest.raises(ValueError, match="widths"):
        en.sample_preactivations(np.ones((1, 1)), 2, (3, 0))
    with pytest.raises(ValueError, match="estimator"):
        a.excess_kurtosis("bootstrap")
