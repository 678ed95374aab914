"""abc-parametrizations: the paper's exponent tables and theorems, concrete scalings, the MLP family, coord check."""

import math

import numpy as np
import pytest
import torch

from repro.core import abc_parametrization as abc
from repro.core import mlp_jax
from repro.core.mlp_torch import MLP


def _regime(name, **kw):
    depth = 1 if name == "mfp" else 3
    return abc.classify(abc.paper_exponents(name, depth, **kw))


def test_paper_exponents_give_the_regimes_of_table_1():
    sp_small_lr, ntk, mfp, mup = _regime("sp", sp_lr_exponent=1.0), _regime("ntk"), _regime("mfp"), _regime("mup")
    for reg, r in ((sp_small_lr, 0.5), (ntk, 0.5), (mfp, 0.0), (mup, 0.0)):
        assert reg["stable"] and reg["nontrivial"] and reg["r"] == pytest.approx(r)
    assert sp_small_lr["kernel_regime"] and ntk["kernel_regime"] and not ntk["feature_learning"]
    assert mfp["feature_learning"] and mup["feature_learning"] and not mup["kernel_regime"]
    assert mup["r_l"] == pytest.approx([0.0, 0.0, 0.0])  # Theorem 5.6: muP updates every hidden layer maximally
    sp = _regime("sp")  # Theorem 4.1: SP with a width-independent learning rate blows up
    assert not sp["stable"] and sp["r"] < 0


def test_symmetry_of_eq_5_keeps_the_invariants_and_the_regime():
    for name in ("sp", "ntk", "mup"):
        exps = abc.paper_exponents(name, 3, sp_lr_exponent=1.0)
        for theta in (-0.5, 0.25, 1.0):
            shifted = [e.shifted(theta) for e in exps]
            np.testing.assert_allclose([s.invariants() for s in shifted], [e.invariants() for e in exps])
            assert abc.classify(shifted) == abc.classify(exps)
    e = abc.Exponents(0.5, 0.0, 0.0)
    assert e.shifted(0.5, "adam") == abc.Exponents(1.0, -0.5, -0.5)
    np.testing.assert_allclose(e.shifted(0.5, "adam").invariants("adam"), e.invariants("adam"))


def _invariants_at(scaling_at, optimizer="sgd"):
    return abc.effective_exponents(scaling_at).invariants(optimizer)


@pytest.mark.parametrize("name", ["sp", "ntk", "mup"])
def test_concrete_scalings_have_the_exponents_of_the_paper_up_to_symmetry(name):
    d, k = 64, 10
    paper = abc.paper_exponents(name, 3)  # SP at c = 0, as the concrete "sp" with sp_lr_mult = 1
    concrete = [lambda n: abc.layer_scaling(name, "input", d, n),
                lambda n: abc.layer_scaling(name, "hidden", n, n),
                lambda n: abc.layer_scaling(name, "output", n, k)]
    for layer, scaling_at in zip((paper[0], paper[1], paper[-1]), concrete):
        np.testing.assert_allclose(_invariants_at(scaling_at), layer.invariants(), atol=1e-12)


def test_mup_table_of_tensor_programs_v_in_numbers():
    n, d, k = 512, 20, 3
    inp, hid = abc.layer_scaling("mup", "input", d, n), abc.layer_scaling("mup", "hidden", n, n)
    out = abc.layer_scaling("mup", "output", n, k)
    assert (inp.init_std, inp.lr_mult) == pytest.approx((d**-0.5, n))
    assert (hid.init_std, hid.lr_mult) == pytest.approx((n**-0.5, 1.0))
    assert (out.init_std, out.lr_mult) == pytest.approx((1.0 / n, 1.0 / n))
    adam = [abc.layer_scaling("mup", kind, *fans, optimizer="adam").lr_mult
            for kind, fans in (("input", (d, n)), ("hidden", (n, n)), ("output", (n, k)))]
    assert adam == pytest.approx([1.0, 1.0 / n, 1.0 / n])
    assert abc.layer_scaling("mup", "output", n, k, zero_readout=True).init_std == 0.0
    assert abc.bias_scaling("mup", n).lr_mult == n and abc.bias_scaling("mup", k).lr_mult == k


