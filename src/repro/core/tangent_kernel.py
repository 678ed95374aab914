"""Empirical neural tangent kernels of finite networks: ``Theta(x, x') = J(x) J(x')^T``, JAX and torch.

``J(x)`` is the Jacobian of the network outputs at ``x`` with respect to all parameters, so
``Theta_ab(x, x') = sum_p d f_a(x)/d theta_p * d f_b(x')/d theta_p`` (Jacot et al. 2018, Sec. 3).

Which outputs (``output=``):

- ``None``: the full kernel, ``(n1, n2, k, k)``; squeezed to ``(n1, n2)`` for single-output networks;
- an ``int`` ``a``: ``Theta_aa``, the kernel of one output coordinate, ``(n1, n2)`` (compare this with the
  infinite-width limit, which is ``Theta_inf (x) I_k``);
- ``"trace"``: ``mean_a Theta_aa``, ``(n1, n2)`` (a lower-variance estimate of the per-output limit);
- ``"sum"``: the kernel of ``sum_a f_a`` ("sum of logits"), ``(n1, n2)``.

Functions:

- :func:`empirical_ntk`: any JAX network ``apply_fn(params, x)``. The Jacobian of one example holds
  ``k * n_params`` numbers (67 MB for a width-2048 depth-4 MLP in float64); examples are processed in
  chunks sized to ``max_memory_mb``, and when the Jacobians of ``x2`` do not fit the kernel is formed with
  forward-mode products ``J(x2) v`` instead;
- :func:`mlp_ntk`: the MLPs of :mod:`repro.core.mlp_jax`, exactly, from each layer's inputs and
  back-propagated signals, with no Jacobian at all: memory ``O(n * width)``, one forward and one backward
  pass. Use it for wide networks;
- :func:`ntk_jvp_row`: one row ``Theta(x0, .)`` by a backward and a forward-mode pass;
- :func:`empirical_ntk_torch`: any torch module, via ``torch.func`` (``jacrev`` + ``vmap``), chunked.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np

OUTPUTS_HELP = "output must be None, an output index, 'trace' or 'sum'"


def _check_output(output) -> None:
    if output is None or output in ("trace", "sum"):
        return
    if isinstance(output, (int, np.integer)) and not isinstance(output, bool):
        return
    raise ValueError(f"{OUTPUTS_HELP}; got {output!r}")


def _chunk_size(n_params: int, n_out: int, itemsize: int, max_memory_mb: float, copies: int = 2) -> int:
    per_example = max(1, n_params * n_out * itemsize)
    return max(1, int(max_memory_mb * 2**20 // (copies * per_example)))


def _reduce(block, output, n_out: int, single: bool):
    """(n1, n2, k', k') block -> the requested kernel."""
    if output == "trace":
        return sum(block[:, :, a, a] for a in range(n_out)) / n_out
    if output is None and not single:
        return block
    return block[:, :, 0, 0]


# -- JAX ----------------------------------------------------------------------------------------------
def _select_outputs(out, output):
    """``(n, k')``: the network outputs that ``output`` asks for."""
    out = out[:, None] if out.ndim == 1 else out
    if output == "sum":
        return out.sum(axis=1, keepdims=True)
    if isinstance(output, (int, np.integer)):
        return out[:, output : output + 1]
    return out


def _selected(apply_fn: Callable, output):
    return lambda p, x: _select_outputs(apply_fn(p, x), output)


@lru_cache(maxsize=64)
def _compiled(apply_fn: Callable, output):
    """Jitted Jacobian / contraction / push-forward for one network function (compiled once per shape)."""
    import jax
    import jax.numpy as jnp

    f = _selected(apply_fn, output)
    jac_tree = jax.jit(jax.jacrev(f))  # leaves (c, k', *leaf_shape)

    @jax.jit
    def jac(p, x):
        j = jax.jacrev(f)(p, x)
        return [leaf.reshape(x.shape[0], leaf.shape[1], -1) for leaf in jax.tree_util.tree_leaves(j)]

    @jax.jit
    def contract(ja, jb):  # (ca, cb, k', k')
        return sum(jnp.einsum("iap,jbp->ijab", a, b) for a, b in zip(ja, jb))

    @jax.jit
    def push(p, tangents, x):  # J(x) v for each Jacobian row v: (c, k', n2, k')
        def one(v):
            return jax.jvp(lambda q: f(q, x), (p,), (v,))[1]

        return jax.vmap(jax.vmap(one))(tangents)

    return jac_tree, jac, contract, push


def empirical_ntk(apply_fn: Callable, params, x1, x2=None, *, output=None, chunk_size: int | None = None,
                  max_memory_mb: float = 512.0, method: str = "auto"):
    """Empirical NTK of a JAX network ``apply_fn(params, x) -> (n, k)`` (or ``(n,)``).

    ``x2=None`` computes the Gram matrix of ``x1`` (made exactly symmetric). ``method``: ``"jacobian"``
    (store chunks of per-example Jacobians and contract them), ``"jvp"`` (Jacobian chunks of ``x1`` only,
    pushed forward through the network at ``x2``), or ``"auto"`` (``jacobian`` when the Jacobians of
    ``x1`` and ``x2`` fit in ``max_memory_mb`` together). Compiled functions are cached per ``apply_fn``
    object, so pass the same function (not a new lambda) in loops. Returns a JAX array.
    """
    import jax
    import jax.numpy as jnp

    _check_output(output)
    if method not in ("auto", "jacobian", "jvp"):
        raise ValueError(f"unknown method {method!r}; choose auto, jacobian or jvp")
    x1 = jnp.asarray(x1)
    sym = x2 is None
    x2 = x1 if sym else jnp.asarray(x2)
    probe = jax.eval_shape(apply_fn, params, x1[:1])
    single = len(probe.shape) == 1 or probe.shape[-1] == 1
    k = 1 if len(probe.shape) == 1 else probe.shape[-1]
    if isinstance(output, (int, np.integer)) and not 0 <= output < k:
        raise ValueError(f"output index {output} out of range for {k} outputs")
    n_out = 1 if (output == "sum" or isinstance(output, (int, np.integer))) else k
    leaves = jax.tree_util.tree_leaves(params)
    n_params = sum(leaf.size for leaf in leaves)
    itemsize = leaves[0].dtype.itemsize
    budget_rows = _chunk_size(n_params, n_out, itemsize, max_memory_mb, copies=1)
    chunk = chunk_size or max(1, budget_rows // 2)
    if method == "auto":
        method = "jacobian" if budget_rows >= x1.shape[0] + (0 if sym else x2.shape[0]) else "jvp"
    jac_tree, jac, contract, push = _compiled(apply_fn, int(output) if isinstance(output, np.integer) else output)

    def pad(x, c):  # equal chunk shapes: one compilation
        m = x.shape[0]
        return x if m == c else jnp.concatenate([x, jnp.repeat(x[-1:], c - m, axis=0)])

    def chunks(x):
        c = min(chunk, x.shape[0])
        return [(s, min(s + c, x.shape[0]), pad(x[s : s + c], c)) for s in range(0, x.shape[0], c)]

    rows = []
    if method == "jacobian":
        c2 = chunks(x2)
        for i, (s1, e1, xa) in enumerate(chunks(x1)):
            ja = jac(params, xa)
            row = []
            for j, (s2, e2, xb) in enumerate(c2):
                if sym and j < i:
                    row.append(None)  # the transpose of a block already computed
                    continue
                jb = ja if (sym and j == i) else jac(params, xb)
                row.append(contract(ja, jb)[: e1 - s1, : e2 - s2])
            rows.append(row)
        if sym:
            for i, row in enumerate(rows):
                for j in range(i):
                    row[j] = jnp.transpose(rows[j][i], (1, 0, 3, 2))
        full = jnp.concatenate([jnp.concatenate(row, axis=1) for row in rows], axis=0)
    else:
        for s1, e1, xa in chunks(x1):
            block = push(params, jac_tree(params, xa), x2)  # (c, k', n2, k')
            rows.append(jnp.transpose(block, (0, 2, 1, 3))[: e1 - s1])
        full = jnp.concatenate(rows, axis=0)
    if sym:
        full = 0.5 * (full + jnp.transpose(full, (1, 0, 3, 2)))
    return _reduce(full, output, n_out, single)


@lru_cache(maxsize=64)
def _row_fn(apply_fn: Callable, output: int):
    import jax

    def f(p, xs):
        out = apply_fn(p, xs)
        return out if out.ndim == 1 else out[:, output]

    @jax.jit
    def row(p, x0, x):
        g0 = jax.grad(lambda q: f(q, x0)[0])(p)
        return jax.jvp(lambda q: f(q, x), (p,), (g0,))[1]

    return row


def ntk_jvp_row(apply_fn: Callable, params, x0, x, *, output: int = 0):
    """``Theta(x0, x)`` for one point ``x0`` against many ``x``, with one backward and one forward pass.

    ``Theta(x0, x) = J(x) grad f(x0)``: cheap at any width (no Jacobian is stored). Returns ``(n,)``.
    """
    import jax.numpy as jnp

    x0 = jnp.atleast_2d(jnp.asarray(x0))
    return _row_fn(apply_fn, int(output))(params, x0, jnp.asarray(x))


@lru_cache(maxsize=64)
def _mlp_ntk_fn(parametrization: str, activation, beta: float, weight_var: float, output):
    import jax
    import jax.numpy as jnp

    from repro.core.mlp_jax import hidden_sizes, layer_multipliers, mlp_forward

    def signals(params, x):
        """Inputs ``a_l`` (n, fan_in) and back-propagated ``d f_a / d h_{l+1}`` (k', n, fan_out) per layer."""
        zeros = [jnp.zeros((x.shape[0], layer["w"].shape[1]), x.dtype) for layer in params]

        def f(shifts):
            out, inputs = mlp_forward(params, x, parametrization=parametrization, activation=activation,
                                      beta=beta, weight_var=weight_var, shifts=shifts)
            return _select_outputs(out, output), inputs

        out, pullback, inputs = jax.vjp(f, zeros, has_aux=True)
        n_out = out.shape[1]
        cot = jnp.broadcast_to(jnp.eye(n_out, dtype=out.dtype)[:, None, :], (n_out,) + out.shape)
        (deltas,) = jax.vmap(pullback)(cot)  # examples are independent: one pullback serves them all
        return inputs, deltas

    @jax.jit
    def kernel(params, x1, x2):
        mults = layer_multipliers(hidden_sizes(params), parametrization, weight_var, beta)
        a1, d1 = signals(params, x1)
        a2, d2 = (a1, d1) if x2 is None else signals(params, x2)
        total = 0.0
        for (mw, mb), u1, u2, g1, g2 in zip(mults, a1, a2, d1, d2):
            # d h / d W = mw * a (x) delta, d h / d b = mb * delta
            feat = mw**2 * (u1 @ u2.T) + mb**2
            total = total + feat[:, :, None, None] * jnp.einsum("aip,bjp->ijab", g1, g2)
        return total

    return kernel


def mlp_ntk(params, x1, x2=None, *, parametrization: str = "ntk", activation="relu", beta: float = 0.1,
            weight_var: float = 1.0, output=None):
    """Exact empirical NTK of a :mod:`repro.core.mlp_jax` network, without forming any Jacobian.

    Per layer, the gradient of ``f_a`` w.r.t. ``W_l`` is ``m_l a_l (x) delta_{l,a}`` and w.r.t. ``b_l`` is
    ``mb_l delta_{l,a}``, so ``Theta_ab(x, x') = sum_l (m_l^2 a_l(x).a_l(x') + mb_l^2) delta_{l,a}(x).delta_{l,b}(x')``:
    one forward and one backward pass per input set, memory ``O(n * width)`` instead of
    ``O(n * n_params)``. Same ``output`` semantics and shapes as :func:`empirical_ntk`; the settings must
    be those the network is applied with.
    """
    import jax.numpy as jnp

    _check_output(output)
    x1 = jnp.asarray(x1)
    sym = x2 is None
    x2 = None if sym else jnp.asarray(x2)
    k = params[-1]["w"].shape[1]
    if isinstance(output, (int, np.integer)) and not 0 <= output < k:
        raise ValueError(f"output index {output} out of range for {k} outputs")
    out_key = int(output) if isinstance(output, np.integer) else output
    full = _mlp_ntk_fn(parametrization, activation, float(beta), float(weight_var), out_key)(params, x1, x2)
    if sym:
        full = 0.5 * (full + jnp.transpose(full, (1, 0, 3, 2)))
    n_out = full.shape[-1]
    return _reduce(full, output, n_out, k == 1)


# -- torch --------------------------------------------------------------------------------------------
def empirical_ntk_torch(model, x1, x2=None, *, output=None, chunk_size: int | None = None,
                        max_memory_mb: float = 512.0):
    """Empirical NTK of a torch ``nn.Module`` (``model(x) -> (n, k)`` or ``(n,)``), via ``torch.func``.

    Same ``output`` semantics and shapes as :func:`empirical_ntk`; returns a torch tensor on the model's
    device. Buffers are held fixed (use ``model.eval()`` for batch-norm style layers).
    """
    import torch
    from torch.func import functional_call, jacrev, vmap

    _check_output(output)
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    buffers = {name: b.detach() for name, b in model.named_buffers()}
    sym = x2 is None
    x2 = x1 if sym else x2
    with torch.no_grad():
        probe = model(x1[:1])
    single = probe.ndim == 1 or probe.shape[-1] == 1
    k = 1 if probe.ndim == 1 else probe.shape[-1]
    if isinstance(output, (int, np.integer)) and not 0 <= output < k:
        raise ValueError(f"output index {output} out of range for {k} outputs")
    n_out = 1 if (output == "sum" or isinstance(output, (int, np.integer))) else k

    def f_single(p, x):  # (k',) for one example
        out = functional_call(model, (p, buffers), (x.unsqueeze(0),)).reshape(-1)
        if output == "sum":
            return out.sum().reshape(1)
        if isinstance(output, (int, np.integer)):
            return out[output : output + 1]
        return out

    jac_fn = vmap(jacrev(f_single), in_dims=(None, 0))

    def jac(x):
        j = jac_fn(params, x)
        return [j[name].reshape(x.shape[0], n_out, -1) for name in params]

    n_params = sum(p.numel() for p in params.values())
    itemsize = next(iter(params.values())).element_size()
    chunk = chunk_size or _chunk_size(n_params, n_out, itemsize, max_memory_mb)
    rows = []
    for s1 in range(0, x1.shape[0], chunk):
        ja = jac(x1[s1 : s1 + chunk])
        row = []
        for s2 in range(0, x2.shape[0], chunk):
            jb = ja if (sym and s1 == s2) else jac(x2[s2 : s2 + chunk])
            row.append(sum(torch.einsum("iap,jbp->ijab", a, b) for a, b in zip(ja, jb)))
        rows.append(torch.cat(row, dim=1))
    full = torch.cat(rows, dim=0)
    if sym:
        full = 0.5 * (full + full.permute(1, 0, 3, 2))
    return _reduce(full, output, n_out, single)
