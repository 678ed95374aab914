"""Infinite-width limits of neural networks: NNGP and NTK kernels, lazy training, and their limits."""
