"""Full-batch gradient descent in JAX, with snapshots every ``record_every`` steps.

One loop for every JAX paper of the book::

    loss = mse_loss(apply)                       # (params, x, y) -> scalar, on the full batch
    result = gradient_descent(loss, params, steps=1000, lr=1.0, args=(x, y),
                              record_fn=record, record_every=10)   # record(params, x, y) -> dict
    result.params, result.history["step"], result.history["loss"], result.history[...]

``loss_fn(params, *args) -> scalar`` takes the (full) training batch in ``args``. The update is plain GD,
``theta <- theta - lr * grad``. Steps run inside ``jax.lax.scan``; without a ``callback`` up to
``snapshots_per_call`` snapshots are taken inside one compiled call, so tiny models are not slowed down by
Python dispatch, and a whole run compiles one or two functions. With a ``callback(step, params, record)``
the loop returns to Python at every snapshot (for things that are not jittable or too big to stack, e.g.
an empirical NTK), and whatever dict the callback returns is added to the history; the callback must
not keep ``params`` (their buffers are reused by the next call; copy what you need).

Ensembles: a loss that sums the losses of independent networks (parameters with a leading seed axis,
``jax.vmap`` over it) gives each network exactly its own gradient, so one call trains them all.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class TrainResult(NamedTuple):
    params: Any
    history: dict[str, np.ndarray]  # "step": (S,), "loss": (S,), and each recorded key stacked (S, ...)


def _stack(values: list) -> Any:
    try:
        return np.stack([np.asarray(v) for v in values])
    except (ValueError, TypeError):
        return values


@lru_cache(maxsize=128)
def _compiled(loss_fn: Callable, record_fn: Callable | None):
    """Jitted pieces for one (loss, record) pair, reused by every call with the same two functions."""
    value_and_grad = jax.value_and_grad(loss_fn)

    def record(p, args):
        rec = dict(record_fn(p, *args)) if record_fn is not None else {}
        if "loss" not in rec:  # a record_fn may return the loss itself (from outputs it computes anyway)
            rec["loss"] = loss_fn(p, *args)
        return rec

    def advance(p, lr, args, n):
        def step(q, _):
            _, g = value_and_grad(q, *args)
            return jax.tree_util.tree_map(lambda a, b: a - lr * b, q, g), None

        return jax.lax.scan(step, p, None, length=n)[0]

    def segments(p, lr, args, n, m):
        """The snapshot of ``p``, then ``m`` times (``n`` steps, then a snapshot), in one call."""

        def body(q, _):
            q = advance(q, lr, args, n)
            return q, record(q, args)

        start = record(p, args)  # used by the first call only: one forward pass, and no second compile
        p, recs = jax.lax.scan(body, p, None, length=m)
        return p, start, recs

    # one compiled function per (n, m): a run compiles once or twice, not once per snapshot
    return jax.jit(segments, static_argnums=(3, 4), donate_argnums=0)


def _plan(steps: int, every: int, per_call: int) -> list[tuple[int, int]]:
    """Split ``steps`` into calls of ``m`` segments of ``n`` steps, with as few distinct shapes as possible."""
    full, rest = divmod(steps, every)
    calls = []
    if full:
        # the largest divisor of ``full`` up to ``per_call``, unless that makes the calls far too small
        m = max(d for d in range(1, min(per_call, full) + 1) if full % d == 0)
        if m * 4 < min(per_call, full):
            m = min(per_call, full)
        while full:
            calls.append((every, min(m, full)))
            full -= min(m, full)
    if rest:
        calls.append((rest, 1))
    return calls


def gradient_descent(loss_fn: Callable[..., jax.Array], params: Any, steps: int, lr: float, *, args: tuple = (),
                     record_fn: Callable[..., dict] | None = None, record_every: int | None = None,
                     callback: Callable[[int, Any, dict], dict | None] | None = None,
                     snapshots_per_call: int = 64, progress: bool = False) -> TrainResult:
    """Run ``steps`` of full-batch GD on ``loss_fn(params, *args)`` from ``params`` (not modified).

    Snapshots are taken at step 0, every ``record_every`` steps (default: only at the start and the end)
    and at the last step; each holds the arrays of ``record_fn(params, *args)`` and ``loss`` (computed
    with ``loss_fn`` unless ``record_fn`` returns it). Compiled code is cached per ``(loss_fn,
    record_fn)`` pair: pass data through ``args`` and reuse the same two functions to train many
    networks without recompiling (a new lambda per call compiles again).
    """
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    steps = int(steps)
    every = int(record_every or max(steps, 1))
    if every < 1:
        raise ValueError(f"record_every must be >= 1, got {record_every!r}")
    run = _compiled(loss_fn, record_fn)
    lr = jnp.asarray(lr, dtype=jax.tree_util.tree_leaves(params)[0].dtype)
    args = tuple(args)
    params = jax.tree_util.tree_map(jnp.array, params)  # a copy: the compiled calls donate their input
    calls = _plan(steps, every, 1 if callback else max(1, snapshots_per_call))
    if not calls:  # no steps: just the starting snapshot
        calls = [(0, 1)]

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="gradient descent", leave=False)
    history: dict[str, list] = {"step": []}
    done = 0

    def add(step, p, rec):
        extra = callback(step, p, rec) if callback else None
        history["step"].append(step)
        for key, value in {**rec, **(extra or {})}.items():
            history.setdefault(key, []).append(value)

    for i, (n, m) in enumerate(calls):
        before = jax.tree_util.tree_map(jnp.array, params) if (i == 0 and callback) else None  # survives donation
        params, start, stacked = run(params, lr, args, n, m)
        if i == 0:
            add(0, before, jax.device_get(start))
        stacked = jax.device_get(stacked)
        for j in range(m if n else 0):
            done += n
            add(done, params, {k: v[j] for k, v in stacked.items()})
        if bar is not None:
            bar.update(n * m)
    if bar is not None:
        bar.close()
    return TrainResult(params=params, history={k: _stack(v) for k, v in history.items()})


def mse_loss(apply_fn: Callable) -> Callable[..., jax.Array]:
    """``(params, x, y) -> 1/(2N) ||f(x) - y||^2`` (summed over outputs), the loss of Jacot et al.

    Cached per ``apply_fn``, so that training loops reuse their compiled code.
    """
    return _mse_loss(apply_fn)


@lru_cache(maxsize=128)
def _mse_loss(apply_fn):
    def loss(params, x, y):
        out = apply_fn(params, x)
        return 0.5 * jnp.sum((out.reshape(y.shape) - y) ** 2) / x.shape[0]

    return loss
