"""Architecture gradients: first order, exact unrolled (nested ``torch.func.grad``), finite difference.

All three share one signature so a config value switches between them and a benchmark compares
them on the same batch::

    g_alpha, (val_loss, val_aux) = method(loss_fn, weights, alphas, opt_state, train_batches,
                                          valid_batch, xi=..., optimizer=...)

``loss_fn(weights, alphas, batch) -> (loss, aux)`` is any differentiable loss: the built-in
supernet's or a user's own. ``optimizer`` is the weight optimiser (a bound
:class:`fnas.core.optim.Transformation`, DARTS' SGD when omitted) and ``opt_state`` its state: the
virtual step applies that optimiser's own update with ``xi`` as its learning rate, so it is the
step the search will take. For SGD with momentum ``m`` and L2 weight decay ``wd`` (no clipping, as
in DARTS)::

    buf' = m * buf + dL_train/dw (w, alpha) + wd * w
    w'   = w - xi * buf'

References:
    Liu, Simonyan, Yang. DARTS: Differentiable Architecture Search. ICLR 2019 (eq. 6-8, the
    finite-difference approximation).
    Finn, Abbeel, Levine. Model-Agnostic Meta-Learning. ICML 2017 (differentiating through
    inner SGD steps).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.func import grad

from fnas.core import tree
from fnas.core.optim import Transformation, sgd

Tensor = torch.Tensor
LossFn = Callable[[Any, Any, Any], tuple[Tensor, Any]]

DARTS_SGD = sgd(momentum=0.9, weight_decay=3e-4)  # DARTS' weight optimiser: the default virtual step


def as_batches(train_batches: Any, k: int) -> list:
    """``train_batches`` may be one batch (reused for every virtual step) or a list of ``k``.

    One batch is any tuple, or a list whose first item is a tensor (a DataLoader yields
    ``[x, y]`` lists); a list of batches holds tuples or lists.

    Raises:
        ValueError: a list of fewer than ``k`` batches.
    """
    if isinstance(train_batches, list) and train_batches and not isinstance(train_batches[0], torch.Tensor):
        if len(train_batches) < k:
            raise ValueError(f"unroll_steps={k} needs {k} training batches, got {len(train_batches)}")
        return train_batches[:k]
    return [train_batches] * k


def virtual_step(
    loss_fn: LossFn, weights: Any, alphas: Any, opt_state: Any, batch: Any, *, xi, optimizer: Transformation
) -> tuple[Any, Any]:
    """One step of the weight optimiser with learning rate ``xi``, as a differentiable function of ``alphas``.

    Returns:
        ``(w', opt_state')``.
    """
    g = grad(lambda w: loss_fn(w, alphas, batch)[0])(weights)
    return optimizer.update(g, opt_state, weights, lr=xi)


def first_order(
    loss_fn: LossFn,
    weights: Any,
    alphas: Any,
    opt_state: Any,
    train_batches: Any,
    valid_batch: Any,
    *,
    xi=0.0,
    optimizer: Transformation | None = None,
    unroll_steps: int = 1,
) -> tuple[Any, tuple[Tensor, Any]]:
    """``dL_val/dalpha`` at the current weights (DARTS first order, ``xi = 0``)."""
    g, out = grad(lambda a: _with_aux(loss_fn(weights, a, valid_batch)), has_aux=True)(alphas)
    return g, out


def exact(
    loss_fn: LossFn,
    weights: Any,
    alphas: Any,
    opt_state: Any,
    train_batches: Any,
    valid_batch: Any,
    *,
    xi=0.025,
    optimizer: Transformation | None = None,
    unroll_steps: int = 1,
    hvp: str = "forward",
) -> tuple[Any, tuple[Tensor, Any]]:
    """``d/dalpha L_val(w_K(alpha), alpha)`` through ``K`` virtual steps, exactly.

    No finite differences, no ``.backward()``, no mutation. For ``K = 1`` (``hvp="forward"``, the
    default) the chain rule is split as DARTS does, ``dalpha L_val(w') + H u`` with
    ``u = (dU/dg)^T dw' L_val(w')`` (the virtual step ``w' = U(g)``'s pullback; ``-xi dw' L_val``
    for SGD) and ``H u = d/dw [dalpha L_train(w)] . u``, but the mixed Hessian-vector product is
    exact: ``torch.func.jvp`` of the alpha gradient along ``u`` (forward-over-reverse). It needs about half the memory of differentiating through the inner
    gradient. ``hvp="reverse"``, and every ``K > 1``, differentiates the whole unrolled objective
    with nested ``torch.func.grad`` (the second-order term comes from differentiating the inner
    gradient itself). Both are equal to float64 round-off (tested).

    Args:
        loss_fn: ``(weights, alphas, batch) -> (loss, aux)``.
        weights, alphas: pytrees.
        opt_state: the weight optimiser's state (SGD: :class:`fnas.core.optim.SGDState`).
        train_batches: one batch, or a list of ``unroll_steps`` batches.
        valid_batch: the batch of the outer (validation) loss.
        xi: virtual learning rate (the real one, as DARTS does).
        optimizer: the weight optimiser whose update is the virtual step (default: DARTS' SGD,
            momentum 0.9, weight decay 3e-4).
        unroll_steps: ``K``, the number of virtual steps.
        hvp: ``"forward"`` (K = 1 only) or ``"reverse"``; see above.

    Returns:
        ``(grad_alphas, (val_loss, val_aux))`` with ``val_loss`` at the unrolled weights.
    """
    if not isinstance(unroll_steps, int) or unroll_steps < 1:
        raise ValueError(f"unroll_steps must be an int >= 1, got {unroll_steps!r}")
    if hvp not in ("forward", "reverse"):
        raise ValueError(f"hvp must be 'forward' or 'reverse', got {hvp!r}")
    batches = as_batches(train_batches, unroll_steps)
    optimizer = optimizer or DARTS_SGD
    # dynamo cannot trace jvp through batch_norm yet (torch 2.13): compiled steps take the equal
    # nested-reverse form
    if unroll_steps == 1 and hvp == "forward" and not torch.compiler.is_compiling():
        w1, pullback = _step_with_pullback(loss_fn, weights, alphas, opt_state, batches[0], xi=xi, optimizer=optimizer)
        (gw, ga), out = grad(lambda w, a: _with_aux(loss_fn(w, a, valid_batch)), argnums=(0, 1), has_aux=True)(
            w1, alphas
        )
        # dL_val/dalpha through w' = U(dL_train/dw): u = (dU/dg)^T dL_val/dw' (SGD: -xi * gw), then
        # H u = d/d eps [dalpha L_train(w + eps u, alpha)] at eps = 0: exact, no eps to choose
        u = pullback(gw)
        _, implicit = torch.func.jvp(lambda w: grad(lambda a: loss_fn(w, a, batches[0])[0])(alphas), (weights,), (u,))
        return tree.add(ga, implicit), out

    def objective(a):
        w, state = weights, opt_state
        for batch in batches:
            w, state = virtual_step(loss_fn, w, a, state, batch, xi=xi, optimizer=optimizer)
        return _with_aux(loss_fn(w, a, valid_batch))

    return grad(objective, has_aux=True)(alphas)


def finite_difference(
    loss_fn: LossFn,
    weights: Any,
    alphas: Any,
    opt_state: Any,
    train_batches: Any,
    valid_batch: Any,
    *,
    xi=0.025,
    optimizer: Transformation | None = None,
    unroll_steps: int = 1,
) -> tuple[Any, tuple[Tensor, Any]]:
    """DARTS' approximation: ``dalpha L_val(w') - xi * (g+ - g-) / (2 eps)``.

    ``g+-`` is ``dalpha L_train(w +- eps * dw' L_val(w'), alpha)`` and ``eps = 0.01 / ||dw' L_val||``
    (for SGD; another optimiser's virtual step ``w' = U(g)`` perturbs along ``(dU/dg)^T dw' L_val``).
    The difference is divided by ``2 * eps`` (some reimplementations divide by 2 and multiply by
    eps through an operator-precedence slip).

    Raises:
        ValueError: ``unroll_steps`` other than 1 (the approximation is defined for one step).
    """
    if unroll_steps != 1:
        raise ValueError(f"finite_difference supports unroll_steps=1 only, got {unroll_steps}; use exact")
    batch = as_batches(train_batches, 1)[0]
    optimizer = optimizer or DARTS_SGD
    w1, pullback = _step_with_pullback(loss_fn, weights, alphas, opt_state, batch, xi=xi, optimizer=optimizer)
    (gw, ga), out = grad(lambda w, a: _with_aux(loss_fn(w, a, valid_batch)), argnums=(0, 1), has_aux=True)(
        w1, alphas
    )
    # u = (dU/dg)^T dL_val/dw' is SGD's -xi * gw. DARTS perturbs w by eps * gw with eps = 0.01 / ||gw||:
    # radius 0.01 along u's direction, and the difference quotient scaled back by ||u||
    u = pullback(gw)
    norm = tree.norm(u)
    radius = 0.01
    unit = tree.scale(1.0 / torch.clamp(norm, min=torch.finfo(norm.dtype).tiny), u)  # xi = 0: u = 0, no 0/0
    train_grad = grad(lambda a, w: loss_fn(w, a, batch)[0])
    g_plus = train_grad(alphas, tree.axpy(radius, unit, weights))
    g_minus = train_grad(alphas, tree.axpy(-radius, unit, weights))
    # ||u|| (g+ - g-) / (2 radius): a central difference of the mixed second derivative along u; for
    # SGD it is DARTS' -xi (g+ - g-) / (2 eps) with the signs of the two points swapped
    implicit = tree.scale(norm / (2.0 * radius), tree.sub(g_plus, g_minus))
    return tree.add(ga, implicit), out


def _step_with_pullback(loss_fn: LossFn, weights: Any, alphas: Any, opt_state: Any, batch: Any, *, xi, optimizer):
    """The virtual step ``w' = U(g)`` at ``g = dL_train/dw`` and its pullback ``v -> (dU/dg)^T v``."""
    g = grad(lambda w: loss_fn(w, alphas, batch)[0])(weights)
    w1, vjp = torch.func.vjp(lambda g_: optimizer.update(g_, opt_state, weights, lr=xi)[0], g)
    return w1, lambda v: vjp(v)[0]


def _with_aux(result: tuple[Tensor, Any]) -> tuple[Tensor, tuple[Tensor, Any]]:
    loss, aux = result
    return loss, (loss, aux)


METHODS: dict[str, Callable] = {
    "first_order": first_order,
    "exact": exact,
    "finite_difference": finite_difference,
}


def get(name: str) -> Callable:
    """The method called ``name``.

    Raises:
        ValueError: unknown name.
    """
    if name not in METHODS:
        raise ValueError(f"Unknown hypergradient {name!r}; expected one of {sorted(METHODS)}")
    return METHODS[name]


__all__ = ["DARTS_SGD", "METHODS", "as_batches", "exact", "finite_difference", "first_order", "get", "virtual_step"]