def test_base_width_makes_mup_coincide_with_sp_at_the_base_model():
    sizes = (20, 256, 256, 5)
    mup = abc.mlp_scalings(sizes, "mup", base_width=256)
    sp = abc.mlp_scalings(sizes, "sp")
    for m, s in zip(mup, sp):
        assert m.weight == s.weight
    wide = abc.mlp_scalings((20, 1024, 1024, 5), "mup", base_width=256)
    assert wide[0].weight.lr_mult == pytest.approx(4.0) and wide[-1].weight.lr_mult == pytest.approx(0.25)


def test_mlp_family_mup_weights_are_mup_up_to_symmetry():
    """``repro.core.mlp_jax``'s "mup" (N(0, 1) weights, its multipliers, one lr proportional to width) against
    Definition 5.1: same init size ``a + b`` and update size ``2a + c`` of every effective weight."""
    d, k = 8, 2

    def layers(n):
        mults = mlp_jax.layer_multipliers((d, n, n, n, k), "mup")
        return [abc.Scaling(init_std=1.0, lr_mult=float(n), forward_mult=mw) for mw, _ in mults]

    paper = abc.paper_exponents("mup", 3)
    for i, layer in enumerate(paper):
        np.testing.assert_allclose(_invariants_at(lambda n: layers(n)[i]), layer.invariants(), atol=1e-12)


