"""Shared building blocks. Each piece lives here once and is used by every paper that needs it.
Import modules explicitly (``from repro.core import gp``); they pull in torch or JAX only as needed.

Kernels, Gaussian processes, infinite width
- ``gp``: exact GP posterior from kernel matrices, RBF kernel, GP prior sampler (torch), MLE-II fit.
- ``kernels``: analytic NNGP / NTK recursions (ReLU, erf closed forms; Gauss-Hermite for any activation).
- ``tangent_kernel``: empirical NTK in JAX and torch.
- ``random_features``, ``random_matrix``, ``scale_mixture``: random features, Marchenko-Pastur tools,
  scale mixtures of GPs.

Models and training
- ``mlp_jax`` / ``mlp_torch``: the MLP family with standard / NTK / muP parametrizations.
- ``train_torch``: the torch training loop (Adam/AdamW, warm-up + cosine, clipping, eval callbacks).
- ``train_jax``: full-batch gradient descent in JAX with snapshots.
- ``transformer``: the prior-data fitted network (context/query attention mask).
- ``bar_distribution``: the Riemann ("bar") output distribution of PFNs.

Data
- ``data``: offline data (unit circle, scikit-learn digits) and the real loaders for full profiles.
"""
