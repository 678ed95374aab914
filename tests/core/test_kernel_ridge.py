import math

import numpy as np
import pytest
import torch
from sklearn.kernel_ridge import KernelRidge

from repro.core import gp
from repro.core import kernel_ridge as kr


def data(n=60, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    return x, np.sin(x[:, 0]) + 0.3 * x[:, 1] ** 2 + 0.05 * rng.standard_normal(n)


def test_rbf_gram_is_the_gp_rbf_kernel_with_matching_lengthscale():
    x, _ = data(20)
    xt = torch.as_tensor(x)
    gamma = 0.37
    ref = gp.rbf_kernel_torch(xt[None], xt[None], 1 / math.sqrt(2 * gamma), 1.0)[0]
    torch.testing.assert_close(kr.rbf_gram(xt, xt, gamma), ref, rtol=1e-12, atol=1e-12)


def test_predictions_match_scikit_learn_kernel_ridge():
    x, y = data()
    xq, _ = data(25, seed=1)
    fit = kr.fit_kernel_ridge(x, y, gamma=0.2, alpha=0.05)
    ref = KernelRidge(kernel="rbf", gamma=0.2, alpha=0.05).fit(x, y).predict(xq)
    np.testing.assert_allclose(fit.predict(xq, chunk=7), ref, rtol=1e-9, atol=1e-10)


def test_vanishing_ridge_interpolates_the_training_labels():
    x, y = data(30)
    fit = kr.fit_kernel_ridge(x, y, gamma=0.5, alpha=1e-10)
    np.testing.assert_allclose(fit.predict(x), y, atol=1e-5)


def test_a_linear_kernel_gives_ridge_regression_in_its_dual_form():
    x, y = data(40)
    alpha = 0.3
    fit = kr.fit_kernel_ridge(x, y, alpha=alpha, kernel=lambda a, b: a @ b.T)
    w = np.linalg.solve(x.T @ x + alpha * np.eye(3), x.T @ y)
    np.testing.assert_allclose(fit.predict(x), x @ w, rtol=1e-9, atol=1e-10)


def test_grid_search_keeps_the_pair_with_the_smallest_validation_error():
    x, y = data(80)
    xv, yv = data(40, seed=2)
    search = kr.select_kernel_ridge(x, y, xv, yv, gammas=(0.01, 0.3), alphas=(1e-3, 1.0, 30.0))
    assert search.val_mse.shape == (2, 3)
    for i, g in enumerate(search.gammas):
        for j, a in enumerate(search.alphas):
            pred = kr.fit_kernel_ridge(x, y, gamma=g, alpha=a).predict(xv)
            assert search.val_mse[i, j] == pytest.approx(np.mean((pred - yv) ** 2), rel=1e-9)
    i, j = np.unravel_index(np.argmin(search.val_mse), search.val_mse.shape)
    assert (search.gamma, search.alpha) == (search.gammas[i], search.alphas[j])
    assert search.best_mse == search.val_mse.min()


def test_bad_arguments_are_refused():
    x, y = data(10)
    with pytest.raises(ValueError, match="alpha"):
        kr.fit_kernel_ridge(x, y, gamma=1.0, alpha=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        kr.fit_kernel_ridge(x, y, alpha=1.0)
    with pytest.raises(ValueError, match="same n"):
        kr.fit_kernel_ridge(x, y[:5], gamma=1.0, alpha=1.0)
    with pytest.raises(ValueError, match="at least one"):
        kr.select_kernel_ridge(x, y, x, y, gammas=(), alphas=(1.0,))
