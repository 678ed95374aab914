"""Full-batch GD loop: exact iterates on a quadratic, snapshot schedule, callbacks, ensembles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

from repro.core import mlp_jax  # noqa: E402
from repro.core.train_jax import gradient_descent, mse_loss  # noqa: E402

A = np.random.default_rng(0).normal(size=(6, 3))
B = np.random.default_rng(1).normal(size=6)


def quadratic(params, a, b):
    return 0.5 * jnp.sum((a @ params["x"] - b) ** 2)


def record_x(params, a, b):
    return {"x": params["x"]}


def test_iterates_equal_the_closed_form_of_gd_on_a_quadratic():
    lr, steps = 0.05, 23
    result = gradient_descent(quadratic, {"x": jnp.zeros(3)}, steps, lr, args=(A, B), record_fn=record_x,
                              record_every=5)
    # x_{k+1} = x_k - lr A^T (A x_k - b)  =>  x_k = (I - M^k) x*,  M = I - lr A^T A
    m = np.eye(3) - lr * A.T @ A
    x_star = np.linalg.lstsq(A, B, rcond=None)[0]
    for step, x in zip(result.history["step"], result.history["x"]):
        np.testing.assert_allclose(x, (np.eye(3) - np.linalg.matrix_power(m, int(step))) @ x_star, rtol=1e-10)
    np.testing.assert_allclose(result.params["x"], result.history["x"][-1])
    expected_loss = [0.5 * np.sum((A @ x - B) ** 2) for x in result.history["x"]]
    np.testing.assert_allclose(result.history["loss"], expected_loss, rtol=1e-12)


def test_snapshots_at_start_every_k_steps_and_at_the_end():
    result = gradient_descent(quadratic, {"x": jnp.zeros(3)}, 23, 0.05, args=(A, B), record_every=5)
    assert result.history["step"].tolist() == [0, 5, 10, 15, 20, 23]
    assert result.history["loss"].shape == (6,)
    only_ends = gradient_descent(quadratic, {"x": jnp.zeros(3)}, 23, 0.05, args=(A, B))
    assert only_ends.history["step"].tolist() == [0, 23]
    assert np.all(np.diff(result.history["loss"]) < 0)


def test_callback_path_gives_the_same_trajectory_and_extends_history():
    seen = []

    def callback(step, params, rec):
        seen.append(step)
        return {"norm": float(jnp.linalg.norm(params["x"]))}

    fast = gradient_descent(quadratic, {"x": jnp.ones(3)}, 12, 0.05, args=(A, B), record_fn=record_x, record_every=3)
    slow = gradient_descent(quadratic, {"x": jnp.ones(3)}, 12, 0.05, args=(A, B), record_fn=record_x, record_every=3,
                            callback=callback)
    assert seen == [0, 3, 6, 9, 12]
    np.testing.assert_allclose(slow.history["x"], fast.history["x"], rtol=1e-13)
    np.testing.assert_allclose(slow.history["norm"], np.linalg.norm(fast.history["x"], axis=1), rtol=1e-13)


def test_initial_parameters_are_not_modified():
    params = {"x": jnp.ones(3)}
    gradient_descent(quadratic, params, 40, 0.05, args=(A, B), record_every=1)
    np.testing.assert_array_equal(params["x"], np.ones(3))


def test_summed_ensemble_loss_trains_each_network_exactly_as_alone():
    net = mlp_jax.make_mlp((3, 8, 1))
    x, y = jnp.asarray(A), jnp.asarray(B)[:, None]
    loss = mse_loss(net.apply)

    def ensemble(params, x, y):
        return jnp.sum(jax.vmap(loss, in_axes=(0, None, None))(params, x, y))

    stack = jax.vmap(net.init)(jax.random.split(jax.random.PRNGKey(0), 3))
    together = gradient_descent(ensemble, stack, 15, 0.5, args=(x, y)).params
    for i in range(3):
        alone = gradient_descent(loss, jax.tree_util.tree_map(lambda a: a[i], stack), 15, 0.5, args=(x, y)).params
        for got, want in zip(jax.tree_util.tree_leaves(together), jax.tree_util.tree_leaves(alone)):
            np.testing.assert_allclose(got[i], want, rtol=1e-12, atol=1e-14)


def test_mse_loss_is_half_mean_squared_error():
    net = mlp_jax.make_mlp((3, 8, 2))
    params = net.init(jax.random.PRNGKey(1))
    y = np.random.default_rng(2).normal(size=(6, 2))
    value = mse_loss(net.apply)(params, A, y)
    assert float(value) == pytest.approx(0.5 * np.sum((np.asarray(net.apply(params, A)) - y) ** 2) / 6, rel=1e-12)


def test_bad_step_counts_are_rejected():
    with pytest.raises(ValueError, match="steps"):
        gradient_descent(quadratic, {"x": jnp.zeros(3)}, -1, 0.1, args=(A, B))
    with pytest.raises(ValueError, match="record_every"):
        gradient_descent(quadratic, {"x": jnp.zeros(3)}, 5, 0.1, args=(A, B), record_every=-2)
