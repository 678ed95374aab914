"""The project's one generic torch training loop.

    history = train(model, batches, loss_fn, steps=3000, lr=1e-3, warmup=0.1, grad_clip=1.0,
                    eval_fn=evaluate, eval_at=[1500, 3000], checkpoint_at=[750, 1500, 3000])

- ``batches``: a callable ``step -> batch`` (fresh prior samples every step, say) or any iterable.
- ``loss_fn(model, batch) -> scalar tensor``; the batch is moved to the device first (tensors inside
  tuples, lists and dicts too).
- Adam / AdamW, a linear warm-up over the first ``warmup`` fraction of the steps then cosine decay to
  ``min_lr_ratio * lr`` (or a constant rate), optional gradient-norm clipping, optional bf16 autocast on GPU.
- ``eval_fn(model, step)`` runs after the listed steps (0 = before training) in eval mode and without
  gradients; its return values and CPU copies of the weights at ``checkpoint_at`` steps are kept.
- Per-step losses, learning rates and gradient norms are kept on the device and copied back once at the
  end, so the loop never waits on the GPU except to update the progress bar every ``log_every`` steps.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn


def warmup_cosine_factor(step: int, total: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier at 0-based ``step``: linear 0 -> 1 over warm-up, then cosine 1 -> min_ratio."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def to_device(batch: Any, device: torch.device | str) -> Any:
    """Move every tensor inside (nested) tuples, lists and dicts to ``device``."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [to_device(v, device) for v in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch


@dataclass
class TrainHistory:
    losses: np.ndarray  # (steps,) training loss at each step
    lrs: np.ndarray  # (steps,) learning rate used at each step
    grad_norms: np.ndarray  # (steps,) gradient norm before clipping (NaN if clipping is off)
    evals: dict[int, Any] = field(default_factory=dict)  # step -> eval_fn result
    checkpoints: dict[int, dict] = field(default_factory=dict)  # step -> state_dict (CPU copies)
    seconds: float = 0.0  # wall time of the optimisation steps (evaluations excluded)
    eval_seconds: float = 0.0

    @property
    def steps(self) -> int:
        return len(self.losses)

    def smoothed(self, window: int = 50) -> np.ndarray:
        """Running mean of the loss over ``window`` steps (same length as ``losses``)."""
        c = np.cumsum(np.insert(np.asarray(self.losses, dtype=np.float64), 0, 0.0))
        idx = np.arange(1, len(c))
        lo = np.maximum(0, idx - window)
        return (c[idx] - c[lo]) / (idx - lo)


def make_optimizer(params: Iterable[torch.nn.Parameter], name: str, lr: float, weight_decay: float,
                   betas: tuple[float, float], momentum: float = 0.0) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'adam', 'adamw', 'sgd' or a torch.optim.Optimizer, got {name!r}")


def train(model: nn.Module, batches: Callable[[int], Any] | Iterable[Any],
          loss_fn: Callable[[nn.Module, Any], torch.Tensor], *, steps: int, lr: float = 1e-3,
          optimizer: str | torch.optim.Optimizer = "adam", weight_decay: float = 0.0,
          betas: tuple[float, float] = (0.9, 0.999), momentum: float = 0.0,
          warmup: float = 0.1, schedule: str = "cosine", min_lr_ratio: float = 0.0,
          grad_clip: float | None = None, device: torch.device | str | None = None, amp: bool = False,
          eval_fn: Callable[[nn.Module, int], Any] | None = None, eval_at: Iterable[int] = (),
          checkpoint_at: Iterable[int] = (), progress: bool = True, log_every: int = 50,
          desc: str = "train") -> TrainHistory:
    """Optimise ``model`` for ``steps`` steps on ``loss_fn(model, batch)``; returns a :class:`TrainHistory`.

    ``warmup`` is a fraction of ``steps`` in [0, 1); ``schedule`` is ``"cosine"`` (after the warm-up) or
    ``"constant"``. ``eval_at`` / ``checkpoint_at`` count completed steps (0 = before the first step).
    ``amp`` uses bf16 autocast on CUDA and is ignored on CPU. The model is left in eval mode on ``device``.
    ``optimizer`` may also be a ready :class:`torch.optim.Optimizer` over the model's parameters: each of its
    parameter groups keeps its own learning rate (per-layer rates, as in muP), scaled by the schedule; ``lr``
    is then only the rate recorded in the history.
    """
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if not 0.0 <= warmup < 1.0:
        raise ValueError("warmup is a fraction of the steps in [0, 1)")
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    eval_at, checkpoint_at = set(int(s) for s in eval_at), set(int(s) for s in checkpoint_at)
    bad = sorted(s for s in eval_at | checkpoint_at if not 0 <= s <= steps)
    if bad:
        raise ValueError(f"eval/checkpoint steps {bad} are outside [0, {steps}]")
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    model.to(device)
    if isinstance(optimizer, torch.optim.Optimizer):
        opt = optimizer
        base_lrs = [float(g["lr"]) for g in opt.param_groups]
    else:
        opt = make_optimizer(model.parameters(), optimizer, lr, weight_decay, betas, momentum)
        base_lrs = [lr] * len(opt.param_groups)
    warmup_steps = int(round(warmup * steps))

    def factor(step: int) -> float:
        if schedule == "constant":
            return min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
        return warmup_cosine_factor(step, steps, warmup_steps, min_lr_ratio)

    get_batch = batches if callable(batches) else iter(batches).__next__
    use_amp = amp and device.type == "cuda"
    losses = torch.zeros(steps, device=device)
    norms = torch.full((steps,), float("nan"), device=device)
    lrs = np.zeros(steps)
    history = TrainHistory(losses=np.zeros(0), lrs=lrs, grad_norms=np.zeros(0))

    def after(step: int) -> None:
        if step in checkpoint_at:
            history.checkpoints[step] = {k: v.detach().to("cpu", copy=True)
                                         for k, v in model.state_dict().items()}
        if eval_fn is not None and step in eval_at:
            t0 = time.perf_counter()
            model.eval()
            with torch.no_grad():
                history.evals[step] = eval_fn(model, step)
            history.eval_seconds += time.perf_counter() - t0

    from tqdm.auto import tqdm

    after(0)
    bar = tqdm(range(steps), desc=desc, disable=not progress, mininterval=1.0)
    t_start = time.perf_counter()
    for step in bar:
        model.train()
        f = factor(step)
        lrs[step] = lr * f
        for group, base in zip(opt.param_groups, base_lrs):
            group["lr"] = base * f
        batch = to_device(get_batch(step) if callable(batches) else get_batch(), device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = loss_fn(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            norms[step] = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        losses[step] = loss.detach().float()
        if progress and (step + 1) % log_every == 0:
            bar.set_postfix(loss=f"{losses[step + 1 - log_every: step + 1].mean().item():.4f}")
        if step + 1 in eval_at or step + 1 in checkpoint_at:
            t_pause = time.perf_counter()
            after(step + 1)
            t_start += time.perf_counter() - t_pause  # evaluations do not count as training time
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    history.seconds = time.perf_counter() - t_start
    bar.close()
    model.eval()
    history.losses = losses.cpu().numpy()
    history.grad_norms = norms.cpu().numpy()
    return history
