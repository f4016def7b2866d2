"""Optimisers as bound ``(init, update)`` transformations over pytrees (optax-style): SGD and Adam.

``opt = sgd(momentum=0.9, weight_decay=3e-4)`` binds the hyperparameters once; then
``state = opt.init(params)`` and ``params, state = opt.update(grads, state, params, lr=lr)``. The
learning rate stays an argument of ``update`` because it is scheduled (a tensor in the search
state). Both follow ``torch.optim``'s update rules exactly (weight decay as L2 added to the
gradient; SGD's first momentum buffer equals the first gradient, which a zero buffer reproduces).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch

from fnas.core import tree

Tensor = torch.Tensor


class Transformation(NamedTuple):
    """An optimiser with its hyperparameters bound.

    ``init(params) -> state``; ``update(grads, state, params, *, lr) -> (new_params, new_state)``.
    Both are pure: no input is modified.
    """

    init: Callable[[Any], Any]
    update: Callable[..., tuple[Any, Any]]


class SGDState(NamedTuple):
    """Momentum buffers, one per weight."""

    momentum: dict


class AdamState(NamedTuple):
    """First and second moment estimates and the step count (a 0-d tensor)."""

    mu: dict
    nu: dict
    count: Tensor


def sgd(momentum: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False) -> Transformation:
    """SGD with heavy-ball (or Nesterov) momentum and L2 weight decay, as ``torch.optim.SGD``.

    ``buf = m * buf + (g + wd * w)``; ``w = w - lr * buf`` (Nesterov: ``w = w - lr * (g + wd * w + m * buf)``).

    Args:
        momentum: ``m``; 0 is plain SGD.
        weight_decay: ``wd``, L2 added to the gradient.
        nesterov: Nesterov momentum (Sutskever et al. 2013, torch's form).

    Raises:
        ValueError: negative hyperparameters, or ``nesterov`` without momentum.
    """
    if momentum < 0 or weight_decay < 0:
        raise ValueError(f"sgd needs momentum >= 0 and weight_decay >= 0, got {momentum}, {weight_decay}")
    if nesterov and momentum <= 0:
        raise ValueError("sgd(nesterov=True) needs momentum > 0 (as torch.optim.SGD)")

    def init(params: dict) -> SGDState:
        return SGDState(tree.zeros_like(params))

    def update(grads: dict, state: SGDState, params: dict, *, lr: Tensor | float) -> tuple[dict, SGDState]:
        if nesterov:
            decayed = tree.map(lambda g, w: g + weight_decay * w, grads, params)
            buf = tree.map(lambda b, d: momentum * b + d, state.momentum, decayed)
            step = tree.map(lambda d, b: d + momentum * b, decayed, buf)
            return tree.axpy(-lr, step, params), SGDState(buf)
        # written as one expression per leaf (the form the exact hypergradient differentiates)
        buf = tree.map(lambda b, g, w: momentum * b + g + weight_decay * w, state.momentum, grads, params)
        return tree.axpy(-lr, buf, params), SGDState(buf)

    return Transformation(init, update)


def adam(
    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0
) -> Transformation:
    """Adam with L2 weight decay added to the gradient (``torch.optim.Adam``, single-tensor path).

    Raises:
        ValueError: betas outside ``[0, 1)``, or negative ``eps`` / ``weight_decay``.

    References:
        Kingma, Ba. Adam: A Method for Stochastic Optimization. ICLR 2015.
    """
    b1, b2 = betas
    if not (0 <= b1 < 1 and 0 <= b2 < 1) or eps < 0 or weight_decay < 0:
        raise ValueError(f"adam needs betas in [0, 1), eps >= 0, weight_decay >= 0; got {betas}, {eps}, {weight_decay}")

    def init(params: dict) -> AdamState:
        return AdamState(tree.zeros_like(params), tree.zeros_like(params), torch.zeros((), dtype=torch.int64))

    def update(grads: dict, state: AdamState, params: dict, *, lr: Tensor | float) -> tuple[dict, AdamState]:
        grads = tree.map(lambda g, p: g + weight_decay * p, grads, params)
        mu = tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
        nu = tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, grads)
        count = state.count + 1
        t = count.to(next(iter(tree.leaves(params))).dtype)
        c1, c2 = 1 - b1**t, 1 - b2**t
        # p - lr * (m / c1) / (sqrt(v / c2) + eps), written like torch.optim.Adam's single-tensor path
        new = tree.map(lambda p, m, v: p - (lr / c1) * m / ((v.sqrt() / c2.sqrt()) + eps), params, mu, nu)
        return new, AdamState(mu, nu, count)

    return Transformation(init, update)


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


__all__ = ["AdamState", "SGDState", "Transformation", "adam", "clip_by_global_norm", "cosine_lr", "sgd"]
