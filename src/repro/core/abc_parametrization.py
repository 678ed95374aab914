"""abc-parametrizations: how initialization, forward multipliers and learning rates scale with width.

Yang & Hu (2021, "Tensor Programs IV", arXiv:2011.14522) write every weight matrix of an MLP as
``W = n^{-a} w`` with trainable ``w ~ N(0, n^{-2b})`` and SGD learning rate ``eta n^{-c}``. The exponents
decide whether the infinite-width limit is stable, trivial, a kernel method or a feature learner. This
module holds that theory once, and the concrete per-parameter numbers that follow from it, for every
paper that trains networks in SP / NTK / muP.

Theory (exponents; no framework needed)
- :class:`Exponents` ``(a, b, c)`` of one weight tensor and their symmetry
  ``(a + t, b - t, c - 2t)`` for SGD, ``c - t`` for Adam (Tensor Programs IV, Eq. (5)).
- :func:`paper_exponents`: the columns of Tensor Programs IV's Table 1 (SP, NTK, mean field) and
  Definition 5.1 (muP).
- :func:`feature_update_exponent` (``r``, Definition 3.2), :func:`layer_update_exponents` (``r_l``,
  Proposition 5.3) and :func:`classify` (stability, Theorem 3.3; nontriviality, the theorem after it; feature learning
  iff ``r = 0`` and kernel regime iff ``r > 0``, Theorems 3.6 / 3.8 and the Dynamical Dichotomy, Corollary 3.9).

Concrete scalings (what a training script needs)
- :class:`Scaling` ``(init_std, lr_mult, forward_mult)`` of one parameter tensor: the tensor used in the forward
  pass is ``forward_mult * w`` with ``w ~ N(0, init_std^2)`` at init and learning rate ``base_lr * lr_mult``.
- :func:`layer_scaling` / :func:`bias_scaling`: the rules per tensor kind (``input``: finite fan-in, e.g. the
  first layer or an embedding; ``hidden``; ``output``: finite fan-out, the readout). ``sp`` is PyTorch's default
  (``N(0, 1/fan_in)``, one learning rate), ``ntk`` is Jacot et al.'s (``N(0, 1)`` with a ``1/sqrt(fan_in)``
  multiplier, biases times ``beta``), ``mup`` is the "standard view" of muP of Tensor Programs V's Table 3
  (input weights and all biases: variance ``1/fan_in``, SGD lr ``eta fan_out``, Adam lr ``eta``; hidden:
  ``1/fan_in``, ``eta``, ``eta/fan_in``; output: ``1/fan_in^2`` or zero, ``eta/fan_in``, ``eta/fan_in``). With
  ``base_width`` the width factors become ratios to a base model (the muTransfer form: at the base width muP and SP
  coincide); the default ``base_width=1`` gives the raw powers of the paper.
- :func:`mlp_scalings` for a whole MLP, :func:`effective_exponents` (read ``(a, b, c)`` back from concrete numbers
  at two widths, to check any implementation against the table).

Torch side (the MLP family of :mod:`repro.core.mlp_torch` uses it as is)
- :func:`abc_mlp` builds a :class:`repro.core.mlp_torch.MLP` and :func:`apply_scalings` sets its per-layer
  multipliers and redraws its weights; :func:`param_groups` / :func:`make_optimizer` give per-tensor learning
  rates to ``torch.optim.SGD`` or ``Adam``; :class:`ScaledSGD` is the same plain SGD without ``torch.optim``.
- :func:`mlp_features` returns every layer's pre-activations; :func:`coord_check` trains a model at several widths
  for a few steps and records the RMS size of each layer's features and of their change (the "coordinate
  check"); :func:`loglog_slope` fits the width exponent of such a curve.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

PARAMETRIZATIONS: tuple[str, ...] = ("sp", "ntk", "mup")
TABLE_PARAMETRIZATIONS: tuple[str, ...] = ("sp", "ntk", "mfp", "mup")  # columns of Tensor Programs IV, Table 1
KINDS: tuple[str, ...] = ("input", "hidden", "output")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")


def _check(value: str, allowed: Sequence[str], name: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")


# -- theory: exponents ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Exponents:
    """``W = n^{-a} w``, ``w_ij ~ N(0, n^{-2b})``, learning rate ``eta n^{-c}`` (Tensor Programs IV, Sec. 3)."""

    a: float
    b: float
    c: float

    def shifted(self, theta: float, optimizer: str = "sgd") -> "Exponents":
        """The same training dynamics written with another split of ``W`` (Eq. (5)): ``a + t, b - t`` and
        ``c - 2t`` for SGD (the gradient of ``w`` scales by ``n^{-t}`` and enters the update of ``W`` twice),
        ``c - t`` for Adam (which normalizes the gradient's size away)."""
        _check(optimizer, OPTIMIZERS, "optimizer")
        return Exponents(self.a + theta, self.b - theta, self.c - (2 if optimizer == "sgd" else 1) * theta)

    def invariants(self, optimizer: str = "sgd") -> tuple[float, float]:
        """What every equivalent split shares: the init size ``a + b`` and the update size ``2a + c`` (SGD) or
        ``a + c`` (Adam) of the effective weight ``W``."""
        _check(optimizer, OPTIMIZERS, "optimizer")
        return self.a + self.b, (2 if optimizer == "sgd" else 1) * self.a + self.c


def paper_exponents(parametrization: str, n_hidden: int, *, sp_lr_exponent: float = 0.0) -> list[Exponents]:
    """Exponents of the ``n_hidden + 1`` weight layers of an ``L = n_hidden`` hidden-layer MLP (one global ``c``).

    ``sp``: ``a = 0``, ``b_1 = 0``, ``b_l = 1/2``, ``c = sp_lr_exponent`` (Table 1's column is ``c = 1``, the
    largest-lr stable choice of Theorem 4.1; PyTorch's practice is ``c = 0``). ``ntk``: ``a_1 = 0``, ``a_l = 1/2``,
    ``b = 0``, ``c = 0``. ``mfp`` (one hidden layer only): ``a = (0, 1)``, ``b = 0``, ``c = -1``. ``mup``
    (Definition 5.1): ``a = (-1/2, 0, ..., 0, 1/2)``, ``b = 1/2``, ``c = 0``.
    """
    _check(parametrization, TABLE_PARAMETRIZATIONS, "parametrization")
    if n_hidden < 1:
        raise ValueError(f"n_hidden must be >= 1, got {n_hidden}")
    layers = range(1, n_hidden + 2)
    last = n_hidden + 1
    if parametrization == "sp":
        return [Exponents(0.0, 0.0 if l == 1 else 0.5, float(sp_lr_exponent)) for l in layers]
    if parametrization == "ntk":
        return [Exponents(0.0 if l == 1 else 0.5, 0.0, 0.0) for l in layers]
    if parametrization == "mfp":
        if n_hidden != 1:
            raise ValueError("the mean-field parametrization (mfp) is defined for one hidden layer")
        return [Exponents(0.0, 0.0, -1.0), Exponents(1.0, 0.0, -1.0)]
    return [Exponents(-0.5 if l == 1 else (0.5 if l == last else 0.0), 0.5, 0.0) for l in layers]  # Def. 5.1


def _global_c(exps: Sequence[Exponents]) -> float:
    cs = {e.c for e in exps}
    if len(cs) != 1:
        raise ValueError("the stability theory of Tensor Programs IV uses one learning-rate exponent c for all "
                         "layers; shift per-layer exponents with Exponents.shifted to a common c first")
    return cs.pop()


def layer_update_exponents(exps: Sequence[Exponents]) -> list[float]:
    """``r_l`` of Proposition 5.3 for the hidden weight layers ``l = 1..L``: the update of ``W^l`` moves the
    features it feeds by ``Theta(n^{-r_l})``; ``r_l = 0`` means ``W^l`` is updated maximally.

    ``r_l = min(a_{L+1} + b_{L+1}, 2 a_{L+1} + c) + c - 1 + 2 a_l + 1[l = 1]``.
    """
    c = _global_c(exps)
    out = exps[-1]
    backward = min(out.a + out.b, 2 * out.a + c)  # size exponent of the gradient reaching the last features
    return [backward + c - 1 + 2 * e.a + (1.0 if l == 0 else 0.0) for l, e in enumerate(exps[:-1])]


def feature_update_exponent(exps: Sequence[Exponents]) -> float:
    """``r`` of Definition 3.2: ``Delta x^L = Theta(n^{-r})``; ``r = min_l r_l``."""
    return min(layer_update_exponents(exps))


def classify(exps: Sequence[Exponents], tol: float = 1e-12) -> dict[str, Any]:
    """Which regime an abc-parametrization is in, by the paper's theorems.

    stable (Theorem 3.3): ``a_1 + b_1 = 0``, ``a_l + b_l = 1/2`` (``2 <= l <= L``), ``a_{L+1} + b_{L+1} >= 1/2``,
    ``r >= 0``, ``2 a_{L+1} + c >= 1`` and ``a_{L+1} + b_{L+1} + r >= 1``; nontrivial (Sec. 3): one of the last
    two is an equality; then feature learning iff ``r = 0`` and kernel regime iff ``r > 0`` (Corollary 3.9).
    """
    c = _global_c(exps)
    r = feature_update_exponent(exps)
    first, out = exps[0], exps[-1]
    init_ok = (abs(first.a + first.b) <= tol and all(abs(e.a + e.b - 0.5) <= tol for e in exps[1:-1])
               and out.a + out.b >= 0.5 - tol)
    stable = bool(init_ok and r >= -tol and 2 * out.a + c >= 1 - tol and out.a + out.b + r >= 1 - tol)
    nontrivial = bool(stable and (abs(out.a + out.b + r - 1) <= tol or abs(2 * out.a + c - 1) <= tol))
    return {"r": r, "r_l": layer_update_exponents(exps), "stable": stable, "nontrivial": nontrivial,
            "feature_learning": bool(nontrivial and abs(r) <= tol), "kernel_regime": bool(nontrivial and r > tol)}


# -- concrete scalings ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scaling:
    """One parameter tensor: forward pass uses ``forward_mult * w``; ``w ~ N(0, init_std^2)`` at init; its
    learning rate is ``base_lr * lr_mult``."""

    init_std: float
    lr_mult: float
    forward_mult: float

    @property
    def effective_std(self) -> float:
        """Spread of the weight the forward pass sees, ``forward_mult * init_std``."""
        return self.forward_mult * self.init_std

    def effective_lr(self, optimizer: str = "sgd") -> float:
        """Learning rate felt by the effective weight: ``forward_mult^2 * lr_mult`` for SGD (the multiplier
        scales the gradient and the step), ``forward_mult * lr_mult`` for Adam."""
        _check(optimizer, OPTIMIZERS, "optimizer")
        return self.forward_mult ** (2 if optimizer == "sgd" else 1) * self.lr_mult


@dataclass(frozen=True)
class LayerScalings:
    weight: Scaling
    bias: Scaling


def layer_scaling(parametrization: str, kind: str, fan_in: int, fan_out: int, *, optimizer: str = "sgd",
                  base_fan_in: float = 1.0, base_fan_out: float = 1.0, weight_var: float = 1.0,
                  zero_readout: bool = False, sp_lr_mult: float = 1.0) -> Scaling:
    """The scaling of a weight tensor of ``kind`` (``input`` / ``hidden`` / ``output``) with the given fans.

    ``fan_in`` is what one output coordinate sums over (1 for a one-hot embedding lookup). ``base_fan_*`` turn
    the muP width factors into ratios to a base model (muTransfer); ``sp_lr_mult`` multiplies SP's learning rate
    (pass ``1 / width`` for Table 1's "SP with lr 1/n"). ``zero_readout`` starts muP's output layer at zero.
    """
    _check(parametrization, PARAMETRIZATIONS, "parametrization")
    _check(kind, KINDS, "kind")
    _check(optimizer, OPTIMIZERS, "optimizer")
    if fan_in < 1 or fan_out < 1:
        raise ValueError(f"fans must be >= 1, got fan_in={fan_in}, fan_out={fan_out}")
    if weight_var <= 0:
        raise ValueError(f"weight_var must be > 0, got {weight_var}")
    s = math.sqrt(weight_var / fan_in)
    if parametrization == "sp":
        return Scaling(init_std=s, lr_mult=float(sp_lr_mult), forward_mult=1.0)
    if parametrization == "ntk":
        return Scaling(init_std=1.0, lr_mult=1.0, forward_mult=s)
    m_in, m_out = fan_in / base_fan_in, fan_out / base_fan_out  # width multipliers (raw fans when bases are 1)
    if kind == "input":  # finite -> infinite: variance 1/fan_in; SGD lr eta * fan_out, Adam lr eta
        return Scaling(init_std=s, lr_mult=m_out if optimizer == "sgd" else 1.0, forward_mult=1.0)
    if kind == "hidden":  # infinite -> infinite: variance 1/fan_in; SGD lr eta, Adam lr eta / fan_in
        return Scaling(init_std=s, lr_mult=1.0 if optimizer == "sgd" else 1.0 / m_in, forward_mult=1.0)
    # infinite -> finite (readout): variance 1/fan_in^2 (or zero); lr eta / fan_in for SGD and Adam
    return Scaling(init_std=0.0 if zero_readout else s / math.sqrt(m_in), lr_mult=1.0 / m_in, forward_mult=1.0)


def bias_scaling(parametrization: str, fan_out: int, *, optimizer: str = "sgd", base_fan_out: float = 1.0,
                 beta: float = 0.1, sp_lr_mult: float = 1.0) -> Scaling:
    """A bias of ``fan_out`` coordinates. A bias is a weight from a constant input 1 (fan-in 1): ``sp`` draws it
    ``N(0, beta^2)``; ``ntk`` multiplies an ``N(0, 1)`` bias by ``beta`` (Jacot et al.); ``mup`` treats it as an
    input weight (Tensor Programs V, Table 3): spread ``beta``, SGD lr ``eta fan_out``, Adam lr ``eta``, so a bias of
    the readout (finite ``fan_out``) keeps a width-independent learning rate."""
    _check(parametrization, PARAMETRIZATIONS, "parametrization")
    _check(optimizer, OPTIMIZERS, "optimizer")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if parametrization == "sp":
        return Scaling(init_std=beta, lr_mult=float(sp_lr_mult), forward_mult=1.0)
    if parametrization == "ntk":
        return Scaling(init_std=1.0, lr_mult=1.0, forward_mult=beta)
    return Scaling(init_std=beta, lr_mult=fan_out / base_fan_out if optimizer == "sgd" else 1.0, forward_mult=1.0)


NO_BIAS = Scaling(init_std=0.0, lr_mult=0.0, forward_mult=0.0)


def mlp_scalings(sizes: Sequence[int], parametrization: str, *, optimizer: str = "sgd",
                 base_width: float | None = None, weight_var: float = 1.0, beta: float = 0.1, biases: bool = True,
                 zero_readout: bool = False, sp_lr_exponent: float = 0.0) -> list[LayerScalings]:
    """Scalings of every layer of an MLP with layer sizes ``(d_in, n_1, ..., n_L, d_out)``.

    The first layer is ``input``, the last ``output``, the others ``hidden``. ``base_width`` (default: 1, the raw
    powers of the paper) is the hidden width at which muP equals SP's numbers; SP's learning rate is multiplied by
    ``(width / base_width)^(-sp_lr_exponent)`` with ``width`` the largest hidden size. ``biases=False`` removes
    the biases' contribution (multiplier 0, learning rate 0).
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 3 or min(sizes) < 1:
        raise ValueError(f"sizes must list an input, at least one hidden and an output size, all >= 1; got {sizes}")
    base = 1.0 if base_width is None else float(base_width)
    if base <= 0:
        raise ValueError(f"base_width must be > 0, got {base_width}")
    width = max(sizes[1:-1])
    sp_lr = (width / base) ** (-float(sp_lr_exponent))
    n_layers = len(sizes) - 1
    out = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        kind = "input" if i == 0 else ("output" if i == n_layers - 1 else "hidden")
        base_in = base if kind != "input" else 1.0
        base_out = base if kind != "output" else 1.0
        w = layer_scaling(parametrization, kind, fan_in, fan_out, optimizer=optimizer, base_fan_in=base_in,
                          base_fan_out=base_out, weight_var=weight_var, zero_readout=zero_readout, sp_lr_mult=sp_lr)
        b = (bias_scaling(parametrization, fan_out, optimizer=optimizer, base_fan_out=base_out, beta=beta,
                          sp_lr_mult=sp_lr) if biases else NO_BIAS)
        out.append(LayerScalings(weight=w, bias=b))
    return out


def effective_exponents(scaling_at: Callable[[int], Scaling], widths: tuple[int, int] = (256, 4096)) -> Exponents:
    """Read ``(a, b, c)`` back from concrete numbers: ``forward_mult ~ n^{-a}``, ``init_std ~ n^{-b}``,
    ``lr_mult ~ n^{-c}``, from ``scaling_at(width)`` at two widths (a zero init gives ``b = inf``)."""
    s1, s2 = scaling_at(widths[0]), scaling_at(widths[1])
    span = math.log(widths[1] / widths[0])

    def exponent(v1: float, v2: float) -> float:
        if v1 == 0 and v2 == 0:
            return math.inf
        return -math.log(v2 / v1) / span

    return Exponents(exponent(s1.forward_mult, s2.forward_mult), exponent(s1.init_std, s2.init_std),
                     exponent(s1.lr_mult, s2.lr_mult))


# -- torch: the MLP family, optimizers, coordinate check -------------------------------------------------
def apply_scalings(model, scalings: Sequence[LayerScalings], generator=None):
    """Give a :class:`repro.core.mlp_torch.MLP` the forward multipliers of ``scalings`` and redraw its weights
    ``N(0, init_std^2)`` (weight then bias, layer by layer, as the MLP's own initializer does)."""
    import torch

    if len(scalings) != len(model.weights):
        raise ValueError(f"{len(scalings)} layer scalings for a model with {len(model.weights)} layers")
    model.multipliers = [(s.weight.forward_mult, s.bias.forward_mult) for s in scalings]
    model.scalings = list(scalings)
    with torch.no_grad():
        for w, b, s in zip(model.weights, model.biases, scalings):
            w.copy_(torch.randn(w.shape, generator=generator, dtype=w.dtype).mul_(s.weight.init_std))
            b.copy_(torch.randn(b.shape, generator=generator, dtype=b.dtype).mul_(s.bias.init_std))
    return model


def abc_mlp(sizes: Sequence[int], parametrization: str, *, activation: str | Callable = "relu",
            optimizer: str = "sgd", base_width: float | None = None, weight_var: float = 1.0, beta: float = 0.1,
            biases: bool = True, zero_readout: bool = False, sp_lr_exponent: float = 0.0, dtype=None, device=None,
            generator=None):
    """A :class:`repro.core.mlp_torch.MLP` in ``sp`` / ``ntk`` / ``mup`` (see :func:`mlp_scalings`); its
    ``scalings`` attribute feeds :func:`make_optimizer`."""
    import torch

    from repro.core.mlp_torch import MLP

    scalings = mlp_scalings(sizes, parametrization, optimizer=optimizer, base_width=base_width,
                            weight_var=weight_var, beta=beta, biases=biases, zero_readout=zero_readout,
                            sp_lr_exponent=sp_lr_exponent)
    # the MLP's own draw is thrown away (a private generator leaves the caller's and torch's global RNG alone);
    # apply_scalings then draws in the family's order, so "sp" / "ntk" match mlp_torch draw for draw
    model = MLP(sizes, parametrization="standard", activation=activation, dtype=dtype, device=device,
                generator=torch.Generator().manual_seed(0))
    return apply_scalings(model, scalings, generator)


def param_groups(pairs: Iterable[tuple[Any, Scaling]], lr: float) -> list[dict]:
    """Optimizer groups ``{"params": [p], "lr": lr * lr_mult}`` from ``(parameter, scaling)`` pairs; tensors with
    ``lr_mult = 0`` are left out (frozen)."""
    return [{"params": [p], "lr": lr * s.lr_mult} for p, s in pairs if s.lr_mult != 0]


def mlp_param_pairs(model) -> list[tuple[Any, Scaling]]:
    """``(parameter, scaling)`` pairs of an MLP prepared by :func:`apply_scalings`."""
    if not hasattr(model, "scalings"):
        raise ValueError("the model has no scalings: build it with abc_mlp or apply_scalings")
    pairs = []
    for w, b, s in zip(model.weights, model.biases, model.scalings):
        pairs += [(w, s.weight), (b, s.bias)]
    return pairs


class ScaledSGD:
    """Plain SGD (the paper's optimizer) with one learning rate per tensor, ``lr * lr_mult``; ``zero_grad`` /
    ``step`` / ``param_groups`` like a ``torch.optim`` optimizer. It exists because constructing the first
    ``torch.optim`` optimizer of a process costs seconds (torch imports its compiler stack), which the book's
    20-second smoke runs cannot afford; :func:`make_optimizer` gives the ``torch.optim`` equivalent."""

    def __init__(self, pairs: Iterable[tuple[Any, Scaling]], lr: float):
        if hasattr(pairs, "scalings"):
            pairs = mlp_param_pairs(pairs)
        self.param_groups = param_groups(pairs, lr)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.zero_()

    def step(self) -> None:
        import torch

        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-group["lr"])


def make_optimizer(pairs: Iterable[tuple[Any, Scaling]], lr: float, optimizer: str = "sgd", **kwargs):
    """``torch.optim.SGD`` or ``Adam`` with one learning rate per tensor, ``lr * lr_mult``. Pass a model built by
    :func:`abc_mlp` or any list of ``(parameter, scaling)`` pairs."""
    import torch

    _check(optimizer, OPTIMIZERS, "optimizer")
    if hasattr(pairs, "scalings"):
        pairs = mlp_param_pairs(pairs)
    groups = param_groups(pairs, lr)
    cls = torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam
    return cls(groups, lr=lr, **kwargs)


def mlp_features(model, x) -> list:
    """Pre-activations of every layer of a :class:`repro.core.mlp_torch.MLP`, the last being its output
    (the same computation as ``model(x)``, layer by layer)."""
    h, feats = x, []
    last = len(model.weights) - 1
    for i, (w, b, (mw, mb)) in enumerate(zip(model.weights, model.biases, model.multipliers)):
        h = mw * (h @ w.T) + mb * b
        feats.append(h)
        if i < last:
            h = model.act(h)
    return feats


def loglog_slope(widths, values) -> float:
    """Least-squares slope of ``log(values)`` against ``log(widths)``; NaN if any value is not positive/finite."""
    w, v = np.asarray(widths, float), np.asarray(values, float)
    if v.size < 2 or not np.all(np.isfinite(v)) or np.any(v <= 0):
        return float("nan")
    return float(np.polyfit(np.log(w), np.log(v), 1)[0])


@dataclass
class CoordCheck:
    """RMS sizes recorded by :func:`coord_check`; arrays are ``(widths, seeds, records, features)``."""

    widths: np.ndarray
    record_at: np.ndarray  # steps after which the change is measured (0 = init)
    rms: np.ndarray  # RMS of each feature (pre-activation) on the probe batch
    rms_change: np.ndarray  # RMS of (feature at that step - feature at init)
    losses: np.ndarray  # (widths, seeds, steps) training loss per step
    diverged: np.ndarray  # (widths, seeds) a loss or a feature became non-finite
    seconds: float = 0.0
    names: list[str] = field(default_factory=list)

    def mean_change(self) -> np.ndarray:
        """``(widths, records, features)`` mean over seeds (NaN where any seed diverged)."""
        return self.rms_change.mean(axis=1)

    def slopes(self, record: int | None = None) -> np.ndarray:
        """Log-log slope against width of the mean RMS change of each feature after step ``record``
        (default: the last recorded step)."""
        k = len(self.record_at) - 1 if record is None else int(np.flatnonzero(self.record_at == record)[0])
        mean = self.mean_change()[:, k]
        return np.array([loglog_slope(self.widths, mean[:, j]) for j in range(mean.shape[1])])


def coord_check(build: Callable[[int, int], tuple[Any, Any]], widths: Sequence[int],
                batch: Callable[[int], tuple[Any, Any]], loss_fn: Callable[[Any, Any], Any], probe, *,
                steps: int, seeds: int = 1, record_at: Sequence[int] | None = None,
                features: Callable[[Any, Any], list] = mlp_features, names: Sequence[str] | None = None,
                progress: bool = False) -> CoordCheck:
    """Coordinate check: how big each layer's features are and how much training moves them, across widths.

    ``build(width, seed) -> (model, optimizer)``; ``batch(step) -> (x, y)`` (the same data for every width and
    seed); ``loss_fn(outputs, y)``; ``probe``: inputs on which ``features(model, probe)`` (a list of tensors, e.g.
    :func:`mlp_features`) is measured before training and after each step in ``record_at``. Records
    ``sqrt(mean(h^2))`` and ``sqrt(mean((h_t - h_0)^2))`` per feature. A run whose loss or features stop being
    finite is marked diverged and its later records are NaN (the check goes on with the next run).
    """
    import torch

    widths = [int(w) for w in widths]
    if steps < 1 or seeds < 1 or not widths:
        raise ValueError("coord_check needs steps >= 1, seeds >= 1 and at least one width")
    record = sorted(set(int(s) for s in (record_at if record_at is not None else range(steps + 1))))
    if record[0] < 0 or record[-1] > steps:
        raise ValueError(f"record_at must lie in [0, {steps}]")
    rms = rms_change = None
    losses = np.full((len(widths), seeds, steps), np.nan)
    diverged = np.zeros((len(widths), seeds), bool)
    t0 = time.perf_counter()
    bar = None
    if progress:  # imported only when asked: tqdm.auto warns inside kernels without ipywidgets
        from tqdm.auto import tqdm

        bar = tqdm(total=len(widths) * seeds, desc="coord check")
    for i, width in enumerate(widths):
        for s in range(seeds):
            model, opt = build(width, s)
            with torch.no_grad():
                h0 = [f.detach().clone() for f in features(model, probe)]
            if rms is None:
                shape = (len(widths), seeds, len(record), len(h0))
                rms, rms_change = np.full(shape, np.nan), np.full(shape, np.nan)

            def measure(k: int, current) -> bool:
                ok = True
                for j, (h, h_init) in enumerate(zip(current, h0)):
                    size = float(h.double().pow(2).mean().sqrt())
                    change = float((h.double() - h_init.double()).pow(2).mean().sqrt())
                    ok = ok and math.isfinite(size) and math.isfinite(change)
                    rms[i, s, k, j], rms_change[i, s, k, j] = size, change
                return ok

            if 0 in record:
                measure(record.index(0), h0)
            for step in range(steps):
                x, y = batch(step)
                loss = loss_fn(model(x), y)
                if not torch.isfinite(loss):
                    diverged[i, s] = True
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses[i, s, step] = float(loss.detach())
                if step + 1 in record:
                    with torch.no_grad():
                        if not measure(record.index(step + 1), features(model, probe)):
                            diverged[i, s] = True
                            break
            if diverged[i, s]:  # a record taken at the blow-up is not a measurement (later ones were never taken)
                bad = ~np.all(np.isfinite(rms[i, s]) & np.isfinite(rms_change[i, s]), axis=-1)
                rms[i, s, bad], rms_change[i, s, bad] = np.nan, np.nan
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    n_feat = rms.shape[-1]
    names = list(names) if names is not None else [f"h{j + 1}" for j in range(n_feat - 1)] + ["output"]
    return CoordCheck(widths=np.array(widths), record_at=np.array(record), rms=rms, rms_change=rms_change,
                      losses=losses, diverged=diverged, seconds=time.perf_counter() - t0, names=names)
