"""Layout helpers for fused hooks: the ``(N, T'*W', E, C)`` view and per-edge BatchNorm statistics."""

from __future__ import annotations

import torch

Tensor = torch.Tensor

__all__ = ["cat_stats", "ntec", "split_stats"]


def ntec(y: Tensor, edges: int) -> Tensor:
    """``(N, E*C, T, W)`` channels_last -> its ``(N, T*W, E, C)`` view (no copy)."""
    n, ec, t, w = y.shape
    return y.permute(0, 2, 3, 1).reshape(n, t * w, edges, ec // edges)


def cat_stats(stats: list[dict]) -> tuple[Tensor, Tensor]:
    """Running mean and var of ``E`` BatchNorms, concatenated along the channels."""
    return torch.cat([s["running_mean"] for s in stats]), torch.cat([s["running_var"] for s in stats])


def split_stats(mean: Tensor, var: Tensor, edges: int) -> list[dict]:
    """Inverse of :func:`cat_stats`."""
    return [{"running_mean": m, "running_var": v} for m, v in zip(mean.chunk(edges), var.chunk(edges))]
