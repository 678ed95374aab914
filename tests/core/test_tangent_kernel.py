"""Empirical NTKs (generic JAX, structured MLP, torch) against a brute-force Jacobian."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.flatten_util import ravel_pytree

jax.config.update("jax_enable_x64", True)

from repro.core import mlp_jax  # noqa: E402
from repro.core import tangent_kernel as tk  # noqa: E402
from repro.core.mlp_torch import MLP  # noqa: E402

X1 = np.random.default_rng(0).normal(size=(5, 3))
X2 = np.random.default_rng(1).normal(size=(4, 3))
NET = mlp_jax.make_mlp((3, 12, 12, 3), activation="tanh", beta=0.2)
PARAMS = NET.init(jax.random.PRNGKey(0))


def brute_force_ntk(apply_fn, params, x1, x2):
    """(n1, n2, k, k) from the full Jacobian of the flattened parameter vector."""
    flat, unravel = ravel_pytree(params)

    jac = jax.jit(jax.jacobian(lambda v, x: apply_fn(unravel(v), x)))  # (n, k, P)
    j1, j2 = np.asarray(jac(flat, x1)), np.asarray(jac(flat, x2))
    return np.einsum("iap,jbp->ijab", j1, j2)


BRUTE = brute_force_ntk(NET.apply, PARAMS, X1, X2)


@pytest.mark.parametrize("output", [None, 0, 2, "trace", "sum"])
def test_empirical_ntk_matches_brute_force_jacobian_product(output):
    got = np.asarray(tk.empirical_ntk(NET.apply, PARAMS, X1, X2, output=output))
    expected = {None: BRUTE, 0: BRUTE[:, :, 0, 0], 2: BRUTE[:, :, 2, 2],
                "trace": np.einsum("ijaa->ij", BRUTE) / 3, "sum": BRUTE.sum(axis=(2, 3))}[output]
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_chunked_and_forward_mode_methods_agree_with_one_shot():
    one_shot = np.asarray(tk.empirical_ntk(NET.apply, PARAMS, X1, X2, output=None))
    chunked = np.asarray(tk.empirical_ntk(NET.apply, PARAMS, X1, X2, output=None, chunk_size=2, method="jacobian"))
    pushed = np.asarray(tk.empirical_ntk(NET.apply, PARAMS, X1, X2, output=None, chunk_size=3, method="jvp"))
    np.testing.assert_allclose(chunked, one_shot, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(pushed, one_shot, rtol=1e-12, atol=1e-14)
    # a tiny memory budget forces chunks and the forward-mode path
    tight = np.asarray(tk.empirical_ntk(NET.apply, PARAMS, X1, X2, output=None, max_memory_mb=1e-3))
    np.testing.assert_allclose(tight, one_shot, rtol=1e-12, atol=1e-14)


def test_gram_matrix_is_exactly_symmetric_and_positive_semidefinite():
    gram = np.asarray(tk.empirical_ntk(NET.apply, PARAMS, X1, output=0, chunk_size=2, method="jacobian"))
    np.testing.assert_array_equal(gram, gram.T)
    np.testing.assert_allclose(gram, brute_force_ntk(NET.apply, PARAMS, X1, X1)[:, :, 0, 0], rtol=1e-10)
    assert np.linalg.eigvalsh(gram).min() > -1e-10 * np.trace(gram)


@pytest.mark.parametrize("parametrization", ["ntk", "standard", "mup"])
def test_structured_mlp_ntk_equals_the_generic_jacobian_kernel(parametrization):
    kw = dict(parametrization=parametrization, activation="erf", beta=0.3, weight_var=1.4)
    net = mlp_jax.make_mlp((3, 10, 10, 2), **kw)
    params = net.init(jax.random.PRNGKey(2))
    structured = np.asarray(tk.mlp_ntk(params, X1, X2, output=None, **kw))
    np.testing.assert_allclose(structured, brute_force_ntk(net.apply, params, X1, X2), rtol=1e-10, atol=1e-12)
    gram = np.asarray(tk.mlp_ntk(params, X1, None, output="trace", **kw))
    np.testing.assert_array_equal(gram, gram.T)


def test_ntk_row_by_forward_mode_equals_a_gram_row():
    row = np.asarray(tk.ntk_jvp_row(NET.apply, PARAMS, X1[0], X2, output=1))
    np.testing.assert_allclose(row, BRUTE[0, :, 1, 1], rtol=1e-10, atol=1e-12)


def test_torch_empirical_ntk_matches_jax_on_the_same_weights():
    model = MLP((3, 12, 12, 3), activation="tanh", beta=0.2, dtype=torch.float64).load_jax_params(PARAMS)
    got = tk.empirical_ntk_torch(model, torch.as_tensor(X1), torch.as_tensor(X2), output=None, chunk_size=2)
    np.testing.assert_allclose(got.numpy(), BRUTE, rtol=1e-10, atol=1e-12)
    trace = tk.empirical_ntk_torch(model, torch.as_tensor(X1), output="trace")
    np.testing.assert_allclose(trace.numpy(), np.asarray(tk.empirical_ntk(NET.apply, PARAMS, X1, output="trace")),
                               rtol=1e-10)


def test_standard_parametrization_ntk_grows_with_width_while_ntk_parametrization_converges():
    from repro.core.kernels import nngp_ntk

    def mean_diag(width, parametrization):
        params = mlp_jax.init_mlp(jax.random.PRNGKey(3), (3, width, width, 1), parametrization=parametrization)
        return float(jnp.mean(jnp.diag(tk.mlp_ntk(params, X1, None, parametrization=parametrization))))

    limit = float(jnp.mean(nngp_ntk(X1, None, 3, diag=True)[1]))
    assert mean_diag(1024, "ntk") == pytest.approx(limit, rel=0.15)
    assert mean_diag(1024, "standard") / mean_diag(64, "standard") > 8  # hidden-layer terms grow like the width (16x)


def test_bad_output_choice_is_rejected():
    with pytest.raises(ValueError, match="output"):
        tk.empirical_ntk(NET.apply, PARAMS, X1, output="max")
    with pytest.raises(ValueError, match="out of range"):
        tk.mlp_ntk(PARAMS, X1, output=5, activation="tanh", beta=0.2)
