"""The MLP family (JAX functions and torch module): parametrizations, shapes, cross-framework agreement."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

jax.config.update("jax_enable_x64", True)

from repro.core import mlp_jax  # noqa: E402
from repro.core.mlp_torch import MLP  # noqa: E402

X = np.random.default_rng(0).normal(size=(7, 3))
SIZES = (3, 16, 16, 2)


def test_init_gives_layer_shapes_dtype_and_parameter_count():
    params = mlp_jax.init_mlp(jax.random.PRNGKey(0), SIZES)
    assert [(p["w"].shape, p["b"].shape) for p in params] == [((3, 16), (16,)), ((16, 16), (16,)), ((16, 2), (2,))]
    assert all(p["w"].dtype == jnp.float64 for p in params)
    assert mlp_jax.count_params(params) == 3 * 16 + 16 + 16 * 16 + 16 + 16 * 2 + 2
    assert mlp_jax.apply_mlp(params, X).shape == (7, 2)
    assert mlp_jax.hidden_sizes(params) == list(SIZES)


def test_ntk_parametrization_computes_scaled_preactivations_by_hand():
    beta, wv = 0.1, 1.5
    params = mlp_jax.init_mlp(jax.random.PRNGKey(1), SIZES)
    h = X
    for i, p in enumerate(params):  # Jacot et al. Eq. (1): sqrt(wv / n_l) W a + beta b
        h = np.sqrt(wv / p["w"].shape[0]) * h @ np.asarray(p["w"]) + beta * np.asarray(p["b"])
        if i < len(params) - 1:
            h = np.tanh(h)
    out = mlp_jax.apply_mlp(params, X, activation="tanh", beta=beta, weight_var=wv)
    np.testing.assert_allclose(out, h, rtol=1e-12)


def test_standard_and_ntk_parametrizations_draw_the_same_function():
    key = jax.random.PRNGKey(2)
    ntk_params = mlp_jax.init_mlp(key, SIZES, parametrization="ntk")
    std_params = mlp_jax.init_mlp(key, SIZES, parametrization="standard", beta=0.3, weight_var=2.0)
    f_ntk = mlp_jax.apply_mlp(ntk_params, X, parametrization="ntk", beta=0.3, weight_var=2.0)
    f_std = mlp_jax.apply_mlp(std_params, X, parametrization="standard", beta=0.3, weight_var=2.0)
    np.testing.assert_allclose(f_std, f_ntk, rtol=1e-12)


def test_mup_readout_shrinks_outputs_like_one_over_sqrt_width():
    def output_std(width):  # "ntk" and "mup" store the same N(0, 1) parameters
        sizes = (3, width, width, 1)

        def both(key):
            params = mlp_jax.init_mlp(key, sizes)
            return [mlp_jax.apply_mlp(params, X[:1], parametrization=p, beta=0.0) for p in ("ntk", "mup")]

        outs = jax.jit(jax.vmap(both))(jax.random.split(jax.random.PRNGKey(3), 200))
        return np.array([float(jnp.std(o)) for o in outs])

    ntk_ratio, mup_ratio = output_std(256) / output_std(16)
    assert ntk_ratio == pytest.approx(1.0, abs=0.2)  # O(1) outputs at any width
    assert mup_ratio == pytest.approx(0.25, abs=0.06)  # readout m = 1/fan_in: sqrt(16/256)


def test_mlp_forward_returns_the_input_of_every_layer():
    params = mlp_jax.init_mlp(jax.random.PRNGKey(4), SIZES)
    out, inputs = mlp_jax.mlp_forward(params, X)
    assert [a.shape for a in inputs] == [(7, 3), (7, 16), (7, 16)]
    np.testing.assert_array_equal(inputs[0], X)
    assert float(jnp.min(inputs[1])) >= 0  # post-ReLU
    np.testing.assert_allclose(out, mlp_jax.apply_mlp(params, X))


def test_make_mlp_binds_one_set_of_settings():
    net = mlp_jax.make_mlp(SIZES, parametrization="standard", activation="erf", beta=0.5, weight_var=1.3)
    params = net.init(jax.random.PRNGKey(5))
    expected = mlp_jax.apply_mlp(params, X, parametrization="standard", activation="erf", beta=0.5, weight_var=1.3)
    np.testing.assert_allclose(net.apply(params, X), expected)
    assert net.sizes == SIZES


@pytest.mark.parametrize("parametrization", ["ntk", "standard", "mup"])
@pytest.mark.parametrize("activation", ["relu", "erf", "gelu"])
def test_torch_module_matches_jax_function_on_copied_weights(parametrization, activation):
    kw = dict(parametrization=parametrization, activation=activation, beta=0.2, weight_var=1.7)
    params = mlp_jax.init_mlp(jax.random.PRNGKey(6), SIZES, parametrization=parametrization, beta=0.2, weight_var=1.7)
    model = MLP(SIZES, dtype=torch.float64, **kw).load_jax_params(params)
    with torch.no_grad():
        out = model(torch.as_tensor(X)).numpy()
    np.testing.assert_allclose(out, np.asarray(mlp_jax.apply_mlp(params, X, **kw)), rtol=1e-12, atol=1e-14)


def test_torch_init_follows_the_parametrization_spread():
    g = torch.Generator().manual_seed(0)
    ntk_model = MLP((3, 400, 400, 1), generator=g, dtype=torch.float64)
    std_model = MLP((3, 400, 400, 1), parametrization="standard", beta=0.3, generator=g, dtype=torch.float64)
    assert float(ntk_model.weights[1].detach().std()) == pytest.approx(1.0, rel=0.02)
    assert float(std_model.weights[1].detach().std()) == pytest.approx(400**-0.5, rel=0.02)
    assert float(std_model.biases[1].detach().std()) == pytest.approx(0.3, rel=0.15)


def test_unknown_settings_raise_with_the_name():
    with pytest.raises(ValueError, match="parametrization"):
        mlp_jax.init_mlp(jax.random.PRNGKey(0), SIZES, parametrization="nope")
    with pytest.raises(ValueError, match="activation"):
        mlp_jax.make_mlp(SIZES, activation="nope")
    with pytest.raises(ValueError, match="sizes"):
        MLP((3,))


def test_mup_readout_bias_moves_the_output_by_a_width_independent_amount():
    import torch

    from repro.core.mlp_torch import MLP

    changes = []
    for width in (256, 4096):
        torch.manual_seed(0)
        net = MLP((4, width, width, 1), parametrization="mup", beta=0.1)
        x = torch.ones(1, 4) / 2
        out = net(x).sum()
        out.backward()
        bias = net.biases[-1]
        with torch.no_grad():
            step = 0.1 * width * bias.grad  # the width-scaled SGD learning rate of this scheme, bias only
            changes.append(float(net.multipliers[-1][1] * step.abs().sum()))
    assert changes[1] / changes[0] < 2.0  # was 16x (linear in width) before the 1/sqrt(fan_in) bias multiplier
