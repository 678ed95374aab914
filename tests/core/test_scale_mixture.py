"""Scale mixtures of GPs against closed forms, numerical integration over the scale and brute force."""

import jax
import numpy as np
import pytest
from scipy import integrate, stats

jax.config.update("jax_enable_x64", True)

from repro.core import gp, mlp_jax  # noqa: E402
from repro.core import scale_mixture as sm  # noqa: E402

RNG = np.random.default_rng(0)


def _problem(n=12, m=5, seed=0):
    """A small GP regression problem: RBF kernel matrices and labels."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, size=(n + m, 1))
    K = gp.rbf_kernel(x, x, lengthscale=0.7, outputscale=1.3)
    y = np.sin(2 * x[:n, 0]) + 0.3 * rng.standard_normal(n)
    return K[:n, :n], K[n:, :n], np.diag(K)[n:], y


def _integrate_over_scale(prior, f, upper=np.inf):
    """``int f(s) p(s) ds`` by adaptive quadrature."""
    val, _ = integrate.quad(lambda s: f(s) * np.exp(prior.logpdf(s)), 0, upper, limit=400)
    return val


def test_inverse_gamma_and_burr_densities_match_scipy_and_their_samplers():
    ig, burr = sm.InverseGamma(3.0, 2.0), sm.BurrXII(2.0, 1.5, scale=0.8)
    s = np.array([0.05, 0.3, 1.0, 4.0])
    np.testing.assert_allclose(ig.logpdf(s), stats.invgamma.logpdf(s, 3.0, scale=2.0), rtol=1e-12)
    np.testing.assert_allclose(burr.logpdf(s), stats.burr12.logpdf(s, 2.0, 1.5, scale=0.8), rtol=1e-12)
    assert ig.mean() == pytest.approx(stats.invgamma.mean(3.0, scale=2.0))
    assert burr.mean() == pytest.approx(stats.burr12.mean(2.0, 1.5, scale=0.8), rel=1e-10)
    rng = np.random.default_rng(1)
    assert stats.kstest(ig.sample(rng, 20_000), stats.invgamma(3.0, scale=2.0).cdf).pvalue > 1e-3
    assert stats.kstest(burr.sample(rng, 20_000), stats.burr12(2.0, 1.5, scale=0.8).cdf).pvalue > 1e-3
    assert sm.InverseGamma(1.0, 1.0).mean() == np.inf and sm.InverseGamma(2.0, 1.0).variance() == np.inf
    with pytest.raises(ValueError):
        sm.InverseGamma(0.0, 1.0)


def test_spectral_gram_reproduces_direct_linear_algebra_and_the_gp_posterior():
    K_train, K_cross, K_diag, y = _problem()
    gram = sm.SpectralGram.from_kernel(K_train)
    for nv in (1e-3, 0.1, 2.0):
        A = K_train + nv * np.eye(len(y))
        assert gram.quad(nv, y) == pytest.approx(y @ np.linalg.solve(A, y), rel=1e-9)
        assert gram.logdet(nv) == pytest.approx(np.linalg.slogdet(A)[1], rel=1e-10)
        np.testing.assert_allclose(gram.solve(nv, y), np.linalg.solve(A, y), rtol=1e-8)
        mean, var = gram.posterior(K_cross, K_diag, y, nv)
        post = gp.gp_posterior(K_train, K_cross, K_diag, y, noise_var=nv)
        np.testing.assert_allclose(mean, post.mean, rtol=1e-7, atol=1e-10)
        np.testing.assert_allclose(var, post.var, rtol=1e-6, atol=1e-10)
    Y = np.stack([y, -2 * y], axis=1)  # several outputs share the scale: q sums over the columns
    assert gram.quad(0.1, Y) == pytest.approx(5 * gram.quad(0.1, y))


def test_inverse_gamma_marginal_likelihood_is_the_multivariate_t_and_the_scale_integral():
    K_train, _, _, y = _problem(n=6)
    prior, nv = sm.InverseGamma(2.5, 1.5), 0.2
    A = K_train + nv * np.eye(len(y))
    gram = sm.SpectralGram.from_kernel(K_train)
    q, logdet = gram.quad(nv, y), gram.logdet(nv)
    closed = sm.log_marginal_likelihood(prior, q, logdet, y.size)
    mvt = stats.multivariate_t(loc=np.zeros(y.size), shape=prior.beta / prior.alpha * A, df=2 * prior.alpha)
    assert closed == pytest.approx(mvt.logpdf(y), rel=1e-10)
    integral = _integrate_over_scale(prior, lambda s: np.exp(sm.gaussian_scale_loglik(s, q, logdet, y.size)))
    assert closed == pytest.approx(np.log(integral), rel=1e-6)
    assert sm.log_marginal_likelihood(sm.FixedScale(1.0), q, logdet, y.size) == pytest.approx(
        gp.gp_log_marginal_likelihood(K_train, y, noise_var=nv, jitter=0.0), rel=1e-9)
    draws = prior.sample(np.random.default_rng(2), 200_000)
    assert sm.log_marginal_likelihood(sm.BurrXII(1, 1), q, logdet, y.size, scales=draws) == pytest.approx(closed, abs=0.02)


def test_student_t_predictive_is_the_conditional_of_the_joint_t_process():
    """p(y_* | y) = p(y, y_*) / p(y) with both joint densities multivariate t (Shah et al. 2014)."""
    K_train, K_cross, K_diag, y = _problem(n=8, m=3)
    prior, nv = sm.InverseGamma(2.0, 1.0), 0.1
    fit = sm.fit_scale_mixture_gp(K_train, K_cross, K_diag, y, prior, noise_var=nv)
    pred = fit.predictive()
    assert isinstance(pred, sm.StudentT) and pred.df == pytest.approx(2 * 2.0 + 8)
    y_star = np.array([0.3, -1.0, 2.5])
    n = len(y)
    shape = prior.beta / prior.alpha
    for j in range(3):
        idx = list(range(n))
        K_joint = np.block([[K_train, K_cross[j][:, None]], [K_cross[j][None, :], np.array([[K_diag[j]]])]])
        joint = stats.multivariate_t(np.zeros(n + 1), shape * (K_joint + nv * np.eye(n + 1)), df=2 * prior.alpha)
        marg = stats.multivariate_t(np.zeros(n), shape * (K_train + nv * np.eye(n)), df=2 * prior.alpha)
        expected = joint.logpdf(np.append(y[idx], y_star[j])) - marg.logpdf(y)
        assert pred.logpdf(y_star)[j] == pytest.approx(expected, rel=1e-8)
    # the same density by integrating the Gaussian predictive over the posterior of s
    post = sm.inverse_gamma_posterior(prior, fit.quad, fit.n_obs)
    var = fit.latent_var[0] + nv
    dens = _integrate_over_scale(post, lambda s: stats.norm.pdf(y_star[0], fit.mean[0], np.sqrt(s * var)))
    assert pred.logpdf(y_star)[0] == pytest.approx(np.log(dens), rel=1e-6)


def test_importance_sampling_recovers_the_conjugate_predictive_and_normalizes_its_weights():
    K_train, K_cross, K_diag, y = _problem(n=30, m=4)
    prior = sm.InverseGamma(2.0, 1.0)
    fit = sm.fit_scale_mixture_gp(K_train, K_cross, K_diag, y, prior, noise_var=0.05)
    exact = fit.predictive()
    mix = sm.importance_sampled_predictive(fit.mean, fit.latent_var + fit.noise_var, prior, fit.quad, fit.logdet,
                                           fit.n_obs, num_samples=100_000, rng=np.random.default_rng(3))
    assert abs(mix.weights.sum() - 1.0) < 1e-12
    np.testing.assert_allclose(mix.mean, exact.mean, rtol=1e-12)
    np.testing.assert_allclose(mix.variance, exact.variance, rtol=0.02)
    y_star = fit.mean + np.array([0.0, 0.5, -2.0, 6.0]) * np.sqrt(exact.variance)
    np.testing.assert_allclose(mix.logpdf(y_star), exact.logpdf(y_star), atol=0.02)
    np.testing.assert_allclose(mix.cdf(y_star), exact.cdf(y_star), atol=0.01)
    assert 100 < sm.effective_sample_size(mix.weights) < 100_000


def test_one_component_mixture_is_the_gaussian_and_weights_are_stable_in_log_space():
    g = sm.gaussian_predictive(np.array([0.0, 1.0]), np.array([1.0, 4.0]), scale=2.0)
    y = np.array([0.7, -3.0])
    np.testing.assert_allclose(g.logpdf(y), stats.norm.logpdf(y, [0.0, 1.0], np.sqrt([2.0, 8.0])), rtol=1e-12)
    w = sm.importance_weights(np.array([1e-3, 1.0, 10.0]), quad=5e4, logdet=0.0, n_obs=1000)
    assert np.isfinite(w).all() and w.sum() == pytest.approx(1.0, abs=1e-12)


def test_posterior_scale_draws_follow_the_posterior_of_s():
    prior = sm.InverseGamma(2.0, 1.0)
    q, logdet, n = 40.0, 3.0, 30
    u = (np.arange(2000) + 0.5) / 2000
    post = sm.inverse_gamma_posterior(prior, q, n)
    draws = sm.posterior_scale_draws(prior, q, logdet, n, u)
    assert np.mean(draws) == pytest.approx(post.mean(), rel=1e-3)
    scales = prior.sample(np.random.default_rng(4), 200_000)
    is_draws = sm.posterior_scale_draws(sm.BurrXII(1, 1), q, logdet, n, u, scales=scales)
    assert np.mean(is_draws) == pytest.approx(post.mean(), rel=0.02)
    assert np.all(sm.posterior_scale_draws(sm.FixedScale(0.5), q, logdet, n, u) == 0.5)


def test_noise_fits_reach_the_maximum_of_the_marginal_likelihood():
    K_train, _, _, y = _problem(n=25)
    gram = sm.SpectralGram.from_kernel(K_train)
    grid = np.exp(np.linspace(np.log(1e-4), np.log(10), 4001))
    for prior in (sm.FixedScale(1.0), sm.InverseGamma(2.0, 1.0)):
        nv, ll = sm.fit_noise_variance(gram, y, prior)
        brute = [sm.log_marginal_likelihood(prior, gram.quad(v, y), gram.logdet(v), y.size) for v in grid]
        assert ll >= max(brute) - 1e-6 and ll == pytest.approx(sm.log_marginal_likelihood(
            prior, gram.quad(nv, y), gram.logdet(nv), y.size))
    c, nv, ll = sm.fit_scale_and_noise(gram, y)
    assert c == pytest.approx(gram.quad(nv, y) / y.size)  # the best scale for a given noise is q / n
    for dc in (0.9, 1.1):
        assert sm.log_marginal_likelihood(sm.FixedScale(c * dc), gram.quad(nv, y), gram.logdet(nv), y.size) < ll


def test_fit_with_a_gram_or_a_cholesky_gives_the_same_model():
    K_train, K_cross, K_diag, y = _problem()
    prior = sm.InverseGamma(2.0, 1.0)
    a = sm.fit_scale_mixture_gp(K_train, K_cross, K_diag, y, prior)
    b = sm.fit_scale_mixture_gp(None, K_cross, K_diag, y, prior, gram=sm.SpectralGram.from_kernel(K_train))
    assert a.noise_var == pytest.approx(b.noise_var) and a.quad == pytest.approx(b.quad, rel=1e-8)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-7)


def test_readout_sampler_has_the_law_of_explicit_finite_networks():
    """Gram-recursion samples vs networks with explicit weight matrices (core MLP, standard parametrization),
    at a width so small that the outputs are far from Gaussian."""
    x = np.array([[1.0, 0.5, -0.3], [-0.2, 1.0, 0.8]])
    width, depth, wv, n = 3, 3, 2.0, 4000
    ours = sm.sample_mlp_readout(x, np.ones(n), width=width, depth=depth, activation="relu", weight_var=wv,
                                 readout_var=wv, rng=np.random.default_rng(5)).outputs
    net = mlp_jax.make_mlp((3, width, width, 1), parametrization="standard", activation="relu", beta=0.0,
                           weight_var=wv)
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    explicit = np.asarray(jax.jit(jax.vmap(lambda k: net.apply(net.init(k), x)[:, 0]))(keys))
    via_jax = sm.sample_mlp_readout(x, np.ones(n), width=width, depth=depth, activation="relu", weight_var=wv,
                                    readout_var=wv, rng=np.random.default_rng(7), backend="jax").outputs
    for p in range(2):
        assert stats.ks_2samp(ours[:, p], explicit[:, p]).pvalue > 1e-3
        assert stats.ks_2samp(via_jax[:, p], explicit[:, p]).pvalue > 1e-3
    prod_ours, prod_exp = ours[:, 0] * ours[:, 1], explicit[:, 0] * explicit[:, 1]
    assert stats.ks_2samp(prod_ours, prod_exp).pvalue > 1e-3
    assert stats.kurtosis(ours[:, 0]) > 1.0  # width 3: visibly non-Gaussian, so the comparison has teeth


def test_readout_sampler_scales_outputs_by_sqrt_s_and_returns_the_readout_gram():
    x = RNG.normal(size=(4, 3))
    rng = np.random.default_rng(6)
    out = sm.sample_mlp_readout(x, np.full(3000, 4.0), width=64, depth=2, activation="erf", weight_var=1.5,
                                bias_var=0.1, readout_var=0.5, rng=rng)
    assert out.gram.shape == (3000, 4, 4) and np.allclose(out.gram, np.swapaxes(out.gram, 1, 2))
    # given the features, Cov(f) = s * gram; averaged over networks:
    emp = np.cov(out.outputs.T)
    np.testing.assert_allclose(emp, 4.0 * out.gram.mean(0), atol=0.15 * 4.0 * out.gram.mean(0).max())
    with pytest.raises(ValueError, match="activation"):
        sm.sample_mlp_readout(x, np.ones(2), width=4, depth=2, activation="swish")