@pytest.mark.parametrize("name, family", [("sp", "standard"), ("ntk", "ntk")])
def test_abc_mlp_reproduces_the_mlp_family_draw_for_draw(name, family):
    sizes, x = (3, 32, 32, 2), torch.randn(5, 3, dtype=torch.float64)
    ours = abc.abc_mlp(sizes, name, activation="tanh", beta=0.3, generator=torch.Generator().manual_seed(4),
                       dtype=torch.float64)
    theirs = MLP(sizes, parametrization=family, activation="tanh", beta=0.3,
                 generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        np.testing.assert_allclose(ours(x).numpy(), theirs(x).numpy(), rtol=1e-12, atol=1e-14)


def test_mlp_features_are_the_layers_of_the_forward_pass():
    model = abc.abc_mlp((4, 16, 16, 3), "mup", activation="tanh", generator=torch.Generator().manual_seed(0))
    x = torch.randn(6, 4)
    feats = abc.mlp_features(model, x)
    assert [f.shape for f in feats] == [(6, 16), (6, 16), (6, 3)]
    torch.testing.assert_close(feats[-1], model(x))
    h1 = x @ model.weights[0].T * model.multipliers[0][0] + model.biases[0] * model.multipliers[0][1]
    torch.testing.assert_close(feats[0], h1)


def test_zero_readout_and_no_biases_start_from_the_zero_function():
    model = abc.abc_mlp((4, 32, 1), "mup", zero_readout=True, biases=False, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert float(model(torch.randn(7, 4)).abs().max()) == 0.0
    assert all(b.lr_mult == 0 and b.forward_mult == 0 for b in (s.bias for s in model.scalings))


def test_optimizer_steps_each_tensor_with_its_own_learning_rate():
    model = abc.abc_mlp((3, 8, 8, 2), "mup", activation="tanh", generator=torch.Generator().manual_seed(2),
                        dtype=torch.float64)
    pairs = abc.mlp_param_pairs(model)  # (w0, b0, w1, b1, ...) with their scalings
    before = [p.detach().clone() for p, _ in pairs]
    opt = abc.make_optimizer(model, lr=0.01)
    loss = model(torch.randn(5, 3, dtype=torch.float64)).pow(2).sum()
    opt.zero_grad()
    loss.backward()
    grads = [p.grad.clone() for p, _ in pairs]
    opt.step()
    assert len({s.lr_mult for _, s in pairs}) > 2  # the test means something: several different rates
    for (p, s), p0, g in zip(pairs, before, grads):
        torch.testing.assert_close(p.detach(), p0 - 0.01 * s.lr_mult * g)


def test_scaled_sgd_takes_the_same_step_as_torch_sgd_with_parameter_groups():
    def one_step(make):
        model = abc.abc_mlp((3, 8, 8, 2), "mup", activation="tanh", generator=torch.Generator().manual_seed(7),
                            dtype=torch.float64)
        opt = make(model)
        for _ in range(2):
            loss = model(torch.ones(4, 3, dtype=torch.float64)).pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return [p.detach() for p, _ in abc.mlp_param_pairs(model)]

    ours, theirs = one_step(lambda m: abc.ScaledSGD(m, 0.01)), one_step(lambda m: abc.make_optimizer(m, 0.01))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


def _toy_coord_check(name, widths=(64, 256, 1024), seeds=2):
    gen = torch.Generator().manual_seed(0)
    x, probe = torch.randn(3, 32, 8, generator=gen), torch.randn(16, 8, generator=gen)
    y = torch.randn(3, 32, 1, generator=gen)

    def build(width, seed):
        model = abc.abc_mlp((8, width, width, 1), name, activation="tanh", biases=False,
                            generator=torch.Generator().manual_seed(100 * seed + width))
        return model, abc.ScaledSGD(model, 0.05)

    return abc.coord_check(build, widths, lambda t: (x[t], y[t]), lambda f, t: 0.5 * (f - t).pow(2).mean(), probe,
                           steps=3, seeds=seeds, record_at=[0, 1, 3])


def test_coord_check_measures_the_width_exponents_of_mup_and_ntk():
    mup, ntk = _toy_coord_check("mup"), _toy_coord_check("ntk")
    assert mup.rms_change.shape == (3, 2, 3, 3) and list(mup.record_at) == [0, 1, 3]
    assert np.all(mup.rms_change[:, :, 0] == 0) and not mup.diverged.any()
    assert np.all(np.abs(mup.slopes()[:2]) < 0.15)  # hidden features move Theta(1) at every width
    assert np.all((ntk.slopes()[:2] > -0.7) & (ntk.slopes()[:2] < -0.3))  # and like n^(-1/2) in NTK
    assert abc.loglog_slope([1, 2, 4], [1, 0.5, 0.25]) == pytest.approx(-1.0)


def test_coord_check_marks_a_blow_up_as_diverged_and_keeps_going():
    def build(width, seed):
        model = abc.abc_mlp((2, width, 1), "sp", activation="identity", generator=torch.Generator().manual_seed(0))
        return model, abc.make_optimizer(model, 1e6 if width > 8 else 1e-3)

    x = torch.ones(4, 2)
    cc = abc.coord_check(build, [8, 64], lambda t: (x, 100 * torch.ones(4, 1)), lambda f, t: (f - t).pow(2).mean(), x,
                         steps=30, record_at=[0, 30])
    assert list(cc.diverged[:, 0]) == [False, True]
    assert np.isfinite(cc.rms_change[0]).all() and np.isnan(cc.rms_change[1, 0, 1]).all()
    assert math.isnan(cc.slopes()[0])


def test_bad_names_and_mixed_learning_rate_exponents_raise():
    with pytest.raises(ValueError, match="parametrization"):
        abc.layer_scaling("xyz", "hidden", 4, 4)
    with pytest.raises(ValueError, match="kind"):
        abc.layer_scaling("mup", "middle", 4, 4)
    with pytest.raises(ValueError, match="optimizer"):
        abc.Exponents(0, 0, 0).shifted(1.0, "rmsprop")
    with pytest.raises(ValueError, match="common c"):
        abc.classify([abc.Exponents(0, 0, 0), abc.Exponents(0.5, 0, 1)])
    with pytest.raises(ValueError, match="mfp"):
        abc.paper_exponents("mfp", 2)
