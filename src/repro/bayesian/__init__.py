"""Bayesian inference chapter: amortised posteriors (prior-data fitted networks and relatives)."""
