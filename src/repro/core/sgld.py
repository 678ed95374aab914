"""Langevin sampling of network posteriors (SGLD) and ensemble predictors.

Stochastic gradient Langevin dynamics (Welling & Teh, ICML 2011) discretizes the Langevin diffusion
``d theta = -grad U(theta) dt + sqrt(2 T) dB`` whose stationary law is ``exp(-U / T)``. With the potential

    U(theta) = -log P(S | theta) - log w(theta)     (likelihood summed over ALL n samples, plus the prior)

and temperature ``T = 1`` that law is the Bayesian posterior. One step of :class:`SGLD` is

    theta <- theta - lr * grad U(theta) + sqrt(2 * lr * T) * xi,     xi ~ N(0, I),

(``lr`` is the time step; Welling & Teh's ``epsilon / 2``). With mini-batches, estimate the likelihood part of
``U`` as ``(n / batch_size) * sum over the batch`` so its scale stays the full-data one; a mean over the batch
samples a posterior ``n`` times too wide in log-likelihood terms (a tempered, overconfident-in-the-prior
law). The discretization is unbiased only as ``lr -> 0``: keep ``lr * (largest curvature of U)`` well below 1.

Pieces:

- :class:`SGLD`: the optimizer (``temperature=0`` is plain gradient descent; ``prior_precision`` adds an
  isotropic Gaussian prior ``N(0, 1/prior_precision)`` to ``U`` without writing it in the loss);
- :func:`langevin`: run a chain for ``steps`` steps on any ``potential(model) -> scalar`` and keep samples
  after a burn-in;
- :class:`StackedEnsemble`: ``E`` copies of one ``nn.Module`` with stacked parameters and one vectorized
  forward (``torch.func``), so ``E`` independent chains (or ``E`` deep-ensemble members) step together;
- :func:`ensemble_log_predictive`: the ensemble's predictive ``log (1/E) sum_e p_e`` from member log-probs.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn


class SGLD(torch.optim.Optimizer):
    """``theta <- theta - lr * (grad + prior_precision * theta) + sqrt(2 lr T) xi`` for every parameter.

    ``generator`` (on the parameters' device) makes the noise reproducible; without it torch's global RNG is used.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, *, temperature: float = 1.0,
                 prior_precision: float = 0.0, generator: torch.Generator | None = None):
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if prior_precision < 0:
            raise ValueError(f"prior_precision must be >= 0, got {prior_precision}")
        super().__init__(params, dict(lr=lr, temperature=temperature, prior_precision=prior_precision))
        self.generator = generator

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, temp, prec = group["lr"], group["temperature"], group["prior_precision"]
            noise_std = math.sqrt(2.0 * lr * temp)
            for p in group["params"]:
                if p.grad is None:
                    continue
                drift = p.grad if prec == 0 else p.grad.add(p, alpha=prec)
                p.add_(drift, alpha=-lr)
                if noise_std > 0:
                    p.add_(torch.randn(p.shape, generator=self.generator, device=p.device, dtype=p.dtype),
                           alpha=noise_std)
        return loss


@dataclass
class LangevinRun:
    samples: list[dict[str, torch.Tensor]]  # CPU copies of the state dict at each kept step
    sample_steps: list[int]  # the (1-based) steps at which they were taken
    potentials: np.ndarray  # (steps,) U at each step (before the update)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def langevin(model: nn.Module, potential: Callable[[nn.Module, int], torch.Tensor], *, steps: int, lr: float,
             temperature: float = 1.0, prior_precision: float = 0.0, burn_in: int = 0, sample_every: int = 0,
             generator: torch.Generator | None = None, progress: bool = False,
             desc: str = "SGLD") -> LangevinRun:
    """Run SGLD on ``model`` for ``steps`` steps of ``potential(model, step)``; keep samples after ``burn_in``.

    ``sample_every = 0`` keeps only the final state; otherwise every ``sample_every``-th step after ``burn_in``
    (and the final one). ``potential`` must return the full-data potential (see the module docstring). The
    model's parameters are updated in place and end at the last state.
    """
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if not 0 <= burn_in < steps:
        raise ValueError(f"burn_in must be in [0, steps), got {burn_in}")
    opt = SGLD(model.parameters(), lr, temperature=temperature, prior_precision=prior_precision,
               generator=generator)
    device = next(model.parameters()).device
    potentials = torch.zeros(steps, device=device)
    samples, kept = [], []
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    for step in tqdm(range(steps), desc=desc, disable=not progress, mininterval=1.0, leave=False):
        opt.zero_grad(set_to_none=True)
        u = potential(model, step)
        u.backward()
        opt.step()
        potentials[step] = u.detach()
        done = step + 1
        if done == steps or (sample_every and done > burn_in and (done - burn_in) % sample_every == 0):
            samples.append({k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})
            kept.append(done)
    return LangevinRun(samples=samples, sample_steps=kept, potentials=potentials.cpu().numpy(),
                       seconds=time.perf_counter() - t0)


class StackedEnsemble(nn.Module):
    """``n_members`` independent copies of ``make_member()`` evaluated with one vectorized call.

    Parameters are stacked on a leading axis (``stacked[i]`` has shape ``(n_members, *shape_i)``), so an
    optimizer over ``ensemble.parameters()`` updates every member at once and a loss that sums the members'
    losses gives each member its own gradient. ``forward(x)`` returns ``(n_members, *member_output)``; with
    ``per_member_inputs=True`` ``x`` carries a leading member axis too.
    """

    def __init__(self, make_member: Callable[[], nn.Module], n_members: int):
        super().__init__()
        if n_members < 1:
            raise ValueError(f"n_members must be >= 1, got {n_members}")
        members = [make_member() for _ in range(n_members)]
        params, buffers = torch.func.stack_module_state(members)
        self.names = list(params)
        self.buffer_names = list(buffers)
        self.stacked = nn.ParameterList([nn.Parameter(params[n].detach().clone()) for n in self.names])
        for i, n in enumerate(self.buffer_names):
            self.register_buffer(f"_buffer{i}", buffers[n].clone())
        self._base = [copy.deepcopy(members[0]).to("meta")]  # in a list: not registered as a submodule
        self.n_members = n_members

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        params = dict(zip(self.names, self.stacked))
        buffers = {n: getattr(self, f"_buffer{i}") for i, n in enumerate(self.buffer_names)}
        return params, buffers

    def forward(self, x: torch.Tensor, *, per_member_inputs: bool = False) -> torch.Tensor:
        base = self._base[0]
        params, buffers = self._state()

        def one(p, b, inp):
            return torch.func.functional_call(base, (p, b), (inp,))

        return torch.vmap(one, in_dims=(0, 0, 0 if per_member_inputs else None))(params, buffers, x)

    def member(self, i: int) -> nn.Module:
        """A standalone copy of member ``i`` (on the ensemble's device)."""
        m = copy.deepcopy(self._base[0]).to_empty(device=self.stacked[0].device)
        params, buffers = self._state()
        m.load_state_dict({**{k: v[i] for k, v in params.items()}, **{k: v[i] for k, v in buffers.items()}})
        return m


def ensemble_log_predictive(log_probs: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``log (1/E) sum_e exp(log_probs_e)`` along ``dim``: the ensemble average of the members' predictive
    probabilities (a mixture with equal weights, the Monte Carlo estimate of a posterior predictive)."""
    return torch.logsumexp(log_probs, dim) - math.log(log_probs.shape[dim])
