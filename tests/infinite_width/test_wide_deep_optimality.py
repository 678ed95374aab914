import math

import numpy as np
import pytest

from repro.infinite_width import wide_deep_optimality as W
from repro.profiles import ConfigError


def _split(n=60, m=80, seed=0):
    return W.task_split(n, m, seed)


def test_lift_puts_points_on_the_upper_unit_hemisphere():
    z = W.lift_to_sphere(np.array([[0.0, 0.0], [1.5, -1.5], [-3.0, 2.0]]))
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0)
    assert np.all(z[:, -1] > 0)
    np.testing.assert_allclose(z[0], [0, 0, 1])


def test_distance_conversions_are_exact_for_unit_vectors():
    rng = np.random.default_rng(0)
    a, b = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in rng.normal(size=(2, 20, 3)))
    r = np.linalg.norm(a - b, axis=1)
    np.testing.assert_allclose(W.correlation_from_distance(r), np.sum(a * b, axis=1), atol=1e-14)
    np.testing.assert_allclose(W.angle_from_distance(r), np.arccos(np.clip(np.sum(a * b, axis=1), -1, 1)), atol=1e-7)


def test_predicted_exponents_of_the_card_activations():
    assert W.predicted_alpha(W.DUALS["h1h3"]) == pytest.approx(2.0)
    assert W.predicted_alpha(W.DUALS["h1h2_0.2"]) == pytest.approx(2 * math.log(1.25) / math.log(1.2))
    assert W.predicted_alpha(W.DUALS["h1h2_0.5"]) == pytest.approx(2 * math.log(2) / math.log(1.5))
    assert math.isinf(W.predicted_alpha(W.DUALS["h2"]))  # c = 0: 1-NN
    assert math.isnan(W.predicted_alpha(W.DUALS["relu"]))  # g = 1: correlations go to 1


@pytest.mark.parametrize("alpha", [1.5, 3.0, 10.0])
def test_activation_for_alpha_inverts_the_exponent_formula(alpha):
    assert W.predicted_alpha(W.activation_for_alpha(alpha)) == pytest.approx(alpha, rel=1e-9)


def test_singular_kernel_with_a_huge_exponent_is_the_nearest_neighbour_rule():
    s = _split()
    np.testing.assert_array_equal(W.singular_kernel(s.dist_cross, s.y_train, 300.0),
                                  W.nearest_neighbor(s.dist_cross, s.y_train))


def test_majority_vote_and_sign_break_ties_upwards():
    np.testing.assert_array_equal(W.majority_vote(np.array([1, -1, -1]), 2), [-1, -1])
    np.testing.assert_array_equal(W.majority_vote(np.array([1, -1]), 1), [1])
    np.testing.assert_array_equal(W.sign(np.array([-0.1, 0.0, 2.0])), [-1, 1, 1])


def test_kernel_regression_interpolates_and_falls_back_to_the_minimum_norm_solution():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(8, 8))
    gram = a @ a.T + 8 * np.eye(8)
    y = rng.normal(size=8)
    f, how, cond = W.kernel_regression(gram, gram, y)
    assert how == "cholesky"
    np.testing.assert_allclose(f, y, atol=1e-10)
    ev = np.linalg.eigvalsh(gram)
    assert ev[-1] / ev[0] / 10 < cond < 10 * ev[-1] / ev[0]  # LAPACK's 1-norm estimate, near the 2-norm value
    feats = rng.normal(size=(8, 3))  # rank-3 Gram: no interpolant; GD from zero gives the min-norm solution
    low = feats @ feats.T
    f, how, _ = W.kernel_regression(low, low, y)
    assert how == "pseudo-inverse"
    np.testing.assert_allclose(f, feats @ np.linalg.lstsq(feats, y, rcond=None)[0], atol=1e-8)


def test_bayes_reference_values_of_the_synthetic_task():
    ref = W.bayes_reference(W.config("smoke"))
    assert 0.1 < ref["bayes_error"] < 0.2
    assert ref["bayes_error"] < ref["nn_asymptote"] < 2 * ref["bayes_error"]  # Cover & Hart


def test_deep_h2_network_is_the_nearest_neighbour_rule():
    s = _split()
    res = W.ntk_outputs(s, "h2", [40])  # xi^(2^40): only the closest training point survives
    np.testing.assert_array_equal(res[40]["pred"], W.nearest_neighbor(s.dist_cross, s.y_train))


def test_very_deep_relu_network_is_majority_vote_on_a_few_points():
    s = _split(n=9, m=40)
    res = W.ntk_outputs(s, "relu", [3000], table_nodes=800, cond=[3000])
    np.testing.assert_array_equal(res[3000]["pred"], W.majority_vote(s.y_train, 40))
    assert res[3000]["cond"] < 1e12


def test_infinitely_deep_classifier_is_the_singular_kernel_rule_at_the_predicted_exponent():
    s = _split(n=150, m=200)
    res = W.ntk_outputs(s, "h1h3", [], limit=True)
    pred = res[W.INF]["pred"]
    assert W.agreement(pred, W.singular_kernel(s.dist_cross, s.y_train, 2.0)) >= 0.97
    assert W.agreement(pred, W.singular_kernel(s.dist_cross, s.y_train, 2.0)) > \
        W.agreement(pred, W.singular_kernel(s.dist_cross, s.y_train, 4.0))


def test_identity_gram_shortcut_gives_the_solved_predictions():
    s = _split()
    fast = W.ntk_outputs(s, "h1h3", [100])[100]  # Gram = I to double precision: no solve
    assert fast["solver"] == "identity Gram"
    both = W.ntk_outputs(s, "h1h3", [2, 100])[100]  # two depths: the Gram is computed and solved
    assert both["solver"] == "cholesky"
    np.testing.assert_allclose(fast["f"], both["f"], rtol=1e-12)


def test_kernel_exponent_is_alpha_plus_two_at_finite_depth_and_alpha_in_the_limit():
    cfg = W.config("smoke", exponent_depths=(100,))
    ex = W.kernel_exponents(cfg, acts=["h1h3"]).set_index("depth")["exponent"]
    assert ex[100] == pytest.approx(4.0, abs=0.05)
    assert ex[np.inf] == pytest.approx(2.0, abs=0.01)


def test_config_rejects_bad_knobs_by_name():
    with pytest.raises(ConfigError, match="n_test"):
        W.config("smoke", n_test=-5)
    with pytest.raises(ConfigError, match="activations"):
        W.config("smoke", activations=("relu", "swish"))
    with pytest.raises(ConfigError, match="relu_depths"):
        W.config("smoke", relu_depths=(10,))
    with pytest.raises(ConfigError, match="optimal"):
        W.config("smoke", optimal="relu")
    with pytest.raises(ConfigError, match="train_sizes"):
        W.config("cpu", train_sizes=(100, 30000))  # over the cpu budget
    assert W.config("full", train_sizes=(100, 30000)).train_sizes == (100, 30000)
