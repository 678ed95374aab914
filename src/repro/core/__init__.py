"""Shared building blocks. Each piece lives here once and is used by every paper that needs it.
Import modules explicitly (``from repro.core import gp``); they pull in torch or JAX only as needed.

Kernels, Gaussian processes, infinite width
- ``gp``: exact GP posterior from kernel matrices, RBF kernel, GP prior sampler (torch), MLE-II fit.
- ``kernels``: analytic NNGP / NTK recursions (ReLU, erf closed forms; Gauss-Hermite for any activation),
  NTK training dynamics in function space.
- ``hermite``: Hermite polynomials, dual activations, depth-rescaled kernels and their infinite-depth limit.
- ``tangent_kernel``: empirical NTK in JAX and torch.
- ``gram``: kernels from Gram matrices, Gaussian KL divergences, Cholesky-parametrized PSD matrices.
- ``kernel_ridge``: kernel ridge regression in torch with a validation grid.
- ``random_features``: random projections and features (Gaussian, orthogonal, exp, ReLU), ridge readouts.
- ``random_matrix``: Marchenko-Pastur law, exact linear gradient-descent dynamics, teacher-student data.
- ``scale_mixture``: scale mixtures of GPs (Student-t predictives, importance sampling over the scale).
- ``ensembles``: Monte-Carlo ensembles of random MLPs with exact layer-by-layer sampling.
- ``finite_mixture``: exact Bayes mixtures over a finite set of random-network functions.

Models and training
- ``parametrization``: forward multipliers of the MLP family (ntk / standard / mup), framework-free.
- ``mlp_jax`` / ``mlp_torch``: the MLP family in JAX and torch.
- ``abc_parametrization``: per-tensor (init, learning-rate, multiplier) scalings for SP / NTK / muP.
- ``train_torch``: the torch training loop (Adam/AdamW/SGD, warm-up + cosine, clipping, eval callbacks).
- ``train_jax``: full-batch gradient descent in JAX with snapshots.
- ``sgld``: stochastic-gradient Langevin dynamics and stacked ensembles; ``samplers``: MALA and friends.
- ``transformer``: the prior-data fitted network (context/query attention mask).
- ``bar_distribution``: the Riemann ("bar") output distribution of PFNs.

Data
- ``data``: offline data (unit circle, scikit-learn digits, MNIST-1D) and the real MNIST loader.
- ``hierarchical_targets``: Gaussian inputs with planted hierarchical polynomial targets.
"""
