"""Forward multipliers of the MLP family, shared by ``mlp_jax`` and ``mlp_torch`` (no framework imports).

- ``"ntk"``: N(0, 1) weights, forward multiplier ``sqrt(weight_var / fan_in)``, bias ``beta`` (Jacot et al.).
- ``"standard"``: multipliers 1; the initialization carries the scale.
- ``"mup"``: as ``"ntk"`` but the readout uses ``sqrt(weight_var) / fan_in`` (and its bias ``beta / sqrt(fan_in)``);
  with an SGD learning rate proportional to the width this is the maximal-update parametrization (Yang & Hu
  2021, Definition 5.1, up to the abc symmetry). The width-scaled learning-rate rule is for SGD only; for the
  full per-tensor abc machinery (Adam, base widths) see :mod:`repro.core.abc_parametrization`.
"""

from __future__ import annotations

from typing import Sequence

PARAMETRIZATIONS: tuple[str, ...] = ("ntk", "standard", "mup")


def check_parametrization(parametrization: str) -> None:
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"unknown parametrization {parametrization!r}; choose one of "
                         f"{', '.join(PARAMETRIZATIONS)}")


def layer_multipliers(sizes: Sequence[int], parametrization: str = "ntk", weight_var: float = 1.0,
                      beta: float = 0.1) -> list[tuple[float, float]]:
    """``(weight multiplier, bias multiplier)`` of each layer in the forward pass."""
    check_parametrization(parametrization)
    s = float(weight_var) ** 0.5
    out = []
    last = len(sizes) - 2
    for i, fan_in in enumerate(sizes[:-1]):
        if parametrization == "standard":
            out.append((1.0, 1.0))
        elif parametrization == "mup" and i == last:
            # readout weights 1/fan_in; its bias gets beta/sqrt(fan_in) so that, with the width-scaled
            # SGD learning rate of this scheme, the bias moves the output by O(1) at any width
            out.append((s / fan_in, beta / fan_in**0.5))
        else:
            out.append((s / fan_in**0.5, beta))
    return out
