"""Deep kernel machines: the objective against its closed forms, the NNGP limit, the exactness of the train/test
extension, the finite-DGP density against brute force, the sparse model against the exact GP, configs and data."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal

from repro.core import data as core_data
from repro.core import gp, gram
from repro.infinite_width import deep_kernel_machines as dkm
from repro.profiles import PROFILES, ConfigError

DT = torch.float64


def _toy(n=10, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = np.sin(2 * x[:, 0]) + 0.1 * rng.normal(size=n)
    return x, (y - y.mean()) / y.std()


def test_every_profile_has_a_valid_config_and_overrides_apply():
    for profile in PROFILES:
        cfg = dkm.config(profile)
        assert cfg.profile == profile and cfg.depth == 2 and cfg.kernel == "relu" and cfg.jitter == 1e-6
    cfg = dkm.config("cpu", widths=[8, 64], seeds=None)
    assert cfg.widths == (8, 64) and cfg.seeds == dkm.config("cpu").seeds
    assert dkm.config("cpu").nus == (0.1, 1.0, 10.0, 1e6)


def test_bad_knobs_raise_errors_that_name_them():
    with pytest.raises(ConfigError, match="unknown knob"):
        dkm.config("cpu", width=3)
    with pytest.raises(ConfigError, match="kernel"):
        dkm.config("cpu", kernel="matern")
    with pytest.raises(ConfigError, match="widths"):
        dkm.config("cpu", widths=(0, 8))
    with pytest.raises(ConfigError, match="mala_burn_in"):
        dkm.config("cpu", mala_burn_in=5000)
    with pytest.raises(ConfigError, match="datasets"):
        dkm.config("cpu", datasets=("mnist",))
    with pytest.raises(ConfigError, match="mala_steps"):  # beyond the cpu profile's time budget
        dkm.config("cpu", mala_steps=20000)
    with pytest.raises(ConfigError, match="uci_datasets"):
        dkm.config("cpu", uci_datasets=("yacht",))


def test_nngp_grams_match_the_core_nngp_recursion():
    import jax

    jax.config.update("jax_enable_x64", True)
    from repro.core import kernels

    x, _ = _toy(6, 3)
    ours = torch.stack(dkm.nngp_grams(dkm.input_gram(torch.tensor(x), bias_var=0.0), 2, dkm.GramKernel(jitter=0.0)))
    # kernels.py with weight variance 2 and no bias: Sigma^(1) = 2 x.x'/n0 = 2 G_0, and by homogeneity of the ReLU
    # Sigma^(l+1) = 2 G_l all the way up
    ref = np.asarray(kernels.kernel_layers(x, None, depth=3, activation="relu", beta=0.0, weight_var=2.0).nngp)
    np.testing.assert_allclose(2 * ours.numpy(), ref[1:], rtol=1e-10)


def test_objective_at_the_nngp_is_the_nngp_log_likelihood_and_both_forms_agree():
    x, y = _toy(8)
    k = dkm.GramKernel()
    X, Y = torch.tensor(x), torch.tensor(y)
    G0 = dkm.input_gram(X)
    chol_k0 = torch.linalg.cholesky(k(G0))
    nngp = dkm.nngp_grams(G0, 2, k)
    raws = [torch.zeros(1, 8, 8, dtype=DT) for _ in range(2)]
    noise, nus = torch.tensor([0.3], dtype=DT), torch.ones(1, 2, dtype=DT)
    obj, ll, kls, _ = dkm.whitened_objective(raws, chol_k0, Y, noise, nus, k)
    lml = gp.gp_log_marginal_likelihood(k(nngp[-1]).numpy(), y, noise_var=0.3, jitter=0.0)
    assert float(obj) == pytest.approx(lml, rel=1e-10) and np.allclose(kls.numpy(), 0.0, atol=1e-10)
    # away from the NNGP, the whitened objective equals the objective written with explicit Gram matrices
    gen = torch.Generator().manual_seed(1)
    raws = [0.2 * torch.randn(1, 8, 8, dtype=DT, generator=gen) for _ in range(2)]
    obj, ll, kls, factors = dkm.whitened_objective(raws, chol_k0, Y, torch.tensor([0.3], dtype=DT),
                                                    torch.tensor([[0.5, 2.0]], dtype=DT), k)
    grams = [(L @ L.transpose(-1, -2))[0] for L in factors]
    ref, ref_ll, ref_kls = dkm.dkm_objective(grams, G0, Y, 0.3, [0.5, 2.0], k)
    assert float(obj) == pytest.approx(ref, rel=1e-9) and float(ll) == pytest.approx(ref_ll, rel=1e-10)
    np.testing.assert_allclose(kls[0].numpy(), ref_kls, rtol=1e-8)


def test_large_nu_recovers_the_nngp_predictions():
    x, y = _toy(14)
    xs, _ = _toy(6, seed=1)
    k = dkm.GramKernel()
    fit = dkm.fit_dkm(x, y, nus=[1e6], kernel=k, steps=60)
    mean, var = dkm.dkm_predict(fit, x, y, xs)
    m_ref, v_ref, noise, _ = dkm.nngp_predict(x, y, xs, depth=2, kernel=k)
    assert fit.noise_var[0] == pytest.approx(noise, rel=1e-4)  # the learned noise is the marginal-likelihood one
    np.testing.assert_allclose(mean[0], m_ref, atol=1e-4)
    np.testing.assert_allclose(var[0], v_ref, atol=1e-4)


def test_transductive_fit_equals_the_training_fit_plus_the_conditional_extension():
    x, y = _toy(11)
    n = 8
    k = dkm.GramKernel(jitter=1e-3)
    train = dkm.fit_dkm(x[:n], y[:n], nus=[1.0], noise_var=0.1, kernel=k, steps=400, tol=1e-14)
    joint = dkm.fit_dkm(x[:n], y[:n], nus=[1.0], noise_var=0.1, kernel=k, steps=400, tol=1e-14, extra_x=x[n:])
    assert joint.objective[0] == pytest.approx(train.objective[0], abs=1e-7)
    ext = dkm.extend_grams(train.grams, x[:n], x[n:], k)
    for layer in (1, 2):
        G = joint.grams[0, layer - 1]
        np.testing.assert_allclose(G[:n, :n], train.grams[0, layer - 1], atol=1e-6)
        np.testing.assert_allclose(G[n:, :n], ext[layer][1][0].numpy(), atol=1e-6)
        np.testing.assert_allclose(np.diag(G)[n:], ext[layer][2][0].numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="rows"):
        dkm.fit_dkm(x[:n], y[: n - 1], nus=[1.0])


def test_extending_to_the_training_points_returns_the_training_grams():
    x, y = _toy(9)
    k = dkm.GramKernel(jitter=1e-10)  # the jitter sits on K(X, X) but not on the cross block: exact up to O(jitter)
    fit = dkm.fit_dkm(x, y, nus=[1.0], noise_var=0.2, kernel=k, steps=30)
    ext = dkm.extend_grams(fit.grams[0], x, x, k)
    for layer in (1, 2):
        np.testing.assert_allclose(ext[layer][1].numpy(), fit.grams[0, layer - 1], rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(ext[layer][2].numpy(), np.diag(fit.grams[0, layer - 1]), rtol=1e-6)


def test_a_fit_climbs_from_the_nngp_and_moves_the_top_kernel_towards_the_labels():
    x, y = _toy(12)
    k = dkm.GramKernel()
    fit = dkm.fit_dkm(x, y, nus=[1.0], noise_var=0.2, kernel=k, steps=100)
    h = fit.history[0]
    assert np.all(np.diff(h) >= -1e-9 * np.abs(h[:-1]))  # L-BFGS with a Wolfe line search never goes down
    assert h[-1] > h[0] + 1e-3 and fit.kls[0].min() > 0
    K_dkm = k(torch.tensor(fit.grams[0, -1]))
    K_nngp = k(dkm.nngp_grams(dkm.input_gram(torch.tensor(x)), 2, k)[-1])
    Y = torch.tensor(y)
    assert float(gram.kernel_alignment(K_dkm, Y)) > float(gram.kernel_alignment(K_nngp, Y))


def test_dgp_log_joint_matches_brute_force_gaussian_densities():
    P, N = 5, 3
    x, y = _toy(P)
    k = dkm.GramKernel(jitter=1e-2)
    X, Y = torch.tensor(x), torch.tensor(y)
    chol_k0 = torch.linalg.cholesky(k(dkm.input_gram(X)))
    gen = torch.Generator().manual_seed(2)
    K0 = gram.kernel_map(dkm.input_gram(X), "relu")
    C = torch.linalg.cholesky(torch.stack([K0, K0]) + 0.1 * torch.eye(P, dtype=DT))
    C = C[None]
    widths = torch.tensor([N])

    def brute(u):
        F1, F2 = C[0, 0] @ u[0, 0], C[0, 1] @ u[0, 1]
        lp = MultivariateNormal(torch.zeros(P, dtype=DT), scale_tril=chol_k0).log_prob(F1.T).sum()
        K1 = k(F1 @ F1.T / N)
        lp = lp + MultivariateNormal(torch.zeros(P, dtype=DT), K1).log_prob(F2.T).sum()
        K2 = k(F2 @ F2.T / N) + 0.1 * torch.eye(P, dtype=DT)
        return lp + N * MultivariateNormal(torch.zeros(P, dtype=DT), K2).log_prob(Y)  # output replicated N times

    u1, u2 = (torch.randn(1, 2, P, N, dtype=DT, generator=gen) for _ in range(2))
    ours = [dkm.dgp_log_joint(u, C, chol_k0, Y, 0.1, widths, k)[0] for u in (u1, u2)]
    # equal up to the constant -(P N / 2) log(2 pi) per layer that the sampler does not need
    assert float(ours[0] - ours[1]) == pytest.approx(float(brute(u1) - brute(u2)), rel=1e-10)
    G = dkm.dgp_log_joint(u1, C, chol_k0, Y, 0.1, widths, k)[1]
    F1 = C[0, 0] @ u1[0, 0]
    np.testing.assert_allclose(G[0, 0].numpy(), (F1 @ F1.T / N).numpy(), rtol=1e-12)


def test_dgp_sampler_returns_every_width_with_diagnostics():
    x, y = _toy(5)
    out = dkm.sample_dgp_grams(x, y, widths=(4, 16), chains=2, steps=80, burn_in=40, warmup=20, noise_var=0.2,
                               kernel=dkm.GramKernel(jitter=1e-2), thin=5)
    for w in (4, 16):
        r = out["per_width"][w]
        assert r["mean"].shape == (2, 5, 5) and r["draws"].shape == (2, 8, 2, 5, 5)
        assert np.all(np.isfinite(r["mean"])) and np.all(r["rhat"] >= 0.0)
        assert np.all((r["accept_rate"] > 0) & (r["accept_rate"] <= 1))
        assert np.allclose(r["mean"], np.swapaxes(r["mean"], -1, -2))
    assert dkm.width_groups([128, 8, 32, 4096]) == [[8, 32, 128], [4096]]


def test_sparse_dkm_at_infinite_nu_with_the_optimal_q_is_the_exact_nngp_posterior():
    x, y = _toy(10)
    xs, _ = _toy(4, seed=3)
    k = dkm.GramKernel()
    model = dkm.SparseDKM(x, nu=math.inf, kernel=k, noise_init=0.25, learn_inducing=False)
    (K_zz, _, _), _ = model._top(torch.tensor(xs))
    K = K_zz.detach()
    A = K + 0.25 * torch.eye(10, dtype=DT)
    # with Z = X the optimal q(u) is the exact posterior of f(X): N(K A^-1 y, K - K A^-1 K)
    with torch.no_grad():
        model.q_mean.copy_(K @ torch.linalg.solve(A, torch.tensor(y)))
        model.q_raw.copy_(gram.cholesky_to_raw(gram.jittered_cholesky(K - K @ torch.linalg.solve(A, K))))
    mean, var = model.predict(xs)
    m_ref, v_ref, _, _ = dkm.nngp_predict(x, y, xs, depth=2, kernel=k)
    noise_ref = 0.25
    nngp = torch.stack(dkm.nngp_grams(dkm.input_gram(torch.tensor(x)), 2, k))
    K_zz_r, K_xz_r, k_xx_r = dkm.top_kernel(nngp, x, xs, k)
    m_exact, v_exact = dkm.gp_predict(K_zz_r, K_xz_r, k_xx_r, y, noise_ref)
    np.testing.assert_allclose(mean, m_exact, atol=1e-6)
    np.testing.assert_allclose(var, v_exact, atol=1e-5)
    # a finite nu learns the inducing Gram matrices and the objective is finite
    model, history = dkm.fit_sparse_dkm(x, y, inducing=6, nu=1.0, kernel=k, steps=10, batch_size=5)
    assert np.all(np.isfinite(history)) and len(model.predict(xs)[0]) == 4


def test_uci_loader_reads_local_files_and_names_where_it_looked(tmp_path):
    (tmp_path / "uci").mkdir()
    np.savetxt(tmp_path / "uci" / "yacht.csv", np.arange(12.0).reshape(4, 3), delimiter=",", header="a,b,y",
               comments="")
    x, y = dkm.uci_dataset("yacht", root=tmp_path)
    assert x.shape == (4, 2) and np.array_equal(y, [2.0, 5.0, 8.0, 11.0])
    with pytest.raises(core_data.DataUnavailable, match="concrete"):
        dkm.uci_dataset("concrete", root=tmp_path)


def test_regression_tasks_are_standardized_disjoint_splits():
    cfg = dkm.config("smoke")
    for name in dkm.DATASETS:
        t = dkm.regression_task(name, cfg, seed=0)
        assert t["x_train"].shape == (cfg.n_train, 10) and len(t["y_val"]) == cfg.n_val
        assert abs(t["y_train"].mean()) < 1e-12 and t["y_train"].std() == pytest.approx(1.0)
        assert not np.any(np.all(np.isclose(t["x_test"][:, None], t["x_train"][None]), axis=-1))


def test_tiny_benchmark_pipeline_reports_every_model_and_the_nngp_limit():
    cfg = dkm.config("smoke", datasets=("diabetes",), n_train=12, n_val=6, n_test=10, dkm_steps=5)
    out = dkm.benchmark(cfg)
    table = out["table"]
    assert set(table.model) == {"NNGP", "RBF-ARD GP", "DKM", "DKM (best nu)"}
    assert len(table[table.model == "DKM"]) == len(cfg.nus)
    assert out["c2"].max_mean_diff.max() < 1e-3 and out["checks"].finite.all()
    assert np.isfinite(table.test_ll).all()
