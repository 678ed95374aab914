import math

import numpy as np
import pytest

from repro.core import hermite
from repro.core import hierarchical_targets as ht


def tensor_rule(dim: int, points: int = 12):
    """Nodes (N, dim) and weights (N,) of the product Gauss-Hermite rule: exact Gaussian expectations of polynomials
    of degree < 2 * points in each coordinate."""
    z, w = hermite.gaussian_rule(points)
    grids = np.meshgrid(*([z] * dim), indexing="ij")
    weights = np.prod(np.meshgrid(*([w] * dim), indexing="ij"), axis=0)
    return np.stack([g.ravel() for g in grids], 1), weights.ravel()


def test_moments_of_a_standard_gaussian_are_double_factorials_and_the_recursions_invert():
    m = ht.moments_from_cumulants([0.0, 1.0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(m, [1, 0, 1, 0, 3, 0, 15, 0, 105], atol=1e-12)
    kappa = np.array([0.3, 1.7, -0.4, 2.0, 0.5])
    np.testing.assert_allclose(ht.cumulants_from_moments(ht.moments_from_cumulants(kappa)), kappa, atol=1e-12)


def test_cumulants_of_a_function_of_a_gaussian_match_the_chi_square_closed_form():
    kappa = ht.gaussian_function_cumulants(lambda z: z**2, 6)  # chi^2_1: kappa_r = 2^(r-1) (r-1)!
    np.testing.assert_allclose(kappa, [2.0 ** (r - 1) * math.factorial(r - 1) for r in range(1, 7)], rtol=1e-10)


def test_random_sign_quadratic_feature_has_the_closed_form_moments():
    for d in (4, 12):
        f = ht.QuadraticFeature.random_signs(d, np.random.default_rng(d))
        m = f.moments(6)
        np.testing.assert_allclose(m[:3], [1.0, 0.0, 1.0], atol=1e-12)
        assert m[4] == pytest.approx(3 + 12 / d, rel=1e-10)
        assert m[6] == pytest.approx(15 + 180 / d + 480 / d**2, rel=1e-10)
        assert abs(np.trace(f.A)) < 1e-12
        np.testing.assert_allclose(np.sort(np.abs(f.eigenvalues)), np.full(d, 1 / math.sqrt(2 * d)), rtol=1e-10)


@pytest.mark.parametrize("feature", [
    ht.QuadraticFeature(np.array([[0.7, 0.3], [0.3, -0.2]])),
    ht.HermiteSumFeature(np.array([1.0, -0.5]), 3),
    ht.HermiteSumFeature(np.array([0.6, 0.8]), 2),
    ht.LinearFeature(np.array([2.0, -1.0])),
])
def test_exact_moments_match_tensor_quadrature(feature):
    x, w = tensor_rule(2, 14)
    p = feature(x)
    brute = [float(w @ p**n) for n in range(7)]
    np.testing.assert_allclose(feature.moments(6), brute, rtol=1e-9, atol=1e-9)
    assert brute[1] == pytest.approx(0.0, abs=1e-12) and brute[2] == pytest.approx(1.0, rel=1e-12)


def test_target_is_normalised_and_its_expectations_are_exact():
    feature = ht.QuadraticFeature(np.array([[1.0, 0.4], [0.4, -0.3]]))
    target = ht.HierarchicalTarget(feature, (0.2, 0.0, -1.0, 1.0))  # g = 0.2 - z^2 + z^3
    x, w = tensor_rule(2, 14)
    h, p = target(x), feature(x)
    assert w @ h**2 == pytest.approx(1.0, rel=1e-10)
    assert target.expectation(2) == pytest.approx(1.0, rel=1e-12)
    assert target.expectation(1) == pytest.approx(w @ h, rel=1e-10)
    assert target.feature_coefficient() == pytest.approx(w @ (h * p), rel=1e-10)
    slope = target.constant * (-2 * p + 3 * p**2)
    assert target.link_slope() == pytest.approx(w @ slope, rel=1e-10)


def test_steins_lemma_for_a_gaussian_feature_and_the_cubic_link():
    target = ht.HierarchicalTarget(ht.LinearFeature(np.ones(5)), (0, 0, 0, 1))
    c = 1 / math.sqrt(15)  # E z^6 = 15
    assert target.constant == pytest.approx(c)
    assert target.link_slope() == pytest.approx(3 * c)  # E[g'(z)] = 3 E z^2
    assert target.feature_coefficient() == pytest.approx(target.link_slope())  # E[g(z) z] = E[g'(z)]


def test_samples_have_the_right_shapes_and_agree_with_the_target():
    target = ht.HierarchicalTarget(ht.HermiteSumFeature.random_signs(6, 3, np.random.default_rng(0)), (0, 0, 0, 1))
    x, p, h = target.sample(2000, np.random.default_rng(1))
    assert x.shape == (2000, 6) and p.shape == h.shape == (2000,)
    np.testing.assert_allclose(h, target.constant * p**3)
    np.testing.assert_allclose(p, target.feature(x))
    assert abs(np.mean(p)) < 0.1 and abs(np.var(p) - 1) < 0.1


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="symmetric"):
        ht.QuadraticFeature(np.array([[0.0, 1.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="non-zero"):
        ht.LinearFeature(np.zeros(3))
    with pytest.raises(ValueError, match="non-zero"):
        ht.HierarchicalTarget(ht.LinearFeature(np.ones(2)), (0.0, 0.0))
    with pytest.raises(ValueError, match="shape"):
        ht.LinearFeature(np.ones(3))(np.ones((4, 2)))
    with pytest.raises(ValueError, match="m_0"):
        ht.cumulants_from_moments([2.0, 0.0])
