"""Optimisers as pure ``(init, update)`` pairs over pytrees: SGD (momentum, weight decay) and Adam.

Both follow ``torch.optim``'s update rules exactly (weight decay as L2 added to the gradient; SGD's
first momentum buffer equals the first gradient, which a zero-initialised buffer reproduces).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from fnas.core import tree

Tensor = torch.Tensor


class SGDState(NamedTuple):
    """Momentum buffers, one per weight."""

    momentum: dict


class AdamState(NamedTuple):
    """First and second moment estimates and the step count (a 0-d tensor)."""

    mu: dict
    nu: dict
    count: Tensor


def sgd_init(params: dict) -> SGDState:
    """Zero momentum buffers."""
    return SGDState(tree.zeros_like(params))


def sgd_direction(grads: dict, state: SGDState, params: dict, *, momentum: float, weight_decay: float) -> dict:
    """The new momentum buffer ``m * buf + g + wd * w`` (the step is ``-lr`` times it)."""
    return tree.map(lambda b, g, w: momentum * b + g + weight_decay * w, state.momentum, grads, params)


def sgd_update(
    grads: dict, state: SGDState, params: dict, *, lr: Tensor | float, momentum: float, weight_decay: float
) -> tuple[dict, SGDState]:
    """One SGD step: ``buf = m * buf + (g + wd * w)``, ``w = w - lr * buf``.

    Returns:
        ``(new_params, new_state)``.
    """
    buf = sgd_direction(grads, state, params, momentum=momentum, weight_decay=weight_decay)
    return tree.axpy(-lr, buf, params), SGDState(buf)


def adam_init(params: dict) -> AdamState:
    """Zero moments, count 0."""
    return AdamState(tree.zeros_like(params), tree.zeros_like(params), torch.zeros((), dtype=torch.int64))


def adam_update(
    grads: dict,
    state: AdamState,
    params: dict,
    *,
    lr: Tensor | float,
    betas: tuple[float, float],
    weight_decay: float,
    eps: float = 1e-8,
) -> tuple[dict, AdamState]:
    """One Adam step with L2 weight decay added to the gradient (``torch.optim.Adam``).

    References:
        Kingma, Ba. Adam: A Method for Stochastic Optimization. ICLR 2015.
    """
    b1, b2 = betas
    grads = tree.map(lambda g, p: g + weight_decay * p, grads, params)
    mu = tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
    nu = tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, grads)
    count = state.count + 1
    t = count.to(next(iter(tree.leaves(params))).dtype)
    c1, c2 = 1 - b1**t, 1 - b2**t
    # p - lr * (m / c1) / (sqrt(v / c2) + eps), written like torch.optim.Adam's single-tensor path
    new = tree.map(lambda p, m, v: p - (lr / c1) * m / ((v.sqrt() / c2.sqrt()) + eps), params, mu, nu)
    return new, AdamState(mu, nu, count)


def clip_by_global_norm(grads: dict, max_norm: float) -> tuple[dict, Tensor]:
    """Scale ``grads`` so their global L2 norm is at most ``max_norm`` (``clip_grad_norm_``).

    Returns:
        ``(clipped, norm_before)``.
    """
    total = tree.norm(grads)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    return tree.scale(coef, grads), total


def cosine_lr(step: Tensor, *, lr: float, lr_min: float, total_steps: int) -> Tensor:
    """``lr_min + (lr - lr_min) (1 + cos(pi t / T)) / 2`` with ``t = min(step, T)``.

    References:
        Loshchilov, Hutter. SGDR: Stochastic Gradient Descent with Warm Restarts. ICLR 2017.
    """
    t = torch.clamp(step.to(torch.float64), max=float(total_steps)) / total_steps
    return lr_min + 0.5 * (lr - lr_min) * (1 + torch.cos(torch.pi * t))
