"""Riemann ("bar") distributions: a piecewise-constant density over fixed buckets, parameterised by logits.

A network that outputs ``M`` logits ``z`` defines, for borders ``b_0 < ... < b_M`` fixed in advance,

    q(y) = softmax(z)_k / (b_k - b_{k-1})      for y in (b_{k-1}, b_k]          (Müller et al. 2022)

so its NLL is a cross-entropy over buckets plus the log bucket width, directly comparable to any other
density's NLL. Borders are the k/M quantiles of a large sample of labels drawn from the prior (never from
the dataset at hand), so every bucket is a priori equally likely.

The *full-support* variant replaces the two outer buckets by half-normal tails that carry the same mass,
so every real y has a finite density: the left tail has density ``p_0 * HalfNormal(b_1 - y; sigma_0)``
for y <= b_1, with ``sigma_0`` chosen so that half of the tail's mass stays within the original outer
bucket (the official implementation's convention); the right tail mirrors it.

Used by the PFN papers (``pfn``, ``lc-pfn``); any model that predicts a 1-D density can use it.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

# Phi^-1(0.75): a half-normal with scale w / HALF_NORMAL_MEDIAN has half of its mass below w
HALF_NORMAL_MEDIAN = 0.6744897501960817
_SQRT2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def borders_from_samples(ys: torch.Tensor, num_bars: int, *, lower: float | None = None,
                         upper: float | None = None) -> torch.Tensor:
    """``num_bars + 1`` borders: the k/M sample quantiles of ``ys`` (inner), sample min and max (outer).

    Inner border k sits midway between the order statistics either side of the k/M quantile. ``lower`` /
    ``upper`` replace the outer borders for a label range known in advance (e.g. accuracies in [0, 1]).
    """
    ys = torch.as_tensor(ys).detach().flatten().to(torch.float64).cpu()
    ys = ys[torch.isfinite(ys)]
    if num_bars < 1:
        raise ValueError("num_bars must be >= 1")
    if ys.numel() < 2 * num_bars:
        raise ValueError(f"need at least 2 samples per bucket: {ys.numel()} samples for {num_bars} buckets")
    s, _ = torch.sort(ys)
    n = s.numel()
    pos = (torch.arange(1, num_bars, dtype=torch.float64) * n / num_bars).floor().long()
    inner = 0.5 * (s[pos - 1] + s[pos])
    lo = s[0] if lower is None else torch.tensor(float(lower), dtype=torch.float64)
    hi = s[-1] if upper is None else torch.tensor(float(upper), dtype=torch.float64)
    borders = torch.cat([lo.reshape(1), inner, hi.reshape(1)])
    if not bool((borders[1:] > borders[:-1]).all()):
        raise ValueError("borders are not strictly increasing (ties in the samples, or lower/upper inside "
                         "the sample range): use fewer buckets or continuous samples")
    return borders.to(torch.float32)


class BarDistribution(nn.Module):
    """Bucketed density over ``M = len(borders) - 1`` buckets; methods take logits of shape (..., M).

    ``full_support=False``: support [b_0, b_M], y outside has log-density -inf.
    ``full_support=True``: half-normal tails replace the outer buckets, support is the real line.
    """

    def __init__(self, borders: torch.Tensor, *, full_support: bool = False):
        super().__init__()
        borders = torch.as_tensor(borders).detach().flatten()
        if not borders.is_floating_point():
            borders = borders.float()
        if borders.numel() < (3 if full_support else 2):
            raise ValueError("need at least 1 bucket (2 with full support: a left and a right tail)")
        if not bool((borders[1:] > borders[:-1]).all()):
            raise ValueError("borders must be strictly increasing")
        self.full_support = bool(full_support)
        self.register_buffer("borders", borders)
        self.register_buffer("widths", borders[1:] - borders[:-1])

    @classmethod
    def from_samples(cls, ys: torch.Tensor, num_bars: int, *, full_support: bool = False,
                     lower: float | None = None, upper: float | None = None) -> "BarDistribution":
        return cls(borders_from_samples(ys, num_bars, lower=lower, upper=upper), full_support=full_support)

    @property
    def num_bars(self) -> int:
        return self.widths.numel()

    def extra_repr(self) -> str:
        return (f"num_bars={self.num_bars}, range=({self.borders[0].item():.3g}, {self.borders[-1].item():.3g}), "
                f"full_support={self.full_support}")

    # -- pieces ----------------------------------------------------------------------------------
    def _grid(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Borders and widths in the dtype of the computation (the logits')."""
        return self.borders.to(dtype), self.widths.to(dtype)

    def _tail_scales(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.widths.to(dtype)
        return w[0] / HALF_NORMAL_MEDIAN, w[-1] / HALF_NORMAL_MEDIAN

    def bucket_index(self, y: torch.Tensor) -> torch.Tensor:
        """k such that y in (b_{k-1}, b_k] (0-based; b_0 itself goes to bucket 0), clamped to [0, M-1]."""
        idx = torch.searchsorted(self.borders.to(y.dtype), y.contiguous(), right=False) - 1
        return idx.clamp(0, self.num_bars - 1)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Bucket probabilities softmax(z), shape (..., M)."""
        return torch.softmax(logits, -1)

    @staticmethod
    def _broadcast(per_bucket: torch.Tensor, y) -> tuple[torch.Tensor, torch.Tensor]:
        """Broadcast (..., M) against y; expanded views, so work per bucket is done before calling this."""
        y = torch.as_tensor(y, dtype=per_bucket.dtype, device=per_bucket.device)
        shape = torch.broadcast_shapes(per_bucket.shape[:-1], y.shape)
        return per_bucket.expand(*shape, per_bucket.shape[-1]), y.expand(shape)

    # -- density -----------------------------------------------------------------------------------
    def log_density(self, logits: torch.Tensor, y) -> torch.Tensor:
        """log q(y); logits (..., M), y broadcastable to logits.shape[:-1]."""
        log_probs, y = self._broadcast(torch.log_softmax(logits, -1), y)
        b, w = self._grid(logits.dtype)
        idx = self.bucket_index(y)
        log_p = log_probs.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
        out = log_p - torch.log(w)[idx]  # Riemann density: bucket mass / bucket width
        if not self.full_support:
            inside = (y >= b[0]) & (y <= b[-1])
            return torch.where(inside, out, torch.full_like(out, -math.inf))
        s_left, s_right = self._tail_scales(logits.dtype)
        # half-normal tails replace the outer buckets: log p_0 + log HalfNormal(distance; scale)
        dist_left = (b[1] - y).clamp(min=0.0)
        dist_right = (y - b[-2]).clamp(min=0.0)
        log_hn_left = 0.5 * math.log(2 / math.pi) - torch.log(s_left) - 0.5 * (dist_left / s_left) ** 2
        log_hn_right = 0.5 * math.log(2 / math.pi) - torch.log(s_right) - 0.5 * (dist_right / s_right) ** 2
        out = torch.where(idx == 0, log_p + log_hn_left, out)
        out = torch.where(idx == self.num_bars - 1, log_p + log_hn_right, out)
        return out

    def nll(self, logits: torch.Tensor, y) -> torch.Tensor:
        """-log q(y) per element (the PFN training loss before averaging)."""
        return -self.log_density(logits, y)

    forward = nll

    # -- distribution function and quantiles ------------------------------------------------------
    def cdf(self, logits: torch.Tensor, y) -> torch.Tensor:
        """Q(Y <= y); logits (..., M), y broadcastable to logits.shape[:-1]."""
        p = self.probs(logits)
        below, _ = self._broadcast(torch.cumsum(p, -1) - p, y)  # mass strictly below each bucket
        p, y = self._broadcast(p, y)
        b, w = self._grid(logits.dtype)
        idx = self.bucket_index(y)
        p_k = p.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
        below_k = below.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
        out = below_k + p_k * ((y - b[:-1][idx]) / w[idx]).clamp(0.0, 1.0)
        if not self.full_support:
            return out
        s_left, s_right = self._tail_scales(logits.dtype)
        left = p[..., 0] * torch.erfc((b[1] - y).clamp(min=0.0) / (s_left * _SQRT2))
        right = 1.0 - p[..., -1] * torch.erfc((y - b[-2]).clamp(min=0.0) / (s_right * _SQRT2))
        out = torch.where(idx == 0, left, out)
        return torch.where(idx == self.num_bars - 1, right, out)

    def icdf(self, logits: torch.Tensor, q) -> torch.Tensor:
        """The q-quantile; q a float or a tensor broadcastable to logits.shape[:-1], values in (0, 1)."""
        p = self.probs(logits)
        cum, _ = self._broadcast(torch.cumsum(p, -1), q)
        p, q = self._broadcast(p, q)
        b, w = self._grid(logits.dtype)
        # bucket k holds the quantile when cum_{k-1} < q <= cum_k
        k = torch.searchsorted(cum.contiguous(), q.unsqueeze(-1).contiguous()).clamp(0, self.num_bars - 1)
        p_k = p.gather(-1, k).squeeze(-1)
        below = cum.gather(-1, k).squeeze(-1) - p_k
        k = k.squeeze(-1)
        out = b[:-1][k] + ((q - below) / p_k.clamp(min=1e-30)).clamp(0.0, 1.0) * w[k]
        if not self.full_support:
            return out
        s_left, s_right = self._tail_scales(logits.dtype)
        # invert p_0 erfc(t / (s sqrt 2)) = q  and  1 - p_M erfc(t / (s sqrt 2)) = q  for the distance t
        eps = torch.finfo(logits.dtype).eps
        u_left = (1.0 - q / p[..., 0].clamp(min=1e-30)).clamp(-1.0 + eps, 1.0 - eps)
        u_right = (1.0 - (1.0 - q) / p[..., -1].clamp(min=1e-30)).clamp(-1.0 + eps, 1.0 - eps)
        left = b[1] - s_left * _SQRT2 * torch.erfinv(u_left)
        right = b[-2] + s_right * _SQRT2 * torch.erfinv(u_right)
        out = torch.where(k == 0, left, out)
        return torch.where(k == self.num_bars - 1, right, out)

    def quantiles(self, logits: torch.Tensor, levels: Sequence[float]) -> torch.Tensor:
        """Quantiles at several levels, stacked on a new last axis: (..., len(levels))."""
        return torch.stack([self.icdf(logits, float(a)) for a in levels], -1)

    def median(self, logits: torch.Tensor) -> torch.Tensor:
        return self.icdf(logits, 0.5)

    # -- moments -------------------------------------------------------------------------------------
    def _bucket_moments(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """E[y | bucket] and E[y^2 | bucket] for every bucket (tails included in the full-support case)."""
        b, _ = self._grid(dtype)
        lo, hi = b[:-1], b[1:]
        m1 = 0.5 * (lo + hi)
        m2 = (lo * lo + lo * hi + hi * hi) / 3.0
        if self.full_support:
            s_left, s_right = self._tail_scales(dtype)
            b1, bm = b[1], b[-2]
            m1 = torch.cat([(b1 - s_left * _SQRT_2_OVER_PI).reshape(1), m1[1:-1],
                            (bm + s_right * _SQRT_2_OVER_PI).reshape(1)])
            m2 = torch.cat([(b1**2 - 2 * b1 * s_left * _SQRT_2_OVER_PI + s_left**2).reshape(1), m2[1:-1],
                            (bm**2 + 2 * bm * s_right * _SQRT_2_OVER_PI + s_right**2).reshape(1)])
        return m1, m2

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        m1, _ = self._bucket_moments(logits.dtype)
        return self.probs(logits) @ m1

    def variance(self, logits: torch.Tensor) -> torch.Tensor:
        m1, m2 = self._bucket_moments(logits.dtype)
        p = self.probs(logits)
        return (p @ m2 - (p @ m1) ** 2).clamp(min=0.0)
